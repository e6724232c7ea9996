"""What a step's process start-up costs, and what Dagster's forkserver with preloaded modules saves.

Runs the ``ingestion`` job (raw data, ingestion, labels, metadata and their checks: about ten
light steps, each in its own process) on an existing work folder, where every step has little to
do, so the wall time is mostly start-up; once with the multiprocess executor's default ``spawn``
and once with ``forkserver`` preloading what the steps import (what ``jobs.training_executor``
uses). Runs alternate, ``--repeats`` times each.

    CXR_HOME=work python bench/executor_startup.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jobs import PRELOADED_MODULES

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = {
    "spawn": "execution:\n  config:\n    multiprocess:\n      max_concurrent: 2\n",
    "forkserver + preload": (
        "execution:\n  config:\n    multiprocess:\n      max_concurrent: 2\n      start_method:\n"
        "        forkserver:\n          preload_modules: [" + ", ".join(PRELOADED_MODULES) + "]\n"
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    dagster = Path(sys.executable).parent / "dagster"
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, config in CONFIGS.items():
                path = Path(tmp) / "run.yaml"
                path.write_text(config)
                started = time.perf_counter()
                done = subprocess.run(
                    [str(dagster), "job", "execute", "-f", "definitions.py", "-j", "ingestion", "-c", str(path)],
                    cwd=ROOT,
                    env=os.environ,
                    capture_output=True,
                    text=True,
                )
                times[name].append(time.perf_counter() - started)
                if done.returncode:
                    raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
                print(f"{name}: {times[name][-1]:.1f} s", flush=True)
    base = min(times["spawn"])
    for name, values in times.items():
        print(f"| {name} | best {min(values):.1f} s | {min(values) / base:.2f}x spawn |")


if __name__ == "__main__":
    main()
