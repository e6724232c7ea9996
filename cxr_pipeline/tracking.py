"""MLflow plumbing shared by every training and evaluation step (no Dagster here).

Runs, metrics and tags; registering a plain folder. Resolving a registered name to a model
folder is ``model_source.py``; registered models as pyfunc models are ``serving.py``.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import time
from pathlib import Path

import filelock
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

# MLflow 3's UI opens an experiment in its GenAI view unless told what kind of work it holds.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def store_guard(tracking_uri: str) -> contextlib.AbstractContextManager:
    """A lock beside a SQLite store: the first client of a new store creates its tables, and two
    steps doing it at once (the first two MLflow steps of a run on a fresh work folder) break
    MLflow's migration and leave the store half made. Other stores need none."""
    if not tracking_uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(database) + ".init.lock")


def ensure_experiment(tracking_uri: str, name: str, artifact_root: Path) -> str:
    mlflow.set_tracking_uri(tracking_uri)
    with store_guard(tracking_uri):
        return _ensure_experiment(name, artifact_root)


def _ensure_experiment(name: str, artifact_root: Path) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
        try:
            experiment_id = mlflow.create_experiment(
                name, artifact_location=Path(artifact_root).resolve().as_uri(), tags=EXPERIMENT_KIND
            )
        except MlflowException:  # created concurrently by another run
            existing = mlflow.get_experiment_by_name(name)
            if existing is None:
                raise
            experiment_id = existing.experiment_id
        return experiment_id
    if any(experiment.tags.get(key) != value for key, value in EXPERIMENT_KIND.items()):
        for key, value in EXPERIMENT_KIND.items():  # experiments created before the tag existed
            MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


# MLflow 3.17's UI reads its view (model training or GenAI) from the page address first, then from
# the browser's last choice (GenAI on a fresh browser); the experiment's kind tag alone is ignored.
TRAINING_VIEW = "workflowType=machine_learning"


def experiment_url(ui_url: str | None, experiment_id: str) -> str | None:
    """The experiment's runs table in the MLflow UI's model-training view; None without a UI."""
    if not ui_url:
        return None
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?{TRAINING_VIEW}"


def run_url(ui_url: str | None, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI (model-training view); None without a UI."""
    if not ui_url:
        return None
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def git_commit(repository: Path | None = None) -> str:
    """The commit of the code that ran (this checkout's, by default)."""
    repository = repository or Path(__file__).resolve().parents[1]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repository, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def register_folder(run_id: str, artifact_path: str, name: str, description: str = "") -> str:
    """Register a plain artifact folder of ``run_id`` as a new version of model ``name``; returns
    it. Training registers pyfunc models (serving.py); versions registered this way before that
    still load (``model_folder``), and tests build such registries with it."""
    client = MlflowClient()
    try:
        client.create_registered_model(name, description=description)
    except MlflowException as error:
        if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
            raise
    source = f"{mlflow.get_run(run_id).info.artifact_uri}/{artifact_path}"
    version = client.create_model_version(name, source=source, run_id=run_id)
    return str(version.version)


def describe_registered_model(name: str, description: str) -> None:
    MlflowClient().update_registered_model(name, description=description)


def log_metrics_to_run(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Add metrics to a run that is not this process's active run: an out-of-process training's
    curves to the run its asset opened."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    entries = [Metric(key, float(value), now, step) for key, value in metrics.items() if math.isfinite(float(value))]
    client = MlflowClient()
    for start in range(0, len(entries), 1000):  # the batch limit of the tracking API
        client.log_batch(run_id, metrics=entries[start : start + 1000])


def metric_history(run_id: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric of a run, in step order."""
    history = sorted(MlflowClient().get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return [m.step for m in history], [m.value for m in history]


def tag_run(run_id: str, tags: dict[str, str]) -> None:
    """Tags on a run that is not this process's active run (an evaluation's link from the
    training run it scored)."""
    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def tag_model_version(name: str, version: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))
