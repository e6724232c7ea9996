"""Diffusion stage: latent super-resolution (fixed and arbitrary scale), class-conditional DDPM,
low-dose denoiser.

Each asset is one MLflow run (params, loss curves, a sample grid every ``preview_every`` steps),
registers the final EMA weights, and reports the run id, version and model folder.
"""

import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Literal, Optional

import dagster as dg
import mlflow
import pandas as pd

from cxr_pipeline.data import atomic
from cxr_pipeline.data.labels.metadata import content_hash
from cxr_pipeline.data.labels.vocabulary import DEFAULT_CLASSES
from cxr_pipeline.data.pairs import doses_built
from cxr_pipeline.models import kinds as model_kinds
from cxr_pipeline.models import training_job
from cxr_pipeline.models.diffusion import UNET_PROFILES, ScheduleConfig, UNetConfig
from cxr_pipeline.models.training import TrainConfig, TrainingOutcome
from cxr_pipeline.models.training_job import TrainingJob
from resources import CxrSettings, MlflowTracking

from .labels import image_metadata
from .models import TRAINING_STEP, TrainingConfig, latents, progress_logger, read_current_model, train_and_register
from .pairs import low_dose_pairs

TRAIN_WORKER = Path(__file__).resolve().parents[1] / "scripts" / "train_worker.py"


class DiffusionTrainingConfig(TrainingConfig):
    # What the three recipes share (bench/*_recipe.py): a small UNet's learning rate with a short
    # warm-up and a fast EMA, for budgets of hundreds of steps (the reference recipe's 1e-4 at
    # batch 8, 256 px, is for full runs).
    steps: int = 200
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    ema_decay: float = 0.99
    checkpoint_every: int = 200
    preview_every: int = 200  # a sample grid to MLflow every this many steps
    timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    snr_gamma: Optional[float] = None  # min-SNR-gamma loss weighting (5 in Hang et al. 2023); None: off
    # Where the training runs: in this step's process (the default), in a subprocess, or under
    # torchrun with ``processes`` data-parallel ranks (GPUs, or CPU processes), both through Dagster
    # Pipes with scripts/train_worker.py. batch_size is the global batch either way.
    launcher: Literal["in_process", "subprocess", "torchrun"] = "in_process"
    processes: int = 2

    def schedule(self) -> ScheduleConfig:
        return ScheduleConfig(timesteps=self.timesteps, beta_schedule=self.beta_schedule,
                              prediction_type=self.prediction_type, snr_gamma=self.snr_gamma)

    def unet(self, model: str, profile: str, size: int, in_channels: int, out_channels: int,
             num_class_embeds: Optional[int] = None, cross_attention_dim: Optional[int] = None) -> UNetConfig:
        """The library's UNet profile for ``model``, with this config's widths when set."""
        widths = tuple(self.block_out_channels) if self.block_out_channels else None
        return UNET_PROFILES[model][profile].config(size, in_channels, out_channels, num_class_embeds, widths,
                                                    cross_attention_dim)

    def job(self, settings: CxrSettings, model: str, unet: UNetConfig, data_hash: str, **options) -> TrainingJob:
        return TrainingJob(model=model, home=str(settings.resolved_home()), unet=unet, schedule=self.schedule(),
                           train=self.train_config(eval_every=self.preview_every), data_hash=data_hash, options=options)


def worker_command(config: DiffusionTrainingConfig, job_file: Path, outcome: Path, mlflow_run_id: str) -> list[str]:
    """The command line of an out-of-process training (the same one a user can run by hand)."""
    arguments = [str(TRAIN_WORKER), str(job_file), "--outcome", str(outcome), "--mlflow-run-id", mlflow_run_id]
    if config.launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={config.processes}",
                *arguments]
    return [sys.executable, *arguments]


