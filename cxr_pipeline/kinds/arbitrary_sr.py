"""Arbitrary-scale super-resolution: one latent diffusion model for any scale or output size,
trained on continuous scales and told the scale; exact sizes off the latent grid are the decode
resized (the default) or rendered by its implicit (LIIF) decoder head. ``cxr-arbitrary-sr``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import pandas as pd

from ..data.image_store import ImageStore
from ..data.labels.metadata import content_hash
from ..evaluation.outcome import Evaluation, EvaluationOutcome, PromotionPolicy, SamplingBudget, SuiteInputs
from ..evaluation.suites import ArbitrarySrOptions, arbitrary_super_resolution_suite
from ..model_record import ModelRecord, current_model, has_current_model
from ..models import diffusion_training
from ..models.diffusion import UNetConfig
from ..models.pipelines import ArbitraryScaleSuperResolution
from ..models.training import TrainConfig, TrainingOutcome
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
    warm_start_source,
)
from .latent_sr import LATENT_SR, UNET_PROFILES, latent_shape, trained_scales
from .vae import VAE


@dataclass(frozen=True)
class Recipe(DiffusionRecipe):
    # The fixed-scale residual recipe (x0 target, flat weighting) on continuous scales: each training
    # image degraded like sr_pairs at draws_per_image scales, one per stratum of [scale_min,
    # scale_max], the conditions built on the fly at the start of training (deterministic per
    # image and draw; nothing is written to pairs/). The UNet trains in bf16 on CPU, the decoder
    # head in fp32; steps, scale conditioning and strata chosen on val (docs/recipes.md#arbitrary-scale-super-resolution-arbitrary_sr).
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "sample"
    steps: int = 450
    batch_size: int = 64
    cpu_bf16: bool = True
    residual: bool = True
    scale_conditioning: bool = True  # the UNet is told the scale (a timestep-style embedding of the size ratio)
    scale_min: float = 1.0
    scale_max: float = 4.0
    draws_per_image: int = 6
    draws_by_area: bool = True  # strata equal in scale squared: large scales, the hard ones, drawn more often
    degradation_mix: bool = True  # random blur and mild noise before downsampling, as in sr_pairs
    # The share of draws that restore a square off the latent grid, at a random place, on a canvas
    # mirrored out to the grid, as the pipeline meets most output sizes (0: whole images only, the
    # geometry that lost to bicubic off the grid on sharp CT anatomy; docs/recipes.md#arbitrary-scale-super-resolution-arbitrary_sr).
    off_grid_share: float = 0.5
    pair_seed: int = 0
    # The implicit decoder head, trained first over the frozen VAE to render sizes from
    # decoder_min_ratio of the latent's grid up to the grid itself (the sizes between grid steps; docs/recipes.md#arbitrary-scale-super-resolution-arbitrary_sr).
    decoder_steps: int = 300
    decoder_batch_size: int = 16
    decoder_learning_rate: float = 2e-3
    decoder_min_ratio: float = 0.75
    decoder_hidden: list[int] = field(default_factory=lambda: [64, 64])
    decoder_queries: int = 1024  # output pixels per image per step
    decoder_val_images: int = 48  # val images the head is scored on (rendering every pixel is the costly part)
    # After training, the rendering off the latent grid is chosen on this many val images at each
    # probe scale (choose_renderings: pad, resize or the implicit decoder; 0 keeps pad everywhere)
    render_val_images: int = 24
    # Start the diffusion UNet from the fixed-scale model (latent_sr at the largest trained scale
    # in the range) when it shares the latents and the widths: the same residual recipe, so only
    # the scale's embedding starts fresh. From scratch (off, or no fixed-scale model yet: the run's
    # unet_start param says which), set steps to 600 for what 450 reach with it.
    warm_start: bool = True

    def decoder_train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.decoder_steps,
            batch_size=self.decoder_batch_size,
            learning_rate=self.decoder_learning_rate,
            warmup_steps=min(30, self.decoder_steps),
            ema_decay=0.99,
            checkpoint_every=self.checkpoint_every,
            eval_every=self.decoder_steps,
            log_every=self.log_every,
            seed=self.seed,
            device=self.device,
            mixed_precision=self.mixed_precision,
        )


def plan(recipe: Recipe, paths: WorkPaths, profile: str) -> list[TrainingPlan]:
    if not 1.0 <= recipe.scale_min < recipe.scale_max:
        raise ValueError(f"need 1 <= scale_min < scale_max, got [{recipe.scale_min}, {recipe.scale_max}]")
    vae = current_model(paths, VAE.key)
    shape = latent_shape(paths)
    unet = ARBITRARY_SR.unet(profile, shape[-1], 2 * shape[0], shape[0], widths=recipe.widths())
    if recipe.scale_conditioning:
        unet = replace(unet, class_embed_type="timestep")
    data_hash = content_hash(pd.read_parquet(paths.metadata))
    start, start_text = (
        fixed_scale_start(paths, recipe, unet, vae.model_dir)
        if recipe.warm_start
        else (None, "from scratch (warm_start off)")
    )
    job = TrainingJob(
        ARBITRARY_SR.key,
        str(paths.home),
        unet,
        recipe,
        data_hash,
        ModelInputs(vae_dir=str(vae.model_dir), warm_start_from=str(start.model_dir) if start else None),
    )
    params = {
        "scale_range": f"[{recipe.scale_min:g}, {recipe.scale_max:g}]",
        "draws_per_image": recipe.draws_per_image,
        "draws_by_area": recipe.draws_by_area,
        "degradation_mix": recipe.degradation_mix,
        "off_grid_share": recipe.off_grid_share,
        "residual": recipe.residual,
        "scale_conditioning": recipe.scale_conditioning,
        "vae": vae.label,
        "unet_start": start_text,
        "decoder.steps": recipe.decoder_steps,
        "decoder.batch_size": recipe.decoder_batch_size,
        "decoder.min_ratio": recipe.decoder_min_ratio,
        "decoder.hidden": ",".join(map(str, recipe.decoder_hidden)),
    }
    return [TrainingPlan(ARBITRARY_SR, data_hash, params, job=job)]


def fixed_scale_start(
    paths: WorkPaths, recipe: Recipe, unet: UNetConfig, vae_dir: Path
) -> tuple[ModelRecord | None, str]:
    """The fixed-scale model to start from: the largest scale the work folder has trained inside
    the recipe's range (the large scales are the hard ones, and the draws favour them)."""
    scales = sorted(
        (
            s
            for s in range(2, int(recipe.scale_max) + 1)
            if s >= recipe.scale_min and has_current_model(paths, LATENT_SR.at_scale(s).key)
        ),
        reverse=True,
    )
    if not scales:
        return None, "from scratch: no fixed-scale model in the scale range"
    return warm_start_source(paths, LATENT_SR.at_scale(scales[0]).key, unet, vae_dir)


