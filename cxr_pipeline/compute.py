"""How a machine's cores are shared between the heavy steps (trainings and evaluations) of a run.

A demo model's step barely speeds up past a few threads, so one step on every core of a big
machine wastes most of them; several steps side by side, each on its share of the cores, get
more done. On a GPU the steps share the device instead, and one at a time is the safe default
(a full-profile training fills a small GPU). ``bench/parallel_training.py`` measures the trade on
a machine: one step with every thread against steps side by side.

Overrides: ``CXR_HEAVY_STEPS`` (heavy steps at once) and ``CXR_STEP_THREADS`` (torch threads of
each); both default from the cores this process may run on (``taskset`` and cgroup CPU sets count).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# More steps side by side than this rarely find work: the main job's graph is at most about
# four trainings wide, and each step's model, data and process cost memory.
MAX_SIDE_BY_SIDE = 4


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows
        return max(1, os.cpu_count() or 1)


def _positive_int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a whole number of at least 1") from None
    if number < 1:
        raise ValueError(f"{name}={value!r}: expected a whole number of at least 1")
    return number


@dataclass(frozen=True)
class CoreShare:
    cores: int
    heavy_steps: int  # trainings and evaluations at once
    threads: int  # torch threads of each

    def describe(self) -> str:
        return (f"{self.heavy_steps} heavy step(s) at once on {self.cores} core(s), "
                f"{self.threads} thread(s) each")


def core_share(cores: int | None = None, gpus: int | None = None) -> CoreShare:
    """The share for this machine: on CPU up to :data:`MAX_SIDE_BY_SIDE` steps side by side,
    one per core at most, the cores split evenly between them; with a GPU one step at a time
    on every core. The environment overrides either number."""
    cores = cores or available_cores()
    if gpus is None:
        gpus = cuda_devices()
    default_steps = 1 if gpus else min(MAX_SIDE_BY_SIDE, cores)
    steps = _positive_int("CXR_HEAVY_STEPS") or default_steps
    threads = _positive_int("CXR_STEP_THREADS") or max(1, cores // steps)
    return CoreShare(cores=cores, heavy_steps=steps, threads=threads)


def cuda_devices() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def use_threads(threads: int) -> None:
    """Give this process, and the processes it starts (a training worker, a decoding pool),
    ``threads`` compute threads: torch's own, and OpenMP's and MKL's as read at start-up."""
    import torch
    torch.set_num_threads(threads)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    os.environ["CXR_STEP_THREADS"] = str(threads)


def step_threads() -> int:
    """The threads this step may use for its own thread pools: its share, or every core."""
    return _positive_int("CXR_STEP_THREADS") or available_cores()


if __name__ == "__main__":  # run.sh sizes the instance's pool with this
    print(core_share().heavy_steps)
