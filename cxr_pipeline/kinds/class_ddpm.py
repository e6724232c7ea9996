"""Class-conditional latent diffusion with classifier-free guidance over the single-label
classes plus a learned null class. ``cxr-class-ddpm``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from ..data.image_store import ImageStore
from ..data.labels.metadata import content_hash
from ..evaluation.outcome import Evaluation, EvaluationOutcome, PromotionPolicy, SamplingBudget, SuiteInputs
from ..evaluation.suites import GenerationOptions, generation_suite
from ..model_record import current_model
from ..models import diffusion_training
from ..models.diffusion import UNetProfile
from ..models.pipelines import ClassConditionalGenerator
from ..models.training import TrainingOutcome
from ..settings import WorkPaths, get_profile
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
    sampling_params,
    too_few_classes,
    with_data_classes,
)
from .classifier import CLASSIFIER
from .latent_sr import latent_shape
from .vae import VAE

# The class model on latents: a narrow first level that downsamples at once (docs/recipes.md#class-conditional-model-class_ddpm).
UNET_PROFILES = {
    "demo": UNetProfile((16, 32, 64, 64), 8, True, 2),
    "full": UNetProfile((64, 128, 256, 512), 32, True, 2),
}
# On pixels (space="pixel"), the model the latent one replaced
PIXEL_UNET_PROFILES = {"demo": UNetProfile((16, 32, 64), 8, False), "full": UNetProfile((64, 128, 256, 256), 32, True)}


@dataclass(frozen=True)
class Recipe(DiffusionRecipe):
    # The latent recipe: 32x32x4 VAE latents instead of 64x64 pixels, v-prediction with min-SNR-5
    # weighting, large class-balanced batches at a small UNet's learning rate.
    space: Literal["latent", "pixel"] = "latent"
    # 1000 steps: 600 would do for this model, not for the text model started from it (docs/recipes.md#class-conditional-model-class_ddpm).
    steps: int = 1000
    batch_size: int = 64
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    snr_gamma: float | None = 5.0
    classes: list[str] = field(default_factory=list)  # empty: the classes the labels stage decided
    class_balance: bool = True  # inverse-frequency sampling: real label distributions are skewed
    label_dropout: float = 0.1  # classifier-free guidance training
    guidance_scale: float = 3.0  # the saved default; chosen on val (docs/recipes.md#class-conditional-model-class_ddpm)
    cpu_bf16: bool = True  # bf16 autocast on CPUs that have it: the same on val, faster (docs/recipes.md#class-conditional-model-class_ddpm)


def plan(recipe: Recipe, paths: WorkPaths, profile: str) -> list[TrainingPlan]:
    recipe = with_data_classes(recipe, paths)
    metadata = pd.read_parquet(paths.metadata)
    num_class_embeds = len(recipe.classes) + 1
    if recipe.space == "latent":
        vae = current_model(paths, VAE.key)
        channels, size = latent_shape(paths)[:2]
        unet = CLASS_DDPM.unet(
            profile, size, channels, channels, widths=recipe.widths(), num_class_embeds=num_class_embeds
        )
        inputs = ModelInputs(vae_dir=str(vae.model_dir))
    else:
        size = get_profile(profile).image_size
        unet = PIXEL_UNET_PROFILES[profile].config(size, 1, 1, num_class_embeds, recipe.widths())
        inputs = ModelInputs()
    data_hash = content_hash(metadata)
    job = TrainingJob(CLASS_DDPM.key, str(paths.home), unet, recipe, data_hash, inputs)
    counts = metadata[(metadata["split"] == "train")]["class_name"].value_counts().to_dict()
    params = {
        "space": recipe.space,
        "classes": ",".join(recipe.classes),
        "class_balance": recipe.class_balance,
        "label_dropout": recipe.label_dropout,
        "guidance_scale": recipe.guidance_scale,
    }
    return [TrainingPlan(CLASS_DDPM, data_hash, params, job=job, reported={"train_images_per_class": counts})]


def train(job: TrainingJob, progress: Progress = None, stop_after: int | None = None) -> TrainingOutcome:
    paths, recipe = job.paths, job.recipe
    assert isinstance(recipe, Recipe)
    latent = recipe.space == "latent"
    return diffusion_training.train_class_ddpm(
        pd.read_parquet(paths.metadata),
        ImageStore(paths.image_store),
        recipe.classes,
        job.unet,
        job.schedule,
        job.train,
        job.runs_root,
        job.data_hash,
        latents_dir=paths.latents if latent else None,
        vae_dir=job.input_dir("vae_dir") if latent else None,
        class_balance=recipe.class_balance,
        label_dropout=recipe.label_dropout,
        guidance_scale=recipe.guidance_scale,
        progress=progress,
        stop_after=stop_after,
    )


SERVING = ServingSpec(
    ClassConditionalGenerator.from_pretrained,
    lambda model, x, p: model(
        np.asarray(x, dtype=np.int64).reshape(-1).tolist(),
        generator=p["seed"],
        num_inference_steps=p["num_inference_steps"],
        guidance_scale=given(p["guidance_scale"]),
    ).numpy(),
    lambda folder: np.zeros(1, np.int64),
    "int64",
    (-1,),
    IMAGES,
    sampling_params(("guidance_scale", "double", -1.0)),
)


def evaluate(
    inputs: SuiteInputs, budget: SamplingBudget, policy: PromotionPolicy, options: GenerationOptions
) -> EvaluationOutcome:
    paths = inputs.paths
    test, val = (inputs.draw(split, budget.seed, labelled=True) for split in ("test", "val"))
    outcome = generation_suite(
        current_model(paths, CLASS_DDPM.key),
        current_model(paths, CLASSIFIER.key),
        test.rows,
        val.rows,
        paths.image_store,
        budget,
        policy,
        paths.registry_cache,
        options,
        log=inputs.log,
    )
    outcome.note_draws([test, val])
    outcome.asset_metadata.update(test_images=len(test.rows), fid_inception_status=outcome.params["fid_inception"])
    return outcome


EVALUATION = Evaluation(
    "generation_evaluation",
    "The class-conditional model against real test images: fd_cxr and KID on the CXR "
    "feature network, conditional accuracy, MS-SSIM diversity, and Inception FID when its weights are available "
    "locally; then champion/challenger promotion.",
    evaluate,
    GenerationOptions,
    policy=PromotionPolicy("fd_cxr_class_ddpm", ("cond_acc_class_ddpm",), detail_guards=("detail_class_ddpm",)),
)

CLASS_DDPM = ModelKind(
    key="class_ddpm",
    asset="class_ddpm",
    registered_name="cxr-class-ddpm",
    folder="class_ddpm",
    title="Class-conditional LDM",
    description="class_ddpm (EMA weights)",
    recipe=Recipe,
    plan=plan,
    serving=SERVING,
    train=train,
    pipeline=ClassConditionalGenerator,
    unet_profiles=UNET_PROFILES,
    evaluation=EVALUATION,
    unavailable=too_few_classes,
)