def _run_training(context: dg.AssetExecutionContext, settings: CxrSettings, config: DiffusionTrainingConfig,
                  job: TrainingJob, label: str, mlflow_run_id: str,
                  pipes: dg.PipesSubprocessClient) -> tuple[TrainingOutcome, dict]:
    """Train in process, or launch the worker through Pipes and read its outcome back; returns the
    outcome and the metadata the worker reported."""
    if config.launcher == "in_process":
        return training_job.run(job, progress=progress_logger(context)), {}
    ranks = config.processes if config.launcher == "torchrun" else 1
    if ranks < 1 or config.batch_size % ranks:
        raise dg.Failure(f"batch_size {config.batch_size} must be a positive multiple of processes {ranks}: "
                         "every rank takes an equal slice of the batch", allow_retries=False)
    folder = settings.paths().models / "launches" / context.run.run_id / label
    atomic.write_text(folder / "job.json", job.to_json())
    command = worker_command(config, folder / "job.json", folder / "outcome", mlflow_run_id)
    context.log.info(f"launching {' '.join(command)}")
    invocation = pipes.run(context=context, command=command, env={"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()})
    reported = invocation.get_materialize_result().metadata
    return TrainingOutcome.load(folder / "outcome"), {**reported, "launcher": config.launcher}


def train_diffusion_and_register(context: dg.AssetExecutionContext, settings: CxrSettings, mlflow_tracking: MlflowTracking,
                        pipes: dg.PipesSubprocessClient, kind: model_kinds.ModelKind, config: DiffusionTrainingConfig,
                        job: TrainingJob, params: dict) -> dict:
    params = {**{f"train.{k}": v for k, v in job.train.identity().items()},
              "timesteps": config.timesteps, "beta_schedule": config.beta_schedule,
              "prediction_type": config.prediction_type, "snr_gamma": config.snr_gamma,
              "launcher": config.launcher, **params}
    _, produced = train_and_register(
        context, settings, mlflow_tracking, kind, job.data_hash, params,
        lambda run_id: _run_training(context, settings, config, job, kind.key, run_id, pipes),
        f"{kind.key} (EMA weights)")
    return produced


class LatentSrConfig(DiffusionTrainingConfig):
    # The residual recipe (bench/sr_recipe.py, chosen on val): the chain diffuses the correction
    # from the bicubic latent to the HR latent, the UNet predicts it clean (x0 target, flat
    # weighting), 400 x 64 at 2e-3 (1000 steps gain 0.04 dB on val). The old epsilon recipe
    # sampled noise from pure noise. Stays fp32 on CPU: under bf16 autocast its step was 1.5x slower
    # (bench/cpu_bf16.py).
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "sample"
    steps: int = 400
    batch_size: int = 64
    residual: bool = True  # diffuse the correction to the bicubic latent, not the HR latent itself
    scales: list[int] = [4]


@dg.asset(group_name="models", deps=[latents], kinds={"pytorch", "mlflow"}, **TRAINING_STEP)
def latent_sr(context: dg.AssetExecutionContext, config: LatentSrConfig, settings: CxrSettings,
              mlflow_tracking: MlflowTracking, pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """Latent diffusion conditioned on the bicubic-upsampled LR latent (channel concatenation),
    diffusing the correction from it to the HR latent; one registered model per scale."""
    paths = settings.paths()
    vae = read_current_model(settings, model_kinds.VAE.key)
    shape = pd.read_json(paths.latents / "latents.json", typ="series")["latent_shape"]
    data_hash = content_hash(pd.read_parquet(paths.metadata))
    metadata: dict = {}
    for scale in config.scales:
        unet = config.unet("latent_sr", settings.profile_spec().name, shape[-1], 2 * shape[0], shape[0])
        job = config.job(settings, "latent_sr", unet, data_hash, scale=scale, vae_dir=vae["model_dir"],
                         residual=config.residual)
        produced = train_diffusion_and_register(context, settings, mlflow_tracking, pipes_subprocess_client,
                                       model_kinds.latent_sr(scale), config, job,
                                       {"scale": scale, "vae": f"{vae['registered_model']} v{vae['version']}",
                                        "residual": config.residual})
        metadata.update({f"x{scale}_{k}": v for k, v in produced.items()})
    return dg.MaterializeResult(metadata=metadata)


class ArbitrarySrConfig(DiffusionTrainingConfig):
    # The fixed-scale residual recipe (x0 target, flat weighting) on continuous scales: each training
    # image degraded like sr_pairs at draws_per_image scales, one per stratum of [scale_min,
    # scale_max], the conditions built on the fly at the start of training (deterministic per
    # image and draw; nothing is written to pairs/). Stays fp32 on CPU like the fixed-scale model.
    # Chosen on val (bench/arbitrary_sr.py), x4 against the fixed-scale model: 400 steps, not told
    # the scale -0.80 dB; told the scale -0.52; 600 steps -0.31; strata by area -0.14.
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "sample"
    steps: int = 600
    batch_size: int = 64
    residual: bool = True
    scale_conditioning: bool = True  # the UNet is told the scale (a timestep-style embedding of the size ratio)
    scale_min: float = 1.0
    scale_max: float = 4.0
    draws_per_image: int = 6
    draws_by_area: bool = True  # strata equal in scale squared: large scales, the hard ones, drawn more often
    degradation_mix: bool = True  # random blur and mild noise before downsampling, as in sr_pairs
    pair_seed: int = 0
    # The implicit decoder head, trained first over the frozen VAE to render sizes from
    # decoder_min_ratio of the latent's grid up to the grid itself (the sizes between grid steps).
    # On val at 0.8 / 0.95 of the grid: 33.80 / 32.89 dB after 300 steps, against 33.54 / 32.65
    # for the plain decode resized and 33.58 / 32.65 after 100 steps.
    decoder_steps: int = 300
    decoder_batch_size: int = 16
    decoder_learning_rate: float = 2e-3
    decoder_min_ratio: float = 0.75
    decoder_hidden: list[int] = [64, 64]
    decoder_queries: int = 1024  # output pixels per image per step

    def decoder_train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.decoder_steps, batch_size=self.decoder_batch_size,
                           learning_rate=self.decoder_learning_rate, warmup_steps=min(30, self.decoder_steps),
                           ema_decay=0.99, checkpoint_every=self.checkpoint_every, eval_every=self.decoder_steps,
                           log_every=self.log_every, seed=self.seed, device=self.device,
                           mixed_precision=self.mixed_precision)


@dg.asset(group_name="models", deps=[latents], kinds={"pytorch", "mlflow"}, **TRAINING_STEP)
def arbitrary_sr(context: dg.AssetExecutionContext, config: ArbitrarySrConfig, settings: CxrSettings,
                 mlflow_tracking: MlflowTracking, pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """One super-resolution model for any scale or output size: latent diffusion conditioned on
    the latent of the LR image resampled to the target grid, trained on continuous scales, and an
    implicit (LIIF) decoder that renders the result at exactly the requested size. Registered as
    ``cxr-arbitrary-sr``."""
    if not 1.0 <= config.scale_min < config.scale_max:
        raise dg.Failure(f"need 1 <= scale_min < scale_max, got [{config.scale_min}, {config.scale_max}]",
                         allow_retries=False)
    paths = settings.paths()
    vae = read_current_model(settings, model_kinds.VAE.key)
    shape = pd.read_json(paths.latents / "latents.json", typ="series")["latent_shape"]
    unet = config.unet("latent_sr", settings.profile_spec().name, shape[-1], 2 * shape[0], shape[0])
    if config.scale_conditioning:
        unet = replace(unet, class_embed_type="timestep")
    job = config.job(settings, "arbitrary_sr", unet, content_hash(pd.read_parquet(paths.metadata)),
                     vae_dir=vae["model_dir"], decoder_train=asdict(config.decoder_train_config()),
                     scale_range=[config.scale_min, config.scale_max], draws=config.draws_per_image,
                     draws_by_area=config.draws_by_area,
                     degradation_mix=config.degradation_mix, pair_seed=config.pair_seed, residual=config.residual,
                     decoder_ratios=[config.decoder_min_ratio, 1.0], decoder_hidden=list(config.decoder_hidden),
                     decoder_queries=config.decoder_queries)
    produced = train_diffusion_and_register(
        context, settings, mlflow_tracking, pipes_subprocess_client, model_kinds.ARBITRARY_SR, config, job,
        {"scale_range": f"[{config.scale_min:g}, {config.scale_max:g}]", "draws_per_image": config.draws_per_image,
         "draws_by_area": config.draws_by_area,
         "degradation_mix": config.degradation_mix, "residual": config.residual,
         "scale_conditioning": config.scale_conditioning, "vae": f"{vae['registered_model']} v{vae['version']}", "decoder.steps": config.decoder_steps,
         "decoder.batch_size": config.decoder_batch_size, "decoder.min_ratio": config.decoder_min_ratio,
         "decoder.hidden": ",".join(map(str, config.decoder_hidden))})
    return dg.MaterializeResult(metadata=produced)


class ClassDdpmConfig(DiffusionTrainingConfig):
    # The latent recipe: 16x16x4 VAE latents instead of 64x64 pixels, v-prediction with min-SNR-5
    # weighting, large class-balanced batches at a small UNet's learning rate.
    space: Literal["latent", "pixel"] = "latent"
    steps: int = 600  # on val: cond_acc 0.92 (worst class 0.81) at 600, 0.96 at 1000
    batch_size: int = 64
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    snr_gamma: Optional[float] = 5.0
    classes: list[str] = list(DEFAULT_CLASSES)
    class_balance: bool = True  # inverse-frequency sampling: real label distributions are skewed
    label_dropout: float = 0.1  # classifier-free guidance training
    guidance_scale: float = 3.0  # chosen on val (bench/class_recipe.py): 2 -> 3 raises cond_acc, FD unchanged
    # bf16 autocast on CPUs that have it: 1.33x faster, the same on val within sampling noise
    # (cond_acc 0.917 against 0.927, FD ratio 0.72 against 0.71; bench/class_recipe.py latent+bf16).
    cpu_bf16: bool = True


@dg.asset(group_name="models", deps=[image_metadata, latents], kinds={"pytorch", "mlflow"}, **TRAINING_STEP)
def class_ddpm(context: dg.AssetExecutionContext, config: ClassDdpmConfig, settings: CxrSettings,
               mlflow_tracking: MlflowTracking, pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """Class-conditional diffusion over the single-label classes plus a learned null class
    (classifier-free guidance), trained on class-balanced batches: in the VAE latent space by
    default (the model folder carries its own copy of the VAE), or on pixels."""
    paths = settings.paths()
    metadata = pd.read_parquet(paths.metadata)
    profile = settings.profile_spec().name
    num_class_embeds = len(config.classes) + 1
    if config.space == "latent":
        vae = read_current_model(settings, model_kinds.VAE.key)
        channels, size = pd.read_json(paths.latents / "latents.json", typ="series")["latent_shape"][:2]
        unet = config.unet("class_ddpm", profile, size, channels, channels, num_class_embeds=num_class_embeds)
        space = {"vae_dir": vae["model_dir"]}
    else:
        size = settings.profile_spec().image_size
        unet = config.unet("class_ddpm_pixel", profile, size, 1, 1, num_class_embeds=num_class_embeds)
        space = {}
    job = config.job(settings, "class_ddpm", unet, content_hash(metadata), classes=list(config.classes),
                     balance=config.class_balance, label_dropout=config.label_dropout, guidance=config.guidance_scale,
                     **space)
    counts = metadata[(metadata["split"] == "train")]["class_name"].value_counts().to_dict()
    produced = train_diffusion_and_register(
        context, settings, mlflow_tracking, pipes_subprocess_client, model_kinds.CLASS_DDPM, config, job,
        {"space": config.space, "classes": ",".join(config.classes), "class_balance": config.class_balance,
         "label_dropout": config.label_dropout, "guidance_scale": config.guidance_scale})
    return dg.MaterializeResult(metadata={**produced, "train_images_per_class": dg.MetadataValue.json(counts)})


class DenoiserConfig(DiffusionTrainingConfig):
    # The residual recipe (bench/denoiser_recipe.py, chosen on val): the UNet predicts the clean
    # correction to the low-dose image (x0 target, flat weighting: min-SNR-5 cost 1.7 dB at the
    # lowest dose), on random 32 px windows, 1000 x 32 at 2e-3. Stays fp32 on CPU: bf16 autocast was
    # only 1.13x faster and lost 0.36 dB at the lowest dose on val (bench/denoiser_recipe.py +bf16).
    beta_schedule: str = "squaredcos_cap_v2"  # cosine
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "sample"
    steps: int = 1000
    batch_size: int = 32
    checkpoint_every: int = 250
    preview_every: int = 250
    crop: Optional[int] = 32  # training window in pixels; None: whole images
    residual: bool = True  # diffuse the correction to the low-dose image, not the image itself
    dose_conditioning: bool = True
    sampling_strength: float = 0.4  # start from the noisy input noised to 40% of T (evaluation tunes it on val)


@dg.asset(group_name="models", deps=[low_dose_pairs, image_metadata], kinds={"pytorch", "mlflow"}, **TRAINING_STEP)
def low_dose_denoiser(context: dg.AssetExecutionContext, config: DenoiserConfig, settings: CxrSettings,
                      mlflow_tracking: MlflowTracking, pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """Conditional diffusion restoring normal dose from low dose (noisy image concatenated at the
    input; the chain diffuses the correction to it), cosine schedule, trained on random windows,
    one model across dose levels with the dose as an optional condition."""
    paths = settings.paths()
    doses = doses_built(paths.pairs)
    size = settings.profile_spec().image_size
    unet = config.unet("denoiser", settings.profile_spec().name, size, 2, 1,
                       num_class_embeds=len(doses) + 1 if config.dose_conditioning else None)
    job = config.job(settings, "denoiser", unet, content_hash(pd.read_parquet(paths.metadata)),
                     dose_conditioning=config.dose_conditioning, strength=config.sampling_strength, crop=config.crop,
                     residual=config.residual)
    produced = train_diffusion_and_register(
        context, settings, mlflow_tracking, pipes_subprocess_client, model_kinds.DENOISER, config, job,
        {"doses": ",".join(f"{d:g}" for d in doses), "dose_conditioning": config.dose_conditioning,
         "sampling_strength": config.sampling_strength, "crop": config.crop, "residual": config.residual})
    return dg.MaterializeResult(metadata=produced)
