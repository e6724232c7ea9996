"""Class-conditional latent diffusion with classifier-free guidance over the single-label
classes plus a learned null class. ``cxr-class-ddpm``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pandas as pd

from ..data.image_store import ImageStore
from ..data.labels.metadata import content_hash
from ..data.labels.vocabulary import DEFAULT_CLASSES
from ..evaluation.suites import generation_suite
from ..model_record import current_model
from ..models import diffusion_training
from ..models.diffusion import UNetProfile
from ..models.pipelines import ClassConditionalGenerator
from ..settings import WorkPaths, get_profile
from .base import IMAGES, DiffusionRecipe, ModelKind, ServingSpec, TrainingJob, TrainingPlan, given, sampling_params
from .latent_sr import latent_shape
from .vae import VAE

# The class model on latents: about 0.5 s per batch of 64 on 2 CPU cores (wider UNets cost 3x per
# step for less gain; see bench/class_recipe.py). A narrow first level that downsamples at once
# keeps the old levels at their resolutions on the autoencoder's fine grid (32x32 latents at
# 64 px): 1.6x the old step on 16x16 latents, where the old UNet would cost 3.7x
# (bench/latent_unet_cost.py).
UNET_PROFILES = {"demo": UNetProfile((16, 32, 64, 64), 8, True, 2),
                 "full": UNetProfile((64, 128, 256, 512), 32, True, 2)}
# On pixels (space="pixel"), the model the latent one replaced
PIXEL_UNET_PROFILES = {"demo": UNetProfile((16, 32, 64), 8, False), "full": UNetProfile((64, 128, 256, 256), 32, True)}


@dataclass(frozen=True)
class Recipe(DiffusionRecipe):
    # The latent recipe: 32x32x4 VAE latents instead of 64x64 pixels, v-prediction with min-SNR-5
    # weighting, large class-balanced batches at a small UNet's learning rate.
    space: Literal["latent", "pixel"] = "latent"
    # On val, on the fine 32x32x4 latents at guidance 3 (bench/class_recipe.py): cond_acc 0.927 (worst
    # class 0.688) at 600 steps, 0.979 (worst 0.875) at 1000; the fine detail barely moves (0.728, 0.751).
    # 600 would do for this model, but the text model warm-started from it fell to 0.74 prompt
    # consistency on val against 0.86 (bench/text_recipe.py --class-model), so 1000 stays.
    steps: int = 1000
    batch_size: int = 64
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    snr_gamma: Optional[float] = 5.0
    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    class_balance: bool = True  # inverse-frequency sampling: real label distributions are skewed
    label_dropout: float = 0.1  # classifier-free guidance training
    guidance_scale: float = 3.0  # chosen on val (bench/class_recipe.py): 2 -> 3 raises cond_acc, FD unchanged
    # bf16 autocast on CPUs that have it: 1.33x faster, the same on val within sampling noise
    # (cond_acc 0.917 against 0.927, FD ratio 0.72 against 0.71; bench/class_recipe.py latent+bf16).
    cpu_bf16: bool = True


def plan(recipe: Recipe, paths: WorkPaths, profile: str) -> list[TrainingPlan]:
    metadata = pd.read_parquet(paths.metadata)
    num_class_embeds = len(recipe.classes) + 1
    if recipe.space == "latent":
        vae = current_model(paths, VAE.key)
        channels, size = latent_shape(paths)[:2]
        unet = CLASS_DDPM.unet(profile, size, channels, channels, widths=recipe.widths(),
                               num_class_embeds=num_class_embeds)
        space = {"vae_dir": str(vae.model_dir)}
    else:
        size = get_profile(profile).image_size
        unet = PIXEL_UNET_PROFILES[profile].config(size, 1, 1, num_class_embeds, recipe.widths())
        space = {}
    data_hash = content_hash(metadata)
    job = TrainingJob(CLASS_DDPM.key, str(paths.home), unet, recipe.schedule(),
                      recipe.train_config(), data_hash,
                      {"classes": list(recipe.classes), "balance": recipe.class_balance,
                       "label_dropout": recipe.label_dropout, "guidance": recipe.guidance_scale, **space})
    counts = metadata[(metadata["split"] == "train")]["class_name"].value_counts().to_dict()
    params = {"space": recipe.space, "classes": ",".join(recipe.classes), "class_balance": recipe.class_balance,
              "label_dropout": recipe.label_dropout, "guidance_scale": recipe.guidance_scale}
    return [TrainingPlan(CLASS_DDPM, data_hash, params, job=job, reported={"train_images_per_class": counts})]


def train(job: TrainingJob, progress=None, stop_after: int | None = None):
    paths, options = job.paths, job.options
    latent = options.get("vae_dir") is not None
    return diffusion_training.train_class_ddpm(
        pd.read_parquet(paths.metadata), ImageStore(paths.image_store), options["classes"], job.unet, job.schedule,
        job.train, job.runs_root, job.data_hash, latents_dir=paths.latents if latent else None,
        vae_dir=Path(options["vae_dir"]) if latent else None, balance=options["balance"],
        label_dropout=options["label_dropout"], guidance=options["guidance"], progress=progress, stop_after=stop_after)


SERVING = ServingSpec(
    ClassConditionalGenerator.from_pretrained,
    lambda model, x, p: model(np.asarray(x, dtype=np.int64).reshape(-1).tolist(), seed=p["seed"], steps=p["steps"],
                              guidance=given(p["guidance"])).numpy(),
    lambda folder: np.zeros(1, np.int64), "int64", (-1,), IMAGES, sampling_params(("guidance", "double", -1.0)))

CLASS_DDPM = ModelKind(
    key="class_ddpm", asset="class_ddpm", registered_name="cxr-class-ddpm", folder="class_ddpm",
    title="Class-conditional LDM", description="class_ddpm (EMA weights)", recipe=Recipe, plan=plan, serving=SERVING,
    train=train, pipeline=ClassConditionalGenerator, unet_profiles=UNET_PROFILES, evaluated_by="generation_evaluation",
    suite=generation_suite)
