"""Models stage: the VAE (one MLflow run per materialization) and the latents it produces."""

import dataclasses
import json
from collections.abc import Callable
from typing import Optional

import dagster as dg
import mlflow
import numpy as np
import pandas as pd

from cxr_pipeline import serving, tracking
from cxr_pipeline.data import atomic
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.labels.metadata import content_hash
from cxr_pipeline.data.pairs import scales_built, sr_pair_dir
from cxr_pipeline.models import kinds as model_kinds
from cxr_pipeline.models.training import TrainConfig, TrainEvent, TrainingOutcome
from cxr_pipeline.models.vae import VAE_PROFILES, encode_latents, train_vae
from cxr_pipeline.reports.grid import markdown_image, png_bytes
from resources import CxrSettings, MlflowTracking

from .labels import image_metadata
from .pairs import sr_pairs
from .pools import WORK_FOLDER_WRITER

# Training steps use every core (or the GPU). Within a run the executor runs one of them at a time
# (tag limit, see jobs/); across runs they share the "cxr_training" pool, whose limit comes from the
# instance (run.sh writes default_limit 1 into $DAGSTER_HOME/dagster.yaml). A failed
# training attempt is retried and resumes from its last checkpoint.
TRAINING_TAGS = {"cxr/compute": "training"}
# On Kubernetes (deploy/definitions.py) each training step is its own pod asking for one GPU.
GPU_POD = {"container_config": {"resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}}}
# Heavy steps (training and evaluation) share the tags and the pool.
HEAVY_STEP = {"op_tags": {**TRAINING_TAGS, "dagster-k8s/config": GPU_POD}, "pool": "cxr_training"}
# Training also retries: a lost node or OOM resumes from the checkpoint. Evaluation does not,
# since it has no checkpoint and its failures are deterministic (a retry repeats them).
TRAINING_STEP = {**HEAVY_STEP, "retry_policy": dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)}


class TrainingConfig(dg.Config):
    """Hyperparameters every training asset shares; subclasses set their own defaults."""

    steps: int = 300
    batch_size: int = 16
    learning_rate: float = 2e-3
    warmup_steps: int = 30
    ema_decay: float = 0.995
    checkpoint_every: int = 100
    log_every: int = 20
    seed: int = 0
    device: str = "auto"  # auto = CUDA, then MPS, then CPU
    mixed_precision: str = "auto"  # auto: bf16 on CUDA; "no" | "bf16" | "fp16"
    cpu_bf16: bool = False  # with "auto", bf16 autocast on CPUs with native bf16 too (set where measured faster)
    block_out_channels: Optional[list[int]] = None  # None: the profile's architecture

    def train_config(self, eval_every: int) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, learning_rate=self.learning_rate,
                           warmup_steps=min(self.warmup_steps, self.steps), ema_decay=self.ema_decay,
                           checkpoint_every=self.checkpoint_every, eval_every=eval_every, log_every=self.log_every,
                           seed=self.seed, device=self.device, mixed_precision=self.mixed_precision,
                           cpu_bf16=self.cpu_bf16)


class VaeTrainingConfig(TrainingConfig):
    # Random 32 px windows, 1500 x 32 (bench/vae_recipe.py, on val: 31.1 dB at 1200 steps in 3.8 min
    # against 29.3 dB for the old 300 x 16 whole images): the reconstruction ceiling of every
    # latent model, so it is worth the minutes. bf16 autocast on CPUs that have it: 1.29x faster at
    # the same val PSNR (31.54 against 31.51 dB, bench/vae_recipe.py crop32 vs crop32+bf16).
    steps: int = 1500
    batch_size: int = 32
    cpu_bf16: bool = True
    checkpoint_every: int = 500
    eval_every: int = 500  # validation (whole val images) every this many steps
    crop: Optional[int] = 32  # train on random windows of this many pixels; None: whole images
    latent_channels: Optional[int] = None


def write_current_model(settings: CxrSettings, kind: str, pointer: dict) -> None:
    atomic.write_text(settings.paths().model_pointer(kind), json.dumps(pointer, indent=2))


def read_current_model(settings: CxrSettings, kind: str) -> dict:
    """The model the latest materialization of ``kind`` produced: folder, MLflow run, registered
    version. Downstream assets read this rather than the asset's metadata."""
    path = settings.paths().model_pointer(kind)
    if not path.exists():
        raise FileNotFoundError(f"no current {kind} model at {path}: materialize the asset that trains it first")
    return json.loads(path.read_text())


def progress_logger(context: dg.AssetExecutionContext):
    """Training events -> Dagster log lines and MLflow step metrics."""

    def report(event: TrainEvent) -> None:
        if event.kind in ("resume", "wait"):
            context.log.warning(event.describe())
        if event.kind == "resume":
            mlflow.set_tag(f"{event.part}_resumed_from_step" if event.part else "resumed_from_step", str(event.step))
        if event.kind in ("step", "eval"):
            context.log.info(event.describe())
            mlflow.log_metrics(event.logged_metrics(), step=event.step)

    return report


