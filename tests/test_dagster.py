"""The Dagster layer, exercised for real: definitions load, assets materialize, checks judge."""

import dagster as dg
import pandas as pd
import pytest

from assets import ingestion
from cxr_pipeline.settings import WorkPaths
from definitions import defs
from resources import CxrSettings

INGESTION_DEFS = [
    ingestion.raw_images,
    ingestion.ingested_images,
    ingestion.rejected_share_within_limit,
    ingestion.every_input_accounted_for,
]


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch):
    for name in ("CXR_HOME", "CXR_DATA_DIR", "CXR_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def test_definitions_load_with_groups_jobs_and_checks():
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    groups = {spec.group_name for spec in defs.resolve_all_asset_specs()}
    assert groups == {"ingestion"}
    assert {"all_assets", "ingestion"} <= {job.name for job in repository.get_all_jobs()}
    check_names = {key.name for key in defs.resolve_asset_graph().asset_check_keys}
    assert check_names == {"rejected_share_within_limit", "every_input_accounted_for"}


def test_settings_fall_back_to_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CXR_DATA_DIR", str(tmp_path / "raw"))
    monkeypatch.setenv("CXR_PROFILE", "full")
    settings = CxrSettings()
    assert settings.paths().manifest == tmp_path / "home" / "ingestion" / "manifest.parquet"
    assert settings.raw_data_dir() == tmp_path / "raw" and not settings.uses_demo_data()
    assert settings.profile_spec().image_size == 256
    explicit = CxrSettings(home=str(tmp_path / "other"), profile="demo")
    assert explicit.resolved_home() == tmp_path / "other" and explicit.profile_spec().name == "demo"
    with pytest.raises(ValueError, match="unknown profile"):
        CxrSettings(profile="huge").profile_spec()


def test_ingestion_materializes_with_metadata_and_passing_checks(small_demo, tmp_path):
    settings = CxrSettings(home=str(tmp_path / "home"), data_dir=str(small_demo), workers=2)
    result = dg.materialize(INGESTION_DEFS, resources={"settings": settings})
    assert result.success
    materialization = result.asset_materializations_for_node("ingested_images")[0]
    metadata = materialization.metadata
    paths = WorkPaths(tmp_path / "home")
    manifest = pd.read_parquet(paths.manifest)
    rejected = pd.read_parquet(paths.rejected)
    assert metadata["accepted"].value == len(manifest) > 0
    assert metadata["rejected"].value == len(rejected) > 0
    assert metadata["manifest"].value == str(paths.manifest)
    assert "data:image/png;base64," in metadata["preview"].value
    assert len(metadata["content_hash"].value) == 16
    assert paths.ingestion_preview.exists()
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"rejected_share_within_limit": True, "every_input_accounted_for": True}

    # A second materialization decodes nothing and reports the same content hash.
    again = dg.materialize(INGESTION_DEFS, resources={"settings": settings})
    metadata_again = again.asset_materializations_for_node("ingested_images")[0].metadata
    assert metadata_again["decoded_this_run"].value == 0
    assert metadata_again["content_hash"].value == metadata["content_hash"].value


def test_rejected_share_check_fails_above_its_limit_and_blocks(small_demo, tmp_path):
    settings = CxrSettings(home=str(tmp_path / "home"), data_dir=str(small_demo), workers=1)
    result = dg.materialize(
        INGESTION_DEFS,
        resources={"settings": settings},
        run_config={"ops": {"ingested_images_rejected_share_within_limit": {"config": {"max_rejected_share": 0.01}}}},
        raise_on_error=False,
    )
    checks = {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}
    failed = checks["rejected_share_within_limit"]
    assert failed.passed is False
    assert failed.metadata["rejected_share"].value > 0.01
    assert failed.metadata["reason_duplicate"].value == 1


def test_accounting_check_fails_when_a_file_is_missing_from_both_lists(small_demo, tmp_path):
    settings = CxrSettings(home=str(tmp_path / "home"), data_dir=str(small_demo), workers=1)
    assert dg.materialize(INGESTION_DEFS, resources={"settings": settings}).success
    paths = settings.paths()
    manifest = pd.read_parquet(paths.manifest)
    pd.DataFrame(manifest.iloc[1:]).to_parquet(paths.manifest, index=False)  # lose one row
    result = ingestion.every_input_accounted_for(settings=settings)
    assert result.passed is False
    assert result.metadata["missing_count"].value == 1


def test_main_job_on_the_builtin_demo_dataset(tmp_path):
    """The README's main command, in process: demo generation, ingestion, checks."""
    home = tmp_path / "home"
    job = defs.resolve_job_def("all_assets")
    result = job.execute_in_process(resources={"settings": CxrSettings(home=str(home))})
    assert result.success
    raw = result.asset_materializations_for_node("raw_images")[0].metadata
    assert raw["source"].value == "built-in demo dataset"
    assert raw["patients"].value == 300
    assert 900 <= raw["nih_layout_images"].value + raw["dicom_images"].value <= 1100
    ingested = result.asset_materializations_for_node("ingested_images")[0].metadata
    assert ingested["accepted"].value == raw["nih_layout_images"].value + raw["dicom_images"].value
    assert ingested["image_size"].value == 64
    assert all(e.passed for e in result.get_asset_check_evaluations())
