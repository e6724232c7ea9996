"""Where a model folder comes from: a path as given, or a registered MLflow name resolved through
an alias (``champion`` by default) and downloaded once. It knows nothing of pipelines or serving,
so the pipelines, the app and the evaluation suites can all call it without an import circle.

A downloaded version is an MLflow pyfunc model whose one artifact (``PIPELINE_ARTIFACT``) is the
model folder itself (safetensors + config files); versions registered as plain folders still load.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from .data.atomic import atomic_folder
from .settings import WorkPaths, tracking_uri_for, work_home

PIPELINE_ARTIFACT = "pipeline"
logger = logging.getLogger(__name__)


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
        logger.info(
            "downloading %s v%s from %s into %s", name, version, tracking_uri or "the tracking store", destination
        )
        with atomic_folder(destination) as tmp:  # an interrupted download is never taken for a model
            download_model(name, version, tmp, tracking_uri)
    return model_folder(destination)


def resolve_model(
    model: str | Path, alias: str = "champion", tracking_uri: str | None = None, cache: Path | None = None
) -> Path:
    """A model folder as given, or a model in the tracking store, downloaded once under
    ``$CXR_HOME/models/registry``, named the ways MLflow users name them:

    - ``cxr-class-ddpm``: the registered model's version holding ``alias`` (``champion`` by default)
    - ``models:/cxr-class-ddpm/3``, ``models:/cxr-class-ddpm@challenger``: a version, an alias
    - ``runs:/<run id>/model``: a model logged by a run, registered or not

    Without an explicit store: ``MLFLOW_TRACKING_URI``, else the default store under CXR_HOME;
    without an explicit ``cache``, that work folder's registry cache."""
    if Path(model).exists():
        return Path(model)
    home = work_home()
    uri = tracking_uri or tracking_uri_for(home)
    cache = Path(cache) if cache is not None else WorkPaths(home).registry_cache
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    text = str(model)
    if text.startswith("runs:/"):
        return run_model_folder(text, cache, uri)
    name, version, alias = parse_model_uri(text, alias)
    if version is None:
        try:
            version = str(client.get_model_version_by_alias(name, alias).version)
        except MlflowException as error:
            raise FileNotFoundError(
                f"{model!r} is neither a model folder nor a registered model with alias "
                f"{alias!r} in {uri}{_why_no_alias(client, name)}"
            ) from error
    else:
        try:
            client.get_model_version(name, version)
        except MlflowException as error:
            raise FileNotFoundError(
                f"{model!r}: registered model {name!r} has no version {version} in {uri}{_versions_held(client, name)}"
            ) from error
    return registry_folder(name, version, cache, uri)


def parse_model_uri(model: str, alias: str = "champion") -> tuple[str, str | None, str]:
    """(name, version or None, alias) of a registered name or a ``models:/`` URI."""
    if not model.startswith("models:/"):
        return model, None, alias
    rest = model.removeprefix("models:/").strip("/")
    if "@" in rest:
        name, _, alias = rest.partition("@")
        return name, None, alias
    name, _, version = rest.partition("/")
    if not version:
        return name, None, alias
    if not version.isdigit():
        raise ValueError(f"{model!r}: a models:/ URI names a version number or an alias (models:/{name}@{version})")
    return name, version, alias


def run_model_folder(uri: str, cache: Path, tracking_uri: str | None = None) -> Path:
    """The model folder of ``runs:/<run id>/<path>``, downloaded into ``cache`` once."""
    run_id, _, artifact = uri.removeprefix("runs:/").strip("/").partition("/")
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        raise FileNotFoundError(f"{uri!r}: no run {run_id!r} in {tracking_uri}") from error
    destination = Path(cache) / "runs" / run_id / (artifact or "root")
    if not destination.exists():
        logger.info("downloading %s into %s", uri, destination)
        with atomic_folder(destination) as tmp:
            try:  # MLflow resolves the name to a logged model of the run (MLflow 3) or its artifact folder
                mlflow.artifacts.download_artifacts(
                    artifact_uri=f"runs:/{run.info.run_id}/{artifact}", dst_path=str(tmp), tracking_uri=tracking_uri
                )
            except (MlflowException, OSError) as error:
                raise FileNotFoundError(f"{uri!r}: run {run_id} logged no {artifact!r}") from error
            _lift_single_child(tmp)
    return model_folder(destination)


def _lift_single_child(folder: Path) -> None:
    """A downloaded folder arrives as ``folder/<its name>``: make ``folder`` the download itself."""
    children = list(folder.iterdir())
    if len(children) == 1 and children[0].is_dir():
        staging = children[0].rename(folder / ".downloaded")
        for child in staging.iterdir():
            child.rename(folder / child.name)
        staging.rmdir()


def _versions_held(client: MlflowClient, name: str) -> str:
    try:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    except MlflowException:
        return ""
    if not versions:
        return f": no model named {name!r} is registered"
    return f": it holds version(s) {', '.join(map(str, versions))}"


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
