"""Diffusion stage: latent super-resolution, class-conditional DDPM, low-dose denoiser.

Each asset is one MLflow run (params, loss curves, a sample grid every ``preview_every`` steps),
registers the final EMA weights, and reports the run id, version and model folder.
"""

from collections.abc import Callable
from typing import Optional

import dagster as dg
import mlflow
import pandas as pd

from cxr_pipeline import tracking
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.labels.metadata import content_hash
from cxr_pipeline.data.labels.vocabulary import DEFAULT_CLASSES
from cxr_pipeline.data.pairs import doses_built, low_dose_pair_dir
from cxr_pipeline.models import diffusion_training as dt
from cxr_pipeline.models.diffusion import ScheduleConfig, UNetConfig
from cxr_pipeline.reports.grid import markdown_image, png_bytes
from resources import CxrSettings, MlflowTracking

from .labels import image_metadata
from .models import TRAINING_STEP, TrainingConfig, latents, progress_logger, read_current_model, write_current_model
from .pairs import low_dose_pairs

# Widths by profile: the demo trains in CPU minutes, full is the size published work uses.
PIXEL_UNET = {"demo": ((16, 32, 64), 8, False), "full": ((64, 128, 256, 256), 32, True)}
LATENT_UNET = {"demo": ((32, 64), 8, True), "full": ((128, 256, 512), 32, True)}


class DiffusionTrainingConfig(TrainingConfig):
    steps: int = 200
    learning_rate: float = 5e-4  # the reference recipe's 1e-4 (batch 8, 256 px) is for full runs
    preview_every: int = 100  # a sample grid to MLflow every this many steps
    timesteps: int = 1000
    beta_schedule: str = "linear"

    def schedule(self) -> ScheduleConfig:
        return ScheduleConfig(timesteps=self.timesteps, beta_schedule=self.beta_schedule)

    def unet(self, table: dict, profile: str, size: int, in_channels: int, out_channels: int,
             num_class_embeds: Optional[int] = None) -> UNetConfig:
        widths, groups, attention = table[profile]
        return UNetConfig(sample_size=size, in_channels=in_channels, out_channels=out_channels,
                          block_out_channels=tuple(self.block_out_channels or widths), attention=attention,
                          num_class_embeds=num_class_embeds, norm_num_groups=groups)


def _train_and_register(context: dg.AssetExecutionContext, settings: CxrSettings, mlflow_tracking: MlflowTracking,
                        kind: str, model_name: str, config: DiffusionTrainingConfig, data_hash: str, params: dict,
                        train: Callable[..., dt.DiffusionOutcome]) -> dict:
    with mlflow_tracking.run(context, run_name=model_name, tags={"data.split_hash": data_hash, "model": model_name}) as run:
        mlflow.log_params({**{f"train.{k}": v for k, v in config.train_config(eval_every=config.preview_every).identity().items()},
                           "timesteps": config.timesteps, "beta_schedule": config.beta_schedule, **params})
        outcome = train(progress=progress_logger(context))
        for step, grid in sorted(outcome.previews.items()):
            mlflow.log_image(grid, f"samples/step_{step:07d}.png")
        mlflow.log_artifacts(str(outcome.model_dir), artifact_path="model")
        version = tracking.register_folder(run.info.run_id, "model", model_name, description=f"{outcome.kind} (EMA weights)")
    write_current_model(settings, kind, {"model_dir": str(outcome.model_dir), "mlflow_run_id": run.info.run_id,
                                         "registered_model": model_name, "version": version, "data_hash": data_hash})
    last = outcome.previews[max(outcome.previews)] if outcome.previews else None
    return {
        "mlflow_run_id": run.info.run_id,
        "registered_model": f"{model_name} v{version}",
        "checkpoint": dg.MetadataValue.path(str(outcome.model_dir)),
        "steps": outcome.final_step,
        "resumed_from_step": outcome.resumed_from if outcome.resumed_from is not None else -1,
        **({"samples": dg.MetadataValue.md(markdown_image(png_bytes(last, upscale=2), model_name))} if last is not None else {}),
    }


class LatentSrConfig(DiffusionTrainingConfig):
    timesteps: int = 300
    scales: list[int] = [4]


