"""Registered models as MLflow pyfunc models: every kind loads through ``mlflow.pyfunc.load_model``
and answers what the library answers for the same seed; one is served by ``mlflow models serve``
on a loopback port and called over HTTP."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import save_file

from cxr_pipeline import kinds, model_source, serving, tracking
from cxr_pipeline.models import pipelines
from cxr_pipeline.models.classifier import (
    ClassifierConfig,
    ClassifierSettings,
    CxrClassifier,
    embed,
    load_classifier,
)
from cxr_pipeline.models.diffusion import Conditioning, ScheduleConfig, UNetConfig
from cxr_pipeline.models.implicit import ImplicitDecoder
from cxr_pipeline.models.model_folder import save_model
from cxr_pipeline.models.model_settings import (
    ArbitrarySRSettings,
    ClassDDPMSettings,
    DenoiserSettings,
    LatentSRSettings,
    TextLDMSettings,
    TrainingRecord,
)
from cxr_pipeline.models.report_encoder import ReportEncoder
from cxr_pipeline.models.vae import VaeConfig, load_vae, reconstruct
from cxr_pipeline.settings import default_tracking_uri
from tests.helpers.browser import free_port
from tests.helpers.folders import untrained
from tests.models.test_text_ldm import tiny_encoder

TINY_VAE = VaeConfig(block_out_channels=(8, 16), latent_channels=2, norm_num_groups=8)  # factor 2


def model_folders(root: Path) -> dict[str, Path]:
    """One untrained folder of each kind, written the way training writes them."""
    torch.manual_seed(0)
    vae = TINY_VAE.build().eval()
    folders = {}
    sr_unet = UNetConfig(8, 4, 2, block_out_channels=(16, 32), norm_num_groups=8)
    save_model(
        root / "sr",
        sr_unet.build(),
        untrained(
            "latent_sr_x2",
            sr_unet,
            ScheduleConfig(100, prediction_type="sample"),
            Conditioning(concat_channels=2, residual_scale=2.0),
            LatentSRSettings(scale=2, residual=True, vae_source="vae", scaling_factor=1.5),
        ),
        vae,
    )
    class_unet = UNetConfig(8, 2, 2, block_out_channels=(16, 32), norm_num_groups=8, num_class_embeds=4)
    save_model(
        root / "class",
        class_unet.build(),
        untrained(
            "class_ddpm",
            class_unet,
            ScheduleConfig(100, prediction_type="v_prediction"),
            Conditioning(num_classes=3, class_dropout=0.1),
            ClassDDPMSettings(
                classes=["a", "b", "c"],
                class_balance=True,
                guidance_scale=2.0,
                space="latent",
                vae_source="vae",
                scaling_factor=1.5,
            ),
        ),
        vae,
    )
    denoiser_unet = UNetConfig(16, 2, 1, block_out_channels=(16, 32), norm_num_groups=8, num_class_embeds=3)
    save_model(
        root / "denoiser",
        denoiser_unet.build(),
        untrained(
            "denoiser",
            denoiser_unet,
            ScheduleConfig(100, prediction_type="sample"),
            Conditioning(concat_channels=1, num_classes=2, class_dropout=0.1, residual_scale=3.0),
            DenoiserSettings(
                doses=[1000.0, 3000.0], dose_conditioning=True, sampling_strength=0.4, crop=None, residual=True
            ),
        ),
    )
    arbitrary_unet = UNetConfig(8, 4, 2, block_out_channels=(16, 32), norm_num_groups=8, class_embed_type="timestep")
    save_model(
        root / "arbitrary",
        arbitrary_unet.build(),
        untrained(
            "arbitrary_sr",
            arbitrary_unet,
            ScheduleConfig(100, prediction_type="sample"),
            Conditioning(concat_channels=2, residual_scale=2.0),
            ArbitrarySRSettings(
                scale_min=1.0,
                scale_max=4.0,
                draws_per_image=6,
                draws_by_area=True,
                degradation_mix=True,
                pair_seed=0,
                residual=True,
                decoder_min_ratio=0.75,
                decoder_run="none",
                vae_source="vae",
                scaling_factor=1.5,
            ),
        ),
        vae,
    )
    ImplicitDecoder.from_vae(vae, (16, 16)).head.save_pretrained(str(root / "arbitrary" / "head"))
    vae.save_pretrained(str(root / "vae"))
    folders.update(
        sr=root / "sr",
        arbitrary=root / "arbitrary",
        class_model=root / "class",
        denoiser=root / "denoiser",
        vae=root / "vae",
    )
    config = ClassifierConfig()
    (root / "classifier").mkdir()
    save_file(
        {k: v.contiguous() for k, v in CxrClassifier(config, 3).state_dict().items()},
        root / "classifier" / "model.safetensors",
    )
    (root / "classifier" / "classifier.json").write_text(
        ClassifierSettings(
            config=config,
            classes=["a", "b", "c"],
            image_size=64,
            num_features=config.widths[-1],
            metrics={},
            training=TrainingRecord(step=0, data_hash="none", train={}),
        ).to_json()
    )
    folders["classifier"] = root / "classifier"
    encoder = tiny_encoder(root / "report_encoder")
    text_unet = UNetConfig(8, 2, 2, block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=32)
    save_model(
        root / "text",
        text_unet.build(),
        untrained(
            "text_ldm",
            text_unet,
            ScheduleConfig(100, prediction_type="v_prediction"),
            Conditioning(text=True, text_dropout=0.1),
            TextLDMSettings(
                guidance_scale=3.0,
                text_dropout=0.1,
                balance=True,
                trainable_encoder_layers=0,
                vae_source="vae",
                encoder_source="report_encoder",
                text_length=16,
                train_reports=0,
                scaling_factor=1.5,
            ),
        ),
        vae,
    )
    encoder.save_pretrained(root / "text" / "text_encoder")
    folders.update(text=root / "text", report_encoder=root / "report_encoder")
    return folders


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Each folder logged and registered as a pyfunc model in a real SQLite store."""
    root = tmp_path_factory.mktemp("serving")
    uri = default_tracking_uri(root)
    (root / "mlflow").mkdir()
    experiment = tracking.ensure_experiment(uri, "serving-test", root / "mlflow" / "artifacts")
    folders = model_folders(root / "folders")
    versions = {}
    with mlflow.start_run(experiment_id=experiment):
        for key, folder in folders.items():
            versions[key] = serving.log_pyfunc(folder, f"cxr-test-{key.replace('_', '-')}").registered_model_version
    yield uri, folders, versions
    mlflow.set_tracking_uri(None)


