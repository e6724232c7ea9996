"""Arbitrary-scale super-resolution: the implicit decoder head, then latent diffusion on continuous scales."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...data import atomic
from ...data.degrade import DegradationMix, image_rng, make_low_resolution
from ...data.image_store import ImageStore
from ...data.pairs import scale_exact_pairs
from ...metrics.restoration import per_image_scores
from .. import distributed
from ..batches import EpochSampler, StoreImages
from ..diffusion import (
    Conditioning,
    ScheduleConfig,
    UNetConfig,
    sample,
)
from ..implicit import ImplicitDecoder, downsampling_factor, train_implicit_decoder
from ..latents import LatentRows, latent_scaling_factor
from ..model_folder import describe
from ..model_settings import ArbitrarySRSettings
from ..pipelines import (
    ArbitraryScaleSuperResolution,
    bicubic_canvas,
    mirror_to_canvas,
    padded_canvas,
    scale_label,
    to_images,
)
from ..training import TrainConfig, TrainingOutcome, TrainProgress, pick_device, run_key, step_generator
from ..vae import encode_mean, load_vae
from .common import as_part, residual_scale, train_model


def scale_draws(
    image_id: str, draws: int, scale_range: tuple[float, float], seed: int, by_area: bool = False
) -> list[float]:
    """``draws`` continuous scales for one image, one in each equal stratum of ``scale_range``
    (so every image covers the whole range), placed at random within it, per image. ``by_area``:
    strata equal in scale squared (the pixels each LR pixel becomes), so large scales, where
    the restoration is hardest, are drawn more often."""
    rng = image_rng(seed, str(image_id), "arbitrary_sr_scales")
    low, high = (v * v for v in scale_range) if by_area else scale_range
    width = (high - low) / draws
    values = [low + width * (k + float(rng.random())) for k in range(draws)]
    return [v**0.5 for v in values] if by_area else values


def draw_window(
    image_id: str, draw: int, side: int, grid: int, seed: int, off_grid_share: float = 0.5
) -> tuple[int, int, int]:
    """The part of a training image one draw restores, as (top, left, size): the whole image (a
    size on the latent grid), or, for ``off_grid_share`` of the draws, a square of a size off the
    grid (``side - grid + 1`` to ``side - 1``) at a random place, because in use most output sizes are off the grid
    (x2.5 of 24 px is 60) and the model then works on a canvas mirrored out around them
    (:func:`..pipelines.padded_canvas`): it must have seen such canvases, borders that are not the
    canvas's, and anatomy at other places than the training images' own."""
    if grid <= 1 or side <= grid or off_grid_share <= 0:
        return 0, 0, side
    rng = image_rng(seed, str(image_id), f"arbitrary_sr_window_{draw}")
    if rng.random() >= off_grid_share:
        return 0, 0, side
    size = int(rng.integers(side - grid + 1, side))
    top, left = (int(v) for v in rng.integers(0, side - size + 1, size=2))
    return top, left, size


@torch.no_grad()
def scale_pair_latents(
    images: StoreImages,
    vae: torch.nn.Module,
    draws: int,
    scale_range: tuple[float, float],
    mix: DegradationMix | None,
    seed: int,
    by_area: bool = False,
    batch_size: int = 32,
    dest: Path | None = None,
    grid: int = 1,
    off_grid_share: float = 0.5,
    whole_latents: LatentRows | None = None,
) -> tuple[torch.Tensor | LatentRows, torch.Tensor | LatentRows, np.ndarray]:
    """Training pairs built on the fly the way the pipeline builds its canvases: for each image
    and each of its ``scale_draws``, the part :func:`draw_window` picks (the whole image, or a
    square off the latent grid ``grid``), degraded (``mix``) and shrunk at that scale, resampled
    back (bicubic) to the part's size and mirrored out to the grid; the part itself mirrored the
    same way is the target. Returns the condition latents and the target latents, ``draws``
    consecutive rows per image, and the size ratios the rounded LR grids make (what the model is
    told as its scale). Deterministic per (seed, image, draw). ``whole_latents`` (the images'
    own latents, unscaled, in the same order) are the targets of whole-image draws instead of
    encoding each image again. With ``dest`` both are written
    beside it batch by batch (``<dest>`` and ``<dest stem>.targets.npy``) and returned as
    ``LatentRows`` (at NIH size, six draws of 89,000 training images are 70 GB each: never held
    in memory)."""
    vae_factor = downsampling_factor(vae)
    grid = max(grid, vae_factor)
    conditions: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    ratios: list[float] = []
    targets_dest = dest.with_suffix(".targets.npy") if dest is not None else None
    writers = (
        (atomic.npy_rows(dest, len(images) * draws), atomic.npy_rows(targets_dest, len(images) * draws))
        if dest is not None and targets_dest is not None
        else (contextlib.nullcontext(), contextlib.nullcontext())
    )
    with writers[0] as out, writers[1] as out_targets:
        for start in range(0, len(images), batch_size):
            rows = list(range(start, min(len(images), start + batch_size)))
            lows: list[torch.Tensor] = []
            highs: list[torch.Tensor | None] = []  # None: the target is the image's own latent
            known: list[torch.Tensor] = []
            for row, image in zip(rows, images.batch(rows)):
                image_id = images.image_ids[row]
                pixels = image[0].numpy()
                for k, scale in enumerate(scale_draws(image_id, draws, scale_range, seed, by_area)):
                    top, left, size = draw_window(image_id, k, pixels.shape[-1], grid, seed, off_grid_share)
                    part = pixels[top : top + size, left : left + size]
                    low, _, _ = make_low_resolution(part, scale, image_rng(seed, image_id, f"arbitrary_sr_{k}"), mix)
                    canvas, _ = padded_canvas(torch.from_numpy(low)[None, None], (size, size), grid)
                    lows.append(canvas)
                    if whole_latents is not None and size == pixels.shape[-1] and size % grid == 0:
                        highs.append(None)
                        known.append(whole_latents[row])
                    else:
                        highs.append(torch.from_numpy(mirror_to_canvas(part, grid)[0])[None, None])
                    ratios.append((size / low.shape[0] + size / low.shape[1]) / 2)
            encoded = iter(encode_in_chunks(vae, [h for h in highs if h is not None]))
            reused = iter(known)
            batch_targets = torch.stack([next(reused) if h is None else next(encoded) for h in highs])
            for batch, sink, kept in (
                (encode_in_chunks(vae, lows), out, conditions),
                (batch_targets, out_targets, targets),
            ):
                if sink is not None:
                    sink.append(batch.numpy())
                else:
                    kept.append(batch)
    if dest is not None and targets_dest is not None:
        return LatentRows(dest, 1.0), LatentRows(targets_dest, 1.0), np.asarray(ratios)
    return torch.cat(conditions), torch.cat(targets), np.asarray(ratios)


def encode_in_chunks(vae: torch.nn.Module, canvases: list[torch.Tensor]) -> torch.Tensor:
    """Latent means of (1, 1, H, W) canvases, 64 at a time (the encoder runs 1.6x faster on CPU
    in chunks of 64 than of several hundred)."""
    if not canvases:
        return torch.empty(0)
    stacked = torch.cat(canvases)
    return torch.cat([encode_mean(vae, stacked[i : i + 64]) for i in range(0, len(stacked), 64)])


RENDERINGS = ("pad", "resize", "implicit")
# Off the latent grid at 64 and 256 px alike; a request takes the choice of the nearest in log scale.
PROBE_SCALES = (2.5, 3.5, 6.0)
DETAIL_SHARE = 0.8  # a rendering must keep this share of the best rendering's fine detail


@torch.no_grad()
def choose_renderings(
    model_dir: Path,
    images: torch.Tensor,
    image_ids: Sequence[str],
    mix: DegradationMix | None,
    seed: int,
    steps: int = 20,
    scales: Sequence[float] = PROBE_SCALES,
    device: torch.device | str = "cpu",
) -> tuple[list[float], list[str], pd.DataFrame]:
    """How the model meets an output size off its grid, chosen on val per probe scale: the
    rendering with the highest PSNR among those that keep at least ``DETAIL_SHARE`` of the best
    one's fine detail (a perception-distortion rule: the implicit decoder wins PSNR by smoothing).
    Which wins depends on the data (on the radiograph phantom the stretched ``resize`` near the
    grid, on CT the ``pad`` everywhere), so the data decides. Returns the probe scales, their
    renderings and the table of every score."""
    pipeline = ArbitraryScaleSuperResolution.from_pretrained(model_dir, device)
    rows, chosen = [], []
    for scale, (high, low) in scale_exact_pairs(images, image_ids, scales, mix, seed).items():
        if high.shape[-1] % pipeline.factor == 0:  # on the grid every rendering is the plain decode
            chosen.append("pad")
            continue
        found = []
        for rendering in RENDERINGS:
            pipeline.rendering = rendering
            scores = per_image_scores(pipeline(low, scale=scale, num_inference_steps=steps, generator=seed), high)
            found.append({"scale": scale, "rendering": rendering, **scores[["psnr", "detail"]].mean().to_dict()})
        table = pd.DataFrame(found)
        kept = table[table["detail"] >= DETAIL_SHARE * table["detail"].max()]
        chosen.append(str(kept.loc[kept["psnr"].idxmax(), "rendering"]))
        rows.append(table.assign(chosen=table["rendering"] == chosen[-1]))
    return list(map(float, scales)), chosen, pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


def train_arbitrary_sr(
    metadata: pd.DataFrame,
    store: ImageStore,
    latents_dir: Path,
    vae_dir: Path,
    unet_config: UNetConfig,
    schedule: ScheduleConfig,
    train_config: TrainConfig,
    decoder_config: TrainConfig,
    runs_root: Path,
    data_hash: str,
    *,
    scale_min: float = 1.0,
    scale_max: float = 4.0,
    draws_per_image: int = 6,
    draws_by_area: bool = False,
    degradation_mix: bool = True,
    off_grid_share: float = 0.5,
    pair_seed: int = 0,
    residual: bool = True,
    decoder_min_ratio: float = 0.75,
    decoder_hidden: Sequence[int] = (64, 64),
    decoder_queries: int = 1024,
    decoder_val_images: int = 48,
    render_val_images: int = 24,
    warm_start_from: Path | None = None,
    progress: TrainProgress | None = None,
    stop_after: int | None = None,
) -> TrainingOutcome:
    """Two stages over the frozen VAE. First the implicit decoder head (LIIF, :mod:`.implicit`),
    trained to render latents at sizes between the encoder's grid steps (from ``decoder_min_ratio``
    of the native size up to it). Then the latent diffusion model, conditioned on the latent of the
    LR image resampled to the HR grid, on ``draws_per_image`` continuous scales per training image
    in [``scale_min``, ``scale_max``] (built on the fly, :func:`scale_pair_latents`, ``off_grid_share``
    of them restoring a window off the latent grid as the pipeline meets one), diffusing the
    correction to the HR latent like the fixed-scale recipe, and told the scale when ``unet_config`` has a
    ``"timestep"`` class embedding. Each stage resumes from its own checkpoints;
    ``stop_after`` interrupts the second. ``warm_start_from``: a fixed-scale model of the same
    latents whose UNet the second stage starts from (the scale's embedding starts fresh)."""
    runs_root = Path(runs_root)
    scale_range, draws = (scale_min, scale_max), draws_per_image
    decoder = train_implicit_decoder(
        metadata,
        store,
        vae_dir,
        decoder_config,
        runs_root / "decoder",
        data_hash,
        ratios=(decoder_min_ratio, 1.0),
        eval_ratios=(0.8, 0.95),
        val_images=decoder_val_images,
        hidden=decoder_hidden,
        query_points=decoder_queries,
        progress=as_part(progress, "decoder"),
    )
    # only the main process saves, and only after its own decoder stage wrote the head
    parts = {"head": ImplicitDecoder.from_pretrained(decoder.model_dir).head} if distributed.current().is_main else {}
    factor, vae = latent_scaling_factor(latents_dir), load_vae(vae_dir)
    mix = DegradationMix() if degradation_mix else None
    order = pd.read_parquet(Path(latents_dir) / "index_train.parquet")["image_id"]
    rows = metadata.set_index("image_id").loc[order].reset_index()
    # canvases are whole multiples of what the VAE and then the UNet's down blocks divide by, as in use
    grid = downsampling_factor(vae) * 2 ** (len(unet_config.block_out_channels) - 1)
    # the conditions go to a file beside the runs, named by everything that makes them, so a
    # resumed or repeated training reads them back instead of encoding every image again
    conditions_file = (
        runs_root
        / "conditions"
        / (
            run_key(
                "arbitrary_sr_conditions",
                "windows-v1",  # draws on the pipeline's geometry (draw_window)
                grid,
                off_grid_share,
                str(vae_dir),
                draws,
                list(scale_range),
                degradation_mix,
                pair_seed,
                draws_by_area,
                data_hash,
            )
            + ".npy"
        )
    )
    ratios_file = conditions_file.with_suffix(".ratios.npy")
    targets_file = conditions_file.with_suffix(".targets.npy")
    if conditions_file.exists() and targets_file.exists() and ratios_file.exists():
        ratios = np.load(ratios_file)
    else:
        _, _, ratios = scale_pair_latents(
            StoreImages(store, rows),
            vae,
            draws,
            scale_range,
            mix,
            pair_seed,
            draws_by_area,
            dest=conditions_file,
            grid=grid,
            off_grid_share=off_grid_share,
            whole_latents=LatentRows(Path(latents_dir) / "hr_train.npy", 1.0),
        )
        atomic.write_npy(ratios_file, ratios)
    conditions, targets = LatentRows(conditions_file, factor), LatentRows(targets_file, factor)
    scale_conditioned = unet_config.class_embed_type == "timestep"
    labels = torch.tensor([scale_label(r) for r in ratios], dtype=torch.float32)
    conditioning = Conditioning(
        concat_channels=conditions.shape[1],
        residual_scale=residual_scale(targets, conditions) if residual else 0.0,
    )
    sampler = EpochSampler(len(conditions), train_config.batch_size, train_config.seed)

    def batches(step: int) -> dict:
        picked = torch.from_numpy(sampler.indices(step))
        batch = {"target": targets[picked], "condition": conditions[picked]}
        return {**batch, "labels": labels[picked]} if scale_conditioned else batch

    val = StoreImages(store, metadata[metadata["split"] == "val"].head(4).reset_index(drop=True)).stack()
    preview_scale = 3.0  # inside the range and off the integer grid of the LR (64 px -> 21 px)
    preview_lows = [
        make_low_resolution(x[0].numpy(), preview_scale, image_rng(pair_seed, "preview", "x3"), None)[0] for x in val
    ]
    preview_canvas = torch.cat(
        [
            bicubic_canvas(torch.from_numpy(low)[None, None], tuple(val.shape[-2:]), downsampling_factor(vae))
            for low in preview_lows
        ]
    )
    preview_condition = encode_mean(vae, preview_canvas) * factor

    def preview(model: torch.nn.Module, step: int) -> np.ndarray:
        device = next(model.parameters()).device
        preview_labels = (
            torch.full((len(preview_condition),), scale_label(preview_scale)) if scale_conditioned else None
        )
        out = sample(
            model,
            schedule,
            tuple(preview_condition.shape),
            condition=preview_condition.to(device),
            labels=preview_labels,
            steps=train_config.preview_steps,
            generator=step_generator(train_config.seed, 10**6),
            residual_scale=conditioning.residual_scale,
        )
        rows_ = [preview_canvas[:, 0], to_images(out, vae, factor)[:, 0], val[:, 0]]
        return torch.cat([torch.cat(list(row), dim=1) for row in rows_], dim=0).numpy()

    settings = ArbitrarySRSettings(
        scale_min=scale_min,
        scale_max=scale_max,
        draws_per_image=draws_per_image,
        draws_by_area=draws_by_area,
        degradation_mix=degradation_mix,
        off_grid_share=off_grid_share,
        pair_seed=pair_seed,
        residual=residual,
        decoder_min_ratio=decoder_min_ratio,
        decoder_run=decoder.run_dir.name,
        vae_source=str(vae_dir),
        scaling_factor=factor,
    )
    outcome = train_model(
        "arbitrary_sr",
        unet_config,
        schedule,
        conditioning,
        batches,
        train_config,
        runs_root,
        data_hash,
        preview,
        settings,
        progress,
        stop_after,
        vae=vae,
        parts=parts,
        warm_start_from=warm_start_from,
    )
    outcome.metrics.update({f"decoder_{k}": v for k, v in decoder.metrics.items()})
    if distributed.current().is_main and render_val_images:
        device = pick_device(train_config.device)
        outcome.metrics.update(
            record_renderings(outcome.model_dir, metadata, store, mix, pair_seed, render_val_images, device)
        )
    return outcome


def record_renderings(
    model_dir: Path,
    metadata: pd.DataFrame,
    store: ImageStore,
    mix: DegradationMix | None,
    seed: int,
    val_images: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Choose the renderings on the first ``val_images`` val images (:func:`choose_renderings`)
    and write them into the folder's ``model.json``, once: a resumed or repeated training finds
    them there. Returns the val figures for the run."""
    saved = describe(model_dir)
    settings = saved.settings_as(ArbitrarySRSettings)
    if settings.renderings:
        return {}
    val = metadata[metadata["split"] == "val"].head(val_images).reset_index(drop=True)
    if not len(val):
        return {}
    images = StoreImages(store, val).stack()
    ids = val["image_id"].astype(str).tolist()
    scales, renderings, table = choose_renderings(model_dir, images, ids, mix, seed, device=device)
    chosen = dataclasses.replace(settings, rendering_scales=scales, renderings=renderings)
    atomic.write_text(Path(model_dir) / "model.json", dataclasses.replace(saved, settings=chosen).to_json())
    return {
        f"val_{kind}_render_{name}_x{row.scale:g}".replace(".", "p"): float(getattr(row, kind))
        for row in table.itertuples()
        for kind, name in (("psnr", row.rendering), ("detail", row.rendering))
    }
