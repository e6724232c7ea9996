"""Text-conditional generation: the report encoder, then the latent diffusion model that reads it.

Both are models-group assets logged and registered like every other model (one MLflow run each,
``cxr-report-encoder`` and ``cxr-text-ldm``).
"""

from collections.abc import Iterator

import dagster as dg
import pandas as pd

from cxr_pipeline import kinds
from cxr_pipeline.kinds.report_encoder import split_prompts, summary
from resources import CxrSettings, MlflowTracking

from .diffusion import class_ddpm
from .labels import image_metadata
from .models import latents
from .training import TRAINING_STEP, ahead, recipe_config, skipped, train_one


class ReportEncoderTrainingConfig(recipe_config(kinds.REPORT_ENCODER.recipe, "ReportEncoderTrainingConfig")):  # type: ignore[misc]  # fields generated from the recipe
    """The run config of the asset: its kind's recipe, field for field."""


class TextLdmConfig(recipe_config(kinds.TEXT_LDM.recipe, "TextLdmConfig")):  # type: ignore[misc]  # fields generated from the recipe
    """The run config of the asset: its kind's recipe, field for field."""


@dg.asset(
    group_name="models",
    deps=[image_metadata, latents],
    kinds={"pytorch", "mlflow"},
    output_required=False,  # skipped, with its reason, on data without reports
    **ahead(TRAINING_STEP, 3),
)
def report_encoder(
    context: dg.AssetExecutionContext,
    config: ReportEncoderTrainingConfig,
    settings: CxrSettings,
    mlflow_tracking: MlflowTracking,
) -> Iterator[dg.MaterializeResult]:
    """The encoder the text model reads reports with: a configured local checkpoint, or (the
    default, and offline) a WordPiece tokenizer and small BERT pretrained here on the training
    split's reports (FINDINGS + IMPRESSION) by masked-language modelling. Either way one folder
    loaded by ``AutoTokenizer`` / ``AutoModel``, registered as ``cxr-report-encoder``. Then, unless
    ``align_steps`` is 0, aligned to the paired images by a contrastive loss (ConVIRT)."""
    if skipped(context, kinds.REPORT_ENCODER, settings):
        return
    registered, produced = train_one(context, kinds.REPORT_ENCODER, config.recipe(), settings, mlflow_tracking)
    train_reports = split_prompts(pd.read_parquet(settings.paths().metadata), "train")
    yield dg.MaterializeResult(
        metadata={
            **{k: round(v, 4) for k, v in registered.outcome.metrics.items()},
            **produced,
            **summary(registered.outcome.model_dir, train_reports),
        }
    )


@dg.asset(
    group_name="models",
    deps=[report_encoder, latents, class_ddpm],
    kinds={"pytorch", "mlflow"},
    output_required=False,  # skipped, with its reason, on data without reports
    **ahead(TRAINING_STEP, 2),
)
def text_ldm(
    context: dg.AssetExecutionContext,
    config: TextLdmConfig,
    settings: CxrSettings,
    mlflow_tracking: MlflowTracking,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> Iterator[dg.MaterializeResult]:
    """Latent diffusion from radiology reports: a UNet2DConditionModel on the VAE latents whose
    cross-attention reads the report encoder's token embeddings (with the attention mask), trained
    with 10% empty reports for classifier-free guidance, starting from the class model's UNet when
    it shares the latents and widths; the folder carries its tokenizer, encoder, UNet, scheduler
    and VAE. Registered as ``cxr-text-ldm``."""
    if skipped(context, kinds.TEXT_LDM, settings):
        return
    _, produced = train_one(
        context, kinds.TEXT_LDM, config.recipe(), settings, mlflow_tracking, pipes_subprocess_client
    )
    yield dg.MaterializeResult(metadata=produced)
