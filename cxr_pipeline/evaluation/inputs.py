"""What the suites read: split rows, images from the store and the pair stores, training curves."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from .. import tracking
from ..data.image_store import ImageStore
from ..model_record import ModelRecord
from ..models.batches import StoreImages
from ..reports.document import Figure
from ..reports.plots import line_plot


def split_rows(metadata: pd.DataFrame, split: str, limit: int | None = None, labelled: bool = False) -> pd.DataFrame:
    rows = metadata[metadata["split"] == split]
    if labelled:
        rows = rows[rows["class_id"].notna()]
    rows = rows.reset_index(drop=True)
    return rows.iloc[:limit] if limit else rows


def stored_images(store: ImageStore, rows: pd.DataFrame) -> torch.Tensor:
    return StoreImages(store, rows).stack()


def degraded_images(pair_dir: Path, rows: pd.DataFrame) -> torch.Tensor:
    """The degraded versions of ``rows``' images from a pair store, in the same order."""
    index = pd.read_parquet(pair_dir / "index.parquet").set_index("image_id").loc[rows["image_id"]].reset_index()
    return stored_images(ImageStore(pair_dir), index)


def training_curve(record: ModelRecord, title: str) -> Figure:
    steps, losses = tracking.metric_history(record.mlflow_run_id, "train_loss")
    image = line_plot({"train loss": (steps, losses)}, f"{title}: training loss", "loss", log_y=True)
    return Figure(f"{title}: training loss", image, f"{record.label}, MLflow run {record.mlflow_run_id}")


def split_description(rows: pd.DataFrame, evaluated: list[tuple[ModelRecord, dict]]) -> str:
    models = ", ".join(p.label for p, _ in evaluated)
    return (
        f"{models}, evaluated on the test split: {len(rows)} images of {rows['patient_key'].nunique()} patients "
        f"(patient-level split, no patient shared with train or val). All intensities in [0, 1]; PSNR in dB with "
        f"data range 1."
    )