def load(uri: str, key: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.pyfunc.load_model(f"models:/cxr-test-{key.replace('_', '-')}/1")


def test_kinds_are_read_from_the_folders_and_a_foreign_folder_is_refused(registered, tmp_path):
    _, folders, versions = registered
    assert [
        kinds.folder_kind_name(folders[k])
        for k in ("sr", "class_model", "denoiser", "vae", "classifier", "text", "report_encoder")
    ] == ["latent_sr_x2", "class_ddpm", "denoiser", "vae", "classifier", "text_ldm", "report_encoder"]
    assert set(map(str, versions.values())) == {"1"}
    with pytest.raises(ValueError, match="not a model folder"):
        kinds.folder_kind_name(tmp_path)


def test_super_resolution_through_pyfunc_matches_the_library(registered):
    uri, folders, _ = registered
    model = load(uri, "sr")
    low = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    served = model.predict(low, params={"seed": 3, "num_inference_steps": 4})
    expected = pipelines.LatentSuperResolution.from_pretrained(folders["sr"], "cpu")(
        torch.from_numpy(low), generator=3, num_inference_steps=4
    )
    assert served.shape == (2, 1, 16, 16)
    np.testing.assert_array_equal(served, expected.numpy())
    schema = {p.name: p.default for p in model.metadata.get_params_schema().params}
    assert schema == {"seed": 0, "num_inference_steps": 50, "strength": 1.0}


def test_arbitrary_scale_super_resolution_through_pyfunc_takes_the_scale_as_a_param(registered):
    uri, folders, _ = registered
    model = load(uri, "arbitrary")
    low = np.random.default_rng(4).random((2, 1, 6, 6), dtype=np.float32)
    served = model.predict(low, params={"seed": 1, "num_inference_steps": 3, "scale": 2.5})
    expected = pipelines.ArbitraryScaleSuperResolution.from_pretrained(folders["arbitrary"], "cpu")(
        torch.from_numpy(low), scale=2.5, generator=1, num_inference_steps=3
    )
    assert served.shape == (2, 1, 15, 15)  # off the latent grid: rendered by the implicit decoder
    np.testing.assert_array_equal(served, expected.numpy())
    schema = {p.name: p.default for p in model.metadata.get_params_schema().params}
    assert schema == {"seed": 0, "num_inference_steps": 50, "strength": 1.0, "scale": 2.0}


def test_class_model_and_denoiser_through_pyfunc_match_the_library(registered):
    uri, folders, _ = registered
    images = load(uri, "class_model").predict(
        np.array([0, 2, 1]), params={"seed": 1, "num_inference_steps": 3, "guidance_scale": 1.5}
    )
    generator = pipelines.ClassConditionalGenerator.from_pretrained(folders["class_model"], "cpu")
    np.testing.assert_array_equal(
        images, generator([0, 2, 1], generator=1, num_inference_steps=3, guidance_scale=1.5).numpy()
    )
    default_guidance = load(uri, "class_model").predict(np.array([0]), params={"seed": 1, "num_inference_steps": 3})
    np.testing.assert_array_equal(
        default_guidance, generator([0], generator=1, num_inference_steps=3).numpy()
    )  # the saved 2.0
    noisy = np.random.default_rng(1).random((2, 1, 16, 16), dtype=np.float32)
    restored = load(uri, "denoiser").predict(noisy, params={"seed": 0, "num_inference_steps": 5, "dose": 3000.0})
    denoiser = pipelines.LowDoseDenoiser.from_pretrained(folders["denoiser"], "cpu")
    np.testing.assert_array_equal(
        restored, denoiser(torch.from_numpy(noisy), generator=0, num_inference_steps=5, dose=3000.0).numpy()
    )


def test_text_model_and_report_encoder_through_pyfunc_take_report_text(registered):
    import pandas as pd

    uri, folders, _ = registered
    reports = ["Moderate right pleural effusion.", "The lungs are clear. No pneumothorax."]
    images = load(uri, "text").predict(
        pd.DataFrame({"report": reports}), params={"seed": 2, "num_inference_steps": 3, "guidance_scale": 2.0}
    )
    generator = pipelines.TextConditionalGenerator.from_pretrained(folders["text"], "cpu")
    assert images.shape == (2, 1, 16, 16)
    np.testing.assert_array_equal(
        images, generator(reports, generator=2, num_inference_steps=3, guidance_scale=2.0).numpy()
    )
    assert load(uri, "text").metadata.get_input_schema().input_names() == ["report"]
    pooled = load(uri, "report_encoder").predict(pd.DataFrame({"report": reports}))
    expected = ReportEncoder.from_pretrained(folders["report_encoder"]).encode(reports).pooled().numpy()
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)


