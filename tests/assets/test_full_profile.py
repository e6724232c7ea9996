"""The ``full`` profile end to end: every asset and check of the main job at 256 px with the
profile's own VAE, UNets and encoder, on a small dataset in the real layouts (NIH PNGs and DICOM
at 512 px, OpenI reports), at the tiny budget of the ``smoke`` job (jobs/budgets.py). It asserts
shapes, registered versions and report files, not quality: a shape, memory or plumbing problem
at 256 px shows up here instead of in a user's first run."""

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cxr_pipeline.data.demo.dataset import DemoSpec, generate_demo_dataset
from cxr_pipeline.model_record import current_model
from cxr_pipeline.models.model_folder import describe
from cxr_pipeline.settings import WorkPaths, default_tracking_uri
from definitions import defs
from jobs.budgets import TINY_EVALUATION
from tests.helpers.main_job import run_main_job_tiny, settings_for

pytestmark = pytest.mark.slow  # the smoke job under the full profile, end to end

REGISTERED = {
    "cxr-vae",
    "cxr-feature-classifier",
    "cxr-latent-sr-x4",
    "cxr-class-ddpm",
    "cxr-lowdose-denoiser",
    "cxr-arbitrary-sr",
    "cxr-report-encoder",
    "cxr-text-ldm",
}
EVALUATIONS = (
    "sr_evaluation",
    "arbitrary_sr_evaluation",
    "denoising_evaluation",
    "generation_evaluation",
    "text_generation_evaluation",
    "synthetic_utility",
)


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "CXR_HOME", "CXR_DATA_DIR", "CXR_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def test_full_profile_materializes_every_asset_at_256_px(tmp_path):
    data = tmp_path / "data"
    generate_demo_dataset(data, DemoSpec(patients=16, source_size=512, dicom_share=0.1), workers=2)
    result = run_main_job_tiny(settings_for(tmp_path, data, profile="full"))
    assert result.success
    # every asset of the main job, and every check, ran
    materialized = {event.asset_key for event in result.get_asset_materialization_events()}
    assert materialized == set(defs.resolve_all_asset_keys()) and len(materialized) >= 20
    checks = result.get_asset_check_evaluations()
    blocking = [
        c
        for c in checks
        if c.check_name
        in (
            "every_input_accounted_for",
            "rejected_share_within_limit",
            "no_leakage_between_splits",
            "every_split_non_empty",
        )
    ]
    assert len(blocking) == 4 and all(c.passed for c in blocking)
    assert len(checks) >= 12

    def metadata(node: str) -> dict:
        return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}

    assert metadata("ingested_images")["image_size"] == 256
    # the full VAE: three blocks (a grid 4x coarser than 256 px), 8 latent channels
    assert metadata("latents")["latent_shape"] == [8, 64, 64]
    assert metadata("vae")["downsampling_factor"] == 4 and metadata("vae")["latent_channels"] == 8
    paths = WorkPaths(tmp_path / "home")
    unet = json.loads((current_model(paths, "class_ddpm").model_dir / "unet" / "config.json").read_text())
    assert unet["sample_size"] == 64 and unet["block_out_channels"] == [64, 128, 256, 512]
    # warm starts: the text model from the class model, the arbitrary-scale model from the fixed-scale x4 one
    for model, source in (("text_ldm", "class_ddpm"), ("arbitrary_sr", "latent_sr_x4")):
        record = describe(current_model(paths, model).model_dir).training
        assert record.warm_start_from == str(current_model(paths, source).model_dir), model
    client = MlflowClient(default_tracking_uri(paths.home))
    assert {m.name for m in client.search_registered_models()} == REGISTERED
    for name in REGISTERED:
        assert client.get_model_version(name, "1").tags["data.profile"] == "full"
    # evaluation reports, each saying how many images it scored and how they were drawn
    for asset in EVALUATIONS:
        produced = metadata(asset)
        text = Path(produced["report"]).read_text()
        assert text.count("Images scored:") == 1 and "test:" in text, asset
        assert "test:" in produced["images_scored"]
    # the tiny budget's cap, whole patients: at most the cap unless one patient alone is over it
    cap = TINY_EVALUATION["max_test_images"]
    assert 1 <= metadata("sr_evaluation")["test_images"] <= max(cap, _largest_patient(paths.metadata, "test"))


def _largest_patient(metadata_path, split: str) -> int:
    metadata = pd.read_parquet(metadata_path)
    return int(metadata[metadata["split"] == split]["patient_key"].value_counts().max())
