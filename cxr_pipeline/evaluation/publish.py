"""Publishing an evaluation, apart from scoring it: the report folder, the MLflow run (params,
metrics, the report as artifacts), a link from each evaluated model's training run to it, and
the registry writes (the promotion decisions' tags and aliases, the evaluation run on each
registered version). The suites only score and decide (``suites.py``).

An evaluation's figures live in its own run and nowhere else: a training run holds what its
training logged, and tags ``evaluation.<name>.run_id`` that lead to each evaluation of it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import pandas as pd

from .. import provenance, tracking
from ..data import atomic
from ..reports.document import Section, Table, write_report
from ..settings import mlflow_ui_url
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
    url = tracking.run_url(mlflow_ui_url(mlflow.get_tracking_uri()), active.experiment_id, run_id)
    for record, _ in outcome.evaluated:
        tracking.tag_run(
            record.mlflow_run_id,
            {f"evaluation.{outcome.name}.run_id": run_id, **({f"evaluation.{outcome.name}.url": url} if url else {})},
        )
        tracking.tag_model_version(
            record.registered_model, record.version, {"evaluation_run_id": run_id, "evaluation_report": str(html)}
        )
    return run_id
