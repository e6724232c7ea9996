"""Jobs: the natural units of work, selectable by asset group."""

import dagster as dg

all_assets_job = dg.define_asset_job(
    "all_assets",
    selection=dg.AssetSelection.all(),
    description="Materialize every asset: the main job (on the demo dataset by default).",
)

ingestion_job = dg.define_asset_job(
    "ingestion",
    selection=dg.AssetSelection.groups("ingestion", "labels"),
    description="Ingest raw files, parse labels and write patient-level splits.",
)
