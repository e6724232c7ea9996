"""The autoencoder under every latent model: ``AutoencoderKL`` for one-channel radiographs,
registered as ``cxr-vae``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..data.image_store import ImageStore
from ..data.labels.metadata import content_hash
from ..models.training import pick_device
from ..models.vae import VaeConfig, load_vae, reconstruct, train_vae
from ..settings import WorkPaths, get_profile
from .base import IMAGES, ModelKind, ServingSpec, TrainingPlan, TrainingRecipe, gray, request_images

# Sizes by profile: a latent grid twice as fine as the old one (the ribs stay), no middle attention
# (docs/recipes.md#autoencoder-vae).
VAE_PROFILES = {
    "demo": VaeConfig(block_out_channels=(16, 32), mid_attention=False),
    "full": VaeConfig(
        block_out_channels=(64, 128, 256),
        latent_channels=8,
        layers_per_block=2,
        norm_num_groups=32,
        mid_attention=False,
    ),
}


@dataclass(frozen=True)
class Recipe(TrainingRecipe):
    # Random 32 px windows, 1500 x 32, bf16 on CPU: chosen on val (docs/recipes.md#autoencoder-vae).
    steps: int = 1500
    batch_size: int = 32
    cpu_bf16: bool = True
    checkpoint_every: int = 500
    eval_every: int = 500  # validation (whole val images) every this many steps
    val_images: int = 1000  # validated on at most this many val images (whole patients): bounded at any dataset size
    crop: int | None = 32  # train on random windows of this many pixels; None: whole images
    latent_channels: int | None = None


def architecture(recipe: Recipe, profile: str) -> VaeConfig:
    """The profile's VAE with the recipe's widths and latent channels when set."""
    overrides: dict[str, Any] = {}
    if recipe.block_out_channels:
        overrides["block_out_channels"] = tuple(recipe.block_out_channels)
    if recipe.latent_channels:
        overrides["latent_channels"] = recipe.latent_channels
    return dataclasses.replace(VAE_PROFILES[profile], **overrides)


def plan(recipe: Recipe, paths: WorkPaths, profile: str) -> list[TrainingPlan]:
    metadata = pd.read_parquet(paths.metadata)
    vae_config = architecture(recipe, profile)
    train_config = recipe.train_config()
    data_hash = content_hash(metadata)
    params = {
        **{f"vae.{k}": v for k, v in vae_config.as_dict().items()},
        **{f"train.{k}": v for k, v in train_config.identity().items()},
        "train_images": int((metadata["split"] == "train").sum()),
        "image_size": get_profile(profile).image_size,
        "train.crop": recipe.crop,
    }

    def run(progress):
        return train_vae(
            metadata,
            ImageStore(paths.image_store),
            paths.models / VAE.folder,
            vae_config,
            train_config,
            data_hash,
            progress=progress,
            crop=recipe.crop,
            val_images=recipe.val_images,
        ), {}

    return [
        TrainingPlan(
            VAE,
            data_hash,
            params,
            run=run,
            reported={
                "downsampling_factor": vae_config.downsampling_factor,
                "latent_channels": vae_config.latent_channels,
            },
        )
    ]


SERVING = ServingSpec(
    lambda folder, device: load_vae(folder, pick_device(device)),
    lambda vae, x, p: reconstruct(vae, request_images(x)).numpy(),
    lambda folder: gray(16),
    "float32",
    IMAGES,
    IMAGES,
)

# No latent model can draw what its autoencoder loses: below this share of the val images' fine
# detail (metrics/detail.py), reconstructions look blurred (a 0.7 px blur scores about 0.27).
FINE_DETAIL_FLOOR = 0.9

VAE = ModelKind(
    key="vae",
    asset="vae",
    registered_name="cxr-vae",
    folder="vae",
    title="Autoencoder (VAE)",
    description="AutoencoderKL for chest radiographs (EMA weights)",
    recipe=Recipe,
    plan=plan,
    serving=SERVING,
    acceptance=(
        ("val_detail", FINE_DETAIL_FLOOR, "keeps the val images' fine detail (ribs, vessels)"),
        ("val_ssim", 0.9, "reconstructs the val images faithfully"),
    ),
)