def train(job: TrainingJob, progress: Progress = None, stop_after: int | None = None) -> TrainingOutcome:
    paths, recipe = job.paths, job.recipe
    assert isinstance(recipe, Recipe)
    return diffusion_training.train_arbitrary_sr(
        pd.read_parquet(paths.metadata),
        ImageStore(paths.image_store),
        paths.latents,
        job.input_dir("vae_dir"),
        job.unet,
        job.schedule,
        job.train,
        recipe.decoder_train_config(),
        job.runs_root,
        job.data_hash,
        scale_min=recipe.scale_min,
        scale_max=recipe.scale_max,
        draws_per_image=recipe.draws_per_image,
        draws_by_area=recipe.draws_by_area,
        degradation_mix=recipe.degradation_mix,
        off_grid_share=recipe.off_grid_share,
        pair_seed=recipe.pair_seed,
        residual=recipe.residual,
        decoder_min_ratio=recipe.decoder_min_ratio,
        decoder_hidden=tuple(recipe.decoder_hidden),
        decoder_queries=recipe.decoder_queries,
        decoder_val_images=recipe.decoder_val_images,
        render_val_images=recipe.render_val_images,
        warm_start_from=job.input_dir("warm_start_from") if job.inputs.warm_start_from else None,
        progress=progress,
        stop_after=stop_after,
    )


SERVING = ServingSpec(
    ArbitraryScaleSuperResolution.from_pretrained,
    lambda sr, x, p: sr(
        request_images(x),
        scale=p["scale"],
        generator=p["seed"],
        num_inference_steps=p["num_inference_steps"],
        strength=given(p["strength"], 1.0),
    ).numpy(),
    lambda folder: gray(native_size(folder) // 4),
    "float32",
    IMAGES,
    IMAGES,
    sampling_params(("strength", "double", 1.0), ("scale", "double", 2.0)),
)


def evaluate(
    inputs: SuiteInputs, budget: SamplingBudget, policy: PromotionPolicy, options: ArbitrarySrOptions
) -> EvaluationOutcome:
    paths, test = inputs.paths, inputs.draw("test", budget.seed)
    outcome = arbitrary_super_resolution_suite(
        current_model(paths, ARBITRARY_SR.key),
        trained_scales(paths),
        test.rows,
        paths.image_store,
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
    "arbitrary_sr_evaluation",
    "The arbitrary-scale model on the test split at each scale against bicubic at that "
    "scale, its latent path without diffusion and, where trained, the fixed-scale model on the same inputs: "
    "PSNR/SSIM/MAE, LR-consistency, spread, the gain by scale; then champion/challenger promotion.",
    evaluate,
    ArbitrarySrOptions,
    # x0 prediction of a residual: on val 20 DDIM steps score what 50 do, for the arbitrary-scale and the
    # fixed-scale model alike (docs/recipes.md), in less than half the time
    budget=SamplingBudget(ddim_steps=20),
    # the paired gain over bicubic, averaged over scales
    policy=PromotionPolicy(
        "psnr_gain_sr_mean_arbitrary",
        ("lr_consistency_psnr_sr_x4_arbitrary",),
        detail_guards=("detail_sr_x4_arbitrary",),
    ),
)

ARBITRARY_SR = ModelKind(
    key="arbitrary_sr",
    asset="arbitrary_sr",
    registered_name="cxr-arbitrary-sr",
    folder="arbitrary_sr",
    title="Arbitrary-scale super-resolution",
    description="arbitrary_sr (EMA weights)",
    recipe=Recipe,
    plan=plan,
    serving=SERVING,
    train=train,
    pipeline=ArbitraryScaleSuperResolution,
    unet_profiles=UNET_PROFILES,
    evaluation=EVALUATION,
)
