"""Wall time of one class-DDPM training (demo UNet) by launcher: in this process, as a subprocess
of scripts/train_worker.py, and under torchrun with 2 data-parallel ranks. Each variant trains
the same job in its own scratch work folder (linked to the real images, so none resumes another's
run and nothing is left behind); the times are ratios to the in-process run of this session. Needs a work folder
with ingested images and metadata (``./run.sh demo`` first, or point CXR_HOME at one).

    python bench/launchers.py [--steps 60] [--processes 2]
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxr_pipeline.data.labels.metadata import content_hash  # noqa: E402
from cxr_pipeline.data.labels.vocabulary import DEFAULT_CLASSES  # noqa: E402
from cxr_pipeline.models import training_job  # noqa: E402
from cxr_pipeline.models.diffusion import ScheduleConfig, UNetConfig  # noqa: E402
from cxr_pipeline.models.training import TrainConfig  # noqa: E402
from cxr_pipeline.settings import WorkPaths  # noqa: E402

WORKER = REPO / "scripts" / "train_worker.py"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    home = Path(os.environ.get("CXR_HOME", REPO / "work"))
    metadata = pd.read_parquet(WorkPaths(home).metadata)
    unet = UNetConfig(64, 1, 1, (16, 32, 64), num_class_embeds=len(DEFAULT_CLASSES) + 1, norm_num_groups=8)
    train = TrainConfig(steps=args.steps, batch_size=args.batch, learning_rate=5e-4, warmup_steps=10,
                        checkpoint_every=args.steps, eval_every=10**9, log_every=20)
    base = training_job.TrainingJob("class_ddpm", str(home), unet, ScheduleConfig(1000), train, content_hash(metadata),
                                    {"classes": list(DEFAULT_CLASSES), "balance": True, "label_dropout": 0.1, "guidance": 2.0})
    print(f"class_ddpm, demo UNet, {args.steps} steps of batch {args.batch}, work folder {home}, {os.cpu_count()} cores")
    times: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for offset, (name, launch) in enumerate([
            ("in process", None),
            ("subprocess (worker)", [sys.executable, str(WORKER)]),
            (f"torchrun, {args.processes} ranks", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                   f"--nproc-per-node={args.processes}", str(WORKER)]),
        ]):
            own = WorkPaths(Path(scratch) / f"home{offset}")
            own.ingestion.mkdir(parents=True)
            own.metadata.symlink_to(WorkPaths(home).metadata)
            own.image_store.symlink_to(WorkPaths(home).image_store)
            job = dataclasses.replace(base, home=str(own.home))
            started = time.perf_counter()
            if launch is None:
                training_job.run(job)
            else:
                job_file = own.home / "job.json"
                job_file.write_text(job.to_json())
                subprocess.run([*launch, str(job_file), "--outcome", str(own.home / "outcome")], check=True,
                               capture_output=True)
            times[name] = time.perf_counter() - started
            print(f"{name:24s} {times[name]:7.1f} s  {times[name] / times['in process']:.2f}x in-process")


if __name__ == "__main__":
    main()
