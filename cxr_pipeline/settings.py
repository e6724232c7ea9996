"""Named profiles and the layout of the work folder.

Everything the pipeline writes lives under one folder (``CXR_HOME``); this module is the one
place that knows the stable paths inside it, so assets, tests and notebooks agree on them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The work folder when neither the caller nor CXR_HOME names one: ./work, relative to where the
# command runs (run.sh and workspace.yaml run from the repository root).
DEFAULT_HOME = "work"


def work_home(explicit: str | Path | None = None) -> Path:
    """The one rule for the work folder: ``explicit``, else ``CXR_HOME``, else ``./work``."""
    return Path(explicit or os.environ.get("CXR_HOME") or DEFAULT_HOME).expanduser().resolve()


def default_tracking_uri(home: Path) -> str:
    """The MLflow store when none is configured: SQLite under the work folder (Model Registry included)."""
    return f"sqlite:///{(Path(home) / 'mlflow' / 'mlflow.db').resolve()}"


def tracking_uri_for(home: Path, explicit: str | None = None) -> str:
    """``explicit``, else ``MLFLOW_TRACKING_URI``, else the default store under ``home``."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(home)


# Where people open the two UIs. Links in Dagster metadata, MLflow run notes and the app are built
# from these, never from a fixed port (run.sh sets both for the commands it starts).
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"


def dagster_ui_url(explicit: str | None = None) -> str:
    """``explicit``, else ``CXR_DAGSTER_URL`` (or Dagster's own ``DAGSTER_WEBSERVER_URL``), else
    the address ``dagster dev`` uses by default."""
    return (
        explicit or os.environ.get("CXR_DAGSTER_URL") or os.environ.get("DAGSTER_WEBSERVER_URL") or DEFAULT_DAGSTER_URL
    ).rstrip("/")


def mlflow_ui_url(tracking_uri: str, explicit: str | None = None) -> str | None:
    """Where the MLflow UI over ``tracking_uri`` is served: ``explicit``, else ``CXR_MLFLOW_UI_URL``,
    else the tracking server itself; None for a local store with no UI configured (a SQLite
    file has no web address of its own: ``./run.sh mlflow`` serves it and sets the URL)."""
    url = explicit or os.environ.get("CXR_MLFLOW_UI_URL")
    if not url and tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri
    return url.rstrip("/") if url else None


def profile_from_environment(explicit: str | None = None) -> Profile:
    return get_profile(explicit or os.environ.get("CXR_PROFILE") or "demo")


@dataclass(frozen=True)
class Profile:
    """Sizes that trade fidelity for time; ``demo`` finishes in CPU minutes."""

    name: str
    image_size: int  # square training resolution every stored image is resized to
    demo_patients: int  # size of the built-in demo dataset for this profile
    demo_source_size: int  # side of the generated radiographs before ingestion resizes them


PROFILES: dict[str, Profile] = {
    "demo": Profile(name="demo", image_size=64, demo_patients=300, demo_source_size=256),
    "full": Profile(name="full", image_size=256, demo_patients=3000, demo_source_size=1024),
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None


@dataclass(frozen=True)
class WorkPaths:
    """Stable, user-facing locations under the work folder (listed in the README)."""

    home: Path

    @property
    def demo_data(self) -> Path:
        return self.home / "demo_data"

    @property
    def ingestion(self) -> Path:
        return self.home / "ingestion"

    @property
    def manifest(self) -> Path:
        return self.ingestion / "manifest.parquet"

    @property
    def rejected(self) -> Path:
        return self.ingestion / "rejected.parquet"

    @property
    def image_store(self) -> Path:
        return self.ingestion / "images"

    @property
    def ingestion_preview(self) -> Path:
        return self.ingestion / "preview.png"

    @property
    def labels(self) -> Path:
        return self.home / "labels"

    @property
    def label_table(self) -> Path:
        return self.labels / "labels.parquet"

    @property
    def box_table(self) -> Path:
        """Bounding boxes as the sources give them (original pixels, keyed like label rows)."""
        return self.labels / "box_table.parquet"

    @property
    def boxes(self) -> Path:
        """The boxes of ingested images, in original and in stored pixels."""
        return self.labels / "boxes.parquet"

    @property
    def metadata(self) -> Path:
        return self.home / "metadata.parquet"

    @property
    def splits(self) -> Path:
        return self.home / "splits"

    @property
    def pairs(self) -> Path:
        return self.home / "pairs"

    @property
    def latents(self) -> Path:
        return self.home / "latents"

    @property
    def mlflow(self) -> Path:
        return self.home / "mlflow"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def registry_cache(self) -> Path:
        """Registered versions downloaded once (evaluation's champions, the app, resolve_model)."""
        return self.models / "registry"

    def model_pointer(self, kind: str) -> Path:
        """Which trained model is current for ``kind`` (folder, MLflow run, registered version)."""
        return self.models / "current" / f"{kind}.json"
