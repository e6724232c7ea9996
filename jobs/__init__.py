"""Jobs for the natural units of work, the retraining schedule and the raw-data sensor."""

import os

import dagster as dg

from cxr_pipeline.compute import core_share
from cxr_pipeline.data.ingest import listing_hash
from resources import CxrSettings

from .budgets import tiny_run_config

# What every step imports. Each step runs in its own process; with forkserver these are imported
# once, in the server, and every step's process is forked from it with them loaded, instead of
# importing torch, diffusers and MLflow again (see bench/executor_startup.py).
PRELOADED_MODULES = ["dagster", "torch", "diffusers", "mlflow", "pandas", "pyarrow.parquet", "skimage.metrics"]

# Heavy steps (trainings and evaluations) run side by side, each on its share of the cores
# (cxr_pipeline.compute: up to 4 on a CPU machine, one at a time with a GPU; CXR_HEAVY_STEPS and
# CXR_STEP_THREADS override). Each step's process keeps to its threads (CxrSettings.step_threads):
# two steps on the same cores with every thread each are about five times slower. Light steps run
# beside them.
CORE_SHARE = core_share()
training_executor = dg.multiprocess_executor.configured(
    {
        "max_concurrent": CORE_SHARE.heavy_steps + 1,
        "tag_concurrency_limits": [{"key": "cxr/compute", "value": "training", "limit": CORE_SHARE.heavy_steps}],
        "start_method": {"forkserver": {"preload_modules": PRELOADED_MODULES}},
    }
)

ingestion_job = dg.define_asset_job(
    "ingestion",
    selection=dg.AssetSelection.groups("ingestion", "labels"),
    description="Ingest raw files, parse labels and write patient-level splits.",
)


def compute_jobs(executor: dg.ExecutorDefinition) -> dict:
    """The jobs that train or evaluate, on a given executor: the local multiprocess one here,
    the Kubernetes one in deploy/definitions.py."""
    return {
        "all_assets": dg.define_asset_job(
            "all_assets",
            selection=dg.AssetSelection.all(),
            executor_def=executor,
            description="Materialize every asset: the main job (on the demo dataset by default).",
        ),
        "training": dg.define_asset_job(
            "training",
            selection=dg.AssetSelection.groups("pairs", "models"),
            executor_def=executor,
            description="Build training pairs, train the VAE and the diffusion models on the current splits.",
        ),
        "evaluation": dg.define_asset_job(
            "evaluation",
            selection=dg.AssetSelection.groups("evaluation"),
            executor_def=executor,
            description="Evaluate the current models on the test split (the CXR feature classifier trains in the "
            "training job).",
        ),
        "smoke": dg.define_asset_job(
            "smoke",
            selection=dg.AssetSelection.all(),
            executor_def=executor,
            config=tiny_run_config(),
            description="Every asset at a tiny budget (2 training steps, 2 sampling steps, 4 test images): "
            "minutes on CPU under any profile, to check a profile or dataset end to end before a "
            "real run. Measures nothing about quality.",
        ),
        "retrain_and_evaluate": dg.define_asset_job(
            "retrain_and_evaluate",
            selection=dg.AssetSelection.groups("pairs", "models", "evaluation"),
            executor_def=executor,
            description="Retrain every model on the current data and evaluate it: what the schedule runs.",
        ),
    }


local_jobs = compute_jobs(training_executor)

RETRAIN_CRON_DEFAULT = "0 3 * * 0"  # Sundays 03:00


def _switched_on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "on", "true", "yes", "running"}


def retraining_schedule(job=local_jobs["retrain_and_evaluate"]) -> dg.ScheduleDefinition:
    """Weekly by default (``CXR_RETRAIN_CRON``, UTC). Shipped stopped: start it in the UI
    (Automation) or with ``CXR_RETRAIN_SCHEDULE=on`` before ``dagster dev``."""
    return dg.ScheduleDefinition(
        name="weekly_retraining",
        job=job,
        cron_schedule=os.environ.get("CXR_RETRAIN_CRON", RETRAIN_CRON_DEFAULT),
        execution_timezone="UTC",
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if _switched_on("CXR_RETRAIN_SCHEDULE")
            else dg.DefaultScheduleStatus.STOPPED
        ),
        description="Retrain and evaluate every model on the current data.",
    )


@dg.sensor(
    job=ingestion_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches ingestion when files in CXR_DATA_DIR are added, removed or changed.",
)
def raw_data_changed(context: dg.SensorEvaluationContext, settings: CxrSettings):
    """The cursor is the listing hash (paths, sizes, mtimes) of the last launch, and the run key
    is the hash itself, so the same files never trigger twice. Downstream assets then show as
    stale in the UI until retrained."""
    folder = settings.configured_data_dir()
    if folder is None:
        return dg.SkipReason("CXR_DATA_DIR is unset: the built-in demo dataset does not change")
    if not folder.is_dir():
        return dg.SkipReason(f"CXR_DATA_DIR={folder} is not a folder")
    count, total_bytes, digest = listing_hash(folder)
    if digest == context.cursor:
        return dg.SkipReason(f"no change in {count} files since the last launch")
    context.update_cursor(digest)
    return dg.RunRequest(
        run_key=digest, tags={"cxr/listing_hash": digest, "cxr/files": str(count), "cxr/bytes": str(total_bytes)}
    )
