"""What a trained diffusion model records beyond its UNet, schedule and conditioning: one frozen
dataclass per kind, written by its trainer into ``model.json`` and read back, typed, by its
pipeline, its evaluation suite, the app and serving (diffusers' ``register_to_config`` habit).

Every field carries the name of the recipe field it comes from (``guidance_scale`` in the recipe,
in the folder and in the pipeline alike); values the training derives (the latent scaling factor,
the doses it found) are named once here. ``TrainingRecord`` says how the weights came to be.

``model.json`` holds ``{"kind", "schedule", "conditioning", "unet", "settings", "training"}``.
Folders written before the settings were typed (every key at the top level, under older names)
still load: :func:`read_model_json` translates them once, here, and nowhere else.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

S = TypeVar("S", bound="ModelSettings")


def _strict(cls: type, raw: dict[str, Any], what: str) -> dict[str, Any]:
    """``raw`` checked against ``cls``'s fields: an unknown or missing key is an error that names it."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    required = {
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - set(raw))
    if unknown or missing:
        raise ValueError(
            f"{what}: "
            + "; ".join(
                part
                for part in (f"unknown keys {unknown}" if unknown else "", f"missing keys {missing}" if missing else "")
                if part
            )
        )
    return raw


@dataclass(frozen=True, kw_only=True)
class TrainingRecord:
    """How a model's weights came to be: the step, the data and loop config it saw, its start."""

    step: int
    data_hash: str
    train: dict[str, Any]  # TrainConfig.identity()
    warm_start_from: str | None = None  # the model folder whose matching UNet weights it started from
    warm_start_tensors: str | None = None  # "<copied> of <total>"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainingRecord:
        return cls(**_strict(cls, raw, "model.json training record"))


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """The settings every diffusion kind records; each kind adds its own fields."""

    kind: ClassVar[str]  # the model.json "kind" (per-scale kinds without their "_x<scale>")
    scaling_factor: float = 1.0  # latent models: the VAE latents' scaling factor; pixel models: 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[S], raw: dict[str, Any]) -> S:
        return cls(**_strict(cls, raw, f"model.json settings of a {cls.kind} model"))


@dataclass(frozen=True, kw_only=True)
class LatentSRSettings(ModelSettings):
    kind: ClassVar[str] = "latent_sr"
    scale: int  # one of the recipe's ``scales``: the model of this scale
    residual: bool
    vae_source: str  # the autoencoder folder whose latents it learnt (a copy is saved in vae/)


@dataclass(frozen=True, kw_only=True)
class ArbitrarySRSettings(ModelSettings):
    kind: ClassVar[str] = "arbitrary_sr"
    scale_min: float
    scale_max: float
    draws_per_image: int
    draws_by_area: bool
    degradation_mix: bool
    pair_seed: int
    residual: bool
    decoder_min_ratio: float  # the implicit head renders from this share of the latent grid up to the grid
    decoder_run: str  # the head's training run (its own resumable stage)
    vae_source: str
    # the share of training draws that restore a window off the latent grid (0: folders trained before them)
    off_grid_share: float = 0.0
    # the rendering chosen on val at each probe scale off the latent grid (empty: chosen before, "pad")
    rendering_scales: list[float] = dataclasses.field(default_factory=list)
    renderings: list[str] = dataclasses.field(default_factory=list)

    @property
    def scale_range(self) -> tuple[float, float]:
        return self.scale_min, self.scale_max


@dataclass(frozen=True, kw_only=True)
class ClassDDPMSettings(ModelSettings):
    kind: ClassVar[str] = "class_ddpm"
    classes: list[str]  # index = class id; the null class for guidance is len(classes)
    class_balance: bool
    guidance_scale: float  # the default when a caller gives none
    space: Literal["latent", "pixel"]
    vae_source: str | None = None  # latent space only


