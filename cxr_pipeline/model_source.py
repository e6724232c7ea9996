"""Where a model folder comes from: a path as given, or a registered MLflow name resolved through
an alias (``champion`` by default) and downloaded once. It knows nothing of pipelines or serving,
so the pipelines, the app and the evaluation suites can all call it without an import circle.

A downloaded version is an MLflow pyfunc model whose one artifact (``PIPELINE_ARTIFACT``) is the
model folder itself (safetensors + config files); versions registered as plain folders still load.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from .data.atomic import atomic_folder
from .settings import WorkPaths, tracking_uri_for, work_home

PIPELINE_ARTIFACT = "pipeline"


def pipeline_folder(model_root: Path) -> Path:
    """The model folder inside a downloaded pyfunc model (its MLmodel names the artifact's path)."""
    model_root = Path(model_root)
    description = yaml.safe_load((model_root / "MLmodel").read_text())
    artifact = description["flavors"]["python_function"]["artifacts"][PIPELINE_ARTIFACT]["path"]
    return model_root / artifact


def model_folder(downloaded: Path) -> Path:
    """The model folder inside a downloaded version: the pyfunc model's artifact, or (versions
    registered as plain folders) the folder itself."""
    downloaded = Path(downloaded)
    if (downloaded / "MLmodel").exists():
        return pipeline_folder(downloaded)
    return downloaded / "model" if (downloaded / "model").is_dir() else downloaded


def download_model(name: str, version: str, destination: Path | None = None, tracking_uri: str | None = None) -> Path:
    """A registered version downloaded (into ``destination``); returns its model folder. The
    version's source is resolved through ``tracking_uri``'s own registry: a ``models:/`` URI
    would go through the process-wide registry URI, which may be another store (or none, and
    MLflow would create ./mlflow.db)."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    source = client.get_model_version_download_uri(name, str(version))
    downloaded = Path(
        mlflow.artifacts.download_artifacts(
            source, dst_path=str(destination) if destination else None, tracking_uri=tracking_uri
        )
    )
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
    home = work_home()
    uri = tracking_uri or tracking_uri_for(home)
    try:
        version = MlflowClient(tracking_uri=uri).get_model_version_by_alias(str(model), alias)
    except MlflowException as error:
        raise FileNotFoundError(
            f"{model!r} is neither a model folder nor a registered model with alias "
            f"{alias!r} in {uri}{_why_no_alias(MlflowClient(tracking_uri=uri), str(model))}"
        ) from error
    return registry_folder(str(model), str(version.version), WorkPaths(home).registry_cache, uri)


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
    return (
        f": {len(versions)} version(s) registered and none promoted; v{last.version} was not promoted because it "
        f"{last.tags['promotion_reason']}. Pass a model folder or alias='challenger' to sample it anyway"
    )