@dg.asset(group_name="models", deps=[latents], kinds={"pytorch", "mlflow"}, **TRAINING_STEP)
def latent_sr(context: dg.AssetExecutionContext, config: LatentSrConfig, settings: CxrSettings,
              mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """UNet predicting the noise on the HR latent, conditioned on the upsampled-LR latent
    (channel concatenation), T=300 linear by default; one registered model per scale."""
    paths = settings.paths()
    vae = read_current_model(settings, "vae")
    shape = pd.read_json(paths.latents / "latents.json", typ="series")["latent_shape"]
    data_hash = content_hash(pd.read_parquet(paths.metadata))
    metadata: dict = {}
    for scale in config.scales:
        unet = config.unet(LATENT_UNET, settings.profile_spec().name, shape[-1], 2 * shape[0], shape[0])
        name = f"cxr-latent-sr-x{scale}"
        produced = _train_and_register(
            context, settings, mlflow_tracking, f"latent_sr_x{scale}", name, config, data_hash, {"scale": scale, "vae": f"cxr-vae v{vae['version']}"},
            lambda progress: dt.train_latent_sr(paths.latents, scale, vae["model_dir"], unet, config.schedule(),
                                                config.train_config(eval_every=config.preview_every), paths.models / "latent_sr", data_hash, progress))
        metadata.update({f"x{scale}_{k}": v for k, v in produced.items()})
    return dg.MaterializeResult(metadata=metadata)


class ClassDdpmConfig(DiffusionTrainingConfig):
    classes: list[str] = list(DEFAULT_CLASSES)
    class_balance: bool = True  # inverse-frequency sampling: real label distributions are skewed
    label_dropout: float = 0.1  # classifier-free guidance training
    guidance_scale: float = 2.0


@dg.asset(group_name="models", deps=[image_metadata], kinds={"pytorch", "mlflow"}, **TRAINING_STEP)
def class_ddpm(context: dg.AssetExecutionContext, config: ClassDdpmConfig, settings: CxrSettings,
               mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """Pixel-space DDPM with a class embedding over the single-label classes plus a learned null
    class (classifier-free guidance), T=1000, trained on class-balanced batches."""
    paths = settings.paths()
    metadata = pd.read_parquet(paths.metadata)
    data_hash = content_hash(metadata)
    size = settings.profile_spec().image_size
    unet = config.unet(PIXEL_UNET, settings.profile_spec().name, size, 1, 1, num_class_embeds=len(config.classes) + 1)
    counts = metadata[(metadata["split"] == "train")]["class_name"].value_counts().to_dict()
    produced = _train_and_register(
        context, settings, mlflow_tracking, "class_ddpm", "cxr-class-ddpm", config, data_hash,
        {"classes": ",".join(config.classes), "class_balance": config.class_balance,
         "label_dropout": config.label_dropout, "guidance_scale": config.guidance_scale},
        lambda progress: dt.train_class_ddpm(metadata, ImageStore(paths.image_store), config.classes, unet,
                                             config.schedule(), config.train_config(eval_every=config.preview_every), paths.models / "class_ddpm",
                                             data_hash, balance=config.class_balance, label_dropout=config.label_dropout,
                                             guidance=config.guidance_scale, progress=progress))
    return dg.MaterializeResult(metadata={**produced, "train_images_per_class": dg.MetadataValue.json(counts)})


class DenoiserConfig(DiffusionTrainingConfig):
    beta_schedule: str = "squaredcos_cap_v2"  # cosine
    dose_conditioning: bool = True
    sampling_strength: float = 0.4  # start from the noisy input noised to 40% of T


@dg.asset(group_name="models", deps=[low_dose_pairs, image_metadata], kinds={"pytorch", "mlflow"}, **TRAINING_STEP)
def low_dose_denoiser(context: dg.AssetExecutionContext, config: DenoiserConfig, settings: CxrSettings,
                      mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """Conditional diffusion restoring normal dose from low dose (noisy image concatenated at the
    input), cosine schedule, one model across dose levels with the dose as an optional condition."""
    paths = settings.paths()
    metadata = pd.read_parquet(paths.metadata)
    data_hash = content_hash(metadata)
    doses = doses_built(paths.pairs)
    stores = {d: (ImageStore(low_dose_pair_dir(paths.pairs, d)), pd.read_parquet(low_dose_pair_dir(paths.pairs, d) / "index.parquet"))
              for d in doses}
    size = settings.profile_spec().image_size
    unet = config.unet(PIXEL_UNET, settings.profile_spec().name, size, 2, 1,
                       num_class_embeds=len(doses) + 1 if config.dose_conditioning else None)
    produced = _train_and_register(
        context, settings, mlflow_tracking, "denoiser", "cxr-lowdose-denoiser", config, data_hash,
        {"doses": ",".join(f"{d:g}" for d in doses), "dose_conditioning": config.dose_conditioning,
         "sampling_strength": config.sampling_strength},
        lambda progress: dt.train_denoiser(metadata, ImageStore(paths.image_store), stores, unet, config.schedule(),
                                           config.train_config(eval_every=config.preview_every), paths.models / "denoiser", data_hash,
                                           dose_conditioning=config.dose_conditioning,
                                           strength=config.sampling_strength, progress=progress))
    return dg.MaterializeResult(metadata=produced)