def test_vae_and_classifier_through_pyfunc_match_the_library(registered):
    uri, folders, _ = registered
    images = np.random.default_rng(2).random((3, 1, 16, 16), dtype=np.float32)
    np.testing.assert_array_equal(
        load(uri, "vae").predict(images), reconstruct(load_vae(folders["vae"]), torch.from_numpy(images)).numpy()
    )
    probabilities = load(uri, "classifier").predict(images)
    expected = embed(load_classifier(folders["classifier"], "cpu")[0], torch.from_numpy(images))[1]
    assert probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6)
    with pytest.raises(Exception, match="does not match expected shape"):
        load(uri, "vae").predict(np.zeros((2, 3, 16, 16), np.float32))  # RGB: a clear error


def test_a_downloaded_version_is_the_model_folder_inside_the_pyfunc_model(registered, tmp_path):
    uri, folders, _ = registered
    mlflow.set_tracking_uri(uri)
    folder = model_source.download_model("cxr-test-sr", "1", tmp_path / "download")
    assert (folder / "model.json").exists() and (folder / "vae").is_dir()
    assert (tmp_path / "download" / "MLmodel").exists()
    assert MlflowClient().get_model_version("cxr-test-sr", "1").source.startswith("models:/")


def test_mlflow_models_serve_answers_over_http(registered):
    uri, folders, _ = registered
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "models",
        "serve",
        "-m",
        "models:/cxr-test-sr/1",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        "1",
    ]
    # mlflow starts uvicorn by name: the environment's bin folder on PATH, as an activated venv has it
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    server = subprocess.Popen(
        command,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"the server did not start: {server.stderr.read().decode()[-2000:] if server.poll() is not None else 'timeout'}"
                )
            time.sleep(0.5)
        low = np.random.default_rng(4).random((1, 1, 8, 8), dtype=np.float32)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            method="POST",
            headers={"Content-Type": "application/json"},
            data=json.dumps({"inputs": low.tolist(), "params": {"seed": 2, "num_inference_steps": 3}}).encode(),
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = np.asarray(json.loads(response.read())["predictions"], dtype=np.float32)
        expected = pipelines.LatentSuperResolution.from_pretrained(folders["sr"], "cpu")(
            torch.from_numpy(low), generator=2, num_inference_steps=3
        )
        np.testing.assert_allclose(answer, expected.numpy(), atol=1e-6)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_every_registered_requirement_is_pinned_to_the_installed_version(registered):
    from importlib.metadata import version

    uri, _, _ = registered
    mlflow.set_tracking_uri(uri)
    for key in ("sr", "class_model", "text"):
        requirements_file = mlflow.pyfunc.get_model_dependencies(f"models:/cxr-test-{key.replace('_', '-')}/1")
        pins = [line.strip() for line in Path(requirements_file).read_text().splitlines() if line.strip()]
        pinned = dict(line.split("==") for line in pins if not line.startswith("-"))
        assert set(serving.REQUIREMENTS) <= set(pinned), pins
        for name, pin in pinned.items():
            assert pin == version(name).split("+")[0], (name, pin, version(name))
        info = mlflow.models.get_model_info(f"models:/cxr-test-{key.replace('_', '-')}/1")
        assert info.signature is not None and info.saved_input_example_info is not None
    assert "torch==" + version("torch").split("+")[0] in serving.pinned_requirements()


