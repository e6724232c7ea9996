"""Jobs: the natural units of work, selectable by asset group."""

import dagster as dg

# Two trainings on the same cores are each about five times slower (thread oversubscription):
# light steps run side by side, training steps one at a time.
training_executor = dg.multiprocess_executor.configured({
    "max_concurrent": 2,
    "tag_concurrency_limits": [{"key": "cxr/compute", "value": "training", "limit": 1}],
})

all_assets_job = dg.define_asset_job(
    "all_assets",
    selection=dg.AssetSelection.all(),
    executor_def=training_executor,
    description="Materialize every asset: the main job (on the demo dataset by default).",
)

ingestion_job = dg.define_asset_job(
    "ingestion",
    selection=dg.AssetSelection.groups("ingestion", "labels"),
    description="Ingest raw files, parse labels and write patient-level splits.",
)
