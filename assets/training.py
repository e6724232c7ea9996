"""What every training asset shares: step tags and retries, the run config made from the kind's
recipe, progress into Dagster logs and MLflow, and the launch (in process, or a worker through
Dagster Pipes). Each training asset is then a few lines: plan the kind, train and register each
plan, report.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

import dagster as dg
import mlflow
import pydantic

from cxr_pipeline import compute
from cxr_pipeline.data import atomic
from cxr_pipeline.kinds import ModelKind, TrainingPlan, TrainingRecipe
from cxr_pipeline.models.training import TrainEvent, TrainingOutcome
from cxr_pipeline.registration import Registered, train_and_register
from cxr_pipeline.reports.grid import markdown_image, png_bytes
from resources import CxrSettings, MlflowTracking

# Heavy steps (training and evaluation) run side by side, each on its share of the cores, or one
# at a time on a GPU (cxr_pipeline.compute). Within a run the executor's tag limit counts them
# (see jobs/); across runs they share the "cxr_training" pool, which run.sh sizes to the same share
# (`dagster instance concurrency set cxr_training N`). A failed training attempt is retried and
# resumes from its last checkpoint.
TRAINING_TAGS = {"cxr/compute": "training"}
# On Kubernetes (deploy/definitions.py) each training step is its own pod asking for one GPU.
GPU_POD = {"container_config": {"resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}}}
# Heavy steps (training and evaluation) share the tags and the pool.
HEAVY_STEP: dict[str, Any] = {"op_tags": {**TRAINING_TAGS, "dagster-k8s/config": GPU_POD}, "pool": "cxr_training"}
# Training also retries: a lost node or OOM resumes from the checkpoint. Evaluation does not,
# since it has no checkpoint and its failures are deterministic (a retry repeats them).
TRAINING_STEP: dict[str, Any] = {
    **HEAVY_STEP,
    "retry_policy": dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL),
}


def ahead(step: dict[str, Any], priority: int) -> dict[str, Any]:
    """``step`` with a Dagster priority: of the heavy steps ready when a slot frees, the highest
    starts first. The main job's longest chain (vae -> latents -> class model -> text model ->
    its evaluations; the report encoder feeds the text model) goes first, so the shorter
    trainings fill the other slots around it instead of delaying it."""
    return {**step, "op_tags": {**step["op_tags"], "dagster/priority": str(priority)}}


# The worker is a module of the installed package (jobs/train_worker.py): found the same way in a
# checkout, a wheel install and the container image.
TRAIN_WORKER = "jobs.train_worker"


def field_default(spec: dataclasses.Field) -> Any:
    """A dataclass field's default, made fresh where it has a factory."""
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def dataclass_fields(cls: type) -> dict[str, Any]:
    """A dataclass's fields as pydantic field definitions: the same names, types and defaults."""
    hints = typing.get_type_hints(cls)
    return {
        spec.name: (hints[spec.name], pydantic.Field(default=field_default(spec))) for spec in dataclasses.fields(cls)
    }


def recipe_config(recipe: type[TrainingRecipe], name: str) -> Any:
    """The asset's run config, field for field the kind's recipe (same names, types and defaults),
    so the launchpad shows the library's recipe and no default is written twice. Generated, so
    typed as Any: each asset module subclasses it under its own name."""
    config: Any = pydantic.create_model(name, __base__=dg.Config, __module__=__name__, **dataclass_fields(recipe))
    config.__doc__ = f"The {recipe.__module__.rsplit('.', 1)[-1]} recipe (``{recipe.__module__}.Recipe``)."
    config.recipe = lambda self: recipe(**self.model_dump())
    return config


def progress_logger(context: dg.AssetExecutionContext):
    """Training events -> MLflow step metrics and tags. Their log lines come from the library's
    logger (``cxr_pipeline.models.training``), which the instance routes into the run's log
    (``python_logs.managed_python_loggers`` in the instance's dagster.yaml)."""

    def report(event: TrainEvent) -> None:
        if event.kind == "resume":
            mlflow.set_tag(f"{event.part}_resumed_from_step" if event.part else "resumed_from_step", str(event.step))
        if event.kind in ("step", "eval"):
            mlflow.log_metrics(event.logged_metrics(), step=event.step)

    return report


def worker_command(recipe, job_file: Path, outcome: Path, mlflow_run_id: str) -> list[str]:
    """The command line of an out-of-process training (the same one a user can run by hand)."""
    arguments = ["-m", TRAIN_WORKER, str(job_file), "--outcome", str(outcome), "--mlflow-run-id", mlflow_run_id]
    if recipe.launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={recipe.processes}",
            *arguments,
        ]
    return [sys.executable, *arguments]


