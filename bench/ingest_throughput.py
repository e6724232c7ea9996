"""Ingestion throughput with every core against a single-process loop, and peak memory.

Each configuration runs in a fresh subprocess so its peak RSS is its own. The memory rows also
ingest half of the dataset: peak memory should not grow with the number of files.

    python bench/ingest_throughput.py [--patients 300] [--source-size 256] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def inner(data: str, out: str, workers: int, image_size: int) -> None:
    from cxr_pipeline.data.image_store import ImageStore
    from cxr_pipeline.data.ingest import IngestOptions, ingest

    started = time.perf_counter()
    summary = ingest(
        Path(data),
        manifest_path=Path(out) / "manifest.parquet",
        rejected_path=Path(out) / "rejected.parquet",
        store=ImageStore(Path(out) / "images"),
        options=IngestOptions(image_size=image_size, workers=workers),
    )
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "files": summary.files_seen,
                "accepted": summary.accepted_total,
                "seconds": elapsed,
                "files_per_s": summary.files_seen / elapsed,
                "parent_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "largest_worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            }
        )
    )


def measure(data: Path, workers: int, image_size: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, __file__, "--inner", str(data), out, str(workers), str(image_size)]
        result = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--source-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="0 = every core")
    parser.add_argument("--inner", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        data, out, workers, size = args.inner
        inner(data, out, int(workers), int(size))
        return

    from cxr_pipeline.data.demo.dataset import DemoSpec, generate_demo_dataset
    from cxr_pipeline.data.ingest import list_input_files
    from cxr_pipeline.parallel import default_workers

    workers = args.workers or default_workers()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "demo"
        started = time.perf_counter()
        generate_demo_dataset(data, DemoSpec(patients=args.patients, source_size=args.source_size), workers=workers)
        print(
            f"generated {len(list_input_files(data))} files at {args.source_size}px in {time.perf_counter() - started:.1f}s"
        )
        half = Path(tmp) / "half"
        files = list_input_files(data)
        for relative in files[: len(files) // 2]:
            (half / relative).parent.mkdir(parents=True, exist_ok=True)
            os.link(data / relative, half / relative)

        serial = measure(data, 1, args.image_size)
        parallel = measure(data, workers, args.image_size)
        parallel_half = measure(half, workers, args.image_size)

    print(f"{'run':<28}{'files':>7}{'seconds':>9}{'files/s':>9}{'parent MB':>11}{'worker MB':>11}")
    for name, row in [
        ("1 process (baseline)", serial),
        (f"{workers} workers", parallel),
        (f"{workers} workers, half data", parallel_half),
    ]:
        print(
            f"{name:<28}{row['files']:>7}{row['seconds']:>9.2f}{row['files_per_s']:>9.1f}"
            f"{row['parent_peak_mb']:>11.0f}{row['largest_worker_peak_mb']:>11.0f}"
        )
    print(f"speed-up, {workers} workers vs 1 process: {parallel['files_per_s'] / serial['files_per_s']:.2f}x")
    print(f"peak parent memory, full vs half data: {parallel['parent_peak_mb'] / parallel_half['parent_peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
