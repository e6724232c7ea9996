"""The one place where the Dagster definitions are assembled (loaded via workspace.yaml).

``deploy/definitions.py`` reuses these lists with the Kubernetes executor for production."""

import dagster as dg

from assets import diffusion, evaluation, ingestion, labels, models, pairs, text
from jobs import ingestion_job, local_jobs, raw_data_changed, retraining_schedule
from resources import CxrSettings, MlflowTracking

ASSETS = [
    ingestion.raw_images,
    ingestion.ingested_images,
    labels.label_table,
    labels.image_metadata,
    pairs.sr_pairs,
    pairs.low_dose_pairs,
    models.vae,
    models.latents,
    diffusion.latent_sr,
    diffusion.arbitrary_sr,
    diffusion.class_ddpm,
    diffusion.low_dose_denoiser,
    text.report_encoder,
    text.text_ldm,
    models.cxr_classifier,
    evaluation.sr_evaluation,
    evaluation.arbitrary_sr_evaluation,
    evaluation.denoising_evaluation,
    evaluation.generation_evaluation,
    evaluation.text_generation_evaluation,
    evaluation.synthetic_utility,
]

ASSET_CHECKS = [
    ingestion.rejected_share_within_limit,
    ingestion.every_input_accounted_for,
    labels.no_leakage_between_splits,
    labels.every_split_non_empty,
    labels.label_coverage,
    labels.every_class_label_has_a_class,
]


def resources(share_cores: bool) -> dict:
    settings = CxrSettings(share_cores=share_cores)
    return {
        "settings": settings,
        "mlflow_tracking": MlflowTracking(settings=settings),
        # launches jobs/train_worker.py (python -m jobs.train_worker) when a training asset's launcher is not in_process
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }


def build_definitions(compute: dict, share_cores: bool = False) -> dg.Definitions:
    """Everything, with the training and evaluation jobs of ``compute`` (see jobs.compute_jobs);
    ``share_cores``: steps side by side on one machine share its cores (CxrSettings)."""
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=ASSET_CHECKS,
        jobs=[ingestion_job, *compute.values()],
        schedules=[retraining_schedule(compute["retrain_and_evaluate"])],
        sensors=[raw_data_changed],
        resources=resources(share_cores),
    )


# Steps side by side on this machine, each on its share of the cores.
defs = build_definitions(local_jobs, share_cores=True)
