"""Training pairs on disk: each degradation is an image store of its own plus an index.

The clean (HR, normal-dose) side is the ingestion store itself, addressed through
``metadata.parquet``; a pair store holds only the degraded side, with the per-image parameters
(blur width, noise) in its index, so every pair can be traced and rebuilt.

Each pair store is rebuilt whole on every run, under its folder's writer lock (:mod:`.locks`):
shards, then the index, then the removal of shards the index does not name. So a store whose
shards were deleted heals on the next run, and two runs never delete each other's shards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import atomic, locks
from .degrade import (
    DegradationMix,
    image_rng,
    low_dose_model,
    make_low_resolution,
    simulate_low_dose,
    simulate_low_dose_ct,
)
from .image_store import ImageStore, from_stored, to_stored

# Each degradation maps (clean image, its rng, its metadata row) to (degraded image, parameters to record).
Degradation = Callable[[np.ndarray, np.random.Generator, pd.Series], tuple[np.ndarray, dict]]


def sr_pair_dir(root: Path, scale: int) -> Path:
    return Path(root) / f"sr_x{scale}"


def scales_built(root: Path) -> list[int]:
    """The SR scales whose pair store is complete (its index is written last)."""
    return sorted(int(p.parent.name.removeprefix("sr_x")) for p in Path(root).glob("sr_x*/index.parquet"))


def low_dose_pair_dir(root: Path, photons: float) -> Path:
    return Path(root) / f"lowdose_i0_{photons:g}"


def doses_built(root: Path) -> list[float]:
    """The low-dose levels (photons) whose pair store is complete."""
    return sorted(
        float(p.parent.name.removeprefix("lowdose_i0_")) for p in Path(root).glob("lowdose_i0_*/index.parquet")
    )


def derive_store(
    metadata: pd.DataFrame,
    source: ImageStore,
    out_dir: Path,
    degradation: Degradation,
    *,
    seed: int,
    tag: str,
    shard_size: int = 512,
) -> pd.DataFrame:
    """Apply ``degradation`` to every image of ``metadata`` into a new store at ``out_dir``."""
    if not len(metadata):
        raise ValueError("no images to build pairs from")
    with locks.exclusive(out_dir, f"pairs {tag}"):
        return _derive_locked(metadata, source, ImageStore(out_dir), degradation, seed, tag, shard_size)


def _derive_locked(
    metadata: pd.DataFrame,
    source: ImageStore,
    store: ImageStore,
    degradation: Degradation,
    seed: int,
    tag: str,
    shard_size: int,
) -> pd.DataFrame:
    rows: list[dict] = []
    for start in range(0, len(metadata), shard_size):
        chunk = metadata.iloc[start : start + shard_size]
        clean = source.read_many(list(chunk["shard"]), list(chunk["shard_index"]))
        degraded, params = [], []
        for image, (_, row) in zip(clean, chunk.iterrows()):
            out, recorded = degradation(image, image_rng(seed, str(row["image_id"]), tag), row)
            degraded.append(to_stored(out))
            params.append(recorded)
        name = store.write_shard(np.stack(degraded))
        for index, (image_id, split, recorded) in enumerate(zip(chunk["image_id"], chunk["split"], params)):
            rows.append({"image_id": image_id, "split": split, "shard": name, "shard_index": index, **recorded})
    index = pd.DataFrame(rows)
    atomic.write_parquet(store.root / "index.parquet", index)
    store.initialize(image_size=int(degraded[0].shape[0]), fingerprint=tag)
    store.remove_unreferenced(set(index["shard"]))
    return index


def build_sr_pairs(
    metadata: pd.DataFrame, source: ImageStore, root: Path, scales: Sequence[int], mix: DegradationMix | None, seed: int
) -> dict[int, pd.DataFrame]:
    def make(scale: int) -> Degradation:
        def degrade(image: np.ndarray, rng: np.random.Generator, row: pd.Series) -> tuple[np.ndarray, dict]:
            low, sigma, noise = make_low_resolution(image, scale, rng, mix)
            return low, {"blur_sigma": sigma, "noise_std": noise}

        return degrade

    return {
        scale: derive_store(metadata, source, sr_pair_dir(root, scale), make(scale), seed=seed, tag=f"sr_x{scale}")
        for scale in scales
    }


def low_resolution_at(
    images: np.ndarray, image_ids: Sequence[str], scale: float, mix: DegradationMix | None, seed: int
) -> np.ndarray:
    """What :func:`build_sr_pairs` makes of each image, at any scale (integer or not), computed on
    the fly from the same per-image random stream and quantized as a stored pair is: at an integer
    scale, with the same mix and seed, the very images the pair store holds."""
    return from_stored(
        np.stack(
            [
                to_stored(make_low_resolution(image, scale, image_rng(seed, str(image_id), f"sr_x{scale:g}"), mix)[0])
                for image, image_id in zip(images, image_ids)
            ]
        )
    )


def exact_side(side: int, scale: float) -> int:
    """The largest HR side up to ``side`` that ``scale`` divides into a whole LR side, so every
    evaluated scale is exact (x2.5: 60 -> 24, x3: 63 -> 21, x6: 60 -> 10 at 64 px)."""
    for candidate in range(side, 0, -1):
        low = candidate / scale
        if low >= 1 and abs(low - round(low)) < 1e-6:
            return candidate
    raise ValueError(f"no HR side up to {side} is divisible by scale {scale}")


def centre_crop(images: torch.Tensor, side: int) -> torch.Tensor:
    top, left = (images.shape[-2] - side) // 2, (images.shape[-1] - side) // 2
    return images[..., top : top + side, left : left + side]


def scale_exact_pairs(
    high_resolution: torch.Tensor,
    image_ids: Sequence[str],
    scales: Sequence[float],
    mix: DegradationMix | None,
    seed: int,
) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
    """Per scale: the HR images centre-cropped so the scale is exact, and their LR versions made
    the way ``sr_pairs`` makes its pairs (at integer scales, the same images)."""
    pairs = {}
    for scale in scales:
        high = centre_crop(high_resolution, exact_side(high_resolution.shape[-1], scale))
        low = torch.from_numpy(low_resolution_at(high[:, 0].numpy(), list(image_ids), scale, mix, seed)).unsqueeze(1)
        pairs[float(scale)] = (high, low)
    return pairs


def build_low_dose_pairs(
    metadata: pd.DataFrame, source: ImageStore, root: Path, photons: Sequence[float], electronic_noise: float, seed: int
) -> dict[float, pd.DataFrame]:
    """Per dose level, each image's low-dose copy by its modality's physics (:func:`low_dose_model`):
    CT slices through their projections, radiographs on the detector's counts."""

    def make(i0: float) -> Degradation:
        def degrade(image: np.ndarray, rng: np.random.Generator, row: pd.Series) -> tuple[np.ndarray, dict]:
            model = low_dose_model(row.get("modality"))
            simulate = simulate_low_dose_ct if model == "ct" else simulate_low_dose
            recorded = {"photons": float(i0), "noise_model": model, "electronic_noise": float(electronic_noise)}
            return simulate(image, i0, rng, electronic_noise), recorded

        return degrade

    return {
        i0: derive_store(metadata, source, low_dose_pair_dir(root, i0), make(i0), seed=seed, tag=f"lowdose_{i0:g}")
        for i0 in photons
    }
