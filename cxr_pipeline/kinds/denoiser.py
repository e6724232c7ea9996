"""Low-dose denoising: a conditional pixel-space diffusion model restoring normal dose from low
dose, one model across dose levels with the dose as an optional condition. ``cxr-lowdose-denoiser``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd

from ..data.image_store import ImageStore
from ..data.labels.metadata import content_hash
from ..data.pairs import doses_built, low_dose_pair_dir
from ..evaluation.inputs import split_rows
from ..evaluation.outcome import Evaluation, EvaluationOutcome, PromotionPolicy, SamplingBudget, SuiteInputs
from ..evaluation.suites import DenoisingOptions, denoising_suite
from ..model_record import current_model
from ..models import diffusion_training
from ..models.diffusion import UNetProfile
from ..models.pipelines import LowDoseDenoiser
from ..models.training import TrainingOutcome
from ..settings import WorkPaths, get_profile
from .base import (
    IMAGES,
    DiffusionRecipe,
    ModelKind,
    Progress,
    ServingSpec,
    TrainingJob,
    TrainingPlan,
    given,
    gray,
    native_size,
    request_images,
    sampling_params,
)

UNET_PROFILES = {"demo": UNetProfile((16, 32, 64), 8, False), "full": UNetProfile((64, 128, 256, 256), 32, True)}


@dataclass(frozen=True)
class Recipe(DiffusionRecipe):
    # The residual recipe: the UNet predicts the clean correction to the low-dose image (x0, flat
    # weighting) on 32 px windows, 1000 x 32, fp32 on CPU; chosen on val (docs/recipes.md#low-dose-denoiser-denoiser).
    beta_schedule: str = "squaredcos_cap_v2"  # cosine
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "sample"
    steps: int = 1000
    batch_size: int = 32
    checkpoint_every: int = 250
    eval_every: int = 250  # a sample grid to MLflow every this many steps
    crop: int | None = 32  # training window in pixels; None: whole images
    residual: bool = True  # diffuse the correction to the low-dose image, not the image itself
    dose_conditioning: bool = True
    sampling_strength: float = 0.4  # start from the noisy input noised to 40% of T (evaluation tunes it on val)


def plan(recipe: Recipe, paths: WorkPaths, profile: str) -> list[TrainingPlan]:
    doses = doses_built(paths.pairs)
    size = get_profile(profile).image_size
    unet = DENOISER.unet(
        profile,
        size,
        2,
        1,
        widths=recipe.widths(),
        num_class_embeds=len(doses) + 1 if recipe.dose_conditioning else None,
    )
    data_hash = content_hash(pd.read_parquet(paths.metadata))
    job = TrainingJob(DENOISER.key, str(paths.home), unet, recipe, data_hash)
    params = {
        "doses": ",".join(f"{d:g}" for d in doses),
        "dose_conditioning": recipe.dose_conditioning,
        "sampling_strength": recipe.sampling_strength,
        "crop": recipe.crop,
        "residual": recipe.residual,
    }
    return [TrainingPlan(DENOISER, data_hash, params, job=job)]


def train(job: TrainingJob, progress: Progress = None, stop_after: int | None = None) -> TrainingOutcome:
    paths, recipe = job.paths, job.recipe
    assert isinstance(recipe, Recipe)
    dose_stores = {}
    for dose in doses_built(paths.pairs):
        folder = low_dose_pair_dir(paths.pairs, dose)
        dose_stores[dose] = (ImageStore(folder), pd.read_parquet(folder / "index.parquet"))
    return diffusion_training.train_denoiser(
        pd.read_parquet(paths.metadata),
        ImageStore(paths.image_store),
        dose_stores,
        job.unet,
        job.schedule,
        job.train,
        job.runs_root,
        job.data_hash,
        dose_conditioning=recipe.dose_conditioning,
        sampling_strength=recipe.sampling_strength,
        crop=recipe.crop,
        residual=recipe.residual,
        progress=progress,
        stop_after=stop_after,
    )


SERVING = ServingSpec(
    LowDoseDenoiser.from_pretrained,
    lambda model, x, p: model(
        request_images(x),
        generator=p["seed"],
        num_inference_steps=p["num_inference_steps"],
        strength=given(p["strength"]),
        dose=given(p["dose"]),
    ).numpy(),
    lambda folder: gray(native_size(folder)),
    "float32",
    IMAGES,
    IMAGES,
    sampling_params(("strength", "double", -1.0), ("dose", "double", -1.0)),
)


def evaluate(
    inputs: SuiteInputs, budget: SamplingBudget, policy: PromotionPolicy, options: DenoisingOptions
) -> EvaluationOutcome:
    paths, test = inputs.paths, inputs.draw("test", budget.seed)
    outcome = denoising_suite(
        current_model(paths, DENOISER.key),
        test.rows,
        split_rows(inputs.metadata, "val", options.val_images),
        split_rows(inputs.metadata, "train", options.regression_train_images),
        paths.image_store,
        paths.pairs,
        doses_built(paths.pairs),
        budget,
        policy,
        paths.registry_cache,
        options,
        log=inputs.log,
    )
    outcome.note_draws([test])
    outcome.asset_metadata["test_images"] = len(test.rows)
    return outcome


EVALUATION = Evaluation(
    "denoising_evaluation",
    "The low-dose denoiser per dose level on the test split, against the noisy input, non-local means "
    "with and without a variance-stabilising transform (tuned on val) and a regression CNN trained on the "
    "same pairs, then champion/challenger promotion against the strongest classical baseline.",
    evaluate,
    DenoisingOptions,
    # The denoiser predicts x0 of a residual, so a coarse chain loses nothing: on val, 20 DDIM steps against
    # 50 are +0.18 / +0.09 / -0.13 dB at I0 1000 / 3000 / 10000 in 0.43x the time (docs/recipes.md).
    budget=SamplingBudget(ddim_steps=20),
    # the lowest dose: the hardest case
    policy=PromotionPolicy(
        "psnr_denoise_i0_1000_diffusion",
        ("ssim_denoise_i0_1000_diffusion",),
        detail_guards=("detail_denoise_i0_1000_diffusion",),
    ),
)

DENOISER = ModelKind(
    key="denoiser",
    asset="low_dose_denoiser",
    registered_name="cxr-lowdose-denoiser",
    folder="denoiser",
    title="Low-dose denoiser",
    description="denoiser (EMA weights)",
    recipe=Recipe,
    plan=plan,
    serving=SERVING,
    train=train,
    pipeline=LowDoseDenoiser,
    unet_profiles=UNET_PROFILES,
    evaluation=EVALUATION,
)
