"""A sharded on-disk array store for training images, with random access.

Each shard is an immutable ``(N, H, W)`` uint16 ``.npy`` file written atomically; the manifest
is the index (columns ``shard``, ``shard_index``). Reads go through memory maps, so a training
loader touching random images pays for those images only, and every DataLoader worker can open
the store independently. uint16 keeps the full precision of 16-bit sources at half the bytes of
float32. Shards are never rewritten: an incremental run adds shards, and shards no manifest row
refers to any more are removed once the new manifest is in place.
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import atomic

STORE_FORMAT = 1
STORED_DTYPE = np.uint16
STORED_MAX = float(np.iinfo(STORED_DTYPE).max)


def to_stored(pixels: np.ndarray) -> np.ndarray:
    return np.round(np.clip(pixels, 0.0, 1.0) * STORED_MAX).astype(STORED_DTYPE)


def from_stored(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float32) / STORED_MAX


class ImageStore:
    def __init__(self, root: Path, *, max_open_shards: int = 64):
        self.root = Path(root)
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()
        self._max_open = max_open_shards

    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    @property
    def meta_path(self) -> Path:
        return self.root / "store.json"

    def meta(self) -> dict | None:
        if not self.meta_path.exists():
            return None
        return json.loads(self.meta_path.read_text())

    def initialize(self, *, image_size: int, fingerprint: str) -> None:
        meta = {
            "format": STORE_FORMAT,
            "image_size": image_size,
            "dtype": np.dtype(STORED_DTYPE).name,
            "value_range": [0.0, 1.0],
            "fingerprint": fingerprint,
        }
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.meta_path, json.dumps(meta, indent=2))

    def write_shard(self, images: np.ndarray) -> str:
        if images.ndim != 3 or images.dtype != STORED_DTYPE:
            raise ValueError(f"shards hold (N, H, W) {STORED_DTYPE.__name__}, got {images.dtype} {images.shape}")
        name = f"{uuid.uuid4().hex[:16]}.npy"
        atomic.write_npy(self.shard_dir / name, np.ascontiguousarray(images))
        return name

    def _shard(self, name: str) -> np.ndarray:
        array = self._open.get(name)
        if array is None:
            array = np.load(self.shard_dir / name, mmap_mode="r", allow_pickle=False)
            self._open[name] = array
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)
        else:
            self._open.move_to_end(name)
        return array

    def read(self, shard: str, index: int) -> np.ndarray:
        """One image as float32 in [0, 1]."""
        return from_stored(np.asarray(self._shard(shard)[int(index)]))

    def read_many(self, shards: Sequence[str], indices: Sequence[int]) -> np.ndarray:
        """A batch as ``(N, H, W)`` float32, reading each shard once in index order."""
        if len(shards) != len(indices):
            raise ValueError("shards and indices differ in length")
        if not len(shards):
            return np.zeros((0, 0, 0), dtype=np.float32)
        first = self._shard(shards[0])
        out = np.empty((len(shards), *first.shape[1:]), dtype=STORED_DTYPE)
        by_shard: dict[str, list[int]] = {}
        for position, shard in enumerate(shards):
            by_shard.setdefault(shard, []).append(position)
        for shard, positions in by_shard.items():
            rows = np.asarray([int(indices[p]) for p in positions])
            order = np.argsort(rows, kind="stable")
            out[np.asarray(positions)[order]] = self._shard(shard)[rows[order]]
        return from_stored(out)

    def shard_names(self) -> set[str]:
        if not self.shard_dir.exists():
            return set()
        return {path.name for path in self.shard_dir.glob("*.npy")}

    def remove_unreferenced(self, referenced: set[str]) -> int:
        """Delete shards no manifest row refers to; call only after the manifest is written."""
        stale = self.shard_names() - set(referenced)
        for name in stale:
            self._open.pop(name, None)
            (self.shard_dir / name).unlink(missing_ok=True)
        return len(stale)
