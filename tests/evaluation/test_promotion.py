"""Champion / challenger: the pure decision, and the aliases in a real SQLite Model Registry."""

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from cxr_pipeline import model_source, promotion, tracking
from cxr_pipeline.promotion import PromotionRule, decide
from cxr_pipeline.settings import dagster_ui_url, default_tracking_uri, mlflow_ui_url

SR_RULE = PromotionRule("psnr_sr_x4_ddim", ("lr_consistency_psnr_sr_x4_ddim",))


def test_split_key_depends_on_the_images_not_their_order():
    assert promotion.split_key(["b", "a"]) == promotion.split_key(["a", "b"])
    assert promotion.split_key(["a", "b"]) != promotion.split_key(["a", "c"])


def test_first_model_becomes_champion():
    decision = decide(SR_RULE, "1", {"psnr_sr_x4_ddim": 25.0, "lr_consistency_psnr_sr_x4_ddim": 30.0}, None, None)
    assert decision.promoted and decision.reason == "no champion yet"


def test_better_psnr_with_a_worse_lr_consistency_is_not_promoted():
    champion = {"psnr_sr_x4_ddim": 25.0, "lr_consistency_psnr_sr_x4_ddim": 30.0}
    sharper_but_invented = {"psnr_sr_x4_ddim": 25.5, "lr_consistency_psnr_sr_x4_ddim": 29.0}
    decision = decide(SR_RULE, "2", sharper_but_invented, "1", champion)
    assert not decision.promoted and "lr_consistency_psnr_sr_x4_ddim" in decision.reason
    assert decision.verdicts["psnr_sr_x4_ddim"].startswith("better")
    assert decision.verdicts["lr_consistency_psnr_sr_x4_ddim"].startswith("worse")
    better = decide(SR_RULE, "3", {"psnr_sr_x4_ddim": 25.5, "lr_consistency_psnr_sr_x4_ddim": 30.0}, "1", champion)
    assert better.promoted and "beats v1" in better.reason
    table = better.table()
    assert list(table["metric"]) == ["psnr_sr_x4_ddim", "lr_consistency_psnr_sr_x4_ddim"]
    assert table["champion v1"].tolist() == ["25.0000", "30.0000"]


def test_lower_is_better_metrics_and_tolerance():
    rule = PromotionRule("fd_cxr_class_ddpm", ("cond_acc_class_ddpm",), tolerance=0.02)
    champion = {"fd_cxr_class_ddpm": 10.0, "cond_acc_class_ddpm": 0.80}
    assert decide(rule, "2", {"fd_cxr_class_ddpm": 8.0, "cond_acc_class_ddpm": 0.79}, "1", champion).promoted
    assert not decide(rule, "2", {"fd_cxr_class_ddpm": 8.0, "cond_acc_class_ddpm": 0.70}, "1", champion).promoted
    assert not decide(rule, "2", {"fd_cxr_class_ddpm": 12.0, "cond_acc_class_ddpm": 0.90}, "1", champion).promoted
    missing = decide(rule, "2", {"fd_cxr_class_ddpm": 8.0}, "1", champion)
    assert not missing.promoted and "lacks cond_acc_class_ddpm" in missing.reason


@pytest.fixture
def registry(tmp_path):
    uri = default_tracking_uri(tmp_path)
    (tmp_path / "mlflow").mkdir()
    experiment = tracking.ensure_experiment(uri, "promotion-test", tmp_path / "mlflow" / "artifacts")
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model.json").write_text("{}")

    def register() -> str:
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_artifacts(str(folder), artifact_path="model")
        return tracking.register_folder(run.info.run_id, "model", "cxr-test-model")

    yield register
    mlflow.set_tracking_uri(None)


