"""Text-conditional latent diffusion from radiology reports: a UNet2DConditionModel whose
cross-attention reads the report encoder's token embeddings, with classifier-free guidance
against the empty report. ``cxr-text-ldm``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd

from ..data.labels.metadata import content_hash
from ..evaluation.outcome import Evaluation, EvaluationOutcome, PromotionPolicy, SamplingBudget, SuiteInputs
from ..evaluation.suites import TextGenerationOptions, text_generation_suite
from ..model_record import current_model
from ..models import diffusion_training
from ..models.diffusion import UNetProfile
from ..models.pipelines import TextConditionalGenerator
from ..models.report_encoder import ReportEncoder
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
    report_example,
    request_reports,
    sampling_params,
    warm_start_source,
)
from .class_ddpm import CLASS_DDPM
from .classifier import CLASSIFIER
from .latent_sr import latent_shape
from .report_encoder import REPORT_ENCODER, no_reports, split_prompts
from .vae import VAE

# The class model's UNet, cross-attending at its two lowest resolutions (docs/recipes.md#text-conditional-model-text_ldm).
UNET_PROFILES = {
    "demo": UNetProfile((16, 32, 64, 64), 8, True, 2, 2),
    "full": UNetProfile((64, 128, 256, 512), 32, True, 2, 2),
}


@dataclass(frozen=True)
class Recipe(DiffusionRecipe):
    # The class model's latent recipe (v-prediction, min-SNR-5, balanced batches), with the report
    # as the condition: 10% empty reports for classifier-free guidance; 600 x 64 in bf16 on CPU (less
    # work falls short on val; docs/recipes.md#text-conditional-model-text_ldm).
    steps: int = 600
    batch_size: int = 64
    cpu_bf16: bool = True
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    snr_gamma: float | None = 5.0
    text_dropout: float = 0.1
    # The saved default (the app's, the previews'); text_generation_evaluation chooses its own on val (docs/recipes.md#text-conditional-model-text_ldm).
    guidance_scale: float = 4.0
    balance: bool = True
    # The report encoder's last layers trained with the UNet (at 0.05x its learning rate); 0: frozen (docs/recipes.md#text-conditional-model-text_ldm).
    trainable_encoder_layers: int = 0
    # Start from the class model's UNet when it shares the latent space and the widths (its
    # convolutions already draw the anatomy; the report's embedding and cross-attention start
    # fresh; docs/recipes.md#text-conditional-model-text_ldm).
    warm_start: bool = True


def plan(recipe: Recipe, paths: WorkPaths, profile: str) -> list[TrainingPlan]:
    metadata = pd.read_parquet(paths.metadata)
    vae, encoder_record = current_model(paths, VAE.key), current_model(paths, REPORT_ENCODER.key)
    encoder = ReportEncoder.from_pretrained(encoder_record.model_dir)
    channels, size = latent_shape(paths)[:2]
    unet = TEXT_LDM.unet(
        profile, size, channels, channels, widths=recipe.widths(), cross_attention_dim=encoder.hidden_size
    )
    data_hash = content_hash(metadata)
    start, start_text = (
        warm_start_source(paths, CLASS_DDPM.key, unet, vae.model_dir)
        if recipe.warm_start
        else (None, "from scratch (warm_start off)")
    )
    job = TrainingJob(
        TEXT_LDM.key,
        str(paths.home),
        unet,
        recipe,
        data_hash,
        ModelInputs(
            vae_dir=str(vae.model_dir),
            encoder_dir=str(encoder_record.model_dir),
            warm_start_from=str(start.model_dir) if start else None,
        ),
    )
    params = {
        "report_encoder": encoder_record.label,
        "unet_start": start_text,
        "text_dropout": recipe.text_dropout,
        "guidance_scale": recipe.guidance_scale,
        "balance": recipe.balance,
        "cross_attention_dim": encoder.hidden_size,
        "trainable_encoder_layers": recipe.trainable_encoder_layers,
    }
    return [
        TrainingPlan(
            TEXT_LDM, data_hash, params, job=job, reported={"train_reports": len(split_prompts(metadata, "train"))}
        )
    ]


def train(job: TrainingJob, progress: Progress = None, stop_after: int | None = None) -> TrainingOutcome:
    paths, recipe = job.paths, job.recipe
    assert isinstance(recipe, Recipe)
    return diffusion_training.train_text_ldm(
        pd.read_parquet(paths.metadata),
        paths.latents,
        job.input_dir("vae_dir"),
        job.input_dir("encoder_dir"),
        job.unet,
        job.schedule,
        job.train,
        job.runs_root,
        job.data_hash,
        text_dropout=recipe.text_dropout,
        guidance_scale=recipe.guidance_scale,
        balance=recipe.balance,
        trainable_encoder_layers=recipe.trainable_encoder_layers,
        warm_start_from=job.input_dir("warm_start_from") if job.inputs.warm_start_from else None,
        progress=progress,
        stop_after=stop_after,
    )


SERVING = ServingSpec(
    TextConditionalGenerator.from_pretrained,
    lambda model, x, p: model(
        request_reports(x),
        generator=p["seed"],
        num_inference_steps=p["num_inference_steps"],
        guidance_scale=given(p["guidance_scale"]),
    ).numpy(),
    report_example,
    "string",
    (-1,),
    IMAGES,
    sampling_params(("guidance_scale", "double", -1.0)),
)


def evaluate(
    inputs: SuiteInputs, budget: SamplingBudget, policy: PromotionPolicy, options: TextGenerationOptions
) -> EvaluationOutcome:
    paths = inputs.paths
    outcome = text_generation_suite(
        current_model(paths, TEXT_LDM.key),
        current_model(paths, CLASSIFIER.key),
        inputs.metadata,
        paths.image_store,
        budget,
        policy,
        paths.registry_cache,
        options,
        caps=inputs.caps,
        log=inputs.log,
    )
    outcome.asset_metadata["test_reports"] = outcome.params["test_reports"]
    return outcome


EVALUATION = Evaluation(
    "text_generation_evaluation",
    "The text-conditional model sampled from the test split's own reports: prompt "
    "consistency (per finding, against the model without its prompt and a retrieval baseline), negation, fd_cxr / "
    "KID / precision-recall-density-coverage, memorization against the training images, within-prompt diversity; "
    "guidance chosen on val; then champion/challenger promotion.",
    evaluate,
    TextGenerationOptions,
    budget=SamplingBudget(ddim_steps=20),
    policy=PromotionPolicy(
        "prompt_consistency_text_ldm",
        ("fd_cxr_text_ldm", "memorized_share_text_ldm_feature"),
        detail_guards=("detail_text_ldm",),
    ),
)

TEXT_LDM = ModelKind(
    key="text_ldm",
    asset="text_ldm",
    registered_name="cxr-text-ldm",
    folder="text_ldm",
    title="Text-conditional LDM",
    description="text_ldm (EMA weights)",
    recipe=Recipe,
    plan=plan,
    serving=SERVING,
    train=train,
    pipeline=TextConditionalGenerator,
    unet_profiles=UNET_PROFILES,
    evaluation=EVALUATION,
    unavailable=no_reports,
)
