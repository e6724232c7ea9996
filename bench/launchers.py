"""Wall time of a class-DDPM training (demo UNet) by launcher: in this process, as a subprocess of
`python -m jobs.train_worker`, and under torchrun with N data-parallel ranks. Each launcher trains the
same job at two lengths, each in its own scratch work folder (linked to the real images, so none
resumes another's run and nothing is left behind); the two points split the wall time into a
fixed start-up cost and a cost per step. Ratios are to the in-process run of this session.
Needs a work folder with ingested images and metadata (``./run.sh demo`` first, or CXR_HOME).

    python bench/launchers.py [--steps 30 120] [--processes 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from cxr_pipeline import kinds
from cxr_pipeline.data.labels.metadata import content_hash
from cxr_pipeline.data.labels.vocabulary import DEFAULT_CLASSES
from cxr_pipeline.models.diffusion import UNetConfig
from cxr_pipeline.settings import WorkPaths, work_home

WORKER = ["-m", "jobs.train_worker"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, nargs=2, default=[30, 120])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    home = work_home()
    metadata = pd.read_parquet(WorkPaths(home).metadata)
    unet = UNetConfig(64, 1, 1, (16, 32, 64), num_class_embeds=len(DEFAULT_CLASSES) + 1, norm_num_groups=8)
    launchers = {
        "in process": None,
        "subprocess (worker)": [sys.executable, *WORKER],
        f"torchrun, {args.processes} ranks": [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={args.processes}",
            *WORKER,
        ],
    }
    print(f"class_ddpm, demo UNet, batch {args.batch}, {args.steps} steps, work folder {home}, {os.cpu_count()} cores")
    walls: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for steps in args.steps:
            recipe = kinds.CLASS_DDPM.recipe(
                steps=steps,
                batch_size=args.batch,
                learning_rate=5e-4,
                warmup_steps=10,
                checkpoint_every=steps,
                eval_every=10**9,
                log_every=20,
                space="pixel",
                prediction_type="epsilon",
                snr_gamma=None,
                guidance_scale=2.0,
                classes=list(DEFAULT_CLASSES),
                ema_decay=0.995,
                cpu_bf16=False,
            )
            job = kinds.TrainingJob("class_ddpm", "", unet, recipe, content_hash(metadata))
            for name, launch in launchers.items():
                own = WorkPaths(Path(scratch) / f"{len(walls)}")
                own.ingestion.mkdir(parents=True)
                own.metadata.symlink_to(WorkPaths(home).metadata)
                own.image_store.symlink_to(WorkPaths(home).image_store)
                placed = dataclasses.replace(job, home=str(own.home))
                started = time.perf_counter()
                if launch is None:
                    kinds.run_job(placed)
                else:
                    (own.home / "job.json").write_text(placed.to_json())
                    subprocess.run(
                        [*launch, str(own.home / "job.json"), "--outcome", str(own.home / "outcome")],
                        check=True,
                        capture_output=True,
                    )
                walls[name, steps] = time.perf_counter() - started
                print(f"{name:24s} {steps:4d} steps {walls[name, steps]:7.1f} s", flush=True)
    short, long = args.steps
    base_step = (walls["in process", long] - walls["in process", short]) / (long - short)
    print(
        f"\n{'launcher':24s} {'wall at ' + str(long):>12s} {'vs in-process':>14s} {'start-up s':>11s} {'s/step':>8s} {'step vs in-process':>19s}"
    )
    for name in launchers:
        per_step = (walls[name, long] - walls[name, short]) / (long - short)
        fixed = walls[name, short] - short * per_step
        print(
            f"{name:24s} {walls[name, long]:12.1f} {walls[name, long] / walls['in process', long]:13.2f}x "
            f"{fixed:11.1f} {per_step:8.3f} {per_step / base_step:18.2f}x"
        )


if __name__ == "__main__":
    main()
