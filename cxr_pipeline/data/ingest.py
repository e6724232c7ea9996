"""Ingestion: every file under a folder ends up accepted (manifest + image store) or rejected.

Incremental by (path, size, mtime): unchanged files keep their earlier result; new and changed
files are decoded in parallel; rows of deleted files are dropped. Outputs are written in an order
that keeps them consistent after a crash at any point: new shards, then the manifest and the
rejected list (atomic replaces), then the store's metadata, and only then stale shards are removed.

One writer at a time: the whole run holds the ingestion folder's writer lock (:mod:`.locks`), so
a concurrent run can never delete shards a newer manifest names. The store heals itself: rows
whose shard file is missing are decoded again, as if their file were new.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import parallel
from . import atomic, locks
from .dicom import DEFAULT_CT_WINDOW, read_dicom
from .geometry import AspectPolicy, to_square
from .image_store import ImageStore, to_stored
from .raster import read_raster
from .rejections import NOT_IMAGE_CANDIDATES, Reason, Rejected
from .sniff import FileKind, sniff_file

# Bump when a change to decoding or resizing alters stored pixels: forces a full re-ingest.
INGEST_VERSION = 1

MANIFEST_SCHEMA: dict[str, str] = {
    "image_id": "string",
    "source_path": "string",
    "source_size": "int64",
    "source_mtime_ns": "int64",
    "pixel_hash": "string",
    "shard": "string",
    "shard_index": "int64",
    "format": "string",
    "patient_id": "string",
    "study_uid": "string",
    "series_uid": "string",
    "sop_uid": "string",
    "modality": "string",
    "body_part": "string",
    "view_position": "string",
    "sex": "string",
    "age_years": "float64",
    "original_height": "int64",
    "original_width": "int64",
    "pixel_spacing_row_mm": "float64",
    "pixel_spacing_col_mm": "float64",
    "pixel_spacing_source": "string",
    "bits_stored": "int64",
    "photometric": "string",
    "transfer_syntax": "string",
    "decoder": "string",
    "modality_lut": "string",
    "voi": "string",
    "inverted": "boolean",
    "aspect_policy": "string",
    "resize_scale_y": "float64",
    "resize_scale_x": "float64",
    "resize_offset_y": "int64",
    "resize_offset_x": "int64",
    "ingested_at": "string",
}

REJECTED_SCHEMA: dict[str, str] = {
    "source_path": "string",
    "source_size": "int64",
    "source_mtime_ns": "int64",
    "file_kind": "string",
    "reason": "string",
    "message": "string",
    "rejected_at": "string",
}


@dataclass(frozen=True)
class IngestOptions:
    image_size: int
    aspect_policy: AspectPolicy = AspectPolicy.PAD
    allowed_modalities: tuple[str, ...] = ("CR", "DX")
    frontal_only: bool = True
    min_side: int | None = None  # default: half the training size (more upsampling invents detail)
    # CT (when allowed): the window (centre, width in HU) for slices whose DICOM names none, or for
    # every slice when ct_window_from_dicom is off; the default is a lung window
    ct_window: tuple[float, float] = DEFAULT_CT_WINDOW
    ct_window_from_dicom: bool = True
    workers: int = 0  # 0 = every core
    shard_size: int = 512

    @property
    def effective_min_side(self) -> int:
        return self.min_side if self.min_side is not None else max(1, self.image_size // 2)

    @property
    def effective_workers(self) -> int:
        return self.workers if self.workers > 0 else parallel.default_workers()

    def fingerprint(self) -> str:
        """Identifies everything that changes stored pixels or decisions (not parallelism)."""
        decisive: dict[str, Any] = {
            "version": INGEST_VERSION,
            "image_size": self.image_size,
            "aspect_policy": AspectPolicy(self.aspect_policy).value,
            "allowed_modalities": sorted(m.upper() for m in self.allowed_modalities),
            "frontal_only": self.frontal_only,
            "min_side": self.effective_min_side,
        }
        if "CT" in {m.upper() for m in self.allowed_modalities}:  # radiograph-only ingestion keeps its fingerprint
            decisive["ct_window"] = [list(self.ct_window), self.ct_window_from_dicom]
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class FileOutcome:
    source_path: str  # relative to the data folder, POSIX separators
    source_size: int
    source_mtime_ns: int
    file_kind: str
    accepted: bool
    pixel_hash: str | None = None
    stored: np.ndarray | None = None  # uint16 (S, S)
    fields: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class _Task:
    root: str
    relative: str
    options: IngestOptions


def process_file(task: _Task) -> FileOutcome:
    """Decode and resize one file. Never raises for bad input: it returns a rejection."""
    path = Path(task.root) / task.relative
    options = task.options
    try:
        stat = path.stat()
        kind = sniff_file(path)
    except OSError as error:
        return FileOutcome(
            task.relative,
            0,
            0,
            FileKind.UNKNOWN.value,
            False,
            reason=Reason.UNREADABLE.value,
            message=f"cannot read file: {error}",
        )
    outcome = FileOutcome(task.relative, stat.st_size, stat.st_mtime_ns, kind.value, False)
    try:
        if kind in (FileKind.DICOM, FileKind.DICOM_NO_PREAMBLE):
            source = read_dicom(
                path,
                has_preamble=kind is FileKind.DICOM,
                allowed_modalities=tuple(m.upper() for m in options.allowed_modalities),
                frontal_only=options.frontal_only,
                ct_window=options.ct_window,
                ct_window_from_dicom=options.ct_window_from_dicom,
            )
        elif kind in (FileKind.PNG, FileKind.JPEG):
            source = read_raster(path)
        elif kind is FileKind.TEXT:
            raise Rejected(Reason.TEXT_FILE, "text file (labels and reports are read by the labels stage)")
        else:
            raise Rejected(Reason.NOT_AN_IMAGE, "content is neither DICOM, PNG nor JPEG")
        height, width = source.pixels.shape
        if min(height, width) < options.effective_min_side:
            raise Rejected(
                Reason.TOO_SMALL,
                f"{width}x{height} px; the shorter side must be at least {options.effective_min_side}",
            )
        pixels, record = to_square(source.pixels, options.image_size, AspectPolicy(options.aspect_policy))
    except Rejected as rejected:
        outcome.reason, outcome.message = rejected.reason.value, rejected.message
        return outcome
    except MemoryError:
        outcome.reason, outcome.message = Reason.CORRUPT.value, "image too large to decode in memory"
        return outcome
    outcome.accepted = True
    outcome.pixel_hash = source.pixel_hash
    outcome.stored = to_stored(pixels)
    outcome.fields = {
        **source.fields,
        "aspect_policy": AspectPolicy(options.aspect_policy).value,
        "resize_scale_y": record.scale_y,
        "resize_scale_x": record.scale_x,
        "resize_offset_y": record.offset_y,
        "resize_offset_x": record.offset_x,
    }
    return outcome


def ingest_file(path: Path, options: IngestOptions) -> FileOutcome:
    """One file through exactly the decisions ingestion makes for each file of a folder (an
    upload in the app): accepted with its stored pixels, or rejected with a reason. Never raises
    for bad input."""
    path = Path(path)
    return process_file(_Task(str(path.parent), path.name, options))


def _crashed(task: _Task, error: BaseException) -> FileOutcome:
    path = Path(task.root) / task.relative
    try:
        stat = path.stat()
        size, mtime = stat.st_size, stat.st_mtime_ns
    except OSError:
        size, mtime = 0, 0
    return FileOutcome(
        task.relative,
        size,
        mtime,
        FileKind.UNKNOWN.value,
        False,
        reason=Reason.CORRUPT.value,
        message=f"decoding crashed the worker process ({type(error).__name__})",
    )


def list_input_files(root: Path) -> list[str]:
    """Every regular file below ``root`` as a sorted POSIX relative path (symlinks not followed)."""
    found: list[str] = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        base = Path(directory)
        for name in files:
            path = base / name
            if path.is_file() and not path.is_symlink():
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def _frame(rows: list[dict[str, Any]], schema: dict[str, str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(schema))
    return frame.astype(schema)


def read_manifest(path: Path) -> pd.DataFrame:
    if not Path(path).exists():
        return _frame([], MANIFEST_SCHEMA)
    return pd.read_parquet(path).astype(MANIFEST_SCHEMA)


def read_rejected(path: Path) -> pd.DataFrame:
    if not Path(path).exists():
        return _frame([], REJECTED_SCHEMA)
    return pd.read_parquet(path).astype(REJECTED_SCHEMA)


@dataclass
class IngestProgress:
    done: int
    total: int
    accepted: int
    rejected: int
    elapsed_s: float


@dataclass
class IngestSummary:
    files_seen: int
    processed: int  # decoded this run (new or changed)
    unchanged: int
    removed: int  # rows dropped because their file disappeared or changed
    accepted_new: int
    rejected_new: int
    accepted_total: int
    rejected_total: int
    rejected_by_reason: dict[str, int]
    rejected_share: float  # over image candidates (text sidecars excluded)
    shards_written: int
    shards_removed: int
    repaired: int  # manifest rows whose shard was missing, decoded again
    elapsed_s: float
    files_per_s: float
    fingerprint: str
    full_rebuild: bool
    manifest: pd.DataFrame = field(repr=False)  # the tables as written, so callers need not re-read
    rejected: pd.DataFrame = field(repr=False)


def rejected_share(rejected: pd.DataFrame, accepted_count: int) -> float:
    """Share of image candidates that were rejected; text sidecars are not candidates."""
    candidates = rejected[~rejected["reason"].isin([r.value for r in NOT_IMAGE_CANDIDATES])]
    total = accepted_count + len(candidates)
    return float(len(candidates) / total) if total else 0.0


def ingest(
    data_dir: Path,
    *,
    manifest_path: Path,
    rejected_path: Path,
    store: ImageStore,
    options: IngestOptions,
    progress: Callable[[IngestProgress], None] | None = None,
    lock_timeout_s: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> IngestSummary:
    """Ingest ``data_dir`` under the writer lock of the manifest's folder (see :mod:`.locks`)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} does not exist or is not a folder")
    with locks.exclusive(
        Path(manifest_path).parent, f"ingestion of {data_dir}", timeout_s=lock_timeout_s, on_wait=on_wait
    ):
        return _ingest_locked(data_dir, manifest_path, rejected_path, store, options, progress)


