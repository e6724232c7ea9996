"""A diffusion model's folder, diffusers-style and self-describing: ``unet/`` and ``scheduler/``
(``save_pretrained``), for latent models the autoencoder in ``vae/``, and ``model.json`` with the
kind, the UNet, the schedule, the conditioning, the kind's typed settings
(:mod:`.model_settings`) and the training record, so sampling needs nothing but the folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from safetensors.torch import load_file

from .diffusion import Conditioning, ScheduleConfig, UNetConfig
from .model_settings import ModelSettings, S, TrainingRecord, read_model_json


@dataclass(frozen=True)
class SavedModel:
    """A model folder's ``model.json``, typed: what it is, its UNet, schedule and conditioning, the
    kind's settings and how it was trained. Read without loading any weights."""

    kind: str  # the kind's key, per scale for per-scale kinds (``latent_sr_x4``)
    unet: UNetConfig
    schedule: ScheduleConfig
    conditioning: Conditioning
    settings: ModelSettings
    training: TrainingRecord

    def settings_as(self, cls: type[S]) -> S:
        """The settings as ``cls``, the caller's kind: a folder of another kind is an error that says so."""
        if not isinstance(self.settings, cls):
            raise ValueError(f"this folder holds a {self.kind!r} model, not a {cls.kind!r} one")
        return self.settings

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": self.kind,
                "schedule": asdict(self.schedule),
                "conditioning": asdict(self.conditioning),
                "unet": {**asdict(self.unet), "block_out_channels": list(self.unet.block_out_channels)},
                "settings": self.settings.to_dict(),
                "training": self.training.to_dict(),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> SavedModel:
        raw = json.loads(text)
        settings, training = read_model_json(raw)
        # folders from before typed settings carried an always-empty "extra" in their conditioning
        conditioning = {k: v for k, v in raw["conditioning"].items() if k != "extra"}
        unet = {**raw["unet"], "block_out_channels": tuple(raw["unet"]["block_out_channels"])}
        return cls(
            raw["kind"],
            UNetConfig(**unet),
            ScheduleConfig(**raw["schedule"]),
            Conditioning(**conditioning),
            settings,
            training,
        )


def save_model(
    folder: Path, model: UNet2DModel | UNet2DConditionModel, saved: SavedModel, vae: AutoencoderKL | None = None
) -> None:
    folder = Path(folder)
    model.save_pretrained(str(folder / "unet"))
    saved.schedule.ddpm().save_pretrained(str(folder / "scheduler"))
    if vae is not None:
        vae.save_pretrained(str(folder / "vae"))
    (folder / "model.json").write_text(saved.to_json())


def warm_start(unet: torch.nn.Module, model_folder: Path) -> list[str]:
    """Copy into ``unet`` every weight of a saved model's UNet (``model_folder/unet``) with the
    same name and shape: a text model starts from the class model of the same latent space, whose
    convolutions, normalizations and timestep embedding already draw the anatomy; what differs
    (the condition's embedding, cross-attention) keeps its fresh initialization. Returns the
    names copied."""
    saved = load_file(str(Path(model_folder) / "unet" / "diffusion_pytorch_model.safetensors"))
    own = unet.state_dict()
    copied = sorted(name for name, tensor in saved.items() if name in own and own[name].shape == tensor.shape)
    if not copied:
        raise ValueError(f"no weight of {model_folder} fits this UNet: warm starts need the same widths and depth")
    unet.load_state_dict({name: saved[name] for name in copied}, strict=False)
    return copied


@dataclass
class DiffusionModel:
    unet: UNet2DModel | UNet2DConditionModel
    saved: SavedModel  # the folder's model.json; the schedule as the saved scheduler/ config says
    vae: AutoencoderKL | None = None  # latent models: the autoencoder saved beside the UNet

    @property
    def schedule(self) -> ScheduleConfig:
        return self.saved.schedule

    @property
    def conditioning(self) -> Conditioning:
        return self.saved.conditioning

    @property
    def settings(self) -> ModelSettings:
        return self.saved.settings

    @property
    def null_label(self) -> int | None:
        return self.conditioning.num_classes if self.conditioning.num_classes else None

    @property
    def scaling_factor(self) -> float:
        return self.settings.scaling_factor


def describe(folder: Path) -> SavedModel:
    """A model folder's ``model.json``, typed (no weights loaded)."""
    return SavedModel.from_json((Path(folder) / "model.json").read_text())


def load_model(folder: Path, device: torch.device | str = "cpu") -> DiffusionModel:
    """The folder's UNet, VAE and schedule. Sampling reads the noise schedule and the output
    parametrization from the saved ``scheduler/`` config (the diffusers source of truth);
    ``model.json`` adds what only training used (the loss weighting)."""
    folder = Path(folder)
    saved = describe(folder)
    # low_cpu_mem_usage needs accelerate, which this project does not depend on: say so, not warn.
    unet_class = UNet2DConditionModel if saved.conditioning.text else UNet2DModel
    unet = unet_class.from_pretrained(str(folder / "unet"), low_cpu_mem_usage=False).to(device).eval()
    vae = (
        AutoencoderKL.from_pretrained(str(folder / "vae"), low_cpu_mem_usage=False).to(device).eval()
        if (folder / "vae").is_dir()
        else None
    )
    if (folder / "scheduler").is_dir():
        config = DDPMScheduler.load_config(str(folder / "scheduler"))
        saved = replace(
            saved,
            schedule=replace(
                saved.schedule,
                timesteps=int(config["num_train_timesteps"]),
                beta_schedule=config["beta_schedule"],
                prediction_type=config["prediction_type"],
            ),
        )
    return DiffusionModel(unet, saved, vae)
