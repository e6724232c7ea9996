"""The latents the ``latents`` asset writes, read as the diffusion models see them (times the
scaling factor), lazily from memory maps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


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
