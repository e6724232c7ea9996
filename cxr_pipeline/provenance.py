"""What a model was trained on, said wherever the model is used.

A model trained on the built-in demo data has learnt a synthetic phantom: on a real radiograph it
reshapes anatomy towards the phantom. So every trained model folder carries ``provenance.json``
(the data folder, whether it is the synthetic demo, the profile, image and patient counts per
split, the labels' sources), written at registration from the work folder's ingestion record and
metadata; the registered version gets the same as tags, the pyfunc model as metadata, and the
app and the evaluation reports show its one-line summary.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .data import atomic
from .data.demo.dataset import SPEC_FILE
from .settings import WorkPaths

FILE = "provenance.json"
SOURCE_FILE = "source.json"  # in the ingestion folder: which data folder was ingested


def record_source(paths: WorkPaths, data_dir: Path) -> dict:
    """Written by ingestion: the data folder and whether it is the generated demo (its spec file)."""
    data_dir = Path(data_dir).resolve()
    spec = data_dir / SPEC_FILE
    source = {
        "data_dir": str(data_dir),
        "synthetic_demo": spec.exists(),
        "demo_spec": json.loads(spec.read_text()).get("spec") if spec.exists() else None,
    }
    atomic.write_text(paths.ingestion / SOURCE_FILE, json.dumps(source, indent=2))
    return source


def data_source(paths: WorkPaths) -> dict:
    """Which data folder this work folder ingested (``record_source``), "unknown" before ingestion."""
    source_file = paths.ingestion / SOURCE_FILE
    if not source_file.exists():
        return {"data_dir": "unknown", "synthetic_demo": None}
    return json.loads(source_file.read_text())


def training_provenance(paths: WorkPaths, profile: str) -> dict:
    """The data a model trained now in this work folder learns from."""
    source = data_source(paths)
    metadata = pd.read_parquet(paths.metadata, columns=["split", "patient_id", "label_source"])
    splits = {
        split: {"images": int(len(rows)), "patients": int(rows["patient_id"].nunique())}
        for split, rows in metadata.groupby("split", observed=True)
    }
    return {
        "data_dir": source["data_dir"],
        "synthetic_demo": source["synthetic_demo"],
        "profile": profile,
        "splits": splits,
        "label_sources": {str(k): int(v) for k, v in metadata["label_source"].value_counts().items()},
    }


def summary(provenance: dict | None) -> str:
    """One line for people: what the model learnt from, and what that means for real images."""
    if not provenance:
        return "Training data unknown (the model folder predates provenance records)."
    train = provenance.get("splits", {}).get("train", {})
    counts = f"{train.get('images', '?')} training images of {train.get('patients', '?')} patients"
    profile = f"profile `{provenance.get('profile', '?')}`"
    if provenance.get("synthetic_demo"):
        return (
            f"Trained on the built-in **synthetic demo data** (a generated phantom, not patient images): {counts}, "
            f"{profile}. Expect it to reshape real anatomy; train on your own data (`CXR_DATA_DIR`) for real use."
        )
    return f"Trained on `{provenance.get('data_dir')}` (`CXR_DATA_DIR`): {counts}, {profile}."


def write(folder: Path, provenance: dict) -> None:
    atomic.write_text(Path(folder) / FILE, json.dumps(provenance, indent=2))


def read(folder: Path) -> dict | None:
    path = Path(folder) / FILE
    return json.loads(path.read_text()) if path.exists() else None


def as_tags(provenance: dict) -> dict[str, str]:
    """Flat MLflow tags (run and registered version), so the registry UI shows them."""
    train = provenance.get("splits", {}).get("train", {})
    return {
        "data.dir": str(provenance.get("data_dir")),
        "data.synthetic_demo": str(provenance.get("synthetic_demo")),
        "data.profile": str(provenance.get("profile")),
        "data.train_images": str(train.get("images", "")),
        "data.train_patients": str(train.get("patients", "")),
        "data.summary": summary(provenance),
    }
