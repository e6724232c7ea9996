"""Latent super-resolution at a fixed scale: a UNet on VAE latents conditioned on the bicubic
latent (channel concatenation), diffusing the correction from it to the HR latent. One
registered model per scale (``cxr-latent-sr-x4``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import pandas as pd

from ..data.labels.metadata import content_hash
from ..data.pairs import scales_built
from ..evaluation.inputs import split_rows
from ..evaluation.outcome import Evaluation, EvaluationOutcome, PromotionPolicy, SamplingBudget, SuiteInputs
from ..evaluation.suites import SrOptions, super_resolution_suite
from ..model_record import ModelRecord, current_model, has_current_model
from ..models import diffusion_training
from ..models.diffusion import UNetProfile
from ..models.model_folder import describe
from ..models.model_settings import LatentSRSettings
from ..models.pipelines import LatentSuperResolution
from ..models.training import TrainingOutcome
from ..settings import WorkPaths
from .base import (
    IMAGES,
    DiffusionRecipe,
    ModelInputs,
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
from .vae import VAE

# Widths by profile (next to the VAE's): the demo trains in CPU minutes, full is the size
# published work uses; the arbitrary-scale model uses the same UNet. A narrow first level that
# downsamples at once (docs/recipes.md#latent-super-resolution-latent_sr).
UNET_PROFILES = {"demo": UNetProfile((8, 32, 64), 8, True), "full": UNetProfile((64, 128, 256, 512), 32, True)}


@dataclass(frozen=True)
class Recipe(DiffusionRecipe):
    # The residual recipe: the UNet predicts the correction to the bicubic latent clean (x0, flat
    # weighting), 400 x 64, bf16 on CPU; chosen on val (docs/recipes.md#latent-super-resolution-latent_sr).
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
        job = TrainingJob(
            LATENT_SR.key,
            str(paths.home),
            unet,
            replace(recipe, scales=[scale]),
            data_hash,
            ModelInputs(vae_dir=str(vae.model_dir)),
        )
        plans.append(
            TrainingPlan(
                LATENT_SR.at_scale(scale),
                data_hash,
                {"scale": scale, "vae": vae.label, "residual": recipe.residual},
                job=job,
            )
        )
    return plans


def train(job: TrainingJob, progress: Progress = None, stop_after: int | None = None) -> TrainingOutcome:
    recipe = job.recipe
    assert isinstance(recipe, Recipe) and len(recipe.scales) == 1, "a latent SR job trains one scale"
    return diffusion_training.train_latent_sr(
        job.paths.latents,
        recipe.scales[0],
        job.input_dir("vae_dir"),
        job.unet,
        job.schedule,
        job.train,
        job.runs_root,
        job.data_hash,
        residual=recipe.residual,
        progress=progress,
        stop_after=stop_after,
    )


SERVING = ServingSpec(
    LatentSuperResolution.from_pretrained,
    lambda sr, x, p: sr(
        request_images(x),
        generator=p["seed"],
        num_inference_steps=p["num_inference_steps"],
        strength=given(p["strength"], 1.0),
    ).numpy(),
    lambda folder: gray(native_size(folder) // describe(folder).settings_as(LatentSRSettings).scale),
    "float32",
    IMAGES,
    IMAGES,
    sampling_params(("strength", "double", 1.0)),
)


def trained_scales(paths: WorkPaths) -> list[tuple[int, ModelRecord]]:
    """(scale, current model) for every scale the pairs were built at and a model was trained for."""
    return [
        (scale, current_model(paths, LATENT_SR.at_scale(scale).key))
        for scale in scales_built(paths.pairs)
        if has_current_model(paths, LATENT_SR.at_scale(scale).key)
    ]


def evaluate(
    inputs: SuiteInputs, budget: SamplingBudget, policy: PromotionPolicy, options: SrOptions
) -> EvaluationOutcome:
    paths, test = inputs.paths, inputs.draw("test", budget.seed)
    outcome = super_resolution_suite(
        trained_scales(paths),
        test.rows,
        split_rows(inputs.metadata, "train", options.regression_train_images),
        split_rows(inputs.metadata, "val", options.regression_val_images),
        paths.image_store,
        paths.pairs,
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
    "sr_evaluation",
    "Each latent SR model on the test split against bicubic, bicubic through the VAE and the VAE "
    "ceiling: PSNR/SSIM/MAE, LR-consistency and the spread over seeds, with DDIM (from noise and from the LR latent) "
    "and optionally the full chain; then champion/challenger promotion per scale.",
    evaluate,
    SrOptions,
    policy=PromotionPolicy(
        "psnr_sr_x{scale}_ddim", ("lr_consistency_psnr_sr_x{scale}_ddim",), detail_guards=("detail_sr_x{scale}_ddim",)
    ),
)

LATENT_SR = ModelKind(
    key="latent_sr",
    asset="latent_sr",
    registered_name="cxr-latent-sr",
    folder="latent_sr",
    title="Latent super-resolution",
    description="latent_sr (EMA weights)",
    recipe=Recipe,
    plan=plan,
    serving=SERVING,
    train=train,
    pipeline=LatentSuperResolution,
    unet_profiles=UNET_PROFILES,
    evaluation=EVALUATION,
    per_scale=True,
)
