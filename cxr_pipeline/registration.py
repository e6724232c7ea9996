"""The one path from a planned training to the registry, for every model kind: one MLflow run
with the parameters, the training (which logs its own curves), the final validation metrics,
the preview grids, the model folder as a pyfunc model and a registered version; then the model
record downstream steps read (``models/current/<key>.json``).

The caller opens the MLflow run (``start_run(run_name, tags)``), so the Dagster layer can tag it
with its lineage while scripts and notebooks open a plain run.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from . import provenance, serving, tracking
from .data.labels.report_text import report_prompts
from .kinds import TrainingPlan
from .kinds.base import IMAGES
from .model_record import ModelRecord
from .models.input_distribution import FILE as INPUT_DISTRIBUTION_FILE
from .models.input_distribution import REPORT_FILE, InputDistribution, ReportDistribution
from .models.training import TrainingOutcome
from .promotion import accept
from .settings import WorkPaths

StartRun = Callable[[str, dict], AbstractContextManager]
PREVIEW_KEY = "samples"  # the preview grids' image key in MLflow


@dataclass
class Registered:
    outcome: TrainingOutcome
    record: ModelRecord
    run: Any  # the MLflow run (info.run_id, info.experiment_id)
    reported: dict = field(default_factory=dict)  # what the training reported beside its outcome

    @property
    def last_preview(self) -> np.ndarray | None:
        previews = self.outcome.previews
        return previews[max(previews)] if previews else None


def plan_params(plan: TrainingPlan) -> dict:
    """The MLflow params of a planned training: a diffusion job's training config and schedule,
    then the kind's own."""
    if plan.job is None:
        return dict(plan.params)
    job = plan.job
    return {
        **{f"train.{k}": v for k, v in job.train.identity().items()},
        "timesteps": job.schedule.timesteps,
        "beta_schedule": job.schedule.beta_schedule,
        "prediction_type": job.schedule.prediction_type,
        "snr_gamma": job.schedule.snr_gamma,
        **plan.params,
    }


def input_references(kind, paths: WorkPaths, model_dir) -> dict:
    """Into the model folder, what its inputs are checked against (``models/input_distribution.py``):
    for a model that takes images, the latents' input distribution; for one that takes reports, the
    training reports' vocabulary calibrated on val. Returns their summary for the pyfunc metadata."""
    if kind.serving.input_shape == IMAGES:
        reference = InputDistribution.load(paths.latents)
        if reference is not None:
            reference.save(model_dir)
            return {
                "input_distribution": {
                    "file": INPUT_DISTRIBUTION_FILE,
                    "threshold": reference.threshold,
                    "vae": reference.vae,
                }
            }
    if kind.serving.input_dtype == "string":
        metadata = pd.read_parquet(paths.metadata)
        reports = {
            split: [p for p in report_prompts(metadata[metadata["split"] == split]) if p] for split in ("train", "val")
        }
        if reports["train"] and reports["val"]:
            vocabulary = ReportDistribution.fit(reports["train"], reports["val"])
            vocabulary.save(model_dir)
            return {
                "report_distribution": {
                    "file": REPORT_FILE,
                    "threshold": vocabulary.threshold,
                    "words": len(vocabulary.vocabulary),
                }
            }
    return {}


def train_and_register(
    plan: TrainingPlan,
    paths: WorkPaths,
    start_run: StartRun,
    train: Callable[[str], tuple[TrainingOutcome, dict]],
    extra_params: dict | None = None,
    profile: str = "unknown",
) -> Registered:
    """``train(mlflow_run_id)`` trains (in this process or another) and returns the outcome and
    what it reported. The model folder gets its provenance (and, for a model that takes images,
    the input distribution of its training data) before it is logged, so the registered version
    carries both."""
    kind = plan.kind
    with start_run(kind.registered_name, {"data.split_hash": plan.data_hash, "model": kind.registered_name}) as run:
        lineage = provenance.training_provenance(paths, profile)
        # what it learns from and is checked on, before training: a run that fails still says so
        tracking.log_split_inputs(paths, profile, ("train", "val"))
        mlflow.log_params({**plan_params(plan), **(extra_params or {})})
        outcome, reported = train(run.info.run_id)
        if outcome.metrics:
            mlflow.log_metrics({f"final_{k}": v for k, v in outcome.metrics.items()})
        for step, grid in sorted(outcome.previews.items()):
            # one image key with steps: the run page's step slider over the preview grids
            mlflow.log_image(np.asarray(grid), key=PREVIEW_KEY, step=step)
        provenance.write(outcome.model_dir, lineage)
        metadata = {"provenance": lineage, **input_references(kind, paths, outcome.model_dir)}
        mlflow.set_tags(provenance.as_tags(lineage))
        version = str(
            serving.log_pyfunc(outcome.model_dir, kind.registered_name, metadata=metadata).registered_model_version
        )
        tracking.describe_registered_model(kind.registered_name, kind.description)
        tracking.tag_model_version(kind.registered_name, version, provenance.as_tags(lineage))
        if kind.acceptance:
            accept(kind.registered_name, version, kind.acceptance, outcome.metrics)
    record = ModelRecord(outcome.model_dir, run.info.run_id, kind.registered_name, version, plan.data_hash)
    record.write(paths.model_pointer(kind.key))
    return Registered(outcome, record, run, reported)
