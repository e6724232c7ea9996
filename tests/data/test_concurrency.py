"""Two writers on one work folder, in real processes: serialized, nothing deleted under the other;
a damaged store heals on the next run; a lock held too long fails clearly and touches nothing."""

import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_pipeline.data import locks
from cxr_pipeline.data.demo.dataset import DemoSpec, generate_demo_dataset
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.ingest import IngestOptions, ingest, read_manifest
from cxr_pipeline.data.pairs import build_low_dose_pairs, low_dose_pair_dir
from cxr_pipeline.models.vae import train_vae
from tests.models.test_training import tiny_setup

SPAWN = multiprocessing.get_context("spawn")  # fresh interpreters, as two Dagster runs would be
DEADLINE_S = 240


@pytest.fixture(scope="module")
def demo_448(tmp_path_factory) -> Path:
    """448 files (DICOM, PNG, JPEG, their OpenI report XML and the planted bad inputs) from 80 demo patients."""
    root = tmp_path_factory.mktemp("concurrency") / "data"
    generate_demo_dataset(root, DemoSpec(patients=80, source_size=96, dicom_share=0.3), workers=2)
    return root


def ingest_into(data_dir: Path, out: Path, **kwargs):
    return ingest(
        data_dir,
        manifest_path=out / "manifest.parquet",
        rejected_path=out / "rejected.parquet",
        store=ImageStore(out / "images"),
        options=IngestOptions(image_size=32, workers=1),
        **kwargs,
    )


def _ingest_worker(barrier, results, data_dir: str, out: str) -> None:
    barrier.wait(timeout=60)  # both start decoding at the same moment
    summary = ingest_into(Path(data_dir), Path(out))
    results.put(("ingest", summary.processed, summary.accepted_total))


def _pairs_worker(barrier, results, metadata_path: str, store_root: str, pairs_root: str) -> None:
    metadata = pd.read_parquet(metadata_path)
    barrier.wait(timeout=60)
    indexes = build_low_dose_pairs(metadata, ImageStore(Path(store_root)), Path(pairs_root), [1000.0], 5.0, seed=0)
    results.put(("pairs", len(indexes[1000.0]), 0))


def _train_worker(barrier, results, root: str, runs: str) -> None:
    metadata, store, vae_config, train_config = tiny_setup(Path(root))
    events = []
    barrier.wait(timeout=60)
    outcome = train_vae(metadata, store, Path(runs), vae_config, train_config, "tiny", progress=events.append)
    waited = any(e.kind == "wait" for e in events)
    steps = sum(1 for e in events if e.kind == "step")
    results.put(("train", outcome.resumed_from if outcome.resumed_from is not None else -1, int(waited), steps))


def run_two(target, *args) -> list[tuple]:
    """Start ``target`` in two processes released together; both must exit 0 within the deadline."""
    barrier, results = SPAWN.Barrier(2), SPAWN.Queue()
    processes = [SPAWN.Process(target=target, args=(barrier, results, *args)) for _ in range(2)]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=DEADLINE_S) for _ in processes]
        for process in processes:
            process.join(timeout=30)
            assert process.exitcode == 0, f"a writer failed (exit code {process.exitcode})"
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
    return outcomes


def stored_images(out: Path) -> dict[str, np.ndarray]:
    manifest = read_manifest(out / "manifest.parquet")
    pixels = ImageStore(out / "images").read_many(list(manifest["shard"]), list(manifest["shard_index"]))
    return dict(zip(manifest["source_path"], pixels))


def assert_same_images(out: Path, reference: dict[str, np.ndarray]) -> None:
    got = stored_images(out)
    assert got.keys() == reference.keys()
    for path, image in reference.items():
        np.testing.assert_array_equal(got[path], image, err_msg=path)


@pytest.fixture(scope="module")
def single_run(demo_448, tmp_path_factory) -> dict[str, np.ndarray]:
    out = tmp_path_factory.mktemp("single")
    ingest_into(demo_448, out)
    return stored_images(out)


