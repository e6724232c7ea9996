"""One diffusion training run described as data, so the same run can happen in this process or in
another one (a subprocess, or ``torchrun`` over several GPUs) from a JSON file.

A job names its inputs by the work folder, never by in-memory objects: the process that runs it
loads the metadata, image stores and latents itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..data.image_store import ImageStore
from ..data.pairs import doses_built, low_dose_pair_dir
from ..settings import WorkPaths
from . import diffusion_training as dt
from .diffusion import ScheduleConfig, UNetConfig
from .training import TrainConfig, TrainingOutcome

MODELS = ("latent_sr", "class_ddpm", "denoiser", "arbitrary_sr", "text_ldm")


@dataclass(frozen=True)
class TrainingJob:
    model: str  # one of MODELS
    home: str  # the work folder holding the inputs and the runs
    unet: UNetConfig
    schedule: ScheduleConfig
    train: TrainConfig
    data_hash: str
    # The model's own arguments: latent_sr {scale, vae_dir, residual}; class_ddpm {classes, balance,
    # label_dropout, guidance, and vae_dir for the latent space}; denoiser {dose_conditioning, strength, crop, residual};
    # arbitrary_sr {vae_dir, decoder_train (a TrainConfig as a dict), scale_range, draws, degradation_mix, pair_seed,
    # residual, decoder_ratios, decoder_hidden, decoder_queries}; text_ldm {vae_dir, encoder_dir, text_dropout,
    # guidance, balance, trainable_layers}.
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {MODELS}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainingJob:
        raw = json.loads(text)
        unet = {**raw["unet"], "block_out_channels": tuple(raw["unet"]["block_out_channels"])}
        return cls(model=raw["model"], home=raw["home"], unet=UNetConfig(**unet), schedule=ScheduleConfig(**raw["schedule"]),
                   train=TrainConfig(**raw["train"]), data_hash=raw["data_hash"], options=raw["options"])

    @property
    def runs_root(self) -> Path:
        return WorkPaths(Path(self.home)).models / self.model


def run(job: TrainingJob, progress: Any = None, stop_after: int | None = None) -> TrainingOutcome:
    """Train (or resume) the job's model; every process of a torchrun launch calls this."""
    paths = WorkPaths(Path(job.home))
    options = job.options
    common = {"progress": progress, "stop_after": stop_after}
    if job.model == "latent_sr":
        return dt.train_latent_sr(paths.latents, int(options["scale"]), Path(options["vae_dir"]), job.unet, job.schedule,
                                  job.train, job.runs_root, job.data_hash, residual=options.get("residual", False),
                                  **common)
    metadata = pd.read_parquet(paths.metadata)
    store = ImageStore(paths.image_store)
    if job.model == "arbitrary_sr":
        knobs = {k: v for k, v in options.items() if k not in ("vae_dir", "decoder_train")}
        for name in ("scale_range", "decoder_ratios", "decoder_hidden"):
            if name in knobs:
                knobs[name] = tuple(knobs[name])
        return dt.train_arbitrary_sr(metadata, store, paths.latents, Path(options["vae_dir"]), job.unet, job.schedule,
                                     job.train, TrainConfig(**options["decoder_train"]), job.runs_root, job.data_hash,
                                     **knobs, **common)
    if job.model == "text_ldm":
        return dt.train_text_ldm(metadata, paths.latents, Path(options["vae_dir"]), Path(options["encoder_dir"]),
                                 job.unet, job.schedule, job.train, job.runs_root, job.data_hash,
                                 text_dropout=options["text_dropout"], guidance=options["guidance"],
                                 balance=options["balance"], trainable_layers=options.get("trainable_layers", 0),
                                 **common)
    if job.model == "class_ddpm":
        latent = options.get("vae_dir") is not None
        return dt.train_class_ddpm(metadata, store, options["classes"], job.unet, job.schedule, job.train, job.runs_root,
                                   job.data_hash, latents_dir=paths.latents if latent else None,
                                   vae_dir=Path(options["vae_dir"]) if latent else None, balance=options["balance"],
                                   label_dropout=options["label_dropout"], guidance=options["guidance"], **common)
    dose_stores = {}
    for dose in doses_built(paths.pairs):
        folder = low_dose_pair_dir(paths.pairs, dose)
        dose_stores[dose] = (ImageStore(folder), pd.read_parquet(folder / "index.parquet"))
    return dt.train_denoiser(metadata, store, dose_stores, job.unet, job.schedule, job.train, job.runs_root, job.data_hash,
                             dose_conditioning=options["dose_conditioning"], strength=options["strength"],
                             crop=options.get("crop"), residual=options.get("residual", False), **common)

