"""Parse and split an NIH-sized label table: 112,120 rows, 30,805 patients (the real dataset's size).

Baseline: a bare ``pandas.read_csv`` of the same file, in the same process; the pipeline's time is
reported as a ratio to it. A matching 112,120-row manifest stands in for the ingested images.

    python bench/labels_split.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_pipeline.data.demo.dataset import NIH_HEADER
from cxr_pipeline.data.labels.metadata import LabelOptions, build_metadata, combine
from cxr_pipeline.data.labels.sources import read_nih
from cxr_pipeline.data.labels.vocabulary import PATHOLOGIES

ROWS, PATIENTS = 112_120, 30_805
NIH_SPELLING = [p.replace("_", " ") if p == "Pleural_Thickening" else p for p in PATHOLOGIES]
NIH_SPELLING[NIH_SPELLING.index("Pleural Thickening")] = "Pleural_Thickening"


def make_table(path: Path, rng: np.random.Generator) -> pd.DataFrame:
    patient = np.sort(rng.integers(1, PATIENTS + 1, ROWS))
    patient[:PATIENTS] = np.arange(1, PATIENTS + 1)  # every patient present at least once
    patient.sort()
    follow_up = pd.Series(patient).groupby(patient).cumcount().to_numpy()
    labels = []
    for _ in range(ROWS):
        if rng.random() < 0.54:
            labels.append("No Finding")
        else:
            k = 1 + rng.poisson(0.6)
            labels.append("|".join(sorted(rng.choice(NIH_SPELLING, size=min(k, 5), replace=False))))
    names = [f"{p:08d}_{f:03d}.png" for p, f in zip(patient, follow_up)]
    frame = pd.DataFrame(
        {
            "Image Index": names,
            "Finding Labels": labels,
            "Follow-up #": follow_up,
            "Patient ID": patient,
            "Patient Age": rng.integers(1, 95, ROWS),
            "Patient Gender": rng.choice(["M", "F"], ROWS),
            "View Position": rng.choice(["PA", "AP"], ROWS),
            "w": 2500,
            "h": 2048,
            "x": 0.143,
            "y": 0.143,
            "": "",
        }
    )
    with open(path, "w") as handle:
        handle.write(NIH_HEADER + "\n")
        frame.to_csv(handle, header=False, index=False)
    return frame


def manifest_for(names: list[str]) -> pd.DataFrame:
    count = len(names)
    return pd.DataFrame(
        {
            "image_id": [f"{i:016x}" for i in range(count)],
            "source_path": [f"images_{i // 10_000 + 1:03d}/images/{n}" for i, n in enumerate(names)],
            "shard": [f"{i // 512:06d}.npy" for i in range(count)],
            "shard_index": np.arange(count) % 512,
            "pixel_hash": [f"{i:064x}" for i in range(count)],
            "format": "png",
            "patient_id": pd.Series([None] * count, dtype="string"),
            "study_uid": None,
            "view_position": None,
            "sex": None,
            "age_years": np.nan,
        }
    )


def main() -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "Data_Entry_2017.csv"
        frame = make_table(path, rng)
        manifest = manifest_for(frame["Image Index"].tolist())

        started = time.perf_counter()
        pd.read_csv(path, dtype=str)
        baseline = time.perf_counter() - started

        started = time.perf_counter()
        source = read_nih(path)
        parsed = time.perf_counter() - started
        result = build_metadata(manifest, combine([source]), LabelOptions(sources=("nih",)))
        total = time.perf_counter() - started

    metadata = result.metadata
    print(
        f"rows {len(source.table):,}, patients {metadata['patient_key'].nunique():,}, "
        f"usable images {len(metadata):,}, single-label {int(metadata['class_id'].notna().sum()):,}"
    )
    print(f"split sizes {metadata['split'].value_counts().to_dict()}")
    print(f"pandas.read_csv baseline      {baseline:6.2f} s")
    print(f"parse (read_nih)              {parsed:6.2f} s  ({parsed / baseline:.1f}x baseline)")
    print(f"parse + join + classes + split {total:5.2f} s  ({total / baseline:.1f}x baseline)")


if __name__ == "__main__":
    main()
