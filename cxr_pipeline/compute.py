"""How a machine's cores are shared between the heavy steps (trainings and evaluations) of a run.

A demo model's step barely speeds up past a few threads, so one step on every core of a big
machine wastes most of them; several steps side by side, each on its share of the cores, get
more done. On a GPU the steps share the device instead, and one at a time is the safe default
(a full-profile training fills a small GPU). ``bench/parallel_training.py`` measures the trade on
a machine: one step with every thread against steps side by side.

Two numbers: how many heavy steps may run at once (:func:`core_share`, the executor's and the
pool's limit), and how many threads each uses. The threads follow what runs *now*: every core
divided by the heavy steps running on the machine, each registered for its lifetime as a file
in one folder (:func:`count_as_heavy_step`), and re-read as steps start and end (:func:`rebalance`,
called by the training loop and the samplers), so a step alone on the machine gets every core
and two side by side get half each.

Overrides: ``CXR_HEAVY_STEPS`` (heavy steps at once) and ``CXR_STEP_THREADS`` (a fixed number of
threads per step); both default from the cores this process may run on (``taskset`` and cgroup
CPU sets count).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

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
    threads: int  # torch threads of each when every slot is busy


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

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)


def step_threads() -> int:
    """The threads this step may use for its own thread pools: its share, or every core."""
    fixed = _positive_int("CXR_STEP_THREADS")
    if fixed:
        return fixed
    return fair_threads() if sharing() else available_cores()


# --- the share of the cores that follows the heavy steps running now -----------------------------

SHARING = "CXR_SHARE_CORES"  # "1": this process and its children take their share (set by start_sharing)
REBALANCE_EVERY_S = 5.0
_last_rebalance = 0.0


def _cpu_set() -> str:
    """The cores this process may run on, as ranges ("0-3,8")."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows
        return "all"
    ranges: list[list[int]] = []
    for cpu in cpus:
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in ranges)


def running_dir() -> Path:
    """One folder per user and set of cores (processes pinned elsewhere do not compete), where
    each running heavy step leaves a file named by its process id (``CXR_RUNNING_STEPS_DIR``
    overrides)."""
    folder = Path(
        os.environ.get("CXR_RUNNING_STEPS_DIR")
        or Path(tempfile.gettempdir()) / f"cxr-heavy-steps-{os.getuid()}-cpus-{_cpu_set()}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def running_heavy_steps() -> int:
    """Heavy steps running now on these cores; files left by processes that died are removed."""
    count = 0
    for entry in running_dir().iterdir():
        if not entry.name.isdigit():
            continue
        if _alive(int(entry.name)):
            count += 1
        else:
            entry.unlink(missing_ok=True)
    return count


def fair_threads(cores: int | None = None) -> int:
    return max(1, (cores or available_cores()) // max(1, running_heavy_steps()))


def sharing() -> bool:
    return os.environ.get(SHARING) == "1"


def start_sharing() -> None:
    """From now on this process and those it starts take their share of the cores."""
    os.environ[SHARING] = "1"
    rebalance(force=True)


def count_as_heavy_step() -> None:
    """Count this process as a running heavy step until it exits (only while sharing): under
    Dagster's multiprocess executor every step has a process of its own, which ends with it; a
    process killed outright leaves a file that the next count removes."""
    if not sharing():
        return
    entry = running_dir() / str(os.getpid())
    if not entry.exists():
        entry.touch()
        atexit.register(entry.unlink, missing_ok=True)
    rebalance(force=True)


def rebalance(force: bool = False) -> None:
    """Set this process's threads to its share of the cores now; cheap, so loops call it every
    step (it looks at most every few seconds). A fixed ``CXR_STEP_THREADS`` wins."""
    global _last_rebalance
    if not sharing():
        return
    now = time.monotonic()
    if not force and now - _last_rebalance < REBALANCE_EVERY_S:
        return
    _last_rebalance = now
    use_threads(step_threads())


# --- the allocator ---------------------------------------------------------------------------------

# glibc's malloc serves every block above a threshold (at most 32 MiB by default) from a mapping of
# its own and unmaps it on free, so a step whose tensors are tens to hundreds of MiB (a 256 px VAE
# decode, a batch of activations) makes the kernel fault in and zero fresh pages for nearly every
# op. Keeping freed memory in the heap for reuse removes that cost (``bench/allocator.py``); the
# price is that a process holds on to its peak memory until it exits, which suits a step's process.
REUSE_FREED_MEMORY = "CXR_REUSE_FREED_MEMORY"  # "0": leave the C library's defaults
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's mallopt options
_REUSE_SETTINGS = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20))


def reuse_freed_memory() -> bool:
    """Let this process's malloc keep freed memory for reuse instead of handing it back to the
    kernel at once: blocks below 1 GiB come from the heap, and the heap shrinks only past 1 GiB
    free. glibc only (Linux); elsewhere, or with ``CXR_REUSE_FREED_MEMORY=0``, nothing changes.
    Returns whether every setting took."""
    if os.environ.get(REUSE_FREED_MEMORY, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a C library without mallopt (musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([mallopt(option, value) == 1 for option, value in _REUSE_SETTINGS])


if __name__ == "__main__":  # run.sh sizes the instance's pool with this
    print(core_share().heavy_steps)
