"""Diffusion stage: latent super-resolution (fixed and arbitrary scale), class-conditional LDM,
low-dose denoiser. Each asset trains its kind's recipe (``cxr_pipeline.kinds``): one MLflow run
per model (params, loss curves, a sample grid every ``eval_every`` steps), the final EMA
weights registered, the run id, version and model folder reported."""

from collections.abc import Iterator

import dagster as dg

from cxr_pipeline import kinds
from resources import CxrSettings, MlflowTracking

from .labels import image_metadata
from .models import latents
from .pairs import low_dose_pairs
from .training import TRAINING_STEP, ahead, recipe_config, skipped, train_kind, train_one


class LatentSrConfig(recipe_config(kinds.LATENT_SR.recipe, "LatentSrConfig")):  # type: ignore[misc]  # fields generated from the recipe
    """The run config of the asset: its kind's recipe, field for field."""


class ArbitrarySrConfig(recipe_config(kinds.ARBITRARY_SR.recipe, "ArbitrarySrConfig")):  # type: ignore[misc]  # fields generated from the recipe
    """The run config of the asset: its kind's recipe, field for field."""


class ClassDdpmConfig(recipe_config(kinds.CLASS_DDPM.recipe, "ClassDdpmConfig")):  # type: ignore[misc]  # fields generated from the recipe
    """The run config of the asset: its kind's recipe, field for field."""


class DenoiserConfig(recipe_config(kinds.DENOISER.recipe, "DenoiserConfig")):  # type: ignore[misc]  # fields generated from the recipe
    """The run config of the asset: its kind's recipe, field for field."""


@dg.asset(group_name="models", deps=[latents], kinds={"pytorch", "mlflow"}, **TRAINING_STEP)
def latent_sr(
    context: dg.AssetExecutionContext,
    config: LatentSrConfig,
    settings: CxrSettings,
    mlflow_tracking: MlflowTracking,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """Latent diffusion conditioned on the bicubic-upsampled LR latent (channel concatenation),
    diffusing the correction from it to the HR latent; one registered model per scale."""
    trained = train_kind(context, kinds.LATENT_SR, config.recipe(), settings, mlflow_tracking, pipes_subprocess_client)
    return dg.MaterializeResult(
        metadata={
            f"{plan.kind.key.removeprefix('latent_sr_')}_{k}": v
            for plan, _, produced in trained
            for k, v in produced.items()
        }
    )


@dg.asset(group_name="models", deps=[latents, latent_sr], kinds={"pytorch", "mlflow"}, **TRAINING_STEP)
def arbitrary_sr(
    context: dg.AssetExecutionContext,
    config: ArbitrarySrConfig,
    settings: CxrSettings,
    mlflow_tracking: MlflowTracking,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """One super-resolution model for any scale or output size: latent diffusion conditioned on
    the latent of the LR image resampled to the target grid, trained on continuous scales, and an
    implicit (LIIF) decoder that renders the result at exactly the requested size. Registered as
    ``cxr-arbitrary-sr``."""
    _, produced = train_one(
        context, kinds.ARBITRARY_SR, config.recipe(), settings, mlflow_tracking, pipes_subprocess_client
    )
    return dg.MaterializeResult(metadata=produced)


@dg.asset(
    group_name="models",
    deps=[image_metadata, latents],
    kinds={"pytorch", "mlflow"},
    output_required=False,  # skipped, with its reason, on data without class labels
    **ahead(TRAINING_STEP, 3),
)
def class_ddpm(
    context: dg.AssetExecutionContext,
    config: ClassDdpmConfig,
    settings: CxrSettings,
    mlflow_tracking: MlflowTracking,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> Iterator[dg.MaterializeResult]:
    """Class-conditional diffusion over the single-label classes plus a learned null class
    (classifier-free guidance), trained on class-balanced batches: in the VAE latent space by
    default (the model folder carries its own copy of the VAE), or on pixels."""
    if skipped(context, kinds.CLASS_DDPM, settings):
        return
    _, produced = train_one(
        context, kinds.CLASS_DDPM, config.recipe(), settings, mlflow_tracking, pipes_subprocess_client
    )
    yield dg.MaterializeResult(metadata=produced)


# After ``latents`` though it trains in pixel space: its registered version carries the input
# distribution ``latents`` fits, so its inputs can be checked against its training data.
@dg.asset(
    group_name="models", deps=[low_dose_pairs, image_metadata, latents], kinds={"pytorch", "mlflow"}, **TRAINING_STEP
)
def low_dose_denoiser(
    context: dg.AssetExecutionContext,
    config: DenoiserConfig,
    settings: CxrSettings,
    mlflow_tracking: MlflowTracking,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """Conditional diffusion restoring normal dose from low dose (noisy image concatenated at the
    input; the chain diffuses the correction to it), cosine schedule, trained on random windows,
    one model across dose levels with the dose as an optional condition."""
    _, produced = train_one(
        context, kinds.DENOISER, config.recipe(), settings, mlflow_tracking, pipes_subprocess_client
    )
    return dg.MaterializeResult(metadata=produced)
