"""Publishing an evaluation, apart from scoring it: the report folder, the MLflow run (params,
metrics, the report as artifacts), a link from each evaluated model's training run to it, and
the registry writes (the promotion decisions' tags and aliases, the evaluation run on each
registered version). The suites only score and decide (``suites.py``).

An evaluation's figures live in its own run: a training run holds what its training logged, a
link in its description to each evaluation of it, and tags ``evaluation.<name>.run_id``. The
evaluation run has one child run per method and setting with the headline figures under plain
names (``headline.py``), and each evaluated version's logged model gets its own figures as
MLflow model metrics, so the registry shows them too."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from .. import provenance, tracking
from ..data import atomic
from ..reports.document import Section, Table, write_report
from ..settings import mlflow_ui_url
from .headline import MethodFigures, method_figures, model_metrics
from .outcome import EvaluationOutcome


def training_data_section(outcome: EvaluationOutcome) -> Section:
    """What each evaluated model learnt from (``cxr_pipeline.provenance``), first in the report:
    figures on a test split of the synthetic demo say nothing about real radiographs."""
    rows = [
        {
            "model": record.label,
            "training data": provenance.summary(provenance.read(record.model_dir)).replace("**", ""),
        }
        for record, _ in outcome.evaluated
    ]
    return Section("Training data", tables=[Table("What each evaluated model was trained on", pd.DataFrame(rows))])


def write_outcome(outcome: EvaluationOutcome, folder: Path) -> tuple[Path, Path]:
    """The HTML report (the models' training data first), its Markdown twin and the per-image
    scores, in ``folder``."""
    if outcome.evaluated and not any(section.title == "Training data" for section in outcome.report.sections):
        outcome.report.sections.insert(0, training_data_section(outcome))
    html, markdown = write_report(outcome.report, folder)
    if outcome.scores is not None:
        atomic.write_csv(folder / "per_image_scores.csv", outcome.scores)
    return html, markdown


def evaluation_tags(outcome: EvaluationOutcome) -> dict[str, str]:
    """Tags for the evaluation's MLflow run: which model versions and runs it scored."""
    return {
        "evaluation.models": ", ".join(record.label for record, _ in outcome.evaluated),
        "evaluation.model_run_ids": ",".join(record.mlflow_run_id for record, _ in outcome.evaluated),
        "evaluation.split": "test",
    }


def publish_outcome(outcome: EvaluationOutcome, folder: Path, html: Path) -> str:
    """Inside the active MLflow run: the promotion decisions into the registry; params, metrics
    and the report; then this run's id onto each evaluated model's training run and registered
    version. Returns the run id."""
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("publish_outcome runs inside an active MLflow run")
    active = run.info
    run_id = active.run_id
    for promotion in outcome.promotions:
        promotion.publish()
    mlflow.log_params({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in outcome.params.items()})
    mlflow.log_metrics({k: v for k, v in outcome.metrics.items() if math.isfinite(v)})
    mlflow.log_artifacts(str(folder), artifact_path="report")
    rows = method_figures(outcome)
    publish_method_runs(rows, active.experiment_id, outcome.name, run_id)
    url = tracking.run_url(mlflow_ui_url(mlflow.get_tracking_uri()), active.experiment_id, run_id)
    for record, _ in outcome.evaluated:
        tracking.tag_run(
            record.mlflow_run_id,
            {f"evaluation.{outcome.name}.run_id": run_id, **({f"evaluation.{outcome.name}.url": url} if url else {})},
        )
        tracking.link_in_description(
            record.mlflow_run_id,
            f"Evaluated by [{outcome.name}]({tracking.relative_run_url(active.experiment_id, run_id)})",
        )
        tracking.tag_model_version(
            record.registered_model, record.version, {"evaluation_run_id": run_id, "evaluation_report": str(html)}
        )
        log_model_metrics(record, model_metrics(rows, record))
    tracking.describe_evaluation_experiment(active.experiment_id)
    return run_id


def publish_method_runs(rows: list[MethodFigures], experiment_id: str, evaluation: str, evaluation_run_id: str) -> None:
    """One run per method and setting beside the evaluation run, with the plain-name figures: the
    runs table's columns compare the model and its baselines. Runs of their own, not nested:
    MLflow's table folds child runs under their parent and no saved view can unfold them, so
    nested rows would cost a click per evaluation; each links back to its evaluation instead
    (``evaluation.run_id``, and its description)."""
    link = f"Headline figures of [evaluate-{evaluation}]({tracking.relative_run_url(experiment_id, evaluation_run_id)})"
    client, source = MlflowClient(), tracking.source_tags()
    for row in rows:
        tags = {
            **source,
            "evaluation.asset": evaluation,
            "evaluation.role": row.role,
            "evaluation.run_id": evaluation_run_id,
            "mlflow.note.content": link,
        }
        run = client.create_run(experiment_id, tags=tags, run_name=f"{evaluation} · {row.name}")
        params = {"method": row.method, "setting": row.setting or "-", "role": row.role, "evaluation": evaluation}
        tracking.log_metrics_to_run(run.info.run_id, row.figures)
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        client.set_terminated(run.info.run_id)


def log_model_metrics(record, figures: dict[str, float]) -> None:
    """The version's figures on its logged model (MLflow 3 model metrics: the model's page and the
    experiment's Models table show them), from the active evaluation run, and as tags of the
    registered version (its page shows tags). Versions registered as plain folders have no logged
    model and get the tags alone."""
    if not figures:
        return
    try:
        version = MlflowClient().get_model_version(record.registered_model, str(record.version))
    except MlflowException:
        return
    model_id = tracking.logged_model_id(version)
    if model_id:
        mlflow.log_metrics(figures, model_id=model_id)
    # the registry's version page lists tags, not its logged model's metrics: the same figures there
    tracking.tag_model_version(record.registered_model, record.version, {k: f"{v:.6g}" for k, v in figures.items()})