def test_aliases_follow_the_decisions_in_a_real_registry(registry):
    client = MlflowClient()
    split = "split-a"
    scores = {"1": (25.0, 30.0), "2": (24.0, 30.0), "3": (26.0, 30.5)}
    outcomes = {}
    for version in ("1", "2", "3"):
        assert registry() == version
        metrics = {"psnr_sr_x4_ddim": scores[version][0], "lr_consistency_psnr_sr_x4_ddim": scores[version][1]}
        champion = promotion.current_champion("cxr-test-model")
        recorded = promotion.recorded_metrics(champion[1], split) if champion else None
        decision = decide(SR_RULE, version, metrics, champion[0] if champion else None, recorded)
        promotion.record_and_promote("cxr-test-model", decision, split)
        outcomes[version] = decision.promoted
        aliases = {k: str(v) for k, v in client.get_registered_model("cxr-test-model").aliases.items()}
        if version == "2":  # worse: v1 stays champion, v2 is the challenger
            assert aliases == {"champion": "1", "challenger": "2"}
        else:  # promoted: champion, and no challenger is left (never both on one version)
            assert aliases == {"champion": version}
    assert outcomes == {"1": True, "2": False, "3": True}
    tags = client.get_model_version("cxr-test-model", "2").tags
    assert tags["promotion_decision"] == "not promoted" and "v1 stays champion" in tags["promotion_reason"]
    assert promotion.recorded_metrics(tags, split)["psnr_sr_x4_ddim"] == 24.0
    assert promotion.recorded_metrics(tags, "another-split") is None  # other split: must be re-evaluated


def test_sampling_code_resolves_a_registered_name_to_its_champion(registry, tmp_path, monkeypatch):
    for _ in range(2):
        registry()
    client = MlflowClient()
    client.set_registered_model_alias("cxr-test-model", "champion", "2")
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow.get_tracking_uri())
    folder = model_source.resolve_model("cxr-test-model")
    assert "v2" in folder.parts and (folder / "model.json").exists()
    assert folder.is_relative_to(tmp_path / "home" / "models" / "registry")
    assert model_source.resolve_model(folder) == folder  # a folder is used as given
    with pytest.raises(FileNotFoundError, match="neither a model folder nor a registered model"):
        model_source.resolve_model("no-such-model")


GATED = PromotionRule("psnr_sr_x4_ddim", (), must_beat=(("psnr_sr_x4_ddim", "psnr_sr_x4_bicubic"),))


def test_a_model_that_does_not_beat_its_classical_baseline_is_never_champion():
    noise = {"psnr_sr_x4_ddim": 14.0, "psnr_sr_x4_bicubic": 22.6}
    first = decide(GATED, "1", noise, None, None)
    assert not first.promoted
    assert first.reason == (
        "does not beat its classical baseline: psnr_sr_x4_ddim = 14.0000 does not beat psnr_sr_x4_bicubic = 22.6000"
    )
    assert decide(GATED, "1", {"psnr_sr_x4_ddim": 23.0, "psnr_sr_x4_bicubic": 22.6}, None, None).promoted
    chance = PromotionRule("fd_cxr_class_ddpm", (), must_beat=(("cond_acc_class_ddpm", "cond_acc_class_ddpm_chance"),))
    assert not decide(
        chance,
        "1",
        {"fd_cxr_class_ddpm": 5.0, "cond_acc_class_ddpm": 1 / 6, "cond_acc_class_ddpm_chance": 1 / 6},
        None,
        None,
    ).promoted
    lower = promotion.against_baselines((("mae_x", "mae_y"),), {"mae_x": 0.1, "mae_y": 0.2})
    assert lower[0].beaten  # lower is better for MAE
    assert not promotion.against_baselines((("psnr_a", "psnr_b"),), {"psnr_b": 1.0})[0].beaten  # missing figure


def test_asking_for_a_champion_that_does_not_exist_says_why(registry, tmp_path, monkeypatch):
    version = registry()
    decision = decide(GATED, version, {"psnr_sr_x4_ddim": 14.0, "psnr_sr_x4_bicubic": 22.6}, None, None)
    promotion.record_and_promote("cxr-test-model", decision, "split-a")
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow.get_tracking_uri())
    with pytest.raises(FileNotFoundError, match="v1 was not promoted because it does not beat its classical baseline"):
        model_source.resolve_model("cxr-test-model")
    assert model_source.resolve_model("cxr-test-model", alias="challenger").exists()


