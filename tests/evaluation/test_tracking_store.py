"""The MLflow store of a fresh work folder, opened by several steps at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from cxr_pipeline import tracking
from cxr_pipeline.settings import default_tracking_uri


def _open(home: str, barrier, results) -> None:
    barrier.wait()  # every process reaches the new store at the same moment
    try:
        results.put(
            tracking.ensure_experiment(default_tracking_uri(Path(home)), "cxr-pipeline", Path(home) / "artifacts")
        )
    except Exception as error:  # reported to the test, which names it
        results.put(f"failed: {error!r}")


def test_steps_opening_a_fresh_sqlite_store_at_once_all_get_the_same_experiment(tmp_path):
    """The first two MLflow steps of a run on a fresh work folder both create the store's tables;
    without the lock beside the store MLflow's migration races and leaves it half made."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(3), context.Queue()
    processes = [context.Process(target=_open, args=(str(tmp_path), barrier, results)) for _ in range(3)]
    for process in processes:
        process.start()
    answers = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert all(not str(answer).startswith("failed") for answer in answers), answers
    assert len(set(answers)) == 1
    assert (tmp_path / "mlflow" / "mlflow.db.init.lock").exists()
