"""The model-kind registry: one module per kind (``vae``, ``classifier``, ``latent_sr``,
``arbitrary_sr``, ``class_ddpm``, ``denoiser``, ``report_encoder``, ``text_ldm``), one line each
below. Training jobs, serving, the app, the Dagster assets and the bench scripts look a kind up
here; nothing outside this package branches on a model's name.

Adding a kind: a module here (recipe, profiles, ``plan``, ``train`` for diffusion kinds, pipeline,
serving spec, evaluation suite, ``ModelKind``), its line in ``KINDS``, and its asset
(see docs/architecture.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..evaluation.outcome import Evaluation
from .arbitrary_sr import ARBITRARY_SR
from .base import ModelKind, Progress, ServingSpec, TrainingJob, TrainingPlan, TrainingRecipe
from .class_ddpm import CLASS_DDPM
from .classifier import CLASSIFIER
from .denoiser import DENOISER
from .latent_sr import LATENT_SR
from .report_encoder import REPORT_ENCODER
from .synthetic_utility import SYNTHETIC_UTILITY
from .text_ldm import TEXT_LDM
from .vae import VAE

KINDS: tuple[ModelKind, ...] = (
    VAE,
    CLASSIFIER,
    LATENT_SR,
    ARBITRARY_SR,
    CLASS_DDPM,
    DENOISER,
    REPORT_ENCODER,
    TEXT_LDM,
)
# Every evaluation asset: each kind's, then the experiment over the generators
EVALUATIONS: tuple[Evaluation, ...] = (*(k.evaluation for k in KINDS if k.evaluation is not None), SYNTHETIC_UTILITY)

__all__ = [
    "ARBITRARY_SR",
    "CLASSIFIER",
    "CLASS_DDPM",
    "DENOISER",
    "EVALUATIONS",
    "KINDS",
    "LATENT_SR",
    "REPORT_ENCODER",
    "SYNTHETIC_UTILITY",
    "TEXT_LDM",
    "VAE",
    "ModelKind",
    "Progress",
    "ServingSpec",
    "TrainingJob",
    "TrainingPlan",
    "TrainingRecipe",
    "kind",
    "kind_of_folder",
    "run_job",
]


def kind(key: str) -> ModelKind:
    """A kind by its key, per-scale keys included (``latent_sr_x4``)."""
    for candidate in KINDS:
        if candidate.key == key:
            return candidate
        if candidate.holds(key):
            return candidate.at_scale(int(key.rsplit("_x", 1)[1]))
    raise ValueError(f"unknown model kind {key!r}; choose one of {[k.key for k in KINDS]}")


def folder_kind_name(folder: Path) -> str:
    """The kind a model folder names itself: a diffusion model's ``model.json``; the classifier's
    ``classifier.json``; an ``AutoencoderKL`` config (the VAE); a transformers config (the report
    encoder)."""
    folder = Path(folder)
    if (folder / "model.json").exists():
        return str(json.loads((folder / "model.json").read_text())["kind"])
    if (folder / "classifier.json").exists():
        return CLASSIFIER.key
    config = folder / "config.json"
    if config.exists():
        raw = json.loads(config.read_text())
        if raw.get("_class_name") == "AutoencoderKL":
            return VAE.key
        if "model_type" in raw:
            return REPORT_ENCODER.key
    raise ValueError(
        f"{folder} is not a model folder of this project (no model.json, classifier.json or AutoencoderKL config.json)"
    )


def kind_of_folder(folder: Path) -> ModelKind:
    return kind(folder_kind_name(folder))


def run_job(job: TrainingJob, progress: Progress = None, stop_after: int | None = None):
    """Train (or resume) a job's model; every process of a torchrun launch calls this."""
    trained = kind(job.model)
    if trained.train is None:
        raise ValueError(f"{trained.key} is trained in its asset's process, not as a job")
    return trained.train(job, progress=progress, stop_after=stop_after)


def served() -> tuple[ModelKind, ...]:
    """The kinds as registered (per-scale kinds at the scale the pipeline builds, x4)."""
    return tuple(k.at_scale(4) if k.per_scale else k for k in KINDS)
