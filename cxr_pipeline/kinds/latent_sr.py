"""Latent super-resolution at a fixed scale: a UNet on VAE latents conditioned on the bicubic
latent (channel concatenation), diffusing the correction from it to the HR latent. One
registered model per scale (``cxr-latent-sr-x4``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from ..data.labels.metadata import content_hash
from ..evaluation.suites import super_resolution_suite
from ..model_record import current_model
from ..models import diffusion_training
from ..models.diffusion import UNetProfile, describe
from ..models.pipelines import LatentSuperResolution
from ..settings import WorkPaths
from .base import (IMAGES, DiffusionRecipe, ModelKind, ServingSpec, TrainingJob, TrainingPlan, given, gray,
                   native_size, request_images, sampling_params)
from .vae import VAE

# Widths by profile (next to the VAE's): the demo trains in CPU minutes, full is the size
# published work uses. The arbitrary-scale model uses the same UNet. The first level is narrow and
# downsamples at once: on the autoencoder's fine grid (32x32 latents at 64 px) the old levels keep
# their resolutions, and a step costs 1.17x the old UNet's on 16x16 latents where the old UNet
# would cost 6.4x (16 wide: 1.8x; bench/latent_unet_cost.py).
UNET_PROFILES = {"demo": UNetProfile((8, 32, 64), 8, True), "full": UNetProfile((64, 128, 256, 512), 32, True)}


@dataclass(frozen=True)
class Recipe(DiffusionRecipe):
    # The residual recipe (bench/sr_recipe.py, chosen on val): the chain diffuses the correction
    # from the bicubic latent to the HR latent, the UNet predicts it clean (x0 target, flat
    # weighting), 400 x 64 at 2e-3 (1000 steps gain 0.04 dB on val). The old epsilon recipe
    # sampled noise from pure noise. bf16 autocast on CPUs that have it, with explicit attention
    # (training.explicit_attention; with PyTorch's fused kernel bf16 was slower than fp32): 1.27x
    # faster, the same on val (bench/sr_recipe.py x0_residual vs x0_residual+fp32: 30.27 against
    # 30.29 dB from noise, 30.83 against 30.85 from the LR latent).
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "sample"
    steps: int = 400
    batch_size: int = 64
    cpu_bf16: bool = True
    residual: bool = True  # diffuse the correction to the bicubic latent, not the HR latent itself
    scales: list[int] = field(default_factory=lambda: [4])


def latent_shape(paths: WorkPaths) -> list[int]:
    """(channels, height, width) of the VAE latents the ``latents`` asset wrote."""
    return list(pd.read_json(paths.latents / "latents.json", typ="series")["latent_shape"])


def plan(recipe: Recipe, paths: WorkPaths, profile: str) -> list[TrainingPlan]:
    vae = current_model(paths, VAE.key)
    shape = latent_shape(paths)
    data_hash = content_hash(pd.read_parquet(paths.metadata))
    unet = LATENT_SR.unet(profile, shape[-1], 2 * shape[0], shape[0], widths=recipe.widths())
    plans = []
    for scale in recipe.scales:
        job = TrainingJob(LATENT_SR.key, str(paths.home), unet, recipe.schedule(),
                          recipe.train_config(), data_hash,
                          {"scale": scale, "vae_dir": str(vae.model_dir), "residual": recipe.residual})
        plans.append(TrainingPlan(LATENT_SR.at_scale(scale), data_hash,
                                  {"scale": scale, "vae": vae.label, "residual": recipe.residual}, job=job))
    return plans


def train(job: TrainingJob, progress=None, stop_after: int | None = None):
    options = job.options
    return diffusion_training.train_latent_sr(
        job.paths.latents, int(options["scale"]), Path(options["vae_dir"]), job.unet, job.schedule, job.train,
        job.runs_root, job.data_hash, residual=options.get("residual", False), progress=progress,
        stop_after=stop_after)


SERVING = ServingSpec(
    LatentSuperResolution.from_pretrained,
    lambda sr, x, p: sr(request_images(x), seed=p["seed"], steps=p["steps"], strength=given(p["strength"], 1.0)).numpy(),
    lambda folder: gray(native_size(folder) // int(describe(folder)["scale"])),
    "float32", IMAGES, IMAGES, sampling_params(("strength", "double", 1.0)))

LATENT_SR = ModelKind(
    key="latent_sr", asset="latent_sr", registered_name="cxr-latent-sr", folder="latent_sr",
    title="Latent super-resolution", description="latent_sr (EMA weights)", recipe=Recipe, plan=plan,
    serving=SERVING, train=train, pipeline=LatentSuperResolution, unet_profiles=UNET_PROFILES,
    evaluated_by="sr_evaluation", suite=super_resolution_suite, per_scale=True)
