"""What a model kind is: the one object every layer looks a kind up in (training jobs, serving,
the app, the Dagster assets, bench scripts), instead of branching on its name.

A kind owns its names (registry name, pointer key, runs folder, asset), its default recipe
(a dataclass of hyperparameters, with the why of each value beside it), its named UNet profiles,
how one training is planned and run, its pipeline class, its serving spec and its evaluation
suite. ``docs/architecture.md`` lists the steps to add one.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from ..data.labels.metadata import read_classes
from ..evaluation.outcome import Evaluation
from ..model_record import ModelRecord, current_model, has_current_model
from ..models.diffusion import ScheduleConfig, UNetConfig, UNetProfile
from ..models.model_folder import describe
from ..models.pipelines import CxrPipeline
from ..models.training import TrainConfig, TrainingOutcome, TrainProgress
from ..settings import WorkPaths

Progress = TrainProgress | None


# --- Recipes: the hyperparameters of one training, defaults per kind ---------------------------------


@dataclass(frozen=True)
class TrainingRecipe(TrainConfig):
    """The hyperparameters of one training: the training loop's own config (``TrainConfig``, every
    field of it) plus what the kind adds; each kind's recipe subclasses it with its own defaults.
    The Dagster layer turns a recipe into the asset's run config, field for field."""

    steps: int = 300
    learning_rate: float = 2e-3
    warmup_steps: int = 30
    block_out_channels: list[int] | None = None  # None: the profile's architecture

    def train_config(self) -> TrainConfig:
        """The loop's config: this recipe's values of its fields (the warm-up no longer than the run)."""
        values = {spec.name: getattr(self, spec.name) for spec in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{**values, "warmup_steps": min(self.warmup_steps, self.steps)})

    def widths(self) -> tuple[int, ...] | None:
        return tuple(self.block_out_channels) if self.block_out_channels else None


@dataclass(frozen=True)
class DiffusionRecipe(TrainingRecipe):
    # What the diffusion recipes share, for budgets of hundreds of steps (docs/recipes.md#shared-diffusion-recipe).
    steps: int = 200
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    ema_decay: float = 0.99
    checkpoint_every: int = 200
    eval_every: int = 200  # a sample grid to MLflow every this many steps
    timesteps: int = 1000
    beta_schedule: str = "linear"
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    snr_gamma: float | None = None  # min-SNR-gamma loss weighting (5 in Hang et al. 2023); None: off
    # Where the training runs: in this step's process (the default), in a subprocess, or under
    # torchrun with ``processes`` data-parallel ranks (GPUs, or CPU processes), both through Dagster
    # Pipes with ``python -m jobs.train_worker``. batch_size is the global batch either way.
    launcher: Literal["in_process", "subprocess", "torchrun"] = "in_process"
    processes: int = 2

    def schedule(self) -> ScheduleConfig:
        return ScheduleConfig(
            timesteps=self.timesteps,
            beta_schedule=self.beta_schedule,
            prediction_type=self.prediction_type,
            snr_gamma=self.snr_gamma,
        )

    def schedule_params(self) -> dict:
        return {
            "timesteps": self.timesteps,
            "beta_schedule": self.beta_schedule,
            "prediction_type": self.prediction_type,
            "snr_gamma": self.snr_gamma,
            "launcher": self.launcher,
        }


# --- Training jobs: one diffusion training as data, runnable in any process --------------------------


@dataclass(frozen=True)
class ModelInputs:
    """The trained models a training starts from, found by its plan in the work folder."""

    vae_dir: str | None = None  # latent kinds: the autoencoder whose latents they learn
    encoder_dir: str | None = None  # the text model: the pretrained report encoder
    warm_start_from: str | None = None  # a model whose matching UNet weights the training starts from


@dataclass(frozen=True)
class TrainingJob:
    """One diffusion training described as data, so the same run can happen in this process or in
    another one (a subprocess, or ``torchrun`` over several GPUs) from a JSON file. A job names its
    inputs by the work folder, never by in-memory objects: the process that runs it loads the
    metadata, image stores and latents itself. ``recipe`` is the kind's own recipe, typed, as
    the asset's config gave it (per-scale kinds: one scale)."""

    model: str  # the kind's key
    home: str  # the work folder holding the inputs and the runs
    unet: UNetConfig
    recipe: TrainingRecipe
    data_hash: str
    inputs: ModelInputs = field(default_factory=ModelInputs)

    @property
    def schedule(self) -> ScheduleConfig:
        if not isinstance(self.recipe, DiffusionRecipe):
            raise ValueError(f"a {self.model} job has no noise schedule: its recipe is not a diffusion recipe")
        return self.recipe.schedule()

    @property
    def train(self) -> TrainConfig:
        return self.recipe.train_config()

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainingJob:
        from . import kind  # the registry imports this module

        raw = json.loads(text)
        unet = {**raw["unet"], "block_out_channels": tuple(raw["unet"]["block_out_channels"])}
        return cls(
            model=raw["model"],
            home=raw["home"],
            unet=UNetConfig(**unet),
            recipe=kind(raw["model"]).recipe(**raw["recipe"]),
            data_hash=raw["data_hash"],
            inputs=ModelInputs(**raw["inputs"]),
        )

    @property
    def paths(self) -> WorkPaths:
        return WorkPaths(Path(self.home))

    @property
    def runs_root(self) -> Path:
        return self.paths.models / self.model

    def input_dir(self, name: str) -> Path:
        """One of the job's input folders, which its plan must have found."""
        value = getattr(self.inputs, name)
        if value is None:
            raise ValueError(f"a {self.model} job needs inputs.{name}, and its plan set none")
        return Path(value)


