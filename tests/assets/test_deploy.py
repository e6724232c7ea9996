"""The production configuration loads: Definitions on the Kubernetes executor with GPU requests on
training steps, and an instance on PostgreSQL with queued runs launched as Kubernetes jobs."""

import importlib.util
import json
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.config import dagster_instance_config

from assets import models

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def load_production_definitions() -> dg.Definitions:
    spec = importlib.util.spec_from_file_location("production_definitions", DEPLOY / "definitions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.defs


def test_production_definitions_run_training_on_kubernetes_with_a_gpu():
    defs = load_production_definitions()
    dg.Definitions.validate_loadable(defs)
    for name in ("all_assets", "training", "evaluation", "retrain_and_evaluate"):
        assert defs.resolve_job_def(name).executor_def.name == "k8s"
    assert defs.resolve_job_def("ingestion").executor_def.name != "k8s"
    pod = json.loads(models.vae.op.tags["dagster-k8s/config"])
    gpu = pod["container_config"]["resources"]["limits"]["nvidia.com/gpu"]
    assert gpu == "1"
    assert "dagster-k8s/config" not in models.latents.op.tags  # light steps need no GPU
    schedule = defs.resolve_schedule_def("weekly_retraining")
    assert schedule.job_name == "retrain_and_evaluate"


def test_production_instance_config_uses_postgres_and_the_k8s_run_launcher(tmp_path):
    config, _ = dagster_instance_config(str(DEPLOY))  # validated against the instance schema
    assert config["storage"]["postgres"]["postgres_db"]["hostname"] == {"env": "DAGSTER_PG_HOST"}  # no secrets in files
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["pools"]["default_limit"] == 1
    broken = tmp_path / "dagster.yaml"
    broken.write_text((DEPLOY / "dagster.yaml").read_text().replace("default_limit", "default_limmit"))
    with pytest.raises(dg.DagsterInvalidConfigError):  # the validation is real
        dagster_instance_config(str(tmp_path))
    script = (DEPLOY / "mlflow-server.sh").read_text()
    assert "--backend-store-uri" in script and "--artifacts-destination" in script
