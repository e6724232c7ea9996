"""MLflow plumbing shared by every training and evaluation step (no Dagster here).

Runs, metrics and tags; registering a plain folder. Resolving a registered name to a model
folder is ``model_source.py``; registered models as pyfunc models are ``serving.py``.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import filelock
import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from .provenance import data_source
from .settings import WorkPaths

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


def _git(repository: Path, *arguments: str) -> str | None:
    try:
        result = subprocess.run(["git", *arguments], cwd=repository, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def relative_run_url(experiment_id: str, run_id: str) -> str:
    """A run's page as a link inside the MLflow UI (Markdown in a description): it works on
    whatever host and port the UI is served from."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def link_in_description(run_id: str, line: str) -> None:
    """Add ``line`` (Markdown) to a run's description (``mlflow.note.content``, the run page's
    Description), once: the clickable way from one run to another."""
    client = MlflowClient()
    note = client.get_run(run_id).data.tags.get("mlflow.note.content", "")
    if line not in note:
        client.set_tag(run_id, "mlflow.note.content", f"{note}\n\n{line}".strip())


# The evaluation experiment's saved view (an experiment tag in MLflow's saved-view envelope, so the
# UI lists it under Views): the method runs, the plain-name headline figures as columns.
HEADLINE_VIEW = "headline"
# restoration's two first, then generation's, so each kind's headline shows without scrolling
HEADLINE_COLUMNS = ("psnr", "ssim", "fd", "kid", "cond_acc", "prompt_consistency", "mae", "detail", "auroc", "accuracy")


def headline_view_url(experiment_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={HEADLINE_VIEW}&{TRAINING_VIEW}"


def describe_evaluation_experiment(experiment_id: str) -> None:
    """The evaluation experiment's description (shown atop its page) and its saved view, listed
    under *Views*: the method runs with the plain-name headline figures as columns."""
    import json

    columns = [
        *(f"params.`{name}`" for name in ("method", "setting")),
        *(f"metrics.`{name}`" for name in HEADLINE_COLUMNS),
    ]
    state = {
        "searchFilter": "params.method != ''",
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "selectedColumns": columns,
        "columnOrder": columns,  # psnr and ssim first, not in alphabetical order after cond_acc
        "runsHiddenMode": "SHOW_ALL",
    }
    now = int(time.time() * 1000)
    view = {"name": "Headline figures", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    description = (
        f"**[Headline figures: every model beside its baselines]({headline_view_url(experiment_id)})** "
        "(also under *Views*): one run per method and setting with psnr, ssim, mae, detail, fd, kid, "
        "cond_acc, prompt_consistency as columns.\n\n"
        "The `evaluate-*` runs are the evaluations themselves: every figure under its full name "
        "(intervals, per class and dose) and the report under Artifacts."
    )
    client = MlflowClient()
    client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{HEADLINE_VIEW}", json.dumps(view))
    client.set_experiment_tag(experiment_id, "mlflow.note.content", description)


def git_commit(repository: Path | None = None) -> str:
    """The commit of the code that ran: this checkout's, else the one the package or image was
    built from (``CXR_GIT_COMMIT``, set by the Dockerfile), else "unknown"."""
    repository = repository or Path(__file__).resolve().parents[1]
    return _git(repository, "rev-parse", "HEAD") or os.environ.get(GIT_COMMIT_ENV, "").strip() or "unknown"


GIT_COMMIT_ENV = "CXR_GIT_COMMIT"


def source_tags(repository: Path | None = None) -> dict[str, str]:
    """The code a run ran, under the tags the MLflow UI shows (``mlflow.source.git.*``: the run
    page's Source and Git commit), and whether the checkout had uncommitted changes (``git.dirty``:
    then the commit alone does not reproduce the run)."""
    repository = repository or Path(__file__).resolve().parents[1]
    tags = {"mlflow.source.git.commit": git_commit(repository)}
    branch = _git(repository, "rev-parse", "--abbrev-ref", "HEAD")
    if branch:
        tags["mlflow.source.git.branch"] = branch
    status = _git(repository, "status", "--porcelain", "--untracked-files=no")
    tags["git.dirty"] = "unknown" if status is None else str(bool(status)).lower()
    return tags


# What each split is to a run, in MLflow's words (the Datasets column's context).
SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "test"}
DATASET_COLUMNS = ("image_id", "patient_id", "study_id", "view", "sex", "age", "class_name", "label_source", "split")


def log_split_inputs(paths: WorkPaths, profile: str, splits: tuple[str, ...]) -> str:
    """Into the active run, each split it used as an MLflow dataset (the runs table's Datasets
    column, the dataset page): named after the data folder and the split, its digest the split
    hash the lineage keeps (``data.split_hash``), its source the data folder, the profile as a
    tag, the split's rows (ids and labels, no pixels) as its schema and profile. Returns the hash."""
    import pandas as pd
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.pandas_dataset import from_pandas

    from .data.labels.metadata import content_hash

    data_dir = str(data_source(paths)["data_dir"])
    metadata = pd.read_parquet(paths.metadata)
    digest = content_hash(metadata)
    columns = [c for c in DATASET_COLUMNS if c in metadata.columns]
    folder = Path(data_dir).name or "data"
    # the local-folder source, named directly: MLflow registers it twice, so resolving a path
    # warns that it "can be interpreted in multiple ways"
    sources: list[Any] = list(get_registered_sources())  # the classes, typed by MLflow as instances
    local_source = next(source for source in sources if source.__name__ == "LocalArtifactDatasetSource")
    for split in splits:
        rows = metadata.loc[metadata["split"] == split, columns].reset_index(drop=True)
        dataset = from_pandas(rows, source=local_source(str(data_dir)), name=f"{folder}-{split}", digest=digest)
        mlflow.log_input(dataset, context=SPLIT_CONTEXTS[split], tags={"profile": profile, "split": split})
    return digest


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


def logged_model_id(version) -> str | None:
    """The MLflow 3 logged model behind a registered version: its ``model_id``, which the SQL
    store leaves empty, else the id its source names (``models:/m-...``); None for a version
    registered from a plain folder."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = str(version.source or "")
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def tag_model_version(name: str, version: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))
