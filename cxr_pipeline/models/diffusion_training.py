"""Training the three diffusion models on the pipeline's data.

Each ``train_*`` function assembles deterministic batches (by step) for one model, runs the shared
:class:`~cxr_pipeline.models.training.Trainer`, saves the EMA weights as a model folder, and
returns sample grids made during training. Sampling a saved model goes through its pipeline
object (:mod:`cxr_pipeline.models.pipelines`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data import atomic
from ..data.degrade import DegradationMix, image_rng, make_low_resolution
from ..data.image_store import ImageStore
from ..data.labels.report_text import report_prompts
from . import distributed
from .batches import EpochSampler, RunningMoments, StoreImages, WeightedStepSampler, aligned_crops
from .diffusion import (Conditioning, ScheduleConfig, TextCondition, UNetConfig, diffusion_step, sample, save_model,
                        warm_start)
from .implicit import ImplicitDecoder, downsampling_factor, train_implicit_decoder
from .pipelines import bicubic_canvas, scale_label, to_images
from .report_encoder import ReportEncoder
from .training import TrainConfig, TrainEvent, Trainer, TrainingOutcome, run_key, step_generator
from .vae import encode_mean, from_model, load_vae, to_model



def _train(kind: str, unet_config: UNetConfig, schedule: ScheduleConfig, conditioning: Conditioning,
           batches: Callable[[int], dict], train_config: TrainConfig, runs_root: Path, data_hash: str,
           preview: Callable[[torch.nn.Module, int], np.ndarray], extra: dict, progress=None,
           stop_after: int | None = None, vae: torch.nn.Module | None = None,
           parts: dict[str, torch.nn.Module] | None = None,
           wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
           unwrap: Callable[[torch.nn.Module], tuple[torch.nn.Module, dict]] | None = None,
           warm_start_from: Path | None = None) -> TrainingOutcome:
    """``parts``: more ``save_pretrained`` models the folder carries, by subfolder. ``wrap``: the
    module trained around the UNet (say, with text-encoder layers); ``unwrap`` gives back from it
    the UNet and the parts it trained, to save. ``warm_start_from``: a saved model whose matching
    UNet weights the training starts from (:func:`warm_start`)."""
    if warm_start_from is not None:
        extra = {**extra, "warm_start_from": str(warm_start_from)}
    run_dir = Path(runs_root) / run_key(kind, asdict(unet_config), asdict(schedule), asdict(conditioning),
                                         train_config.identity(), data_hash, extra)
    torch.manual_seed(train_config.seed)
    previews: dict[int, np.ndarray] = {}

    def evaluate(model: torch.nn.Module, step: int) -> dict[str, float]:
        previews[step] = preview(model, step)
        return {"preview_mean": float(previews[step].mean())}

    unet = unet_config.build()
    if warm_start_from is not None:
        extra = {**extra, "warm_start_tensors": f"{len(warm_start(unet, warm_start_from))} of {len(unet.state_dict())}"}
    trainer = Trainer((wrap or (lambda unet: unet))(unet), diffusion_step(conditioning, schedule),
                      batches, train_config, run_dir, batch_size_of=lambda b: int(b["target"].shape[0]),
                      evaluate=evaluate, progress=progress)
    model_dir = run_dir / "model"

    def save(result, folder: Path) -> None:
        unet, trained_parts = unwrap(result.ema_model) if unwrap else (result.ema_model, {})
        save_model(folder, unet, kind, schedule, conditioning, unet_config,
                   extra={**extra, "step": result.final_step, "data_hash": data_hash,
                          "train": train_config.identity()}, vae=vae)
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


# --- Latent space --------------------------------------------------------------------------------


def latent_scaling_factor(latents_dir: Path) -> float:
    return float(json.loads((Path(latents_dir) / "latents.json").read_text())["scaling_factor"])


class LatentRows:
    """The rows of a latents file times the scaling factor (unit variance, as the diffusion sees
    them), read from a memory map as they are indexed: a training holds its batches, never the
    whole split (89,000 NIH training latents of 8x64x64 are 11.7 GB). Indexed like a tensor
    (``rows[picked]``, ``rows[:4]``); ``subset`` narrows it without reading anything."""

    def __init__(self, path: Path, factor: float, positions: np.ndarray | None = None):
        self.path, self.factor = Path(path), factor
        self.array = np.load(self.path, mmap_mode="r")
        self.positions = positions

    def __len__(self) -> int:
        return len(self.positions) if self.positions is not None else len(self.array)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.array.shape[1:])

    def _positions(self, index) -> np.ndarray:
        """Row numbers in the file for a slice, a boolean mask or integer rows of this view
        (without building an index of every row: this runs once per training batch)."""
        index = index.numpy() if isinstance(index, torch.Tensor) else index
        if isinstance(index, slice):
            picked = np.arange(*index.indices(len(self)))
        else:
            index = np.asarray(index)
            picked = np.flatnonzero(index) if index.dtype == bool else index.astype(np.int64)
        return self.positions[picked] if self.positions is not None else picked

    def subset(self, index) -> LatentRows:
        return LatentRows(self.path, self.factor, np.atleast_1d(self._positions(index)))

    def __getitem__(self, index) -> torch.Tensor:
        picked = self._positions(index)
        return torch.from_numpy(np.array(self.array[picked])) * self.factor


def scaled_latents(latents_dir: Path, name: str, split: str) -> LatentRows:
    """``<name>_<split>.npy`` times the scaling factor, read lazily (``LatentRows``)."""
    return LatentRows(Path(latents_dir) / f"{name}_{split}.npy", latent_scaling_factor(latents_dir))


# --- 1. Latent super-resolution -------------------------------------------------------------------


def train_latent_sr(latents_dir: Path, scale: int, vae_dir: Path, unet_config: UNetConfig, schedule: ScheduleConfig,
                    train_config: TrainConfig, runs_root: Path, data_hash: str, *, residual: bool = False, progress=None,
                    stop_after: int | None = None) -> TrainingOutcome:
    """``residual``: diffuse the correction from the bicubic latent to the HR latent (SRDiff)
    instead of the HR latent itself."""
    factor = latent_scaling_factor(latents_dir)
    hr, lr = scaled_latents(latents_dir, "hr", "train"), scaled_latents(latents_dir, f"lr_x{scale}", "train")
    val_hr, val_lr = scaled_latents(latents_dir, "hr", "val")[:4], scaled_latents(latents_dir, f"lr_x{scale}", "val")[:4]
    sampler = EpochSampler(len(hr), train_config.batch_size, train_config.seed)
    conditioning = Conditioning(concat_channels=lr.shape[1], residual_scale=residual_scale(hr, lr) if residual else 0.0)
    vae = load_vae(vae_dir)

    def batches(step: int) -> dict:
        rows = sampler.indices(step)
        return {"target": hr[rows], "condition": lr[rows]}

    def preview(model: torch.nn.Module, step: int) -> np.ndarray:
        device = next(model.parameters()).device
        out = sample(model, schedule, tuple(val_hr.shape), condition=val_lr.to(device), steps=train_config.preview_steps,
                     generator=step_generator(train_config.seed, 10**6), residual_scale=conditioning.residual_scale)
        decoded = [from_model(vae.decode(x.cpu() / factor).sample)[:, 0] for x in (val_lr, out, val_hr)]
        return torch.cat([torch.cat(list(row), dim=1) for row in decoded], dim=0).numpy()

    extra = {"vae_source": str(vae_dir), "scaling_factor": factor, "scale": scale}
    return _train(f"latent_sr_x{scale}", unet_config, schedule, conditioning, batches, train_config, runs_root,
                  data_hash, preview, extra, progress, stop_after, vae=vae)


# --- 2. Class-conditional DDPM with classifier-free guidance ------------------------------------------


def train_class_ddpm(metadata: pd.DataFrame, store: ImageStore, class_names: Sequence[str], unet_config: UNetConfig,
                     schedule: ScheduleConfig, train_config: TrainConfig, runs_root: Path, data_hash: str, *,
                     latents_dir: Path | None = None, vae_dir: Path | None = None, balance: bool = True,
                     label_dropout: float = 0.1, guidance: float = 2.0, progress=None,
                     stop_after: int | None = None) -> TrainingOutcome:
    """In the VAE's latent space when ``latents_dir`` and ``vae_dir`` are given (the default
    recipe: 16x fewer positions per image, so far more steps in the same time), else on pixels."""
    latent = latents_dir is not None
    if latent:
        index = pd.read_parquet(Path(latents_dir) / "index_train.parquet")
        labelled = index["class_id"].notna().to_numpy(dtype=bool, copy=True)
        targets = scaled_latents(latents_dir, "hr", "train").subset(labelled)
        labels = index.loc[labelled, "class_id"].astype(int).to_numpy()
        factor, vae = latent_scaling_factor(latents_dir), load_vae(vae_dir)
        extra_space = {"space": "latent", "scaling_factor": factor, "vae_source": str(vae_dir)}
    else:
        rows = metadata[(metadata["split"] == "train") & metadata["class_id"].notna()].reset_index(drop=True)
        images = StoreImages(store, rows)
        labels = rows["class_id"].astype(int).to_numpy()
        factor, vae, extra_space = 1.0, None, {"space": "pixel"}
    num_classes = len(class_names)
    sampler = (WeightedStepSampler(labels, train_config.batch_size, train_config.seed) if balance
               else EpochSampler(len(labels), train_config.batch_size, train_config.seed))
    conditioning = Conditioning(num_classes=num_classes, class_dropout=label_dropout)

    def batches(step: int) -> dict:
        picked = sampler.indices(step)
        target = targets[torch.from_numpy(picked)] if latent else to_model(images.batch(picked))
        return {"target": target, "labels": torch.from_numpy(labels[picked]).long()}

    def preview(model: torch.nn.Module, step: int) -> np.ndarray:
        wanted = torch.arange(num_classes).repeat_interleave(2)
        shape = (len(wanted), unet_config.out_channels, unet_config.sample_size, unet_config.sample_size)
        out = sample(model, schedule, shape, labels=wanted, null_label=num_classes, guidance=guidance,
                     steps=train_config.preview_steps, generator=step_generator(train_config.seed, 10**6))
        images_ = to_images(out, vae, factor)[:, 0]  # one column per class, two rows
        return torch.cat([torch.cat(list(images_[i::2]), dim=1) for i in range(2)], dim=0).numpy()

    extra = {"class_names": list(class_names), "balanced": balance, "default_guidance": guidance, **extra_space}
    return _train("class_ddpm", unet_config, schedule, conditioning, batches, train_config, runs_root, data_hash,
                  preview, extra, progress, stop_after, vae=vae)


# --- 3. Low-dose denoising --------------------------------------------------------------------------


def low_dose_batch(clean: StoreImages, noisy: Sequence[StoreImages], picked: np.ndarray, crop: int | None, seed: int,
                   step: int) -> dict[str, torch.Tensor]:
    """One batch of (normal-dose, low-dose) pairs in model units: ``picked`` indexes image x dose
    (``noisy`` holds one store per dose, rows aligned with ``clean``), then the same crop of both."""
    image_rows, dose_rows = picked // len(noisy), picked % len(noisy)
    target = clean.batch(image_rows)
    condition = torch.cat([noisy[d].batch([r]) for r, d in zip(image_rows, dose_rows)])
    target, condition = aligned_crops([target, condition], crop, seed, step)
    return {"target": to_model(target), "condition": to_model(condition), "labels": torch.from_numpy(dose_rows).long()}


def train_denoiser(metadata: pd.DataFrame, store: ImageStore, dose_stores: dict[float, tuple[ImageStore, pd.DataFrame]],
                   unet_config: UNetConfig, schedule: ScheduleConfig, train_config: TrainConfig, runs_root: Path,
                   data_hash: str, *, dose_conditioning: bool = True, strength: float = 0.4, crop: int | None = None,
                   residual: bool = False, progress=None, stop_after: int | None = None) -> TrainingOutcome:
    """``crop``: train on random aligned windows of this size (the UNet is fully convolutional and
    samples whole images); None trains on whole images. ``residual``: diffuse the correction from
    the low-dose image to the normal-dose one instead of the image itself."""
    rows = metadata[metadata["split"] == "train"].reset_index(drop=True)
    clean = StoreImages(store, rows)
    doses = sorted(dose_stores)
    noisy = [StoreImages(dose_stores[d][0], dose_stores[d][1].set_index("image_id").loc[rows["image_id"]].reset_index())
             for d in doses]
    sampler = EpochSampler(len(rows) * len(doses), train_config.batch_size, train_config.seed)
    scale = 0.0
    if residual:  # from the first (up to) 64 training images at every dose
        first = list(range(min(64, len(rows))))
        scale = residual_scale(to_model(clean.batch(first)).repeat(len(doses), 1, 1, 1),
                               torch.cat([to_model(store_.batch(first)) for store_ in noisy]))
    conditioning = Conditioning(concat_channels=1, num_classes=len(doses) if dose_conditioning else 0,
                                class_dropout=0.1 if dose_conditioning else 0.0, residual_scale=scale)

    def batches(step: int) -> dict:
        batch = low_dose_batch(clean, noisy, sampler.indices(step), crop, train_config.seed, step)
        if not dose_conditioning:
            del batch["labels"]
        return batch

    preview_rows = list(range(min(4, len(rows))))

    def preview(model: torch.nn.Module, step: int) -> np.ndarray:
        lowest = 0  # the fewest photons: the hardest case
        condition = to_model(noisy[lowest].batch(preview_rows))
        labels = torch.full((len(preview_rows),), lowest) if dose_conditioning else None
        out = sample(model, schedule, tuple(condition.shape), condition=condition, labels=labels,
                     null_label=conditioning.num_classes if dose_conditioning else None, steps=train_config.preview_steps,
                     start=condition, strength=strength, generator=step_generator(train_config.seed, 10**6),
                     residual_scale=conditioning.residual_scale)
        columns = [from_model(condition)[:, 0], from_model(out.cpu())[:, 0], clean.batch(preview_rows)[:, 0]]
        return torch.cat([torch.cat(list(c), dim=0) for c in columns], dim=1).numpy()

    extra = {"doses": doses, "dose_conditioning": dose_conditioning, "default_strength": strength, "crop": crop}
    return _train("denoiser", unet_config, schedule, conditioning, batches, train_config, runs_root, data_hash,
                  preview, extra, progress, stop_after)


# --- 4. Arbitrary-scale super-resolution ---------------------------------------------------------------


def scale_draws(image_id: str, draws: int, scale_range: tuple[float, float], seed: int,
                by_area: bool = False) -> list[float]:
    """``draws`` continuous scales for one image, one in each equal stratum of ``scale_range``
    (so every image covers the whole range), placed at random within it, per image. ``by_area``:
    strata equal in scale squared (the pixels each LR pixel becomes), so large scales, where
    the restoration is hardest, are drawn more often."""
    rng = image_rng(seed, str(image_id), "arbitrary_sr_scales")
    low, high = (v * v for v in scale_range) if by_area else scale_range
    width = (high - low) / draws
    values = [low + width * (k + float(rng.random())) for k in range(draws)]
    return [v ** 0.5 for v in values] if by_area else values


@torch.no_grad()
def scale_pair_latents(images: StoreImages, vae: torch.nn.Module, draws: int, scale_range: tuple[float, float],
                       mix: DegradationMix | None, seed: int, by_area: bool = False,
                       batch_size: int = 32, dest: Path | None = None) -> tuple[torch.Tensor | LatentRows, np.ndarray]:
    """Training conditions built on the fly: each image degraded (``mix``) and shrunk at each of
    its ``scale_draws``, resampled back (bicubic) to the image's grid and encoded. Returns the
    latents, ``draws`` consecutive rows per image, and the size ratios the rounded LR grids make
    (what the model is told as its scale). Deterministic per (seed, image, draw). With ``dest``
    the latents are written there batch by batch and returned as ``LatentRows`` over it (at NIH
    size, six draws of 89,000 training images are 70 GB: never held in memory)."""
    factor = downsampling_factor(vae)
    latents, ratios = [], []
    writer = atomic.npy_rows(dest, len(images) * draws) if dest is not None else contextlib.nullcontext()
    with writer as out:
        for start in range(0, len(images), batch_size):
            rows = list(range(start, min(len(images), start + batch_size)))
            lows = []
            for row, image in zip(rows, images.batch(rows)):
                image_id = images.image_ids[row]
                for k, scale in enumerate(scale_draws(image_id, draws, scale_range, seed, by_area)):
                    low, _, _ = make_low_resolution(image[0].numpy(), scale, image_rng(seed, image_id, f"arbitrary_sr_{k}"), mix)
                    lows.append((low, tuple(image.shape[-2:])))
                    ratios.append((image.shape[-2] / low.shape[0] + image.shape[-1] / low.shape[1]) / 2)
            canvases = torch.cat([bicubic_canvas(torch.from_numpy(low)[None, None], size, factor) for low, size in lows])
            # the encoder runs 1.6x faster on CPU in chunks of 64 than of several hundred
            for i in range(0, len(canvases), 64):
                encoded = encode_mean(vae, canvases[i:i + 64])
                if dest is not None:
                    out.append(encoded.numpy())
                else:
                    latents.append(encoded)
    if dest is not None:
        return LatentRows(dest, 1.0), np.asarray(ratios)
    return torch.cat(latents), np.asarray(ratios)


def as_part(progress: Callable[[TrainEvent], None] | None, part: str) -> Callable[[TrainEvent], None] | None:
    """Training events of one part of a model (one MLflow run, a curve per part)."""
    if progress is None:
        return None
    return lambda event: progress(replace(event, part=part))


def train_arbitrary_sr(metadata: pd.DataFrame, store: ImageStore, latents_dir: Path, vae_dir: Path,
                       unet_config: UNetConfig, schedule: ScheduleConfig, train_config: TrainConfig,
                       decoder_config: TrainConfig, runs_root: Path, data_hash: str, *,
                       scale_range: tuple[float, float] = (1.0, 4.0), draws: int = 6, draws_by_area: bool = False,
                       degradation_mix: bool = True, pair_seed: int = 0, residual: bool = True,
                       decoder_ratios: tuple[float, float] = (0.75, 1.0),
                       decoder_hidden: Sequence[int] = (64, 64), decoder_queries: int = 1024,
                       decoder_val_images: int = 48, warm_start_from: Path | None = None, progress=None,
                       stop_after: int | None = None) -> TrainingOutcome:
    """Two stages over the frozen VAE. First the implicit decoder head (LIIF, :mod:`.implicit`),
    trained to render latents at sizes between the encoder's grid steps (``decoder_ratios`` of
    the native size). Then the latent diffusion model, conditioned on the latent of the LR image
    resampled to the HR grid, on ``draws`` continuous scales per training image in
    ``scale_range`` (built on the fly, :func:`scale_pair_latents`), diffusing the correction to
    the HR latent like the fixed-scale recipe, and told the scale when ``unet_config`` has a
    ``"timestep"`` class embedding. Each stage resumes from its own checkpoints;
    ``stop_after`` interrupts the second. ``warm_start_from``: a fixed-scale model of the same
    latents whose UNet the second stage starts from (the scale's embedding starts fresh)."""
    runs_root = Path(runs_root)
    decoder = train_implicit_decoder(metadata, store, vae_dir, decoder_config, runs_root / "decoder", data_hash,
                                     ratios=decoder_ratios, eval_ratios=(0.8, 0.95), val_images=decoder_val_images,
                                     hidden=decoder_hidden, query_points=decoder_queries,
                                     progress=as_part(progress, "decoder"))
    # only the main process saves, and only after its own decoder stage wrote the head
    parts = {"head": ImplicitDecoder.from_pretrained(decoder.model_dir).head} if distributed.current().is_main else {}
    factor, vae = latent_scaling_factor(latents_dir), load_vae(vae_dir)
    mix = DegradationMix() if degradation_mix else None
    order = pd.read_parquet(Path(latents_dir) / "index_train.parquet")["image_id"]
    rows = metadata.set_index("image_id").loc[order].reset_index()
    hr = scaled_latents(latents_dir, "hr", "train")
    # the conditions go to a file beside the runs, named by everything that makes them, so a
    # resumed or repeated training reads them back instead of encoding every image again
    conditions_file = runs_root / "conditions" / (run_key("arbitrary_sr_conditions", str(vae_dir), draws, list(scale_range),
                                                          degradation_mix, pair_seed, draws_by_area, data_hash) + ".npy")
    ratios_file = conditions_file.with_suffix(".ratios.npy")
    if conditions_file.exists() and ratios_file.exists():
        ratios = np.load(ratios_file)
    else:
        _, ratios = scale_pair_latents(StoreImages(store, rows), vae, draws, scale_range, mix, pair_seed, draws_by_area,
                                       dest=conditions_file)
        atomic.write_npy(ratios_file, ratios)
    conditions = LatentRows(conditions_file, factor)
    scale_conditioned = unet_config.class_embed_type == "timestep"
    labels = torch.tensor([scale_label(r) for r in ratios], dtype=torch.float32)
    targets_of = torch.arange(len(conditions)) // draws  # the HR latent each condition belongs to
    conditioning = Conditioning(concat_channels=hr.shape[1],
                                residual_scale=residual_scale(hr.subset(targets_of), conditions) if residual else 0.0)
    sampler = EpochSampler(len(conditions), train_config.batch_size, train_config.seed)

    def batches(step: int) -> dict:
        picked = torch.from_numpy(sampler.indices(step))
        batch = {"target": hr[targets_of[picked]], "condition": conditions[picked]}
        return {**batch, "labels": labels[picked]} if scale_conditioned else batch

    val = StoreImages(store, metadata[metadata["split"] == "val"].head(4).reset_index(drop=True)).stack()
    preview_scale = 3.0  # inside the range and off the integer grid of the LR (64 px -> 21 px)
    preview_lows = [make_low_resolution(x[0].numpy(), preview_scale, image_rng(pair_seed, "preview", "x3"), None)[0]
                    for x in val]
    preview_canvas = torch.cat([bicubic_canvas(torch.from_numpy(low)[None, None], tuple(val.shape[-2:]),
                                               downsampling_factor(vae)) for low in preview_lows])
    preview_condition = encode_mean(vae, preview_canvas) * factor

    def preview(model: torch.nn.Module, step: int) -> np.ndarray:
        device = next(model.parameters()).device
        preview_labels = torch.full((len(preview_condition),), scale_label(preview_scale)) if scale_conditioned else None
        out = sample(model, schedule, tuple(preview_condition.shape), condition=preview_condition.to(device),
                     labels=preview_labels, steps=train_config.preview_steps, generator=step_generator(train_config.seed, 10**6),
                     residual_scale=conditioning.residual_scale)
        rows_ = [preview_canvas[:, 0], to_images(out, vae, factor)[:, 0], val[:, 0]]
        return torch.cat([torch.cat(list(row), dim=1) for row in rows_], dim=0).numpy()

    extra = {"vae_source": str(vae_dir), "scaling_factor": factor, "scale_range": list(scale_range), "draws": draws,
             "draws_by_area": draws_by_area, "degradation_mix": degradation_mix, "pair_seed": pair_seed,
             "decoder_run": decoder.run_dir.name, "decoder_ratios": list(decoder_ratios)}
    outcome = _train("arbitrary_sr", unet_config, schedule, conditioning, batches, train_config, runs_root, data_hash,
                     preview, extra, progress, stop_after, vae=vae, parts=parts, warm_start_from=warm_start_from)
    outcome.metrics.update({f"decoder_{k}": v for k, v in decoder.metrics.items()})
    return outcome


# --- 5. Text-conditional latent diffusion from radiology reports ---------------------------------------


class TextLayersAndUNet(torch.nn.Module):
    """The report encoder's last layers and the UNet, trained as one model: called like the UNet
    with the frozen layers' hidden states, it runs the trainable layers over them, then the UNet
    on the result (and its pooled mean, recomputed here)."""

    def __init__(self, text_layers: torch.nn.ModuleList, unet: torch.nn.Module, text_learning_rate_scale: float = 0.05):
        super().__init__()
        self.text_layers, self.unet = text_layers, unet
        self.text_learning_rate_scale = text_learning_rate_scale

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        """Pretrained layers fine-tune at a small share of the UNet's rate (at the UNet's 2e-3 they
        are overwritten, not adapted)."""
        return [{"params": list(self.unet.parameters())},
                {"params": list(self.text_layers.parameters()), "lr": learning_rate * self.text_learning_rate_scale}]

    def forward(self, sample, timestep, encoder_hidden_states, encoder_attention_mask, class_labels=None):
        hidden = ReportEncoder.run_layers(self.text_layers, encoder_hidden_states, encoder_attention_mask)
        return self.unet(sample, timestep, encoder_hidden_states=hidden, encoder_attention_mask=encoder_attention_mask,
                         class_labels=TextCondition(hidden, encoder_attention_mask).pooled())


def report_groups(rows: pd.DataFrame) -> np.ndarray:
    """What balanced sampling evens out: the single-label class where a report has one, else one
    group for every other report (several findings, or findings outside the classes)."""
    names = rows["class_name"].astype(object).where(rows["class_name"].notna(), "other")
    return pd.factorize(names.to_numpy())[0]


def train_text_ldm(metadata: pd.DataFrame, latents_dir: Path, vae_dir: Path, encoder_dir: Path,
                   unet_config: UNetConfig, schedule: ScheduleConfig, train_config: TrainConfig, runs_root: Path,
                   data_hash: str, *, text_dropout: float = 0.1, guidance: float = 3.0, balance: bool = True,
                   trainable_layers: int = 0, warm_start_from: Path | None = None, progress=None,
                   stop_after: int | None = None) -> TrainingOutcome:
    """Latent diffusion conditioned on radiology reports: the frozen report encoder's token
    embeddings (computed once for the training split's reports, all padded to one length) feed
    the UNet's cross-attention and, pooled, its timestep embedding; ``text_dropout`` of the
    reports are swapped for the empty one (classifier-free guidance). ``balance``: batches even
    over the single-label classes (and one group for the rest), as real findings are skewed.
    ``trainable_layers``: the encoder's last layers train with the UNet (the rest stays frozen and
    is run once); 0 keeps it frozen. ``warm_start_from``: a model of the same latent space (the
    class model) whose matching UNet weights the training starts from. Images without a report are
    left out. The model folder carries the encoder (``text_encoder/``), with its trained layers."""
    encoder = ReportEncoder.from_pretrained(encoder_dir)
    index = pd.read_parquet(Path(latents_dir) / "index_train.parquet")
    rows = metadata.set_index("image_id").loc[index["image_id"]].reset_index()
    prompts = report_prompts(rows).to_numpy()
    reported = np.flatnonzero([bool(p) for p in prompts])
    if not len(reported):
        raise ValueError("no training image has a report: the text model needs report text (findings_text / "
                         "impression_text in the metadata)")
    targets = scaled_latents(latents_dir, "hr", "train").subset(reported)
    rows, prompts = rows.iloc[reported].reset_index(drop=True), prompts[reported]
    length = min(encoder.max_length, int(encoder.token_counts(list(prompts)).max()))
    frozen = encoder.layer_count - trainable_layers  # the layers whose output is computed once
    text = encoder.encode(list(prompts), pad_to=length, layers=frozen)
    null = encoder.encode([""], pad_to=length, layers=frozen)
    factor, vae = latent_scaling_factor(latents_dir), load_vae(vae_dir)
    sampler = (WeightedStepSampler(report_groups(rows), train_config.batch_size, train_config.seed) if balance
               else EpochSampler(len(targets), train_config.batch_size, train_config.seed))
    conditioning = Conditioning(text=True, text_dropout=text_dropout)

    def batches(step: int) -> dict:
        picked = torch.from_numpy(sampler.indices(step))
        return {"target": targets[picked], "text": text.hidden[picked], "text_mask": text.mask[picked],
                "null_text": null.hidden, "null_mask": null.mask}

    val = metadata[metadata["split"] == "val"]
    val_prompts = [p for p in report_prompts(val).tolist() if p][:8]
    preview_text = encoder.encode(val_prompts, pad_to=length, layers=frozen)

    def preview(model: torch.nn.Module, step: int) -> np.ndarray:
        shape = (len(val_prompts), unet_config.out_channels, unet_config.sample_size, unet_config.sample_size)
        out = sample(model, schedule, shape, text=preview_text, null_text=null, guidance=guidance, steps=train_config.preview_steps,
                     generator=step_generator(train_config.seed, 10**6))
        return torch.cat(list(to_images(out, vae, factor)[:, 0]), dim=1).numpy()

    extra = {"default_guidance": guidance, "space": "latent", "scaling_factor": factor, "vae_source": str(vae_dir),
             "encoder_source": str(encoder_dir), "text_length": length, "train_reports": len(prompts),
             "balanced": balance, "preview_prompts": val_prompts, "trainable_layers": trainable_layers}
    if not trainable_layers:
        return _train("text_ldm", unet_config, schedule, conditioning, batches, train_config, runs_root, data_hash,
                      preview, extra, progress, stop_after, vae=vae, parts={"text_encoder": encoder},
                      warm_start_from=warm_start_from)
    return _train("text_ldm", unet_config, schedule, conditioning, batches, train_config, runs_root, data_hash,
                  preview, extra, progress, stop_after, vae=vae,
                  wrap=lambda unet: TextLayersAndUNet(encoder.top_layers(trainable_layers), unet),
                  unwrap=lambda model: (model.unet, {"text_encoder": encoder.with_top_layers(model.text_layers)}),
                  warm_start_from=warm_start_from)