@dataclass(frozen=True, kw_only=True)
class DenoiserSettings(ModelSettings):
    kind: ClassVar[str] = "denoiser"
    doses: list[float]  # photons per pixel of the pairs it learnt; index = dose label
    dose_conditioning: bool
    sampling_strength: float  # the default start of the chain when a caller gives none
    crop: int | None
    residual: bool


@dataclass(frozen=True, kw_only=True)
class TextLDMSettings(ModelSettings):
    kind: ClassVar[str] = "text_ldm"
    guidance_scale: float
    text_dropout: float
    balance: bool
    trainable_encoder_layers: int
    vae_source: str
    encoder_source: str  # the report encoder it started from (its trained copy is in text_encoder/)
    text_length: int  # tokens the training reports were padded to
    train_reports: int
    preview_prompts: list[str] = field(default_factory=list)  # val reports of the training previews


SETTINGS: dict[str, type[ModelSettings]] = {
    cls.kind: cls
    for cls in (LatentSRSettings, ArbitrarySRSettings, ClassDDPMSettings, DenoiserSettings, TextLDMSettings)
}


def settings_type(folder_kind: str) -> type[ModelSettings]:
    """The settings class of a model.json ``kind`` (``latent_sr_x4`` is a ``latent_sr``)."""
    base = re.sub(r"_x\d+$", "", folder_kind)
    if base not in SETTINGS:
        raise ValueError(f"no settings are defined for model kind {folder_kind!r}; known: {sorted(SETTINGS)}")
    return SETTINGS[base]


# --- Folders written before the settings were typed --------------------------------------------------

_RECORD_KEYS = ("step", "data_hash", "train", "warm_start_from", "warm_start_tensors")
# per kind: the old top-level name of each field whose name changed
_RENAMED = {
    "class_ddpm": {"classes": "class_names", "class_balance": "balanced", "guidance_scale": "default_guidance"},
    "text_ldm": {
        "guidance_scale": "default_guidance",
        "balance": "balanced",
        "trainable_encoder_layers": "trainable_layers",
    },
    "denoiser": {"sampling_strength": "default_strength"},
    "arbitrary_sr": {"draws_per_image": "draws"},
}


def _legacy_settings(kind: str, raw: dict[str, Any]) -> ModelSettings:
    cls = settings_type(kind)
    base = re.sub(r"_x\d+$", "", kind)
    renamed = _RENAMED.get(base, {})
    names = {f.name for f in dataclasses.fields(cls)}
    values = {name: raw[renamed.get(name, name)] for name in names if renamed.get(name, name) in raw}
    # what the old format kept elsewhere, or implied
    conditioning = raw["conditioning"]
    if "residual" in names:
        values["residual"] = conditioning.get("residual_scale", 0.0) > 0
    if base == "arbitrary_sr":
        values["scale_min"], values["scale_max"] = (float(v) for v in raw["scale_range"])
        values["decoder_min_ratio"] = float(raw["decoder_ratios"][0])
    if base == "text_ldm":
        values["text_dropout"] = conditioning.get("text_dropout", 0.0)
    return cls.from_dict(values)


def read_model_json(raw: dict[str, Any]) -> tuple[ModelSettings, TrainingRecord]:
    """The typed settings and training record of a parsed ``model.json``, today's format or the
    one before typed settings."""
    kind = raw["kind"]
    if "settings" in raw:
        return settings_type(kind).from_dict(raw["settings"]), TrainingRecord.from_dict(raw["training"])
    record = TrainingRecord.from_dict({k: raw[k] for k in _RECORD_KEYS if k in raw})
    return _legacy_settings(kind, raw), record


def upgrade_classifier_json(raw: dict[str, Any]) -> dict[str, Any]:
    """A classifier's ``classifier.json`` in today's layout (the one before was flat, with
    ``class_names`` for the recipe's ``classes``)."""
    if "training" in raw:
        return raw
    return {
        "config": raw["config"],
        "classes": raw["class_names"],
        "image_size": raw["image_size"],
        "num_features": raw["num_features"],
        "metrics": raw["metrics"],
        "training": {k: raw[k] for k in ("step", "data_hash", "train")},
    }
