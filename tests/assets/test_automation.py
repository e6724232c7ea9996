"""Jobs, the retraining schedule and the raw-data sensor, evaluated with Dagster's testing helpers."""

import os

import dagster as dg
import pytest

import jobs
from assets import diffusion, evaluation, ingestion, labels, models, pairs, text
from definitions import defs
from resources import CxrSettings


def test_jobs_cover_the_units_of_work():
    repository = defs.get_repository_def()
    names = {job.name for job in repository.get_all_jobs()}
    assert {"all_assets", "ingestion", "training", "evaluation", "retrain_and_evaluate"} <= names
    graph = defs.resolve_asset_graph()

    def selected(job_name: str) -> set[str]:
        selection = defs.resolve_job_def(job_name).asset_layer.selected_asset_keys
        return {key.path[-1] for key in selection}

    assert selected("training") == {
        "sr_pairs",
        "low_dose_pairs",
        "vae",
        "latents",
        "latent_sr",
        "arbitrary_sr",
        "class_ddpm",
        "low_dose_denoiser",
        "report_encoder",
        "text_ldm",
        "cxr_classifier",
    }
    assert selected("evaluation") == {
        "sr_evaluation",
        "arbitrary_sr_evaluation",
        "denoising_evaluation",
        "generation_evaluation",
        "text_generation_evaluation",
        "synthetic_utility",
    }
    assert selected("retrain_and_evaluate") == selected("training") | selected("evaluation")
    assert selected("all_assets") == {key.path[-1] for key in graph.get_all_asset_keys()}


def test_heavy_steps_share_a_pool_and_only_training_retries():
    training = (
        models.vae,
        diffusion.latent_sr,
        diffusion.arbitrary_sr,
        diffusion.class_ddpm,
        diffusion.low_dose_denoiser,
        models.cxr_classifier,
        text.report_encoder,
        text.text_ldm,
        evaluation.synthetic_utility,
    )  # the utility experiment's classifiers resume from checkpoints too
    scoring = (
        evaluation.sr_evaluation,
        evaluation.arbitrary_sr_evaluation,
        evaluation.denoising_evaluation,
        evaluation.generation_evaluation,
        evaluation.text_generation_evaluation,
    )
    for asset in training + scoring:
        assert asset.op.pool == "cxr_training", asset.key
    for asset in training:
        assert asset.op.retry_policy.max_retries == 2, asset.key  # resumes from its checkpoint
    for asset in scoring:
        assert asset.op.retry_policy is None, asset.key  # deterministic: a retry would repeat the failure
    assert ingestion.raw_images.op.pool is None  # steps that replace no shared files are not throttled


def test_writers_of_shared_files_queue_in_one_pool():
    writers = (
        ingestion.ingested_images,
        labels.label_table,
        labels.image_metadata,
        pairs.sr_pairs,
        pairs.low_dose_pairs,
        models.latents,
    )
    for asset in writers:
        assert asset.op.pool == "cxr_work_folder", asset.key


def test_retraining_schedule_ships_stopped_weekly_and_is_configurable(monkeypatch):
    monkeypatch.delenv("CXR_RETRAIN_SCHEDULE", raising=False)
    monkeypatch.delenv("CXR_RETRAIN_CRON", raising=False)
    schedule = jobs.retraining_schedule()
    assert schedule.cron_schedule == "0 3 * * 0" and schedule.job_name == "retrain_and_evaluate"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    with dg.build_schedule_context(scheduled_execution_time=None) as context:
        requests = schedule.evaluate_tick(context).run_requests
    assert len(requests) == 1
    monkeypatch.setenv("CXR_RETRAIN_SCHEDULE", "on")
    monkeypatch.setenv("CXR_RETRAIN_CRON", "0 2 * * *")
    daily = jobs.retraining_schedule()
    assert daily.cron_schedule == "0 2 * * *" and daily.default_status == dg.DefaultScheduleStatus.RUNNING


def evaluate_sensor(settings: CxrSettings, cursor):
    with dg.build_sensor_context(cursor=cursor, resources={"settings": settings}) as context:
        result = jobs.raw_data_changed(context)
        return result, context.cursor


def test_sensor_launches_ingestion_once_per_change(tmp_path):
    data = tmp_path / "raw"
    data.mkdir()
    (data / "a.png").write_bytes(b"\x89PNG first")
    settings = CxrSettings(home=str(tmp_path / "home"), data_dir=str(data))

    first, cursor = evaluate_sensor(settings, None)
    assert isinstance(first, dg.RunRequest) and first.run_key == cursor
    assert first.tags["cxr/files"] == "1"

    same, same_cursor = evaluate_sensor(settings, cursor)
    assert isinstance(same, dg.SkipReason) and same_cursor == cursor

    (data / "b.dcm").write_bytes(b"DICM new")
    added, added_cursor = evaluate_sensor(settings, cursor)
    assert isinstance(added, dg.RunRequest) and added_cursor != cursor and added.tags["cxr/files"] == "2"

    path = data / "a.png"
    path.write_bytes(b"\x89PNG changed content")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    changed, _ = evaluate_sensor(settings, added_cursor)
    assert isinstance(changed, dg.RunRequest) and changed.run_key not in (cursor, added_cursor)


@pytest.mark.parametrize("data_dir", [None, "missing"])
def test_sensor_skips_without_a_data_folder(tmp_path, monkeypatch, data_dir):
    monkeypatch.delenv("CXR_DATA_DIR", raising=False)
    settings = CxrSettings(home=str(tmp_path / "home"), data_dir=str(tmp_path / data_dir) if data_dir else None)
    result, cursor = evaluate_sensor(settings, None)
    assert isinstance(result, dg.SkipReason) and cursor is None
