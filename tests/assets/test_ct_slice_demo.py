"""The main job on CT slices in the single-slice layout, with nothing configured: the layout is
recognized, the classes are the dataset's own, CT's low-dose physics makes the denoiser's pairs,
the restoration family trains and is evaluated, and the text family, with no reports to learn
from, is skipped with its reason while the run succeeds. At the ``smoke`` job's tiny budget: it
checks the path, not quality (bench/ and the closing notes hold the demo-budget figures)."""

import json
from pathlib import Path

import pandas as pd
import pytest

from cxr_pipeline.data.demo.ct_slices import CtDemoSpec, generate_ct_demo
from cxr_pipeline.model_record import current_model
from cxr_pipeline.models.classifier import ClassifierSettings
from cxr_pipeline.models.model_folder import describe
from cxr_pipeline.models.model_settings import ClassDDPMSettings
from cxr_pipeline.settings import WorkPaths
from definitions import defs
from tests.helpers.main_job import run_main_job_tiny, settings_for

pytestmark = pytest.mark.slow  # the main job end to end at the tiny budget

TEXT_FAMILY = {"report_encoder", "text_ldm", "text_generation_evaluation", "synthetic_utility"}
CLASSES = ["COVID19", "Effusion", "Normal"]


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "CXR_HOME", "CXR_DATA_DIR", "CXR_PROFILE", "CXR_DEMO"):
        monkeypatch.delenv(name, raising=False)


def test_the_main_job_trains_what_ct_slices_support_and_skips_the_text_family(tmp_path):
    data = tmp_path / "data"
    generate_ct_demo(data, CtDemoSpec(patients=30, source_size=128), workers=2)
    result = run_main_job_tiny(settings_for(tmp_path, data))
    assert result.success
    materialized = {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()}
    every_asset = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert materialized == every_asset - TEXT_FAMILY
    skipped = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SKIPPED"}
    assert skipped == TEXT_FAMILY - {"report_encoder"}  # the encoder ran, found no reports and said so
    observed = [e for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    reasons = {
        e.asset_key.to_user_string(): e.event_specific_data.asset_observation.metadata["skipped"].value
        for e in observed
        if "skipped" in e.event_specific_data.asset_observation.metadata
    }
    assert list(reasons) == ["report_encoder"]
    assert reasons["report_encoder"].startswith("no reports in the training split")

    paths = WorkPaths(tmp_path / "home")
    metadata = pd.read_parquet(paths.metadata)
    assert set(metadata["modality"]) == {"CT"} and set(metadata["label_source"]) == {"class_folders"}
    assert json.loads((paths.labels / "classes.json").read_text())["classes"] == CLASSES
    produced = {k: v.value for k, v in result.asset_materializations_for_node("image_metadata")[0].metadata.items()}
    assert produced["classes"] == CLASSES and produced["class_vocabulary"] == "dataset"
    # the class models condition on and predict the dataset's own classes, by name
    class_model = describe(current_model(paths, "class_ddpm").model_dir).settings_as(ClassDDPMSettings)
    assert list(class_model.classes) == CLASSES
    classifier_json = (current_model(paths, "classifier").model_dir / "classifier.json").read_text()
    assert list(ClassifierSettings.from_json(classifier_json).classes) == CLASSES
    # CT's own low-dose physics made the denoiser's pairs
    pairs = pd.concat(pd.read_parquet(p) for p in Path(paths.pairs).glob("lowdose_*/index.parquet"))
    assert set(pairs["noise_model"]) == {"ct"}
    # the restoration family was evaluated against its baselines
    checks = {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}
    for evaluation in ("sr_evaluation", "arbitrary_sr_evaluation", "denoising_evaluation", "generation_evaluation"):
        assert evaluation in materialized and evaluation in checks