def test_two_ingestions_at_once_both_finish_and_match_a_single_run(demo_448, single_run, tmp_path):
    outcomes = run_two(_ingest_worker, str(demo_448), str(tmp_path))
    processed = sorted(o[1] for o in outcomes)
    # one decoded everything; the other waited for the lock, then found nothing new
    assert processed == [0, 448], outcomes
    manifest = read_manifest(tmp_path / "manifest.parquet")
    assert set(manifest["shard"]) <= ImageStore(tmp_path / "images").shard_names()
    assert_same_images(tmp_path, single_run)


def test_deleted_shards_are_decoded_again_and_counted(demo_448, single_run, tmp_path):
    ingest_into(demo_448, tmp_path)
    store = ImageStore(tmp_path / "images")
    manifest = read_manifest(tmp_path / "manifest.parquet")
    one = manifest["shard"].iloc[0]
    (store.shard_dir / one).unlink()  # a manifest that names a missing shard
    summary = ingest_into(demo_448, tmp_path)
    assert summary.repaired == int((manifest["shard"] == one).sum()) > 0
    assert summary.processed == summary.repaired and summary.removed == 0
    assert_same_images(tmp_path, single_run)

    for shard in store.shard_names():  # every shard gone
        (store.shard_dir / shard).unlink()
    summary = ingest_into(demo_448, tmp_path)
    assert summary.repaired == summary.accepted_total == len(single_run)
    assert_same_images(tmp_path, single_run)
    assert ingest_into(demo_448, tmp_path).repaired == 0  # healed for good


def test_a_lock_held_past_the_timeout_fails_clearly_and_touches_nothing(demo_448, tmp_path):
    out = tmp_path / "out"
    ingest_into(demo_448, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith(".writer")}
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from cxr_pipeline.data import locks\n"
                "with locks.exclusive(sys.argv[1], 'a test holder'):\n"
                "    print('held', flush=True); time.sleep(60)"
            ),
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        waits = []
        started = time.monotonic()
        with pytest.raises(locks.LockTimeout) as raised:
            ingest_into(demo_448, out, lock_timeout_s=1.0, on_wait=waits.append)
        assert 0.9 < time.monotonic() - started < 15
    finally:
        holder.kill()
        holder.wait(timeout=30)
    message = str(raised.value)
    assert str(out / locks.LOCK_NAME) in message and "a test holder" in message and f"pid {holder.pid}" in message
    assert len(waits) == 1 and "a test holder" in waits[0]
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith(".writer")}
    assert after == before
    # the kernel released the dead holder's lock: the next writer goes straight through
    assert ingest_into(demo_448, out, lock_timeout_s=1.0).processed == 0


def test_two_pair_builds_at_once_leave_one_complete_store(demo_448, tmp_path):
    out = tmp_path / "ingested"
    ingest_into(demo_448, out)
    manifest = read_manifest(out / "manifest.parquet")
    metadata = manifest[["image_id", "shard", "shard_index"]].assign(split="train")
    metadata.to_parquet(tmp_path / "metadata.parquet")
    outcomes = run_two(_pairs_worker, str(tmp_path / "metadata.parquet"), str(out / "images"), str(tmp_path / "pairs"))
    assert [o[1] for o in outcomes] == [len(metadata)] * 2
    folder = low_dose_pair_dir(tmp_path / "pairs", 1000.0)
    index = pd.read_parquet(folder / "index.parquet")
    store = ImageStore(folder)
    assert set(index["shard"]) == store.shard_names()  # nothing missing, nothing orphaned
    alone = build_low_dose_pairs(metadata, ImageStore(out / "images"), tmp_path / "alone", [1000.0], 5.0, seed=0)[
        1000.0
    ]
    np.testing.assert_array_equal(
        store.read_many(list(index["shard"]), list(index["shard_index"])),
        ImageStore(low_dose_pair_dir(tmp_path / "alone", 1000.0)).read_many(
            list(alone["shard"]), list(alone["shard_index"])
        ),
    )


def test_two_trainings_of_one_run_key_take_turns(tmp_path):
    tiny_setup(tmp_path)  # write the data once, before the two processes read it
    outcomes = run_two(_train_worker, str(tmp_path), str(tmp_path / "runs"))
    first, second = sorted(outcomes, key=lambda o: o[1])
    assert first[1] == -1 and first[3] > 0  # trained from scratch
    assert second[1] == 12 and second[2] == 1 and second[3] == 0  # waited, then resumed at the end
    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "model" / "config.json").exists()