@dataclass
class TrainingPlan:
    """One model to train and register, planned from a recipe and the work folder: the kind (per
    scale for latent SR), the data it sees, its MLflow params, and either a ``job`` (diffusion
    kinds: runnable in or out of process) or ``run`` (trained in this process)."""

    kind: ModelKind
    data_hash: str
    params: dict[str, Any]
    job: TrainingJob | None = None
    run: Callable[[Progress], tuple[TrainingOutcome, dict]] | None = None
    reported: dict[str, Any] = field(default_factory=dict)  # extra asset metadata known before training

    def train_in_process(self, progress: Progress = None) -> tuple[TrainingOutcome, dict]:
        if self.job is not None and self.kind.train is not None:
            return self.kind.train(self.job, progress=progress), {}
        if self.run is None:
            raise ValueError(f"the plan of {self.kind.key} has neither a job nor a run")
        return self.run(progress)


# --- Serving: what a registered model takes and returns -------------------------------------------------


@dataclass(frozen=True)
class ServingSpec:
    """How one model kind is served as an MLflow pyfunc model: load the folder, answer a request,
    describe both (signature and input example)."""

    load: Callable[[Path, str], Any]
    predict: Callable[[Any, Any, dict], np.ndarray]
    example: Callable[[Path], Any]  # a small valid input for the model in a folder
    input_dtype: str  # numpy dtype name, or "string": a ``report`` column of text
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    params: tuple[tuple[str, str, Any], ...] = ()  # (name, MLflow type, default)

    def defaults(self) -> dict[str, Any]:
        return {name: default for name, _, default in self.params}


IMAGES, VECTORS = (-1, 1, -1, -1), (-1, -1)


def with_data_classes(recipe: Any, paths: WorkPaths) -> Any:
    """``recipe`` with its ``classes`` filled in from what the labels stage decided
    (``labels/classes.json``: the dataset's own classes or the NIH six) where it names none."""
    if recipe.classes:
        return recipe
    return dataclasses.replace(recipe, classes=list(read_classes(paths.labels).classes))


def too_few_classes(paths: WorkPaths) -> str | None:
    """The class models need two classes with training images: a dataset without class labels
    (an unlabelled PACS export, a slice folder without class folders) has none."""
    metadata = pd.read_parquet(paths.metadata, columns=["split", "class_id"])
    found = metadata.loc[metadata["split"] == "train", "class_id"].dropna().nunique()
    if found >= 2:
        return None
    return f"no class labels to condition on: {found} class(es) with training images, two are needed"


def warm_start_source(paths: WorkPaths, key: str, unet: UNetConfig, vae_dir: Path) -> tuple[ModelRecord | None, str]:
    """The current model of ``key`` a new latent model can start from (trained on the same
    autoencoder's latents, with the same UNet widths and depth: its convolutions already draw
    the anatomy), or None; and a line saying which, or why none."""
    if not has_current_model(paths, key):
        return None, f"from scratch: no {key} model trained yet"
    record = current_model(paths, key)
    saved = describe(record.model_dir)
    if getattr(saved.settings, "vae_source", None) != str(vae_dir):
        return None, f"from scratch: {record.label} is not trained on the current autoencoder's latents"
    if (saved.unet.block_out_channels, saved.unet.layers_per_block) != (
        tuple(unet.block_out_channels),
        unet.layers_per_block,
    ):
        return None, f"from scratch: {record.label} has another UNet width or depth"
    return record, f"from {record.label}"


def sampling_params(*extra: tuple[str, str, Any]) -> tuple[tuple[str, str, Any], ...]:
    return (("seed", "long", 0), ("num_inference_steps", "long", 50), *extra)


def given(value: float, fallback: float | None = None) -> float | None:
    """A request's knob, or ``fallback`` (None: the model's saved default) when it is negative."""
    return fallback if value < 0 else value