def test_a_champion_scored_on_another_split_is_downloaded_and_evaluated_again(registry, tmp_path):
    from cxr_pipeline.evaluation.challenge import challenge_champion
    from cxr_pipeline.evaluation.outcome import PromotionPolicy
    from cxr_pipeline.model_record import ModelRecord

    policy = PromotionPolicy("psnr_sr_x{scale}_ddim", ("lr_consistency_psnr_sr_x{scale}_ddim",))
    rule = policy.rule((("psnr_sr_x4_ddim", "psnr_sr_x4_bicubic"),), scale=4)
    assert rule.metric == "psnr_sr_x4_ddim" and rule.guards == ("lr_consistency_psnr_sr_x4_ddim",)
    first, second = registry(), registry()
    record = lambda version: ModelRecord(tmp_path, "run", "cxr-test-model", version)
    metrics = {"psnr_sr_x4_ddim": 26.0, "lr_consistency_psnr_sr_x4_ddim": 40.0, "psnr_sr_x4_bicubic": 24.0}
    decided, _ = challenge_champion(
        record(first),
        metrics,
        rule,
        "split-a",
        lambda folder: pytest.fail("no champion yet: nothing to re-evaluate"),
        tmp_path / "cache",
    )
    with pytest.raises(MlflowException):  # the suite only decides: publishing writes the registry
        MlflowClient().get_model_version_by_alias("cxr-test-model", "champion")
    decided.publish()
    evaluated = []

    def evaluate(folder: str) -> dict[str, float]:
        evaluated.append(folder)
        return {**metrics, "psnr_sr_x4_ddim": 25.0}

    decided, section = challenge_champion(
        record(second),
        {**metrics, "psnr_sr_x4_ddim": 25.5},
        rule,
        "split-b",
        evaluate,
        tmp_path / "cache",
        log=lambda line: None,
    )
    decided.publish()
    decision = decided.decision
    assert len(evaluated) == 1 and Path(evaluated[0]).is_relative_to(tmp_path / "cache")
    assert decision.promoted and decision.champion["psnr_sr_x4_ddim"] == 25.0
    assert "promoted to champion" in section.text
    assert str(MlflowClient().get_model_version_by_alias("cxr-test-model", "champion").version) == second


def test_run_urls_open_the_model_training_view_wherever_a_ui_is_configured(monkeypatch):
    monkeypatch.delenv("CXR_MLFLOW_UI_URL", raising=False)
    server = mlflow_ui_url("http://mlflow.internal:5000/")  # a tracking server is its own UI
    assert (
        tracking.run_url(server, "3", "abc")
        == "http://mlflow.internal:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert mlflow_ui_url("sqlite:////tmp/mlflow.db") is None  # a local store without a UI: no link
    assert tracking.run_url(None, "3", "abc") is None
    monkeypatch.setenv("CXR_MLFLOW_UI_URL", "http://127.0.0.1:5055/")  # ./run.sh mlflow serves the SQLite store
    assert (
        tracking.experiment_url(mlflow_ui_url("sqlite:////tmp/mlflow.db"), "3")
        == "http://127.0.0.1:5055/#/experiments/3/runs?workflowType=machine_learning"
    )
    monkeypatch.setenv("CXR_DAGSTER_URL", "http://dagster.internal:8080/")
    assert dagster_ui_url() == "http://dagster.internal:8080"


def test_a_model_no_evaluation_promotes_is_named_by_its_own_validation(registry):
    client = MlflowClient()
    gate = (("val_detail", 0.9, "keeps fine detail"), ("val_ssim", 0.9, "reconstructs faithfully"))
    first = registry()
    assert promotion.accept("cxr-test-model", first, gate, {"val_detail": 0.95, "val_ssim": 0.96})
    second = registry()
    assert not promotion.accept("cxr-test-model", second, gate, {"val_detail": 0.80, "val_ssim": 0.97})
    aliases = {k: str(v) for k, v in client.get_registered_model("cxr-test-model").aliases.items()}
    assert aliases == {"champion": first, "challenger": second}
    reason = client.get_model_version("cxr-test-model", second).tags["promotion_reason"]
    assert reason == "does not pass its own validation: val_detail = 0.8000 < 0.9 (needed: keeps fine detail)"
    assert not promotion.accept("cxr-test-model", registry(), gate, {"val_detail": 0.95})  # a missing figure fails