def train_and_register(context: dg.AssetExecutionContext, settings: CxrSettings, mlflow_tracking: MlflowTracking,
                       kind: model_kinds.ModelKind, data_hash: str, params: dict,
                       train: Callable[[str], tuple[TrainingOutcome, dict]], description: str) -> tuple[TrainingOutcome, dict]:
    """The one path from training to the registry, for every model: one MLflow run with the
    parameters, the training (``train(mlflow_run_id)`` logs its own curves), the final validation
    metrics, the preview grids, the model folder as an artifact and a registered version; then the
    pointer downstream assets read. Returns the outcome and the asset metadata every training
    asset reports (plus what ``train`` reported)."""
    with mlflow_tracking.run(context, run_name=kind.registered_name,
                             tags={"data.split_hash": data_hash, "model": kind.registered_name}) as run:
        mlflow.log_params(params)
        outcome, reported = train(run.info.run_id)
        if outcome.metrics:
            mlflow.log_metrics({f"final_{k}": v for k, v in outcome.metrics.items()})
        for step, grid in sorted(outcome.previews.items()):
            mlflow.log_image(np.asarray(grid), f"samples/step_{step:07d}.png")
        version = str(serving.log_pyfunc(outcome.model_dir, kind.registered_name).registered_model_version)
        tracking.describe_registered_model(kind.registered_name, description)
    write_current_model(settings, kind.key, {"model_dir": str(outcome.model_dir), "mlflow_run_id": run.info.run_id,
                                             "registered_model": kind.registered_name, "version": version,
                                             "data_hash": data_hash})
    last = outcome.previews[max(outcome.previews)] if outcome.previews else None
    return outcome, {
        **reported,
        "mlflow_run_id": run.info.run_id,
        **mlflow_tracking.run_link(run),
        "registered_model": f"{kind.registered_name} v{version}",
        "checkpoint": dg.MetadataValue.path(str(outcome.model_dir)),
        "steps": outcome.final_step,
        "resumed_from_step": outcome.resumed_from if outcome.resumed_from is not None else -1,
        **({"samples": dg.MetadataValue.md(markdown_image(png_bytes(last, upscale=2), kind.registered_name))}
           if last is not None else {}),
    }


@dg.asset(group_name="models", deps=[image_metadata], kinds={"pytorch", "mlflow"}, **TRAINING_STEP)
def vae(context: dg.AssetExecutionContext, config: VaeTrainingConfig, settings: CxrSettings,
        mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """AutoencoderKL for one-channel radiographs, trained on random windows of the train split,
    validated on whole val images (MSE, PSNR, SSIM), registered in MLflow as ``cxr-vae``."""
    paths = settings.paths()
    metadata = pd.read_parquet(paths.metadata)
    overrides = {}
    if config.block_out_channels:
        overrides["block_out_channels"] = tuple(config.block_out_channels)
    if config.latent_channels:
        overrides["latent_channels"] = config.latent_channels
    vae_config = dataclasses.replace(VAE_PROFILES[settings.profile_spec().name], **overrides)
    train_rows = int((metadata["split"] == "train").sum())
    train_config = config.train_config(eval_every=config.eval_every)
    data_hash = content_hash(metadata)
    params = {**{f"vae.{k}": v for k, v in vae_config.as_dict().items()},
              **{f"train.{k}": v for k, v in train_config.identity().items()},
              "train_images": train_rows, "image_size": settings.profile_spec().image_size, "train.crop": config.crop}
    outcome, produced = train_and_register(
        context, settings, mlflow_tracking, model_kinds.VAE, data_hash, params,
        lambda run_id: (train_vae(metadata, ImageStore(paths.image_store), paths.models / model_kinds.VAE.folder,
                                  vae_config, train_config, data_hash, progress=progress_logger(context),
                                  crop=config.crop), {}),
        "AutoencoderKL for chest radiographs (EMA weights)")
    produced["reconstructions"] = dg.MetadataValue.md("val: input | reconstruction | 4x error\n\n"
                                                      + produced.pop("samples").value)
    return dg.MaterializeResult(metadata={
        **{k: round(v, 5) for k, v in outcome.metrics.items()},
        **produced,
        "downsampling_factor": vae_config.downsampling_factor,
        "latent_channels": vae_config.latent_channels,
    })


@dg.asset(group_name="models", deps=[vae, sr_pairs], kinds={"numpy"}, **WORK_FOLDER_WRITER)
def latents(context: dg.AssetExecutionContext, settings: CxrSettings) -> dg.MaterializeResult:
    """HR and LR latents of every split with the scaling factor, so diffusion training never
    re-runs the encoder."""
    paths = settings.paths()
    pointer = read_current_model(settings, model_kinds.VAE.key)
    metadata = pd.read_parquet(paths.metadata)
    lr_stores = {}
    for scale in scales_built(paths.pairs):
        folder = sr_pair_dir(paths.pairs, scale)
        lr_stores[scale] = (ImageStore(folder), pd.read_parquet(folder / "index.parquet"))
    summary = encode_latents(metadata, ImageStore(paths.image_store), pointer["model_dir"], lr_stores, paths.latents)
    atomic.write_text(paths.latents / "vae.json", json.dumps(pointer, indent=2))
    context.log.info(f"latents {summary['latent_shape']} for {summary['splits']}, scaling factor {summary['scaling_factor']:.4f}")
    return dg.MaterializeResult(metadata={
        "scaling_factor": round(summary["scaling_factor"], 6),
        "latent_shape": dg.MetadataValue.json(summary["latent_shape"]),
        "scales": dg.MetadataValue.json(summary["scales"]),
        **{f"{split}_images": n for split, n in summary["splits"].items()},
        "vae": f"{pointer['registered_model']} v{pointer['version']}",
        "path": dg.MetadataValue.path(str(paths.latents)),
    })