def _ingest_locked(
    data_dir: Path,
    manifest_path: Path,
    rejected_path: Path,
    store: ImageStore,
    options: IngestOptions,
    progress: Callable[[IngestProgress], None] | None,
) -> IngestSummary:
    started = time.perf_counter()
    fingerprint = options.fingerprint()
    store_meta = store.meta() or {}
    full_rebuild = store_meta.get("fingerprint") != fingerprint
    old_manifest = _frame([], MANIFEST_SCHEMA) if full_rebuild else read_manifest(manifest_path)
    old_rejected = _frame([], REJECTED_SCHEMA) if full_rebuild else read_rejected(rejected_path)

    files = list_input_files(data_dir)
    current: dict[str, tuple[int, int]] = {}
    for relative in files:
        try:
            stat = (data_dir / relative).stat()
            current[relative] = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            current[relative] = (-1, -1)  # processed below, where it becomes an 'unreadable' row

    def unchanged(frame: pd.DataFrame) -> pd.Series:
        keys = list(zip(frame["source_path"], frame["source_size"], frame["source_mtime_ns"]))
        return pd.Series([current.get(p) == (s, m) for p, s, m in keys], index=frame.index, dtype=bool)

    # Rows whose shard is gone (deleted by hand, a crashed copy, an old concurrent run) count as
    # new files: decoded again rather than trusted.
    shard_present = old_manifest["shard"].isin(store.shard_names())
    repaired = int((~shard_present & unchanged(old_manifest)).sum())
    keep_manifest = old_manifest[unchanged(old_manifest) & shard_present]
    keep_rejected = old_rejected[unchanged(old_rejected)]
    keep_rejected = keep_rejected[~keep_rejected["source_path"].isin(keep_manifest["source_path"])]
    known = set(keep_manifest["source_path"]) | set(keep_rejected["source_path"])
    removed = len(old_manifest) + len(old_rejected) - len(keep_manifest) - len(keep_rejected) - repaired
    todo = [relative for relative in files if relative not in known]

    seen_hashes: dict[str, str] = dict(zip(keep_manifest["pixel_hash"], keep_manifest["source_path"]))
    new_manifest: list[dict[str, Any]] = []
    new_rejected: list[dict[str, Any]] = []
    buffer: list[np.ndarray] = []
    buffer_rows: list[dict[str, Any]] = []
    shards_written = 0
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def flush() -> None:
        nonlocal shards_written
        if not buffer:
            return
        name = store.write_shard(np.stack(buffer))
        for index, row in enumerate(buffer_rows):
            row["shard"], row["shard_index"] = name, index
        new_manifest.extend(buffer_rows)
        buffer.clear()
        buffer_rows.clear()
        shards_written += 1

    tasks = (_Task(str(data_dir), relative, options) for relative in todo)
    workers = options.effective_workers if len(todo) >= 32 else 1
    report_every = max(1, len(todo) // 20)
    done = accepted = rejected = 0
    for outcome in parallel.ordered_map(process_file, tasks, workers=workers, on_crash=_crashed):
        done += 1
        if outcome.accepted and outcome.pixel_hash is not None and outcome.pixel_hash in seen_hashes:
            outcome.accepted = False
            outcome.reason = Reason.DUPLICATE.value
            outcome.message = f"same pixels as accepted {seen_hashes[outcome.pixel_hash]}"
        if outcome.accepted:
            assert outcome.pixel_hash is not None and outcome.stored is not None, "an accepted file was read"
            accepted += 1
            seen_hashes[outcome.pixel_hash] = outcome.source_path
            buffer.append(outcome.stored)
            buffer_rows.append(
                {
                    **outcome.fields,
                    "image_id": outcome.pixel_hash[:16],
                    "source_path": outcome.source_path,
                    "source_size": outcome.source_size,
                    "source_mtime_ns": outcome.source_mtime_ns,
                    "pixel_hash": outcome.pixel_hash,
                    "ingested_at": now,
                }
            )
            if len(buffer) >= options.shard_size:
                flush()
        else:
            rejected += 1
            new_rejected.append(
                {
                    "source_path": outcome.source_path,
                    "source_size": outcome.source_size,
                    "source_mtime_ns": outcome.source_mtime_ns,
                    "file_kind": outcome.file_kind,
                    "reason": outcome.reason,
                    "message": outcome.message,
                    "rejected_at": now,
                }
            )
        if progress and (done % report_every == 0 or done == len(todo)):
            progress(IngestProgress(done, len(todo), accepted, rejected, time.perf_counter() - started))
    flush()

    manifest = pd.concat([keep_manifest, _frame(new_manifest, MANIFEST_SCHEMA)], ignore_index=True)
    manifest = manifest.sort_values("source_path", kind="stable").reset_index(drop=True)
    rejected_frame = pd.concat([keep_rejected, _frame(new_rejected, REJECTED_SCHEMA)], ignore_index=True)
    rejected_frame = rejected_frame.sort_values("source_path", kind="stable").reset_index(drop=True)
    atomic.write_parquet(manifest_path, manifest)
    atomic.write_parquet(rejected_path, rejected_frame)
    store.initialize(image_size=options.image_size, fingerprint=fingerprint)
    shards_removed = store.remove_unreferenced(set(manifest["shard"]))

    elapsed = time.perf_counter() - started
    return IngestSummary(
        files_seen=len(files),
        processed=len(todo),
        unchanged=len(files) - len(todo),
        removed=removed,
        accepted_new=accepted,
        rejected_new=rejected,
        accepted_total=len(manifest),
        rejected_total=len(rejected_frame),
        rejected_by_reason=dict(Counter(rejected_frame["reason"])),
        rejected_share=rejected_share(rejected_frame, len(manifest)),
        shards_written=shards_written,
        shards_removed=shards_removed,
        repaired=repaired,
        elapsed_s=elapsed,
        files_per_s=len(todo) / elapsed if elapsed > 0 else 0.0,
        fingerprint=fingerprint,
        full_rebuild=full_rebuild,
        manifest=manifest,
        rejected=rejected_frame,
    )


def listing_hash(root: Path) -> tuple[int, int, str]:
    """(file count, total bytes, hash of every path, size and mtime): changes when the data does."""
    digest = hashlib.sha256()
    count = total = 0
    for relative in list_input_files(root):
        stat = (Path(root) / relative).stat()
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        count, total = count + 1, total + stat.st_size
    return count, total, digest.hexdigest()[:16]


def manifest_hash(manifest: pd.DataFrame, fingerprint: str) -> str:
    """Content hash of an ingestion: which pixels, from which files, processed how."""
    digest = hashlib.sha256(fingerprint.encode())
    for image_id, source_path in sorted(zip(manifest["image_id"], manifest["source_path"])):
        digest.update(f"{image_id}\0{source_path}\n".encode())
    return digest.hexdigest()[:16]


def accounting(data_dir: Path, manifest: pd.DataFrame, rejected: pd.DataFrame) -> dict[str, list[str]]:
    """Files with no row, rows with no file, and files listed twice: all empty when nothing is lost."""
    files = set(list_input_files(data_dir))
    listed = pd.concat([manifest["source_path"], rejected["source_path"]], ignore_index=True)
    counts = listed.value_counts()
    return {
        "missing": sorted(files - set(listed)),
        "stale": sorted(set(listed) - files),
        "listed_twice": sorted(counts[counts > 1].index),
    }
