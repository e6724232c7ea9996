"""Low-dose denoising across dose levels, the dose as an optional condition."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...data.image_store import ImageStore
from ..batches import EpochSampler, StoreImages, aligned_crops
from ..diffusion import (
    Conditioning,
    ScheduleConfig,
    UNetConfig,
    sample,
)
from ..model_settings import (
    DenoiserSettings,
)
from ..training import TrainConfig, TrainingOutcome, TrainProgress, step_generator
from ..vae import from_model, to_model
from .common import residual_scale, train_model


def low_dose_batch(
    clean: StoreImages, noisy: Sequence[StoreImages], picked: np.ndarray, crop: int | None, seed: int, step: int
) -> dict[str, torch.Tensor]:
    """One batch of (normal-dose, low-dose) pairs in model units: ``picked`` indexes image x dose
    (``noisy`` holds one store per dose, rows aligned with ``clean``), then the same crop of both."""
    image_rows, dose_rows = picked // len(noisy), picked % len(noisy)
    target = clean.batch(image_rows)
    condition = torch.cat([noisy[d].batch([r]) for r, d in zip(image_rows, dose_rows)])
    target, condition = aligned_crops([target, condition], crop, seed, step)
    return {"target": to_model(target), "condition": to_model(condition), "labels": torch.from_numpy(dose_rows).long()}


def train_denoiser(
    metadata: pd.DataFrame,
    store: ImageStore,
    dose_stores: dict[float, tuple[ImageStore, pd.DataFrame]],
    unet_config: UNetConfig,
    schedule: ScheduleConfig,
    train_config: TrainConfig,
    runs_root: Path,
    data_hash: str,
    *,
    dose_conditioning: bool = True,
    sampling_strength: float = 0.4,
    crop: int | None = None,
    residual: bool = False,
    progress: TrainProgress | None = None,
    stop_after: int | None = None,
) -> TrainingOutcome:
    """``crop``: train on random aligned windows of this size (the UNet is fully convolutional and
    samples whole images); None trains on whole images. ``residual``: diffuse the correction from
    the low-dose image to the normal-dose one instead of the image itself."""
    rows = metadata[metadata["split"] == "train"].reset_index(drop=True)
    clean = StoreImages(store, rows)
    doses = sorted(dose_stores)
    noisy = [
        StoreImages(dose_stores[d][0], dose_stores[d][1].set_index("image_id").loc[rows["image_id"]].reset_index())
        for d in doses
    ]
    sampler = EpochSampler(len(rows) * len(doses), train_config.batch_size, train_config.seed)
    scale = 0.0
    if residual:  # from the first (up to) 64 training images at every dose
        first = list(range(min(64, len(rows))))
        scale = residual_scale(
            to_model(clean.batch(first)).repeat(len(doses), 1, 1, 1),
            torch.cat([to_model(store_.batch(first)) for store_ in noisy]),
        )
    conditioning = Conditioning(
        concat_channels=1,
        num_classes=len(doses) if dose_conditioning else 0,
        class_dropout=0.1 if dose_conditioning else 0.0,
        residual_scale=scale,
    )

    def batches(step: int) -> dict:
        batch = low_dose_batch(clean, noisy, sampler.indices(step), crop, train_config.seed, step)
        if not dose_conditioning:
            del batch["labels"]
        return batch

    preview_rows = list(range(min(4, len(rows))))

    def preview(model: torch.nn.Module, step: int) -> np.ndarray:
        lowest = 0  # the fewest photons: the hardest case
        condition = to_model(noisy[lowest].batch(preview_rows))
        labels = torch.full((len(preview_rows),), lowest) if dose_conditioning else None
        out = sample(
            model,
            schedule,
            tuple(condition.shape),
            condition=condition,
            labels=labels,
            null_label=conditioning.num_classes if dose_conditioning else None,
            steps=train_config.preview_steps,
            start=condition,
            strength=sampling_strength,
            generator=step_generator(train_config.seed, 10**6),
            residual_scale=conditioning.residual_scale,
        )
        columns = [from_model(condition)[:, 0], from_model(out.cpu())[:, 0], clean.batch(preview_rows)[:, 0]]
        return torch.cat([torch.cat(list(c), dim=0) for c in columns], dim=1).numpy()

    settings = DenoiserSettings(
        doses=doses,
        dose_conditioning=dose_conditioning,
        sampling_strength=sampling_strength,
        crop=crop,
        residual=residual,
    )
    return train_model(
        "denoiser",
        unet_config,
        schedule,
        conditioning,
        batches,
        train_config,
        runs_root,
        data_hash,
        preview,
        settings,
        progress,
        stop_after,
    )
