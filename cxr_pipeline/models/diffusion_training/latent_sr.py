"""Latent super-resolution at one scale: the HR latent's correction from the bicubic latent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..batches import EpochSampler
from ..diffusion import (
    Conditioning,
    ScheduleConfig,
    UNetConfig,
    sample,
)
from ..latents import latent_scaling_factor, scaled_latents
from ..model_settings import (
    LatentSRSettings,
)
from ..training import TrainConfig, TrainingOutcome, TrainProgress, step_generator
from ..vae import from_model, load_vae
from .common import residual_scale, train_model


def train_latent_sr(
    latents_dir: Path,
    scale: int,
    vae_dir: Path,
    unet_config: UNetConfig,
    schedule: ScheduleConfig,
    train_config: TrainConfig,
    runs_root: Path,
    data_hash: str,
    *,
    residual: bool = False,
    progress: TrainProgress | None = None,
    stop_after: int | None = None,
) -> TrainingOutcome:
    """``residual``: diffuse the correction from the bicubic latent to the HR latent (SRDiff)
    instead of the HR latent itself."""
    factor = latent_scaling_factor(latents_dir)
    hr, lr = scaled_latents(latents_dir, "hr", "train"), scaled_latents(latents_dir, f"lr_x{scale}", "train")
    val_hr, val_lr = (
        scaled_latents(latents_dir, "hr", "val")[:4],
        scaled_latents(latents_dir, f"lr_x{scale}", "val")[:4],
    )
    sampler = EpochSampler(len(hr), train_config.batch_size, train_config.seed)
    conditioning = Conditioning(concat_channels=lr.shape[1], residual_scale=residual_scale(hr, lr) if residual else 0.0)
    vae = load_vae(vae_dir)

    def batches(step: int) -> dict:
        rows = sampler.indices(step)
        return {"target": hr[rows], "condition": lr[rows]}

    def preview(model: torch.nn.Module, step: int) -> np.ndarray:
        device = next(model.parameters()).device
        out = sample(
            model,
            schedule,
            tuple(val_hr.shape),
            condition=val_lr.to(device),
            steps=train_config.preview_steps,
            generator=step_generator(train_config.seed, 10**6),
            residual_scale=conditioning.residual_scale,
        )
        decoded = [from_model(vae.decode(x.cpu() / factor).sample)[:, 0] for x in (val_lr, out, val_hr)]
        return torch.cat([torch.cat(list(row), dim=1) for row in decoded], dim=0).numpy()

    settings = LatentSRSettings(scale=scale, residual=residual, vae_source=str(vae_dir), scaling_factor=factor)
    return train_model(
        f"latent_sr_x{scale}",
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
        vae=vae,
    )
