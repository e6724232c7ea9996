"""Deterministic batches from the image stores: batch ``s`` depends only on (seed, s).

Each epoch is a seeded permutation of the split; step ``s`` takes its slice. Reads go through
the stores' memory maps, a few hundred microseconds per batch at demo size (see bench/).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..data.image_store import ImageStore


class EpochSampler:
    def __init__(self, count: int, batch_size: int, seed: int):
        if count < 1:
            raise ValueError("cannot sample batches from an empty split")
        self.count, self.batch_size, self.seed = count, min(batch_size, count), seed
        self.steps_per_epoch = max(1, count // self.batch_size)  # drop the ragged last batch

    def indices(self, step: int) -> np.ndarray:
        epoch, position = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.count)
        return order[position * self.batch_size : (position + 1) * self.batch_size]


class StoreImages:
    """Images of one split, addressed by row; returns (N, 1, H, W) float tensors in [0, 1]."""

    def __init__(self, store: ImageStore, rows: pd.DataFrame):
        self.store = store
        self.shards = rows["shard"].tolist()
        self.indices = rows["shard_index"].astype(int).tolist()
        self.image_ids = rows["image_id"].astype(str).tolist()

    def __len__(self) -> int:
        return len(self.shards)

    def batch(self, rows: np.ndarray | list[int]) -> torch.Tensor:
        array = self.store.read_many([self.shards[i] for i in rows], [self.indices[i] for i in rows])
        return torch.from_numpy(array).unsqueeze(1)

    def all(self, batch_size: int = 256):
        for start in range(0, len(self), batch_size):
            yield self.batch(list(range(start, min(len(self), start + batch_size))))

    def stack(self) -> torch.Tensor:
        """Every image in one tensor; (0, 1, 0, 0) for no rows."""
        if not len(self):
            return torch.zeros(0, 1, 0, 0)
        return torch.cat(list(self.all()))


class WeightedStepSampler:
    """Class-balanced batches: draws with probability ~ 1 / class frequency, seeded by step."""

    def __init__(self, labels: Sequence[int] | np.ndarray, batch_size: int, seed: int):
        ids = np.asarray(labels)
        counts = np.bincount(ids)
        weights = 1.0 / counts[ids]
        self.p = weights / weights.sum()
        self.batch_size, self.seed = batch_size, seed

    def indices(self, step: int) -> np.ndarray:
        return np.random.default_rng([self.seed, step, 17]).choice(len(self.p), self.batch_size, p=self.p)


def aligned_crops(images: Sequence[torch.Tensor], size: int | None, seed: int, step: int) -> list[torch.Tensor]:
    """The same random ``size`` window of every tensor in ``images`` (a clean image and its
    degraded twin stay aligned), a different window per batch row, seeded by (seed, step) so a
    resumed run sees the same crops. Fully convolutional restoration models train on crops: a
    32 px window costs a quarter of a 64 px image. ``size`` None or >= the image keeps it whole."""
    height, width = images[0].shape[-2:]
    if size is None or (size >= height and size >= width):
        return list(images)
    size_y, size_x = min(size, height), min(size, width)
    rng = np.random.default_rng([seed, step, 23])
    tops = rng.integers(0, height - size_y + 1, len(images[0]))
    lefts = rng.integers(0, width - size_x + 1, len(images[0]))
    return [
        torch.stack(
            [x[i, :, top : top + size_y, left : left + size_x] for i, (top, left) in enumerate(zip(tops, lefts))]
        )
        for x in images
    ]


class ConcatImages:
    """Several image sources (``StoreImages`` of different stores) addressed as one: rows
    0..len(first)-1 are the first source's, and so on. A training set of real images beside
    generated ones reads both from their memory maps instead of holding them in memory."""

    def __init__(self, parts: Sequence[StoreImages]):
        self.parts = [p for p in parts if len(p)]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])
        self.image_ids = [i for p in self.parts for i in p.image_ids]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def batch(self, rows: np.ndarray | list[int]) -> torch.Tensor:
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1}")
        part_of = np.searchsorted(self.offsets, rows, side="right") - 1
        out: list[torch.Tensor | None] = [None] * len(rows)
        for part in np.unique(part_of):
            positions = np.flatnonzero(part_of == part)
            images = self.parts[part].batch((rows[positions] - self.offsets[part]).tolist())
            for position, image in zip(positions, images):
                out[position] = image
        return torch.stack([image for image in out if image is not None]) if len(rows) else torch.zeros(0, 1, 0, 0)

    def stack(self) -> torch.Tensor:
        return self.batch(np.arange(len(self)))


class RunningMoments:
    """Mean and variance of every value seen, batch by batch (Chan et al.'s merge, in float64), so
    the scaling factor needs no copy of all latents in memory."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, values: torch.Tensor) -> None:
        batch = values.double().flatten()
        n, mean = batch.numel(), float(batch.mean()) if batch.numel() else 0.0
        if not n:
            return
        m2 = float(((batch - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total

    def std(self) -> float:
        """The unbiased standard deviation, rounded to float32 as ``torch.std`` of float32 values is."""
        return float(torch.tensor((self.m2 / max(1, self.count - 1)) ** 0.5, dtype=torch.float32))
