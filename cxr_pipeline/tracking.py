"""MLflow plumbing shared by every training and evaluation step (no Dagster here).

Default store: SQLite under the work folder, so the Model Registry works with no server.
Models are registered as pyfunc models (serving.py) whose one artifact is the model folder
(safetensors + config files, diffusers style), so ``mlflow.pyfunc.load_model`` and ``mlflow
models serve`` work, and the library reads the folder inside a downloaded version directly.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from .data.atomic import atomic_folder


def default_tracking_uri(home: Path) -> str:
    return f"sqlite:///{(Path(home) / 'mlflow' / 'mlflow.db').resolve()}"


# MLflow 3's UI opens an experiment in its GenAI view unless told what kind of work it holds.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(tracking_uri: str, name: str, artifact_root: Path) -> str:
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
        try:
            experiment_id = mlflow.create_experiment(name, artifact_location=Path(artifact_root).resolve().as_uri(),
                                                     tags=EXPERIMENT_KIND)
        except MlflowException:  # created concurrently by another run
            experiment_id = mlflow.get_experiment_by_name(name).experiment_id
        return experiment_id
    if any(experiment.tags.get(key) != value for key, value in EXPERIMENT_KIND.items()):
        for key, value in EXPERIMENT_KIND.items():  # experiments created before the tag existed
            MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI when the store is a tracking server; None for a local store."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def git_commit(repository: Path) -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repository, capture_output=True, text=True, timeout=10)
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


def model_folder(downloaded: Path) -> Path:
    """The model folder inside a downloaded version: the pyfunc model's artifact, or (versions
    registered as plain folders) the folder itself."""
    downloaded = Path(downloaded)
    if (downloaded / "MLmodel").exists():
        from .serving import pipeline_folder
        return pipeline_folder(downloaded)
    return downloaded / "model" if (downloaded / "model").is_dir() else downloaded


def download_model(name: str, version: str, destination: Path | None = None, tracking_uri: str | None = None) -> Path:
    """A registered version downloaded (into ``destination``); returns its model folder. The
    version's source is resolved through ``tracking_uri``'s own registry: a ``models:/`` URI
    would go through the process-wide registry URI, which may be another store (or none, and
    MLflow would create ./mlflow.db)."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    source = client.get_model_version_download_uri(name, str(version))
    downloaded = Path(mlflow.artifacts.download_artifacts(
        source, dst_path=str(destination) if destination else None, tracking_uri=tracking_uri))
    if destination is not None and downloaded.resolve() != Path(destination).resolve():
        # the source is a folder (".../artifacts"), downloaded as a subfolder: lift its content
        # so ``destination`` holds the model itself, as registry_folder expects
        staging = downloaded.rename(Path(destination) / ".downloaded")
        for child in staging.iterdir():
            child.rename(Path(destination) / child.name)
        staging.rmdir()
        downloaded = Path(destination)
    return model_folder(downloaded)


def registry_folder(name: str, version: str, cache: Path, tracking_uri: str | None = None) -> Path:
    """The model folder of a registered version, downloaded into ``cache`` once."""
    destination = Path(cache) / name / f"v{version}"
    if not destination.exists():
        with atomic_folder(destination) as tmp:  # an interrupted download is never taken for a model
            download_model(name, version, tmp, tracking_uri)
    return model_folder(destination)


def resolve_model(model: str | Path, alias: str = "champion", tracking_uri: str | None = None) -> Path:
    """A model folder as given, or a registered model name resolved to the version holding
    ``alias`` (``champion`` by default), downloaded once under ``$CXR_HOME/models/registry``.
    Without an explicit store: ``MLFLOW_TRACKING_URI``, else the default store under CXR_HOME."""
    if Path(model).exists():
        return Path(model)
    home = Path(os.environ.get("CXR_HOME", "work"))
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(home)
    try:
        version = MlflowClient(tracking_uri=uri).get_model_version_by_alias(str(model), alias)
    except MlflowException as error:
        raise FileNotFoundError(f"{model!r} is neither a model folder nor a registered model with alias "
                                f"{alias!r} in {uri}{_why_no_alias(MlflowClient(tracking_uri=uri), str(model))}") from error
    return registry_folder(str(model), str(version.version), home / "models" / "registry", uri)


def _why_no_alias(client: MlflowClient, name: str) -> str:
    """What the latest evaluated version's promotion said, when the model exists but has no champion."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return ""
    decided = sorted((v for v in versions if v.tags.get("promotion_reason")), key=lambda v: int(v.version))
    if not versions:
        return ""
    if not decided:
        return f": {len(versions)} version(s) registered, none evaluated yet"
    last = decided[-1]
    return (f": {len(versions)} version(s) registered and none promoted; v{last.version} was not promoted because it "
            f"{last.tags['promotion_reason']}. Pass a model folder or alias='challenger' to sample it anyway")


def log_metrics_to_run(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Add metrics to a run that is not this process's active run: an evaluation's headline figures
    to the model's training run (so MLflow's run comparison shows them next to the
    hyperparameters), or an out-of-process training's curves to the run its asset opened."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    entries = [Metric(key, float(value), now, step) for key, value in metrics.items() if math.isfinite(float(value))]
    client = MlflowClient()
    for start in range(0, len(entries), 1000):  # the batch limit of the tracking API
        client.log_batch(run_id, metrics=entries[start:start + 1000])


def metric_history(run_id: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric of a run, in step order."""
    history = sorted(MlflowClient().get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
    return [m.step for m in history], [m.value for m in history]


def tag_model_version(name: str, version: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))