def _launch(
    context: dg.AssetExecutionContext,
    settings: CxrSettings,
    recipe,
    plan: TrainingPlan,
    mlflow_run_id: str,
    pipes: dg.PipesSubprocessClient,
) -> tuple[TrainingOutcome, dict]:
    """Launch the worker through Pipes and read its outcome back; returns the outcome and the
    metadata the worker reported."""
    ranks = recipe.processes if recipe.launcher == "torchrun" else 1
    if ranks < 1 or recipe.batch_size % ranks:
        raise dg.Failure(
            f"batch_size {recipe.batch_size} must be a positive multiple of processes {ranks}: "
            "every rank takes an equal slice of the batch",
            allow_retries=False,
        )
    folder = settings.paths().models / "launches" / context.run.run_id / plan.kind.key
    if plan.job is None:
        raise ValueError(f"{plan.kind.key} trains in the asset's process: it has no job to launch")
    atomic.write_text(folder / "job.json", plan.job.to_json())
    command = worker_command(recipe, folder / "job.json", folder / "outcome", mlflow_run_id)
    context.log.info(f"launching {' '.join(command)}")
    invocation = pipes.run(context=context, command=command, env={"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()})
    reported = invocation.get_materialize_result().metadata
    return TrainingOutcome.load(folder / "outcome"), {**(reported or {}), "launcher": recipe.launcher}


def skipped(context: dg.AssetExecutionContext, kind: ModelKind, settings: CxrSettings) -> bool:
    """Whether the data cannot train ``kind``; if so the reason goes to the log and, as an
    observation, to the asset's page, and the asset yields nothing: the run goes on, and every
    step downstream of it is skipped by Dagster rather than failed. Assets that call this are
    declared with ``output_required=False``."""
    reason = kind.why_unavailable(settings.paths())
    if reason is None:
        return False
    context.log.warning(f"{context.asset_key.to_user_string()} skipped: {reason}")
    context.log_event(dg.AssetObservation(asset_key=context.asset_key, metadata={"skipped": reason}))
    return True


def train_kind(
    context: dg.AssetExecutionContext,
    kind: ModelKind,
    recipe: TrainingRecipe,
    settings: CxrSettings,
    mlflow_tracking: MlflowTracking,
    pipes: dg.PipesSubprocessClient | None = None,
) -> list[tuple[TrainingPlan, Registered, dict]]:
    """Plan the kind from the recipe and the work folder, then train and register each planned
    model; returns each with the asset metadata every training reports."""
    compute.count_as_heavy_step()
    paths = settings.paths()
    try:
        plans = kind.plan(recipe, paths, settings.profile_spec().name)
    except (ValueError, FileNotFoundError) as error:  # inputs this asset cannot train on: a retry repeats it
        raise dg.Failure(str(error), allow_retries=False) from error
    launcher = getattr(recipe, "launcher", "in_process")  # only diffusion recipes can train out of process
    done = []
    for plan in plans:

        def train(run_id: str, plan: TrainingPlan = plan) -> tuple[TrainingOutcome, dict]:
            if launcher == "in_process" or plan.job is None or pipes is None:
                return plan.train_in_process(progress_logger(context))
            return _launch(context, settings, recipe, plan, run_id, pipes)

        registered = train_and_register(
            plan,
            paths,
            lambda name, tags: mlflow_tracking.run(context, name, tags),
            train,
            {"launcher": launcher} if plan.job is not None else None,
            profile=settings.profile_spec().name,
        )
        done.append((plan, registered, training_metadata(registered, mlflow_tracking)))
    return done


def training_metadata(registered: Registered, mlflow_tracking: MlflowTracking) -> dict:
    outcome, record, last = registered.outcome, registered.record, registered.last_preview
    return {
        **registered.reported,
        "mlflow_run_id": record.mlflow_run_id,
        **mlflow_tracking.run_link(registered.run),
        "registered_model": record.label,
        "checkpoint": dg.MetadataValue.path(str(outcome.model_dir)),
        "steps": outcome.final_step,
        "resumed_from_step": outcome.resumed_from if outcome.resumed_from is not None else -1,
        **(
            {"samples": dg.MetadataValue.md(markdown_image(png_bytes(last, upscale=2), record.registered_model))}
            if last is not None
            else {}
        ),
    }


def train_one(
    context: dg.AssetExecutionContext,
    kind: ModelKind,
    recipe: TrainingRecipe,
    settings: CxrSettings,
    mlflow_tracking: MlflowTracking,
    pipes: dg.PipesSubprocessClient | None = None,
) -> tuple[Registered, dict]:
    """A kind that trains one model per materialization: its registration and asset metadata,
    with what the plan knew before training."""
    ((plan, registered, metadata),) = train_kind(context, kind, recipe, settings, mlflow_tracking, pipes)
    return registered, {**metadata, **{k: _metadata_value(v) for k, v in plan.reported.items()}}


def _metadata_value(value):
    return dg.MetadataValue.json(value) if isinstance(value, (dict, list)) else value
