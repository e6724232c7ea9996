"""Compare every figure of two work folders, to the last digit: the proof that a refactor changed
nothing, or the list of what a change moved.

    python scripts/compare_evaluations.py BEFORE_HOME AFTER_HOME [--ignore evaluate-text_generation_evaluation]

Reads the latest MLflow run of each name in each folder's default store
(``<home>/mlflow/mlflow.db``): every evaluation (``evaluate-<asset>``) and every training run
(``cxr-<model>``: final validation figures, last loss, the evaluation figures copied into it), and
prints, per run name, how many figures are identical and every one that is not. Exits 1 when any
figure differs outside the ignored run names.

A step's figures follow its thread count, which follows the heavy steps running beside it
(``cxr_pipeline.compute``): two runs agree to the last digit only when their steps overlap the
same way. For a refactor check, run both with the threads fixed, e.g. ``CXR_STEP_THREADS=1``
(a job at the smoke budget, ``-j smoke``, covers every asset in minutes).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from mlflow import MlflowClient

from cxr_pipeline.settings import default_tracking_uri

WALL_CLOCK = ("per_s", "eta_s", "wall_s", "_seconds")  # throughput and timings: not figures of the models


def run_figures(home: Path) -> dict[str, dict[str, float]]:
    """The latest run's metrics, by run name."""
    client = MlflowClient(tracking_uri=default_tracking_uri(home))
    experiments = [e.experiment_id for e in client.search_experiments()]
    latest: dict[str, dict[str, float]] = {}
    for run in client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=10000):
        latest.setdefault(run.info.run_name, {k: v for k, v in run.data.metrics.items() if not k.endswith(WALL_CLOCK)})
    return latest


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--ignore", action="append", default=[], help="a run name whose differences are expected")
    args = parser.parse_args()
    before, after = run_figures(args.before.resolve()), run_figures(args.after.resolve())
    failed = False
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if old is None or new is None:
            print(f"{name}: only in {'after' if old is None else 'before'}")
            failed |= name not in args.ignore
            continue
        keys = sorted(set(old) | set(new))
        differ = [k for k in keys if k not in old or k not in new or not same(old[k], new[k])]
        mark = " (ignored)" if name in args.ignore else ""
        print(f"{name}: {len(keys) - len(differ)} of {len(keys)} figures identical{mark}")
        for key in differ:
            print(f"    {key}: {old.get(key)} -> {new.get(key)}")
        failed |= bool(differ) and name not in args.ignore
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
