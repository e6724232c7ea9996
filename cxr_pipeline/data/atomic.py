"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Each writer writes to a temporary name in the destination folder (same filesystem), fsyncs,
then ``os.replace``s it over the destination.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success it replaces ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_with(dest: Path, write: Callable[[IO[bytes]], None]) -> None:
    with atomic_path(dest) as tmp, open(tmp, "wb") as handle:
        write(handle)


def write_bytes(dest: Path, data: bytes) -> None:
    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    _write_with(dest, write)


def write_text(dest: Path, text: str) -> None:
    write_bytes(dest, text.encode("utf-8"))


def write_npy(dest: Path, array: np.ndarray) -> None:
    _write_with(dest, lambda handle: np.save(handle, array, allow_pickle=False))


class NpyRows:
    """An ``.npy`` file of ``rows`` rows written batch by batch through a memory map, so an array
    bigger than memory never has to be held whole (``npy_rows``). The row shape and dtype come
    from the first batch."""

    def __init__(self, path: Path, rows: int):
        self.path, self.rows, self.written = path, rows, 0
        self.array: np.ndarray | None = None

    def append(self, batch: np.ndarray) -> None:
        if self.array is None:
            self.array = np.lib.format.open_memmap(
                self.path, mode="w+", dtype=batch.dtype, shape=(self.rows, *batch.shape[1:])
            )
        array = self.array
        array[self.written : self.written + len(batch)] = batch
        self.written += len(batch)


@contextmanager
def npy_rows(dest: Path, rows: int, empty_dtype=np.float32) -> Iterator[NpyRows]:
    """Write ``dest`` (the same bytes ``np.save`` writes) batch by batch, atomically; every row
    must be appended before the block ends. No rows: an empty array of ``empty_dtype``."""
    with atomic_path(dest) as tmp:
        writer = NpyRows(tmp, rows)
        yield writer
        if writer.written != rows:
            raise ValueError(f"{dest.name}: {writer.written} rows written, {rows} expected")
        if writer.array is None:
            with open(tmp, "wb") as handle:
                np.save(handle, np.zeros(0, empty_dtype), allow_pickle=False)
        else:
            writer.array.flush()  # type: ignore[attr-defined]  # a numpy memmap
            del writer.array


def write_parquet(dest: Path, frame: pd.DataFrame) -> None:
    with atomic_path(dest) as tmp:
        frame.to_parquet(tmp, index=False)


def write_csv(dest: Path, frame: pd.DataFrame) -> None:
    with atomic_path(dest) as tmp:
        frame.to_csv(tmp, index=False)


@contextmanager
def atomic_folder(dest: Path) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``dest``; on success it takes ``dest``'s place.
    A crash leaves the old folder (or none), never a half-written one; the window between
    removing the old folder and renaming is a single rename."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
