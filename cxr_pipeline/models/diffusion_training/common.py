"""What every diffusion training shares: the run folder, the Trainer, the saved model folder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..batches import RunningMoments
from ..diffusion import Conditioning, ScheduleConfig, UNetConfig, diffusion_step
from ..model_folder import SavedModel, save_model, warm_start
from ..model_settings import (
    ModelSettings,
    TrainingRecord,
)
from ..training import TrainConfig, Trainer, TrainEvent, TrainingOutcome, TrainProgress, run_key


def train_model(
    kind: str,
    unet_config: UNetConfig,
    schedule: ScheduleConfig,
    conditioning: Conditioning,
    batches: Callable[[int], dict],
    train_config: TrainConfig,
    runs_root: Path,
    data_hash: str,
    preview: Callable[[torch.nn.Module, int], np.ndarray],
    settings: ModelSettings,
    progress: TrainProgress | None = None,
    stop_after: int | None = None,
    vae: torch.nn.Module | None = None,
    parts: Mapping[str, Any] | None = None,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    unwrap: Callable[[torch.nn.Module], tuple[Any, dict]] | None = None,
    warm_start_from: Path | None = None,
) -> TrainingOutcome:
    """``settings``: the kind's typed settings, saved in model.json. ``parts``: more
    ``save_pretrained`` models the folder carries, by subfolder. ``wrap``: the module trained
    around the UNet (say, with text-encoder layers); ``unwrap`` gives back from it the UNet and the
    parts it trained, to save. ``warm_start_from``: a saved model whose matching UNet weights the
    training starts from (:func:`warm_start`)."""
    start = str(warm_start_from) if warm_start_from is not None else None
    run_dir = Path(runs_root) / run_key(
        kind,
        asdict(unet_config),
        asdict(schedule),
        asdict(conditioning),
        train_config.identity(),
        data_hash,
        settings.to_dict(),
        start,
    )
    torch.manual_seed(train_config.seed)
    previews: dict[int, np.ndarray] = {}

    def evaluate(model: torch.nn.Module, step: int) -> dict[str, float]:
        previews[step] = preview(model, step)
        return {"preview_mean": float(previews[step].mean())}

    unet = unet_config.build()
    copied = (
        f"{len(warm_start(unet, warm_start_from))} of {len(unet.state_dict())}" if warm_start_from is not None else None
    )
    trainer = Trainer(
        (wrap or (lambda unet: unet))(unet),
        diffusion_step(conditioning, schedule),
        batches,
        train_config,
        run_dir,
        batch_size_of=lambda b: int(b["target"].shape[0]),
        evaluate=evaluate,
        progress=progress,
    )
    model_dir = run_dir / "model"

    def save(result, folder: Path) -> None:
        unet, trained_parts = unwrap(result.ema_model) if unwrap else (result.ema_model, {})
        record = TrainingRecord(
            step=result.final_step,
            data_hash=data_hash,
            train=train_config.identity(),
            warm_start_from=start,
            warm_start_tensors=copied,
        )
        save_model(folder, unet, SavedModel(kind, unet_config, schedule, conditioning, settings, record), vae=vae)
        for name, part in {**(parts or {}), **trained_parts}.items():
            part.save_pretrained(str(folder / name))

    result = trainer.fit_and_save(model_dir, save, stop_after)
    return TrainingOutcome(kind, run_dir, model_dir, result.final_step, result.resumed_from, previews=previews)


def residual_scale(targets, conditions, chunk: int = 256) -> float:
    """1 / std of (target - condition) in the model's units: what puts a residual model's
    diffusion at unit variance (the latent scaling factor's role, for corrections). Both are
    read ``chunk`` rows at a time (tensors or ``LatentRows``), so a training set on disk is never
    loaded whole."""
    moments = RunningMoments()
    for start in range(0, len(targets), chunk):
        rows = slice(start, min(len(targets), start + chunk))
        moments.add(targets[rows].float() - conditions[rows].float())
    return float(1.0 / torch.tensor(moments.std()).clamp_min(1e-6))


def as_part(progress: Callable[[TrainEvent], None] | None, part: str) -> Callable[[TrainEvent], None] | None:
    """Training events of one part of a model (one MLflow run, a curve per part)."""
    if progress is None:
        return None
    return lambda event: progress(replace(event, part=part))
