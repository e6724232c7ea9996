"""Low-dose denoising: a conditional pixel-space diffusion model restoring normal dose from low
dose, one model across dose levels with the dose as an optional condition. ``cxr-lowdose-denoiser``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import pandas as pd

from ..data.image_store import ImageStore
from ..data.labels.metadata import content_hash
from ..data.pairs import doses_built, low_dose_pair_dir
from ..evaluation.suites import denoising_suite
from ..models import diffusion_training
from ..models.diffusion import UNetProfile
from ..models.pipelines import LowDoseDenoiser
from ..settings import WorkPaths, get_profile
from .base import (IMAGES, DiffusionRecipe, ModelKind, ServingSpec, TrainingJob, TrainingPlan, given, gray,
                   native_size, request_images, sampling_params)

UNET_PROFILES = {"demo": UNetProfile((16, 32, 64), 8, False), "full": UNetProfile((64, 128, 256, 256), 32, True)}


@dataclass(frozen=True)
class Recipe(DiffusionRecipe):
    # The residual recipe (bench/denoiser_recipe.py, chosen on val): the UNet predicts the clean
    # correction to the low-dose image (x0 target, flat weighting: min-SNR-5 cost 1.7 dB at the
    # lowest dose), on random 32 px windows, 1000 x 32 at 2e-3. Stays fp32 on CPU: bf16 autocast was
    # only 1.13x faster and lost 0.36 dB at the lowest dose on val (bench/denoiser_recipe.py +bf16).
    beta_schedule: str = "squaredcos_cap_v2"  # cosine
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "sample"
    steps: int = 1000
    batch_size: int = 32
    checkpoint_every: int = 250
    eval_every: int = 250  # a sample grid to MLflow every this many steps
    crop: Optional[int] = 32  # training window in pixels; None: whole images
    residual: bool = True  # diffuse the correction to the low-dose image, not the image itself
    dose_conditioning: bool = True
    sampling_strength: float = 0.4  # start from the noisy input noised to 40% of T (evaluation tunes it on val)


def plan(recipe: Recipe, paths: WorkPaths, profile: str) -> list[TrainingPlan]:
    doses = doses_built(paths.pairs)
    size = get_profile(profile).image_size
    unet = DENOISER.unet(profile, size, 2, 1, widths=recipe.widths(),
                         num_class_embeds=len(doses) + 1 if recipe.dose_conditioning else None)
    data_hash = content_hash(pd.read_parquet(paths.metadata))
    job = TrainingJob(DENOISER.key, str(paths.home), unet, recipe.schedule(),
                      recipe.train_config(), data_hash,
                      {"dose_conditioning": recipe.dose_conditioning, "strength": recipe.sampling_strength,
                       "crop": recipe.crop, "residual": recipe.residual})
    params = {"doses": ",".join(f"{d:g}" for d in doses), "dose_conditioning": recipe.dose_conditioning,
              "sampling_strength": recipe.sampling_strength, "crop": recipe.crop, "residual": recipe.residual}
    return [TrainingPlan(DENOISER, data_hash, params, job=job)]


def train(job: TrainingJob, progress=None, stop_after: int | None = None):
    paths, options = job.paths, job.options
    dose_stores = {}
    for dose in doses_built(paths.pairs):
        folder = low_dose_pair_dir(paths.pairs, dose)
        dose_stores[dose] = (ImageStore(folder), pd.read_parquet(folder / "index.parquet"))
    return diffusion_training.train_denoiser(
        pd.read_parquet(paths.metadata), ImageStore(paths.image_store), dose_stores, job.unet, job.schedule, job.train,
        job.runs_root, job.data_hash, dose_conditioning=options["dose_conditioning"], strength=options["strength"],
        crop=options.get("crop"), residual=options.get("residual", False), progress=progress, stop_after=stop_after)


SERVING = ServingSpec(
    LowDoseDenoiser.from_pretrained,
    lambda model, x, p: model(request_images(x), seed=p["seed"], steps=p["steps"], strength=given(p["strength"]),
                              dose=given(p["dose"])).numpy(),
    lambda folder: gray(native_size(folder)),
    "float32", IMAGES, IMAGES, sampling_params(("strength", "double", -1.0), ("dose", "double", -1.0)))

DENOISER = ModelKind(
    key="denoiser", asset="low_dose_denoiser", registered_name="cxr-lowdose-denoiser", folder="denoiser",
    title="Low-dose denoiser", description="denoiser (EMA weights)", recipe=Recipe, plan=plan, serving=SERVING,
    train=train, pipeline=LowDoseDenoiser, unet_profiles=UNET_PROFILES, evaluated_by="denoising_evaluation",
    suite=denoising_suite)
