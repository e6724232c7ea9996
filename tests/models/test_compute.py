"""How heavy steps share the machine: the share's rules, its overrides, and a real multiprocess
run in which two heavy steps run side by side, each process on its share of the threads."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import torch

from assets.training import HEAVY_STEP
from cxr_pipeline import compute
from cxr_pipeline.compute import (
    MAX_SIDE_BY_SIDE,
    SHARING,
    available_cores,
    core_share,
    fair_threads,
    running_heavy_steps,
    step_threads,
    use_threads,
)
from jobs import CORE_SHARE, training_executor
from resources import CxrSettings


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch):
    monkeypatch.delenv("CXR_HEAVY_STEPS", raising=False)
    monkeypatch.delenv("CXR_STEP_THREADS", raising=False)


@pytest.mark.parametrize(
    ("cores", "steps", "threads"), [(1, 1, 1), (2, 2, 1), (3, 3, 1), (8, 4, 2), (16, 4, 4), (64, 4, 16)]
)
def test_a_cpu_machine_runs_steps_side_by_side_on_an_even_share_of_its_cores(cores, steps, threads):
    share = core_share(cores=cores, gpus=0)
    assert (share.heavy_steps, share.threads) == (steps, threads)
    assert share.heavy_steps <= MAX_SIDE_BY_SIDE and share.heavy_steps * share.threads <= cores


def test_a_gpu_machine_runs_one_heavy_step_at_a_time_on_every_core():
    share = core_share(cores=16, gpus=1)
    assert (share.heavy_steps, share.threads) == (1, 16)


def test_the_environment_overrides_the_share_and_a_bad_value_is_named(monkeypatch):
    monkeypatch.setenv("CXR_HEAVY_STEPS", "2")
    assert (core_share(cores=16, gpus=1).heavy_steps, core_share(cores=16, gpus=1).threads) == (2, 8)
    monkeypatch.setenv("CXR_STEP_THREADS", "3")
    assert core_share(cores=16, gpus=0).threads == 3
    monkeypatch.setenv("CXR_HEAVY_STEPS", "0")
    with pytest.raises(ValueError, match="CXR_HEAVY_STEPS='0'"):
        core_share(cores=4, gpus=0)
    monkeypatch.setenv("CXR_HEAVY_STEPS", "two")
    with pytest.raises(ValueError, match="whole number"):
        core_share(cores=4, gpus=0)


def test_a_step_keeps_to_its_threads_and_passes_them_to_the_processes_it_starts(monkeypatch):
    before = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        # setenv, not delenv: monkeypatch restores only what it recorded, and a variable left at
        # 1 would give every later subprocess of this session one thread
        monkeypatch.setenv(name, str(before))
    try:
        use_threads(1)
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


def test_the_share_follows_the_heavy_steps_alive_now_and_forgets_dead_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_RUNNING_STEPS_DIR", str(tmp_path))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / str(os.getpid())).touch()
        (tmp_path / str(sleeper.pid)).touch()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        (tmp_path / dead.stdout.strip()).touch()  # a step killed outright left its file
        assert running_heavy_steps() == 2 and fair_threads(cores=8) == 4
        assert not (tmp_path / dead.stdout.strip()).exists()
        sleeper.kill()
        sleeper.wait()
        assert running_heavy_steps() == 1 and fair_threads(cores=8) == 8
    finally:
        sleeper.kill()


# A fresh process (the setting is for the life of a process): a 96 MiB block, freed. glibc's
# mallinfo2 says whether the block had a mapping of its own and whether the heap kept it.
_FREED_BLOCK_PROBE = """
import ctypes, json
import numpy as np
from cxr_pipeline.compute import reuse_freed_memory
took = reuse_freed_memory()
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = Info
block = np.ones(96 << 20, dtype=np.uint8)
own_mapping = mallinfo2().hblkhd >= 96 << 20
del block
print(json.dumps({"took": took, "own_mapping": own_mapping, "kept": mallinfo2().fordblks >= 96 << 20}))
"""


def _freed_block(reuse: str) -> dict:
    env = {**os.environ, compute.REUSE_FREED_MEMORY: reuse}
    done = subprocess.run(
        [sys.executable, "-c", _FREED_BLOCK_PROBE],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    if "mallinfo2" in done.stderr:
        pytest.skip("not glibc 2.33 or later: no mallinfo2 to look into the heap with")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_step_process_keeps_freed_memory_for_reuse_and_the_override_leaves_the_defaults():
    # the C library's defaults: a large block gets a mapping of its own, unmapped when freed
    assert _freed_block("0") == {"took": False, "own_mapping": True, "kept": False}
    # kept for reuse: from the heap, and still there after the free
    assert _freed_block("1") == {"took": True, "own_mapping": False, "kept": True}


def test_a_fixed_thread_count_wins_over_the_share(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_RUNNING_STEPS_DIR", str(tmp_path))
    monkeypatch.setenv(SHARING, "1")
    monkeypatch.setenv("CXR_STEP_THREADS", "3")
    assert step_threads() == 3
    monkeypatch.delenv("CXR_STEP_THREADS")
    assert step_threads() == available_cores()  # nothing else running: every core


# --- a real run: two heavy steps on the main job's executor ------------------------------------------------


class Record(dg.Config):
    folder: str


def _wait_for(condition, what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(0.05)


def _own_running_dir(config: Record) -> Path:
    """This run's steps count each other only: another test session on the same cores (a second
    checkout's CI, say) registers its own steps in the machine's folder."""
    os.environ["CXR_RUNNING_STEPS_DIR"] = str(Path(config.folder) / "running")
    return Path(config.folder)


@dg.asset(**HEAVY_STEP)
def heavy_a(config: Record, settings: CxrSettings) -> None:
    """Counts itself, waits for heavy_b to run beside it, then for heavy_b to end."""
    folder = _own_running_dir(config)
    compute.count_as_heavy_step()
    (folder / "a.running").touch()
    _wait_for((folder / "b.running").exists, "heavy_b to start")
    compute.rebalance(force=True)
    beside = torch.get_num_threads()
    (folder / "a.measured").touch()
    _wait_for(lambda: running_heavy_steps() == 1, "heavy_b to end")
    compute.rebalance(force=True)
    (folder / "a.json").write_text(
        json.dumps(
            {
                "beside": beside,
                "alone": torch.get_num_threads(),
                "pid": os.getpid(),
                "omp": os.environ.get("OMP_NUM_THREADS"),
            }
        )
    )


@dg.asset(**HEAVY_STEP)
def heavy_b(config: Record, settings: CxrSettings) -> None:
    folder = _own_running_dir(config)
    compute.count_as_heavy_step()
    (folder / "b.running").touch()
    _wait_for((folder / "a.measured").exists, "heavy_a to measure")
    compute.rebalance(force=True)
    (folder / "b.json").write_text(json.dumps({"beside": torch.get_num_threads(), "pid": os.getpid()}))


two_heavy_steps = dg.Definitions(
    assets=[heavy_a, heavy_b],
    resources={"settings": CxrSettings(share_cores=True)},
    jobs=[dg.define_asset_job("two_heavy_steps", executor_def=training_executor)],
).resolve_job_def("two_heavy_steps")


@pytest.mark.skipif(
    CORE_SHARE.heavy_steps < 2 or CORE_SHARE.cores < 2, reason="one core: heavy steps run one at a time"
)
def test_heavy_steps_side_by_side_split_the_cores_and_one_left_alone_takes_them_all(tmp_path):
    config = {"ops": {name: {"config": {"folder": str(tmp_path)}} for name in ("heavy_a", "heavy_b")}}
    with dg.instance_for_test() as instance:
        result = dg.execute_job(dg.reconstructable(_two_heavy_steps), instance=instance, run_config=config)
        assert result.success
    a, b = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("a", "b"))
    assert a["pid"] != b["pid"]  # each step in its own process
    cores = CORE_SHARE.cores
    assert a["beside"] == b["beside"] == max(1, cores // 2)
    assert a["alone"] == cores and a["omp"] == str(cores)


def _two_heavy_steps() -> dg.JobDefinition:
    return two_heavy_steps
