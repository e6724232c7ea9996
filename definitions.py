"""The one place where the Dagster definitions are assembled (loaded via workspace.yaml)."""

import dagster as dg

from assets import ingestion
from jobs import all_assets_job, ingestion_job
from resources import CxrSettings

defs = dg.Definitions(
    assets=[ingestion.raw_images, ingestion.ingested_images],
    asset_checks=[ingestion.rejected_share_within_limit, ingestion.every_input_accounted_for],
    jobs=[all_assets_job, ingestion_job],
    resources={"settings": CxrSettings()},
)
