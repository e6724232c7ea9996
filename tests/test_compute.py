"""How heavy steps share the machine: the share's rules, its overrides, and a real multiprocess
run in which two heavy steps run side by side, each process on its share of the threads."""

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest
import torch

from assets.training import HEAVY_STEP
from cxr_pipeline.compute import MAX_SIDE_BY_SIDE, core_share, use_threads
from jobs import CORE_SHARE, training_executor
from resources import CxrSettings


@pytest.fixture(autouse=True)
def no_overrides(monkeypatch):
    monkeypatch.delenv("CXR_HEAVY_STEPS", raising=False)
    monkeypatch.delenv("CXR_STEP_THREADS", raising=False)


@pytest.mark.parametrize(("cores", "steps", "threads"), [(1, 1, 1), (2, 2, 1), (3, 3, 1), (8, 4, 2), (16, 4, 4), (64, 4, 16)])
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
        monkeypatch.delenv(name, raising=False)
    try:
        use_threads(1)
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == os.environ["CXR_STEP_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


# --- a real run: two heavy steps on the main job's executor ------------------------------------------------

class Record(dg.Config):
    folder: str


def _record(name: str, config: Record) -> None:
    started = time.time()
    time.sleep(2.0)  # long enough for a second step's process to start beside this one
    Path(config.folder, f"{name}.json").write_text(json.dumps({
        "start": started, "end": time.time(), "torch_threads": torch.get_num_threads(),
        "omp": os.environ.get("OMP_NUM_THREADS"), "pid": os.getpid()}))


@dg.asset(**HEAVY_STEP)
def heavy_a(config: Record, settings: CxrSettings) -> None:
    _record("heavy_a", config)


@dg.asset(**HEAVY_STEP)
def heavy_b(config: Record, settings: CxrSettings) -> None:
    _record("heavy_b", config)


two_heavy_steps = dg.Definitions(
    assets=[heavy_a, heavy_b], resources={"settings": CxrSettings(step_threads=CORE_SHARE.threads)},
    jobs=[dg.define_asset_job("two_heavy_steps", executor_def=training_executor)],
).resolve_job_def("two_heavy_steps")


def test_heavy_steps_run_side_by_side_each_on_its_share_of_the_threads(tmp_path):
    config = {"ops": {name: {"config": {"folder": str(tmp_path)}} for name in ("heavy_a", "heavy_b")}}
    with dg.instance_for_test() as instance:
        result = dg.execute_job(dg.reconstructable(_two_heavy_steps), instance=instance, run_config=config)
        assert result.success
    a, b = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("heavy_a", "heavy_b"))
    assert a["pid"] != b["pid"]  # each step in its own process
    for step in (a, b):
        assert step["torch_threads"] == CORE_SHARE.threads and step["omp"] == str(CORE_SHARE.threads)
    overlapped = a["start"] < b["end"] and b["start"] < a["end"]
    assert overlapped == (CORE_SHARE.heavy_steps >= 2)


def _two_heavy_steps() -> dg.JobDefinition:
    return two_heavy_steps
