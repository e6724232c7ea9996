"""pairs -> VAE -> latents through Dagster, tracked in a real SQLite MLflow store."""

import json

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from assets import ingestion, labels, models, pairs
from cxr_pipeline import model_source
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.models.batches import StoreImages
from cxr_pipeline.models.vae import evaluate_reconstruction, load_vae
from cxr_pipeline.settings import default_tracking_uri
from resources import CxrSettings, MlflowTracking

pytestmark = pytest.mark.slow  # every model asset materialized and trained for real

UPSTREAM = [ingestion.raw_images, ingestion.ingested_images, labels.label_table, labels.image_metadata]
STAGES = [pairs.sr_pairs, pairs.low_dose_pairs, models.vae, models.latents]
TINY_VAE = {
    "steps": 6,
    "batch_size": 4,
    "checkpoint_every": 3,
    "log_every": 2,
    "warmup_steps": 2,
    "block_out_channels": [8, 16, 16],
}


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch):
    for name in ("CXR_HOME", "CXR_DATA_DIR", "CXR_PROFILE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


def test_pairs_vae_latents_with_mlflow_lineage(small_demo, tmp_path):
    settings = CxrSettings(home=str(tmp_path / "home"), data_dir=str(small_demo), workers=1)
    resources = {"settings": settings, "mlflow_tracking": MlflowTracking(settings=settings)}
    assert dg.materialize(UPSTREAM, resources=resources).success
    resources["mlflow_tracking"] = MlflowTracking(
        settings=settings, mlflow_ui_url="http://127.0.0.1:5055", dagster_url="http://127.0.0.1:3033"
    )
    result = dg.materialize(
        STAGES,
        resources=resources,
        selection=[a.key for a in STAGES],
        run_config={"ops": {"vae": {"config": TINY_VAE}}},
    )
    assert result.success
    produced = result.asset_materializations_for_node("vae")[0].metadata
    run_id = produced["mlflow_run_id"].value
    assert produced["registered_model"].value == "cxr-vae v1"

    mlflow.set_tracking_uri(default_tracking_uri(settings.resolved_home()))
    run = mlflow.get_run(run_id)
    assert run.data.tags["dagster.run_id"] == result.run_id
    assert run.data.tags["dagster.asset_key"] == "vae"
    # the way back to Dagster, and the way into MLflow's model-training view with the SQLite store
    assert run.data.tags["dagster.run_url"] == f"http://127.0.0.1:3033/runs/{result.run_id}"
    assert result.run_id[:8] in run.data.tags["mlflow.note.content"]
    assert produced["mlflow_run_url"].value == (
        f"http://127.0.0.1:5055/#/experiments/{run.info.experiment_id}/runs/{run_id}?workflowType=machine_learning"
    )
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the model-training view
    # registered as a pyfunc model: MLflow users load it the usual way
    reconstruction = mlflow.pyfunc.load_model("models:/cxr-vae/1").predict(np.full((1, 1, 64, 64), 0.5, np.float32))
    assert reconstruction.shape == (1, 1, 64, 64)
    assert run.data.tags["data.split_hash"] and run.data.params["train.steps"] == "6"
    # what it learnt from, on the run, the registered version and the pyfunc model
    assert run.data.tags["data.synthetic_demo"] == "True" and "synthetic demo data" in run.data.tags["data.summary"]
    lineage = mlflow.models.get_model_info("models:/cxr-vae/1").metadata["provenance"]
    assert lineage["synthetic_demo"] and lineage["splits"]["train"]["images"] == int(run.data.tags["data.train_images"])
    # no evaluation promotes the VAE: its own validation names it champion, or challenger when it
    # falls short (six steps do), with the reason on the version
    client = MlflowClient()
    version = client.get_model_version("cxr-vae", "1")
    aliases = {k: str(v) for k, v in client.get_registered_model("cxr-vae").aliases.items()}
    assert "own validation" in version.tags["promotion_reason"]
    assert aliases == ({"champion": "1"} if version.tags["promotion_decision"] == "promoted" else {"challenger": "1"})
    # the latents step fitted the input distribution new inputs are scored against
    latents = result.asset_materializations_for_node("latents")[0].metadata
    assert latents["ood_threshold"].value > latents["ood_val_median"].value > 0
    history = MlflowClient().get_metric_history(run_id, "train_loss")
    assert [m.step for m in history] == [2, 4, 6]
    assert {"val_psnr", "val_ssim", "val_mse", "final_val_psnr"} <= run.data.metrics.keys()

    # The registered version loads back and reproduces the logged validation PSNR.
    folder = model_source.download_model("cxr-vae", "1", tmp_path / "download")
    model = load_vae(folder)
    metadata = pd.read_parquet(settings.paths().metadata)
    val = StoreImages(ImageStore(settings.paths().image_store), metadata[metadata["split"] == "val"])
    assert evaluate_reconstruction(model, val)["val_psnr"] == pytest.approx(
        run.data.metrics["final_val_psnr"], abs=1e-4
    )

    # Latents: every split, HR and LR per scale, with the scaling factor.
    summary = json.loads((settings.paths().latents / "latents.json").read_text())
    assert summary["scales"] == [2, 4] and summary["latent_shape"] == [4, 16, 16]
    for split, count in summary["splits"].items():
        hr = np.load(settings.paths().latents / f"hr_{split}.npy")
        lr = np.load(settings.paths().latents / f"lr_x4_{split}.npy")
        assert hr.shape == lr.shape == (count, 4, 16, 16)
    train = np.load(settings.paths().latents / "hr_train.npy")
    assert (train * summary["scaling_factor"]).std() == pytest.approx(1.0, rel=1e-3)
    vae_pointer = json.loads((settings.paths().latents / "vae.json").read_text())
    assert vae_pointer["mlflow_run_id"] == run_id