def test_models_and_runs_uris_load_and_a_missing_one_says_what_exists(registered, tmp_path, monkeypatch):
    uri, folders, _ = registered
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    client = MlflowClient(tracking_uri=uri)
    client.set_registered_model_alias("cxr-test-class-model", "challenger", "1")
    run_id = client.get_model_version("cxr-test-sr", "1").run_id
    by_version = model_source.resolve_model("models:/cxr-test-sr/1", tracking_uri=uri)
    by_alias = model_source.resolve_model("models:/cxr-test-class-model@challenger", tracking_uri=uri)
    by_run = model_source.resolve_model(f"runs:/{run_id}/model", tracking_uri=uri)  # log_pyfunc's name
    assert (by_version / "model.json").read_text() == (folders["sr"] / "model.json").read_text()
    assert (by_alias / "model.json").read_text() == (folders["class_model"] / "model.json").read_text()
    assert kinds.folder_kind_name(by_run) in {kinds.folder_kind_name(f) for f in folders.values()}
    with pytest.raises(FileNotFoundError, match="logged no 'weights'"):
        model_source.resolve_model(f"runs:/{run_id}/weights", tracking_uri=uri)
    generator = pipelines.ClassConditionalGenerator.from_pretrained(by_alias, "cpu")
    assert generator([0], num_inference_steps=2).shape == (1, 1, 16, 16)
    with pytest.raises(FileNotFoundError, match=r"no version 7 .*holds version\(s\) 1"):
        model_source.resolve_model("models:/cxr-test-sr/7", tracking_uri=uri)
    with pytest.raises(FileNotFoundError, match="alias 'nightly'"):
        model_source.resolve_model("models:/cxr-test-sr@nightly", tracking_uri=uri)
    with pytest.raises(FileNotFoundError, match="no run"):
        model_source.resolve_model("runs:/0123456789abcdef/model", tracking_uri=uri)
    with pytest.raises(ValueError, match="version number or an alias"):
        model_source.resolve_model("models:/cxr-test-sr/latest-ish", tracking_uri=uri)


