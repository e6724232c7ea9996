"""One-call helpers for notebooks and scripts: a model folder or a registered name in, images
out. The kind comes from the folder itself and the registry (``cxr_pipeline.kinds``) gives its
pipeline; to sample many times, load the pipeline once (``load_pipeline``) and call it.

    images = generate_from_text("cxr-text-ldm", ["Moderate right pleural effusion."], guidance_scale=3, num_inference_steps=50)
    high = super_resolve("cxr-arbitrary-sr", low_resolution, scale=3.3)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from .kinds import kind_of_folder
from .model_source import resolve_model


def load_pipeline(model: str | Path, device: str = "auto", alias: str = "champion"):
    """The pipeline of a model folder or of a registered model's ``alias`` version."""
    folder = resolve_model(model, alias)
    pipeline = kind_of_folder(folder).pipeline
    if pipeline is None:
        raise ValueError(f"{folder} holds a model without a sampling pipeline")
    return pipeline.from_pretrained(folder, device)


def super_resolve(model: str | Path, low_resolution: torch.Tensor, *, device: str = "auto", **options) -> torch.Tensor:
    """With a fixed-scale model (``cxr-latent-sr-x4``) at its scale; with the arbitrary-scale one
    (``cxr-arbitrary-sr``) at ``scale=3.3`` or ``size=(h, w)``."""
    return load_pipeline(model, device)(low_resolution, **options)


def generate(model: str | Path, class_ids: Sequence[int], *, device: str = "auto", **options) -> torch.Tensor:
    return load_pipeline(model, device)(class_ids, **options)


def denoise(model: str | Path, noisy: torch.Tensor, *, device: str = "auto", **options) -> torch.Tensor:
    return load_pipeline(model, device)(noisy, **options)


def generate_from_text(model: str | Path, reports: Sequence[str], *, device: str = "auto", **options) -> torch.Tensor:
    """``generate_from_text("cxr-text-ldm", ["Moderate right pleural effusion."], guidance_scale=3, num_inference_steps=50, generator=0)``."""
    return load_pipeline(model, device)(reports, **options)
