"""A thin MLflow resource: where the tracking store is, and one run per asset materialization."""

from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import mlflow

from cxr_pipeline import tracking
from cxr_pipeline.settings import dagster_ui_url, mlflow_ui_url, tracking_uri_for

from .settings import CxrSettings


class MlflowTracking(dg.ConfigurableResource):
    """``tracking_uri`` / ``MLFLOW_TRACKING_URI``, else SQLite at ``$CXR_HOME/mlflow/mlflow.db``
    (artifacts beside it), so the Model Registry works out of the box."""

    settings: CxrSettings
    tracking_uri: str | None = None
    experiment: str = "cxr-pipeline"  # training runs (and registered models' runs)
    # Evaluations and the synthetic-data experiment: each run holds hundreds of figures (per scale,
    # dose, class, interval) that would otherwise be columns of the training runs' table.
    evaluation_experiment: str = "cxr-pipeline-evaluation"
    # Where people open the two UIs: empty falls back to CXR_DAGSTER_URL / CXR_MLFLOW_UI_URL
    # (cxr_pipeline.settings), so every link into Dagster and MLflow follows one setting.
    dagster_url: str | None = None
    mlflow_ui_url: str | None = None

    def resolved_uri(self) -> str:
        return tracking_uri_for(self.settings.resolved_home(), self.tracking_uri)

    def activate(self, experiment: str | None = None) -> str:
        """Point the MLflow client at this store (creating ``experiment``, default the training
        one); returns its id."""
        return tracking.ensure_experiment(
            self.resolved_uri(), experiment or self.experiment, Path(self.settings.paths().mlflow) / "artifacts"
        )

    @contextmanager
    def run(
        self, context: dg.AssetExecutionContext, run_name: str, tags: dict | None = None, experiment: str | None = None
    ):
        """One MLflow run in ``experiment`` (default the training one), tagged with the Dagster
        lineage (run id, asset, partition) and the code's commit, branch and dirty flag."""
        experiment_id = self.activate(experiment)
        dagster_run = f"{dagster_ui_url(self.dagster_url)}/runs/{context.run.run_id}"
        lineage = {
            "dagster.run_id": context.run.run_id,
            "dagster.run_url": dagster_run,
            # the run's description in the MLflow UI (Markdown): the way back to Dagster
            "mlflow.note.content": f"Materialized by Dagster run [{context.run.run_id[:8]}]({dagster_run}), "
            f"asset `{context.asset_key.to_user_string()}`.",
            "dagster.asset_key": context.asset_key.to_user_string(),
            "dagster.partition": context.partition_key if context.has_partition_key else "",
            **tracking.source_tags(),
            **(tags or {}),
        }
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=lineage) as active:
            yield active

    def run_link(self, run: mlflow.ActiveRun, key: str = "mlflow_run_url") -> dict:
        """Asset metadata linking to the run's page in the MLflow UI, when one is configured or the
        store is a tracking server (the run id is in the metadata either way)."""
        url = tracking.run_url(
            mlflow_ui_url(self.resolved_uri(), self.mlflow_ui_url), run.info.experiment_id, run.info.run_id
        )
        return {key: dg.MetadataValue.url(url)} if url else {}