def request_images(model_input: Any) -> torch.Tensor:
    array = np.asarray(model_input, dtype=np.float32)
    if array.ndim == 3:  # (N, h, w): one channel implied
        array = array[:, None]
    if array.ndim != 4 or array.shape[1] != 1:
        raise ValueError(f"expected images shaped (N, 1, h, w) in [0, 1], got {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array))


def request_reports(model_input: Any) -> list[str]:
    """Report texts from a request: a DataFrame's ``report`` (or only) column, or a list."""
    if hasattr(model_input, "columns"):
        column = "report" if "report" in model_input.columns else model_input.columns[0]
        return [str(text) for text in model_input[column].tolist()]
    return [str(text) for text in np.asarray(model_input, dtype=object).reshape(-1).tolist()]


def report_example(folder: Path) -> pd.DataFrame:
    return pd.DataFrame({"report": ["Small right pleural effusion. No pneumothorax."]})


def gray(size: int) -> np.ndarray:
    return np.full((1, 1, size, size), 0.5, np.float32)


def native_size(folder: Path) -> int:
    """The image size a diffusion model folder was trained at (its UNet's, times its VAE's
    downsampling), read from the configs without loading weights."""
    folder = Path(folder)
    size = int(json.loads((folder / "unet" / "config.json").read_text())["sample_size"])
    if (folder / "vae" / "config.json").exists():
        size *= 2 ** (len(json.loads((folder / "vae" / "config.json").read_text())["block_out_channels"]) - 1)
    return size


# --- The kind -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelKind:
    key: str  # models/current/<key>.json, and the "kind" a diffusion model folder's model.json names
    asset: str  # the Dagster asset that trains it
    registered_name: str  # MLflow Model Registry name
    folder: str  # training runs under models/<folder>/<run key>/
    title: str  # for people: reports, the app
    description: str  # the registered model's description
    recipe: type[TrainingRecipe]  # the default recipe
    plan: Callable[..., list[TrainingPlan]]  # (recipe, paths, profile name) -> the trainings to run
    serving: ServingSpec
    train: Callable[..., TrainingOutcome] | None = None  # (job, progress=, stop_after=): diffusion kinds
    pipeline: type[CxrPipeline] | None = None  # the loaded-model class (diffusers habit: from_pretrained, __call__)
    unet_profiles: dict[str, UNetProfile] | None = None  # by profile name
    evaluation: Evaluation | None = None  # its suite bound to the models it reads; promotion names the champion
    per_scale: bool = False  # one registered model per scale (``<key>_x<scale>``)
    # For models no evaluation asset promotes (the VAE, the classifier, the report encoder): the
    # final validation figures a version must reach to be named champion, (metric, minimum, why).
    acceptance: tuple[tuple[str, float, str], ...] = ()
    # Why the work folder's data cannot train this kind (no reports, fewer than two classes), or
    # None: the main job then skips it and what reads it, with this reason, instead of failing.
    unavailable: Callable[[WorkPaths], str | None] | None = None

    def why_unavailable(self, paths: WorkPaths) -> str | None:
        return self.unavailable(paths) if self.unavailable else None

    @property
    def evaluated_by(self) -> str | None:
        """The evaluation asset whose promotion names the champion."""
        return self.evaluation.name if self.evaluation else None

    def at_scale(self, scale: int) -> ModelKind:
        """The per-scale kind (latent SR): key ``latent_sr_x4``, name ``cxr-latent-sr-x4``."""
        if not self.per_scale:
            raise ValueError(f"{self.key} is not trained per scale")
        return dataclasses.replace(
            self,
            key=f"{self.key}_x{scale}",
            registered_name=f"{self.registered_name}-x{scale}",
            title=f"{self.title} x{scale}",
            description=f"{self.title} x{scale} (EMA weights)",
            per_scale=False,
        )

    def holds(self, folder_kind: str) -> bool:
        """Whether a model folder's own kind (model.json) is this kind, at any scale for per-scale kinds."""
        if self.per_scale:
            prefix = f"{self.key}_x"
            return folder_kind.startswith(prefix) and folder_kind[len(prefix) :].isdigit()
        return folder_kind == self.key

    def unet(
        self,
        profile: str,
        size: int,
        in_channels: int,
        out_channels: int,
        *,
        widths: tuple[int, ...] | None = None,
        num_class_embeds: int | None = None,
        cross_attention_dim: int | None = None,
    ) -> UNetConfig:
        """The kind's UNet at ``profile`` (sizes from the data), with ``widths`` when set."""
        if self.unet_profiles is None:
            raise ValueError(f"{self.key} has no UNet")
        return self.unet_profiles[profile].config(
            size, in_channels, out_channels, num_class_embeds, widths, cross_attention_dim
        )
