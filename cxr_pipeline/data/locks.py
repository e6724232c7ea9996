"""Exclusive writers: one process at a time replaces the files of a folder other runs read.

Two runs writing one work folder (the raw-data sensor firing while someone clicks "Materialize
all", two people sharing ``CXR_HOME``) would each publish their own manifest and delete the other's
shards as unreferenced. Every writer of shared state therefore holds an OS file lock on its output
folder (``filelock``: released by the kernel when the process dies, so a crash never leaves a stale
lock). A second writer waits; past the timeout it fails with a message naming the lock and its
holder, before touching anything.

The timeout is ``CXR_LOCK_TIMEOUT_S`` seconds (default one hour), or the ``timeout_s`` argument.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import filelock

from . import atomic

LOCK_NAME = ".writer.lock"
HOLDER_NAME = ".writer.lock.json"
DEFAULT_TIMEOUT_S = 3600.0
TIMEOUT_ENV = "CXR_LOCK_TIMEOUT_S"
POLL_S = 0.2


class LockTimeout(TimeoutError):
    """Another process held the folder's writer lock for longer than the timeout."""


def default_timeout_s() -> float:
    value = os.environ.get(TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_TIMEOUT_S
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds") from None


def describe_holder(folder: Path) -> str:
    """Who holds (or last held) the lock, from the note each holder leaves beside it."""
    try:
        holder = json.loads((Path(folder) / HOLDER_NAME).read_text())
    except (OSError, ValueError):
        return "an unknown process"
    return (
        f"{holder.get('purpose', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
        f"since {holder.get('since', '?')})"
    )


@contextmanager
def exclusive(
    folder: Path, purpose: str, *, timeout_s: float | None = None, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold ``folder``'s writer lock for the block. ``purpose`` names this writer in the note other
    waiters read; ``on_wait`` is told once, with the holder, when the lock is busy."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    timeout = default_timeout_s() if timeout_s is None else float(timeout_s)
    # One lock object per path in a process, and it counts: a block nested in another on the same
    # folder (a trainer's fit inside the caller's fit-and-save) re-enters instead of deadlocking.
    lock = filelock.FileLock(str(folder / LOCK_NAME), is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        holder = describe_holder(folder)
        if on_wait is not None:
            on_wait(f"waiting up to {timeout:g} s for {folder / LOCK_NAME}, held by {holder}")
        started = time.monotonic()
        try:
            lock.acquire(timeout=timeout, poll_interval=POLL_S)
        except filelock.Timeout:
            raise LockTimeout(
                f"{purpose}: gave up after {time.monotonic() - started:.0f} s waiting for the writer lock "
                f"{folder / LOCK_NAME}, held by {describe_holder(folder)}. Nothing was written. Wait for that "
                f"run to finish, or raise {TIMEOUT_ENV}."
            ) from None
    try:
        note = {
            "purpose": purpose,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic.write_text(folder / HOLDER_NAME, json.dumps(note))
        yield
    finally:
        lock.release()
