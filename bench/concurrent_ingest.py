"""Two ingestions started together on one work folder, against one alone; and the repair of a
store whose every shard was deleted.

Each ingestion runs in its own process (as two Dagster runs would). The second waits for the
writer lock, then finds nothing new, so the pair should cost about one run plus a listing.

    python bench/concurrent_ingest.py [--patients 1000] [--source-size 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def inner(data: str, out: str, image_size: int) -> None:
    from cxr_pipeline.data.image_store import ImageStore
    from cxr_pipeline.data.ingest import IngestOptions, ingest

    summary = ingest(
        Path(data),
        manifest_path=Path(out) / "manifest.parquet",
        rejected_path=Path(out) / "rejected.parquet",
        store=ImageStore(Path(out) / "images"),
        options=IngestOptions(image_size=image_size),
    )
    print(
        json.dumps(
            {
                "processed": summary.processed,
                "repaired": summary.repaired,
                "accepted": summary.accepted_total,
                "seconds": summary.elapsed_s,
            }
        )
    )


def launch(data: Path, out: Path, image_size: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, "--inner", str(data), str(out), str(image_size)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def finish(process: subprocess.Popen) -> dict:
    stdout, _ = process.communicate(timeout=1800)
    if process.returncode != 0:
        raise SystemExit(f"an ingestion failed with exit code {process.returncode}")
    return json.loads(stdout.strip().splitlines()[-1])


def timed(*processes: subprocess.Popen) -> tuple[float, list[dict]]:
    started = time.perf_counter()
    results = [finish(p) for p in processes]
    return time.perf_counter() - started, results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--source-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--inner", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.inner[0], args.inner[1], int(args.inner[2]))
        return

    from cxr_pipeline.data.demo.dataset import DemoSpec, generate_demo_dataset
    from cxr_pipeline.data.image_store import ImageStore
    from cxr_pipeline.data.ingest import list_input_files, read_manifest

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "demo"
        generate_demo_dataset(data, DemoSpec(patients=args.patients, source_size=args.source_size), workers=2)
        files = len(list_input_files(data))
        size = args.image_size
        alone_s, [alone] = timed(launch(data, Path(tmp) / "alone", size))
        two_s, both = timed(launch(data, Path(tmp) / "two", size), launch(data, Path(tmp) / "two", size))
        store = ImageStore(Path(tmp) / "two" / "images")
        manifest = read_manifest(Path(tmp) / "two" / "manifest.parquet")
        missing = set(manifest["shard"]) - store.shard_names()
        for shard in store.shard_names():
            (store.shard_dir / shard).unlink()
        repair_s, [repair] = timed(launch(data, Path(tmp) / "two", size))

    print(f"{files} files ({alone['accepted']} accepted), {args.source_size}px sources -> {size}px")
    print(f"{'run':<44}{'wall s':>8}{'decoded':>9}{'repaired':>9}")
    print(f"{'one ingestion alone (baseline)':<44}{alone_s:>8.1f}{alone['processed']:>9}{alone['repaired']:>9}")
    print(
        f"{'two started together, same folder':<44}{two_s:>8.1f}{'+'.join(str(r['processed']) for r in both):>9}{'':>9}"
    )
    print(f"{'repair after deleting every shard':<44}{repair_s:>8.1f}{repair['processed']:>9}{repair['repaired']:>9}")
    print(
        f"two together / one alone: {two_s / alone_s:.2f}x; repair / one alone: {repair_s / alone_s:.2f}x; "
        f"manifest rows with a missing shard after the two: {len(missing)}"
    )


if __name__ == "__main__":
    main()