def test_pipelines_take_diffusers_argument_names_and_the_old_ones_warn(registered):
    _, folders, _ = registered
    generator = pipelines.ClassConditionalGenerator.from_pretrained(folders["class_model"], "cpu")
    assert pipelines.CxrPipeline.__name__ != "DiffusionPipeline"  # diffusers' own name is not shadowed
    new = generator([0, 2], num_inference_steps=3, guidance_scale=1.5, generator=4)
    with pytest.warns(FutureWarning, match="is deprecated") as caught:
        old = generator([0, 2], steps=3, guidance=1.5, seed=4)
    assert sorted(str(w.message).split("=")[0] for w in caught) == ["guidance", "seed", "steps"]
    assert all(w.filename == __file__ for w in caught)  # the warning points at the caller
    torch.testing.assert_close(new, old, rtol=0, atol=0)
    seeded = generator([0, 2], num_inference_steps=3, generator=torch.Generator().manual_seed(4))
    again = generator([0, 2], num_inference_steps=3, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(seeded, again, rtol=0, atol=0)
    output = generator([1], num_inference_steps=2, return_dict=True)
    assert output.images.shape == (1, 1, 16, 16) and torch.equal(output[0], output.images)
    with pytest.raises(TypeError, match="'sampling_steps'"):
        generator([1], sampling_steps=2)
    sr = pipelines.LatentSuperResolution.from_pretrained(folders["sr"], "cpu")
    low = torch.rand(1, 1, 8, 8)
    with pytest.raises(TypeError, match="'guidance'"):  # SR has no guidance to rename to
        sr(low, num_inference_steps=2, guidance=2.0)
    torch.testing.assert_close(sr(low, num_inference_steps=2, generator=1), sr(low, num_inference_steps=2, generator=1))


def test_sampling_shows_a_progress_bar_where_someone_watches_and_logs_the_load(registered, capsys, monkeypatch, caplog):
    import logging

    from cxr_pipeline.models import diffusion

    _, folders, _ = registered
    with caplog.at_level(logging.INFO, logger="cxr_pipeline"):
        generator = pipelines.ClassConditionalGenerator.from_pretrained(folders["class_model"], "cpu")
    assert any("loaded ClassConditionalGenerator" in r.getMessage() for r in caplog.records)
    monkeypatch.delenv(diffusion.PROGRESS_BARS_ENV, raising=False)
    generator([0], num_inference_steps=3)
    assert "sampling" not in capsys.readouterr().err  # not a terminal (pytest captures): no bar
    monkeypatch.setenv(diffusion.PROGRESS_BARS_ENV, "1")
    generator([0], num_inference_steps=3)
    assert "ddim sampling" in capsys.readouterr().err and diffusion.progress_bars_enabled()
    generator.set_progress_bar_config(disable=True)  # diffusers' switch wins over the environment
    try:
        generator([0], num_inference_steps=3)
        assert "sampling" not in capsys.readouterr().err
    finally:
        generator.set_progress_bar_config(disable=None)


def test_the_app_takes_a_model_uri_and_refuses_one_of_another_kind(registered, tmp_path):
    from cxr_pipeline.app import registry
    from cxr_pipeline.settings import profile_from_environment

    uri, folders, _ = registered
    context = registry.AppContext(tmp_path, uri, profile_from_environment())
    located = registry.locate(kinds.CLASS_DDPM, context, "models:/cxr-test-class-model/1")
    assert located.version == "1" and (located.folder / "model.json").exists()
    assert located.folder.is_relative_to(tmp_path)  # downloaded under the app's work folder
    with pytest.raises(registry.ModelUnavailable, match="holds a latent_sr"):
        registry.locate(kinds.CLASS_DDPM, context, "models:/cxr-test-sr/1")
    with pytest.raises(registry.ModelUnavailable, match="no version 9"):
        registry.locate(kinds.CLASS_DDPM, context, "models:/cxr-test-class-model/9")
