"""The one place where the Dagster definitions are assembled (loaded via workspace.yaml)."""

import dagster as dg

from assets import diffusion, evaluation, ingestion, labels, models, pairs
from jobs import (all_assets_job, evaluation_job, ingestion_job, raw_data_changed, retraining_job, retraining_schedule,
                  training_job)
from resources import CxrSettings, MlflowTracking

settings = CxrSettings()

defs = dg.Definitions(
    assets=[
        ingestion.raw_images,
        ingestion.ingested_images,
        labels.label_table,
        labels.image_metadata,
        pairs.sr_pairs,
        pairs.low_dose_pairs,
        models.vae,
        models.latents,
        diffusion.latent_sr,
        diffusion.class_ddpm,
        diffusion.low_dose_denoiser,
        evaluation.cxr_classifier,
        evaluation.sr_evaluation,
        evaluation.denoising_evaluation,
        evaluation.generation_evaluation,
    ],
    asset_checks=[
        ingestion.rejected_share_within_limit,
        ingestion.every_input_accounted_for,
        labels.no_leakage_between_splits,
        labels.every_split_non_empty,
        labels.label_coverage,
    ],
    jobs=[all_assets_job, ingestion_job, training_job, evaluation_job, retraining_job],
    schedules=[retraining_schedule()],
    sensors=[raw_data_changed],
    resources={"settings": settings, "mlflow_tracking": MlflowTracking(settings=settings)},
)
