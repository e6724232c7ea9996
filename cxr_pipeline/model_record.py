"""The record of a trained model that downstream steps read: ``models/current/<kind>.json``.

One typed record instead of a dict read by string keys: the training step writes it after
registering the model; evaluations, the latents and the models that build on another model
(the latent models on the VAE, the text model on the report encoder) read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .data import atomic
from .settings import WorkPaths


@dataclass(frozen=True)
class ModelRecord:
    model_dir: Path  # the trained model's own folder (safetensors + config files)
    mlflow_run_id: str  # the training run
    registered_model: str  # MLflow Model Registry name
    version: str  # its registered version
    data_hash: str | None = None  # the metadata (splits) it was trained on

    @property
    def label(self) -> str:
        """``cxr-vae v3``: how reports, params and logs name it."""
        return f"{self.registered_model} v{self.version}"

    def as_dict(self) -> dict:
        return {
            "model_dir": str(self.model_dir),
            "mlflow_run_id": self.mlflow_run_id,
            "registered_model": self.registered_model,
            "version": str(self.version),
            "data_hash": self.data_hash,
        }

    def write(self, path: Path) -> None:
        atomic.write_text(Path(path), json.dumps(self.as_dict(), indent=2))

    @classmethod
    def from_dict(cls, raw: dict) -> ModelRecord:
        return cls(
            Path(raw["model_dir"]),
            str(raw["mlflow_run_id"]),
            str(raw["registered_model"]),
            str(raw["version"]),
            raw.get("data_hash"),
        )

    @classmethod
    def read(cls, path: Path) -> ModelRecord:
        return cls.from_dict(json.loads(Path(path).read_text()))


def current_model(paths: WorkPaths, key: str) -> ModelRecord:
    """The model the latest materialization of ``key`` produced."""
    path = paths.model_pointer(key)
    if not path.exists():
        raise FileNotFoundError(f"no current {key} model at {path}: materialize the asset that trains it first")
    return ModelRecord.read(path)


def has_current_model(paths: WorkPaths, key: str) -> bool:
    return paths.model_pointer(key).exists()
