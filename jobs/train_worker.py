"""Out-of-process training of one diffusion model: the program Dagster Pipes launches, on its own
or under torchrun for data-parallel training.

    python -m jobs.train_worker JOB.json --outcome DIR [--mlflow-run-id ID]
    torchrun --standalone --nproc-per-node 4 -m jobs.train_worker JOB.json --outcome DIR

A module of the installed package, not a file of the source tree, so the same launch works from a
checkout, a wheel or the container image.

``JOB.json`` is a ``cxr_pipeline.kinds.TrainingJob`` (the training assets write one per
launch; ``config.launcher`` chooses the launch). Every rank trains; rank 0 alone streams progress
to Dagster (when launched through Pipes) and to the MLflow run (when given one, with the
tracking URI from ``MLFLOW_TRACKING_URI``), writes the outcome (model folder, steps, sample
grids) to ``--outcome`` for the asset to register, and reports the materialization. Without
Pipes it logs to stderr, so the same command works by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from pathlib import Path

import torch
from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes
from mlflow import MlflowClient

from cxr_pipeline import compute, tracking
from cxr_pipeline.kinds import TrainingJob, run_job
from cxr_pipeline.models import distributed
from cxr_pipeline.models.training import TrainEvent


def _pipes_session():
    if PipesEnvVarParamsLoader().is_dagster_pipes_process():
        return open_dagster_pipes()
    return contextlib.nullcontext(None)


def _reporter(log: logging.Logger, mlflow_run_id: str | None, last: dict):
    def report(event: TrainEvent) -> None:
        if event.kind in ("resume", "wait"):
            log.warning(event.describe())
        elif event.kind in ("step", "eval"):
            log.info(event.describe())
        last.update(event.logged_metrics())
        if mlflow_run_id:
            if event.kind == "resume":
                MlflowClient().set_tag(mlflow_run_id, "resumed_from_step", str(event.step))
            elif event.logged_metrics():
                tracking.log_metrics_to_run(mlflow_run_id, event.logged_metrics(), step=event.step)

    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job", type=Path, help="TrainingJob JSON")
    parser.add_argument("--outcome", type=Path, required=True, help="folder for the outcome (rank 0)")
    parser.add_argument("--mlflow-run-id", default=None, help="run to add the training curves to")
    args = parser.parse_args(argv)
    compute.reuse_freed_memory()
    job = TrainingJob.from_json(args.job.read_text())
    with distributed.joined_from_environment() as group:
        if not group.is_main:
            run_job(job)
            return
        with _pipes_session() as pipes:
            log = pipes.log if pipes else logging.getLogger("cxr.train_worker")
            log.info(
                f"training {job.model} on {group.world_size} process(es), rank 0 on "
                f"{'cuda' if torch.cuda.is_available() else 'cpu'}"
            )
            started, last = time.perf_counter(), dict[str, float]()
            outcome = run_job(job, progress=_reporter(log, args.mlflow_run_id, last))
            outcome.save(args.outcome)
            if pipes:
                pipes.report_asset_materialization(
                    metadata={
                        "processes": group.world_size,
                        "threads": torch.get_num_threads(),  # the step's share of the cores (cxr_pipeline.compute)
                        "training_wall_s": round(time.perf_counter() - started, 1),
                        **{k: round(v, 6) for k, v in last.items() if k in ("train_loss", "images_per_s")},
                    }
                )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    main()
