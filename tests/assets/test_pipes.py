"""Training out of process through Dagster Pipes: torchrun with two data-parallel ranks, then a
plain subprocess resuming the same run, reporting logs, MLflow curves and metadata back."""

import json
from pathlib import Path

import dagster as dg
import pytest
import torch
from mlflow import MlflowClient

from assets import diffusion, ingestion, labels
from cxr_pipeline.inference import generate
from cxr_pipeline.kinds import TrainingJob, run_job
from cxr_pipeline.settings import default_tracking_uri
from resources import CxrSettings, MlflowTracking

pytestmark = pytest.mark.slow  # trainings launched through Dagster Pipes and torchrun

UPSTREAM = [ingestion.raw_images, ingestion.ingested_images, labels.label_table, labels.image_metadata]
# Pixel space: these tests are about where training runs, and need no VAE upstream.
TINY = {
    "steps": 4,
    "batch_size": 4,
    "eval_every": 4,
    "checkpoint_every": 2,
    "log_every": 2,
    "warmup_steps": 1,
    "block_out_channels": [8, 16],
    "space": "pixel",
}


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch):
    for name in ("CXR_HOME", "CXR_DATA_DIR", "CXR_PROFILE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def labelled(small_demo, tmp_path):
    """A work folder with ingested images, labels and splits; the resources a launch needs."""
    settings = CxrSettings(home=str(tmp_path / "home"), data_dir=str(small_demo), workers=1)
    resources = {
        "settings": settings,
        "mlflow_tracking": MlflowTracking(settings=settings),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize(UPSTREAM, resources=resources, instance=instance).success
    return settings, resources, instance


def _materialize(resources, launcher: str, instance, **config):
    return dg.materialize(
        [diffusion.class_ddpm],
        resources=resources,
        instance=instance,
        raise_on_error=False,
        selection=[diffusion.class_ddpm.key],
        run_config={"ops": {"class_ddpm": {"config": {**TINY, "launcher": launcher, **config}}}},
    )


def test_torchrun_through_pipes_then_a_subprocess_resumes_the_same_run(labelled):
    settings, resources, instance = labelled

    result = _materialize(resources, "torchrun", instance, processes=2)
    assert result.success
    produced = result.asset_materializations_for_node("class_ddpm")[0].metadata
    # Reported by the worker's rank 0 through Pipes, merged with what the asset registered.
    assert produced["launcher"].value == "torchrun" and produced["processes"].value == 2
    assert produced["train_loss"].value > 0 and produced["training_wall_s"].value > 0
    assert produced["registered_model"].value == "cxr-class-ddpm v1" and produced["steps"].value == 4
    assert produced["resumed_from_step"].value == -1 and "samples" in produced
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("on 2 process(es)" in m for m in messages)
    assert any(m.startswith("step 4/4 loss") for m in messages), "progress streamed back through Pipes"

    # The worker logged the curves into the run the asset opened; the asset logged the samples.
    client = MlflowClient(default_tracking_uri(settings.resolved_home()))
    run_id = produced["mlflow_run_id"].value
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [2, 4]
    assert client.get_run(run_id).data.params["launcher"] == "torchrun"
    # the preview grids: one image key with a step each (the MLflow run page's step slider)
    grids = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert grids and all(Path(g).name.startswith("samples+step+") for g in grids)

    # The launch is on disk as a job anyone can rerun by hand, and the model it produced samples.
    launch = settings.paths().models / "launches" / result.run_id / "class_ddpm"
    job = TrainingJob.from_json((launch / "job.json").read_text())
    assert job.model == "class_ddpm" and job.train.steps == 4 and job.unet.block_out_channels == (8, 16)
    pointer = json.loads(settings.paths().model_pointer("class_ddpm").read_text())
    images = generate(pointer["model_dir"], [0, 1], num_inference_steps=3, device="cpu")
    assert images.shape == (2, 1, job.unet.sample_size, job.unet.sample_size) and torch.isfinite(images).all()

    # Same job in a plain subprocess: the run folder is the same, so it resumes (here: at the end).
    again = _materialize(resources, "subprocess", instance)
    assert again.success
    resumed = again.asset_materializations_for_node("class_ddpm")[0].metadata
    assert resumed["processes"].value == 1 and resumed["resumed_from_step"].value == 4
    assert resumed["registered_model"].value == "cxr-class-ddpm v2"


def test_a_batch_that_does_not_split_over_the_ranks_fails_before_launching(labelled):
    settings, resources, instance = labelled
    result = _materialize(resources, "torchrun", instance, processes=3)
    assert not result.success
    failure = result.failure_data_for_node("class_ddpm")
    assert "positive multiple of processes 3" in failure.user_failure_data.description
    assert not (settings.paths().models / "launches").exists()
    assert len([e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]) == 0


def test_a_training_job_survives_its_json_and_names_its_runs_folder(tmp_path):
    from cxr_pipeline import kinds
    from cxr_pipeline.kinds.base import ModelInputs
    from cxr_pipeline.models.diffusion import UNetConfig

    recipe = kinds.DENOISER.recipe(steps=7, batch_size=6, sampling_strength=0.3, crop=None)
    job = TrainingJob(
        "denoiser",
        str(tmp_path),
        UNetConfig(64, 2, 1, (16, 32, 64), num_class_embeds=4, norm_num_groups=8),
        recipe,
        "abc",
        ModelInputs(warm_start_from="/elsewhere/model"),
    )
    back = TrainingJob.from_json(job.to_json())
    assert back == job and isinstance(back.recipe, kinds.DENOISER.recipe) and back.recipe.sampling_strength == 0.3
    assert (job.train.steps, job.schedule.beta_schedule) == (7, "squaredcos_cap_v2")
    assert job.runs_root == tmp_path / "models" / "denoiser"
    with pytest.raises(ValueError, match=r"needs inputs\.vae_dir"):
        job.input_dir("vae_dir")
    with pytest.raises(ValueError, match="unknown model kind 'unet'"):
        run_job(TrainingJob("unet", str(tmp_path), job.unet, recipe, "abc"))
    with pytest.raises(ValueError, match="vae is trained in its asset's process"):
        run_job(TrainingJob("vae", str(tmp_path), job.unet, recipe, "abc"))
