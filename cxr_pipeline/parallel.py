"""Ordered, bounded, crash-isolating process map.

Decoders are C libraries; a crafted or damaged file can crash one (a segfault kills the worker
process, not a Python exception). ``multiprocessing.Pool`` would hang on the lost task, so this
uses ``ProcessPoolExecutor``, whose broken pool is reported, re-runs the items lost with it, and
gives whatever breaks a pool twice a process of its own to name the culprit. Only a bounded
number of batches is in flight, so memory does not grow with the number of items.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows
        return max(1, os.cpu_count() or 1)


def _apply_batch(fn: Callable[[T], R], batch: Sequence[T]) -> list[R]:
    return [fn(item) for item in batch]


def _batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _executor(workers: int) -> ProcessPoolExecutor:
    # spawn: forking a process that runs threads (Dagster, gRPC, BLAS) can deadlock the child.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _submit(pool: ProcessPoolExecutor, fn: Callable, *args) -> Future:
    """``pool.submit``, except that a pool a worker has already broken gives a failed future
    instead of raising here: the crash is then handled where results are read, like any other."""
    try:
        return pool.submit(fn, *args)
    except BrokenProcessPool as error:
        failed: Future = Future()
        failed.set_exception(error)
        return failed


def _isolated(fn: Callable[[T], R], item: T, on_crash: Callable[[T, BaseException], R]) -> R:
    with _executor(1) as pool:
        try:
            return pool.submit(fn, item).result()
        except BrokenProcessPool as error:
            return on_crash(item, error)


def _rerun_lost(
    fn: Callable[[T], R], items: list[T], workers: int, on_crash: Callable[[T, BaseException], R]
) -> list[R]:
    """Items lost with a broken pool: retry together, then alone whatever broke the pool again."""
    results: dict[int, R] = {}
    with _executor(workers) as pool:
        futures = [_submit(pool, fn, item) for item in items]
        for index, future in enumerate(futures):
            try:
                results[index] = future.result()
            except BrokenProcessPool:
                pass
    return [results[i] if i in results else _isolated(fn, item, on_crash) for i, item in enumerate(items)]


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    on_crash: Callable[[T, BaseException], R],
    batch_size: int = 8,
    in_flight_per_worker: int = 4,
) -> Iterator[R]:
    """Yield ``fn(item)`` in input order. ``fn`` must be a picklable top-level function.

    With ``workers == 1`` everything runs in this process (the baseline for benchmarks, and
    the easiest to debug); a crash there is not isolated.
    """
    if workers <= 1:
        for item in items:
            yield fn(item)
        return

    batches = _batches(items, batch_size)
    limit = workers * in_flight_per_worker
    pool = _executor(workers)
    pending: deque[tuple[list[T], Future]] = deque()
    try:
        exhausted = False
        while pending or not exhausted:
            while not exhausted and len(pending) < limit:
                batch = next(batches, None)
                if batch is None:
                    exhausted = True
                    break
                pending.append((batch, _submit(pool, _apply_batch, fn, batch)))
            if not pending:
                break
            batch, future = pending.popleft()
            try:
                yield from future.result()
            except BrokenProcessPool:
                # Every batch still in flight is lost with the pool: re-run them.
                pool.shutdown(wait=False, cancel_futures=True)
                lost = [item for lost_batch in [batch] + [b for b, _ in pending] for item in lost_batch]
                pending.clear()
                yield from _rerun_lost(fn, lost, workers, on_crash)
                pool = _executor(workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
