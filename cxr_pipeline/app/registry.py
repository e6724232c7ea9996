"""Where the app's models come from: the work folder and MLflow (the AppContext), the model kinds
it serves, a registered version by alias, what the registry holds and what a folder is."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .. import kinds, tracking
from ..model_source import parse_model_uri, registry_folder, resolve_model
from ..models.model_folder import describe
from ..settings import (
    DEFAULT_DAGSTER_URL,
    Profile,
    WorkPaths,
    dagster_ui_url,
    mlflow_ui_url,
    profile_from_environment,
    tracking_uri_for,
    work_home,
)

# --- Where things are -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppContext:
    """The work folder the pipeline writes, its MLflow store, and where its UIs are."""

    home: Path
    tracking_uri: str
    profile: Profile
    dagster_url: str = DEFAULT_DAGSTER_URL
    mlflow_url: str | None = None  # the MLflow UI, when one is configured (./run.sh mlflow / a tracking server)

    @classmethod
    def from_environment(cls) -> AppContext:
        """From ``CXR_HOME``, ``MLFLOW_TRACKING_URI``, ``CXR_PROFILE``, ``CXR_DAGSTER_URL`` and
        ``CXR_MLFLOW_UI_URL``. Every MLflow call names this store; nothing process-wide is set."""
        home = work_home()
        uri = tracking_uri_for(home)
        return cls(home, uri, profile_from_environment(), dagster_ui_url(), mlflow_ui_url(uri))

    @property
    def paths(self) -> WorkPaths:
        return WorkPaths(self.home)

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)

    def asset_url(self, asset: str) -> str:
        return f"{self.dagster_url.rstrip('/')}/assets/{asset}"

    def run_url(self, run_id: str) -> str | None:
        if not self.mlflow_url:
            return None
        try:
            experiment = self.client().get_run(run_id).info.experiment_id
        except MlflowException:
            return None
        return tracking.run_url(self.mlflow_url, experiment, run_id)


# The models the app serves, by the key its pages use: each kind knows its registry name, the
# asset that trains it, the evaluation that promotes it and its pipeline.
APP_MODELS: dict[str, kinds.ModelKind] = {
    "text": kinds.TEXT_LDM,
    "class": kinds.CLASS_DDPM,
    "arbitrary_sr": kinds.ARBITRARY_SR,
    "denoiser": kinds.DENOISER,
}


class ModelUnavailable(Exception):
    """A model the app cannot load, with what to do about it."""


@dataclass(frozen=True)
class LocatedModel:
    folder: Path
    name: str
    version: str
    alias: str
    run_id: str


MODEL_URI_PREFIXES = ("models:/", "runs:/")


def locate_uri(model: kinds.ModelKind, context: AppContext, uri: str) -> LocatedModel:
    """A model named by URI (``models:/name/3``, ``models:/name@alias``, ``runs:/<id>/model``),
    downloaded once under the work folder; refused when it is another kind of model."""
    try:
        folder = resolve_model(uri, tracking_uri=context.tracking_uri, cache=context.paths.registry_cache)
    except (FileNotFoundError, ValueError) as missing:
        raise ModelUnavailable(str(missing)) from None
    held = kinds.kind_of_folder(folder)
    if held.key.split("_x")[0] != model.key.split("_x")[0]:
        raise ModelUnavailable(
            f"{uri} holds a {held.key} model; this page needs a {model.key} model ({model.registered_name})"
        )
    if uri.startswith("runs:/"):
        return LocatedModel(folder, model.registered_name, "", "", uri.removeprefix("runs:/").split("/")[0])
    name, version, alias = parse_model_uri(uri)
    client = context.client()
    held_version = (
        client.get_model_version(name, version) if version else client.get_model_version_by_alias(name, alias)
    )
    return LocatedModel(
        folder, name, str(held_version.version), alias if version is None else "", held_version.run_id or ""
    )


def locate(model: kinds.ModelKind, context: AppContext, alias: str = "champion") -> LocatedModel:
    """The registered version holding ``alias``, downloaded once under the work folder; ``alias``
    may also be a model URI (:func:`locate_uri`)."""
    if alias.startswith(MODEL_URI_PREFIXES):
        return locate_uri(model, context, alias)
    client, name = context.client(), model.registered_name
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise ModelUnavailable(
            f"{name} has not been trained yet in {context.home}: materialize the `{model.asset}` asset "
            f"(job `all_assets`, `training` or `retrain_and_evaluate`; `./run.sh demo` runs them all), then "
            f"`{model.evaluated_by}` to evaluate and promote it."
        ) from None
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        versions = client.search_model_versions(f"name = '{name}'")
        decided = sorted((v for v in versions if v.tags.get("promotion_reason")), key=lambda v: int(v.version))
        champion = (client.get_registered_model(name).aliases or {}).get("champion")
        if alias == "challenger" and champion is not None:
            raise ModelUnavailable(
                f"{name} has no challenger: its latest evaluated version won its evaluation and is "
                f"the champion (v{champion}). A challenger appears when a newer version is "
                "evaluated and does not beat it."
            ) from None
        why = (
            f"v{decided[-1].version} was not promoted because it {decided[-1].tags['promotion_reason']}"
            if decided
            else f"no version has been evaluated yet (materialize `{model.evaluated_by}`)"
        )
        raise ModelUnavailable(
            f"{name} has no {alias}: {len(versions)} version(s) registered; {why}. "
            "Choose the challenger to try the latest evaluated version anyway."
        ) from None
    folder = registry_folder(name, str(version.version), context.paths.registry_cache, context.tracking_uri)
    return LocatedModel(folder, name, str(version.version), alias, version.run_id or "")


def registry_overview(context: AppContext) -> pd.DataFrame:
    """Every registered model's versions with their aliases, headline figures and promotion."""
    client, rows = context.client(), []
    for registered in client.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for alias, version in (registered.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for version in client.search_model_versions(f"name = '{registered.name}'"):
            tags = version.tags or {}
            rows.append(
                {
                    "model": registered.name,
                    "version": int(version.version),
                    "aliases": ", ".join(sorted(aliases.get(str(version.version), []))),
                    "decision": tags.get("promotion_decision", "not evaluated"),
                    "reason": tags.get("promotion_reason", ""),
                    "metrics": tags.get("evaluation_metrics", ""),
                    "run_id": version.run_id,
                    "evaluation_run_id": tags.get("evaluation_run_id", ""),
                    "training_data": tags.get("data.summary", ""),
                }
            )
    return pd.DataFrame(rows).sort_values(["model", "version"], ascending=[True, False]) if rows else pd.DataFrame()


def architecture(folder: Path) -> dict:
    """What the model folder says it is: kind, UNet, schedule, conditioning, training."""
    saved = describe(folder)
    return {
        "kind": saved.kind,
        "unet": asdict(saved.unet),
        "schedule": asdict(saved.schedule),
        "conditioning": asdict(saved.conditioning),
        "settings": saved.settings.to_dict(),
        "training": saved.training.to_dict(),
    }
