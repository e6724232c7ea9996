"""The built-in demo dataset, written in the on-disk layouts of the real ones.

- ``nih/``: NIH ChestX-ray14 style: ``images_NNN/images/<patient>_<followup>.png`` and a
  ``Data_Entry_2017.csv`` with the exact NIH columns, spelling and trailing comma. Mostly 8-bit
  PNG, with 16-bit PNG, RGB-encoded grayscale PNG and JPEG mixed in, as found in the wild.
- ``dicom/``: an unlabelled PACS-style export (CR and DX; MONOCHROME1 and 2; 10 to 16 bits
  stored; rescale slope/intercept; window tags on some; native, JPEG 2000, JPEG-LS and RLE
  lossless; some files without extension). Restoration models train on it without labels.
- ``openi/ecgen-radiology/*.xml``: a radiology report for every ``nih/`` study, in the Indiana
  University / OpenI layout (FINDINGS, IMPRESSION, MeSH terms, ``parentImage`` = the image's
  file stem), describing what was drawn (:mod:`.reports`); the labels stage keeps the NIH labels
  and takes the report text from these files.
- a handful of bad inputs (truncated DICOM, a non-image, a CT slice, a lateral view, an exact
  duplicate, a thumbnail, a DICOM without pixels) so the rejection path runs by default.

Generation is deterministic for a given spec and written atomically (to a temporary folder that
is renamed into place), so a crash never leaves half a dataset that looks complete.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    KeyObjectSelectionDocumentStorage,
    RLELossless,
    generate_uid,
)

from ... import parallel
from .. import atomic
from . import phantom, reports

GENERATOR_VERSION = 3  # 3: reports
NIH_COLUMNS = [
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "OriginalImage[Width",
    "Height]",
    "OriginalImagePixelSpacing[x",
    "y]",
]
NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
SPEC_FILE = "demo_dataset.json"
PATIENTS_PER_FOLDER = 80

# Single-label shares, then the share of two-finding studies. Skewed like real data, though
# less than NIH (where No Finding is 54%), so six classes are learnable at demo size.
SINGLE_LABEL_WEIGHTS = {
    "No Finding": 0.36,
    "Atelectasis": 0.09,
    "Cardiomegaly": 0.08,
    "Effusion": 0.10,
    "Pneumonia": 0.07,
    "Pneumothorax": 0.08,
    "Nodule": 0.03,
    "Mass": 0.02,
    "Infiltration": 0.04,
}
MULTI_LABEL_SHARE = 0.13
# Drawn uniformly: uncompressed is listed twice so it is the most common, as in real exports.
DICOM_SYNTAXES = (ExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless)


@dataclass(frozen=True)
class DemoSpec:
    patients: int
    source_size: int
    seed: int = 20261121
    dicom_share: float = 0.15
    version: int = GENERATOR_VERSION


def _uid(*parts: Any) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _sample_findings(rng: np.random.Generator, chronic: tuple[str, ...]) -> tuple[str, ...]:
    if rng.random() < MULTI_LABEL_SHARE:
        picked = rng.choice(phantom.RENDERED_FINDINGS, size=2, replace=False)
        findings = set(str(f) for f in picked)
    else:
        names = list(SINGLE_LABEL_WEIGHTS)
        weights = np.array([SINGLE_LABEL_WEIGHTS[n] for n in names])
        choice = str(rng.choice(names, p=weights / weights.sum()))
        findings = set() if choice == "No Finding" else {choice}
    findings |= set(chronic)
    # Order as NIH does: alphabetical, joined by '|'.
    return tuple(sorted(findings))


def _save_raster(image: np.ndarray, path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "png16":
        Image.fromarray(np.round(image * 65535).astype(np.uint16)).save(path)
        return
    gray = Image.fromarray(np.round(image * 255).astype(np.uint8))
    if kind == "png_rgb":
        gray.convert("RGB").save(path)
    elif kind == "jpeg":
        gray.save(path, quality=95)
    else:
        gray.save(path)


def _dicom_dataset(meta: dict[str, Any], sop_class: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = meta["sop_uid"]
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta["sop_uid"]
    ds.StudyInstanceUID = meta["study_uid"]
    ds.SeriesInstanceUID = meta["series_uid"]
    ds.PatientID = meta["patient_id"]
    # Direct identifiers are present, as in a real export; ingestion must not persist them.
    ds.PatientName = f"DEMO^PATIENT^{meta['patient_id']}"
    ds.PatientBirthDate = meta["birth_date"]
    ds.PatientSex = meta["sex"]
    ds.StudyDate = meta["study_date"]
    ds.Modality = meta["modality"]
    ds.Manufacturer = "cxr-pipeline demo"
    return ds


def write_dicom_image(
    path: Path, image: np.ndarray, meta: dict[str, Any], rng: np.random.Generator, syntax: str
) -> None:
    """One projection radiograph with randomized (but valid) encoding choices."""
    sop_class = ComputedRadiographyImageStorage if meta["modality"] == "CR" else DigitalXRayImageStorageForPresentation
    ds = _dicom_dataset(meta, sop_class)
    if meta.get("body_part"):
        ds.BodyPartExamined = meta["body_part"]
    ds.ViewPosition = meta["view"]
    if meta.get("age") is not None:
        ds.PatientAge = f"{int(meta['age']):03d}Y"
    bits = int(rng.choice([10, 12, 12, 14, 15, 16]))
    max_value = 2**bits - 1
    low = rng.uniform(0.02, 0.1) * max_value
    high = rng.uniform(0.82, 0.97) * max_value
    monochrome1 = rng.random() < 0.4
    display = 1.0 - image if monochrome1 else image
    stored = np.round(low + display * (high - low)).astype(np.uint16)
    slope, intercept = 1.0, 0.0
    if rng.random() < 0.5:
        slope, intercept = float(rng.choice([0.5, 1.0, 2.0])), float(rng.choice([0.0, -100.0, 1024.0]))
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "US"
    if rng.random() < 0.6:
        ds.WindowCenter = f"{((low + high) / 2) * slope + intercept:.1f}"
        ds.WindowWidth = f"{(high - low) * slope * rng.uniform(0.98, 1.1):.1f}"
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    spacing = 380.0 / max(stored.shape)
    ds.ImagerPixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    ds.PixelData = stored.tobytes()
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, stored, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


@dataclass(frozen=True)
class _PatientTask:
    root: str
    index: int  # 1-based
    spec: DemoSpec


def _make_patient(task: _PatientTask) -> dict[str, Any]:
    """Render and write all studies of one patient; return their label rows and file counts."""
    spec, root = task.spec, Path(task.root)
    rng = np.random.default_rng([spec.seed, task.index])
    traits = phantom.sample_patient(rng, seed=spec.seed * 1000 + task.index)
    studies = int(min(10, 1 + rng.poisson(2.3)))
    chronic = ("Cardiomegaly",) if rng.random() < 0.06 else ()
    age0 = int(rng.integers(18, 86))
    is_dicom = rng.random() < spec.dicom_share
    rows, files = [], []
    for k in range(studies):
        findings = _sample_findings(rng, chronic)
        study = phantom.sample_study(rng, findings, seed=k)
        drawn: list[phantom.DrawnFinding] = []
        image = phantom.render(traits, study, spec.source_size, drawn)
        age = age0 + k // 3
        if is_dicom:
            if rng.random() < 0.3:  # portrait detector crop: exercises the aspect policy
                trim = spec.source_size // 16
                image = image[:, trim:-trim]
            patient_id = f"DMO{task.index:05d}"
            meta = {
                "patient_id": patient_id,
                "sop_uid": _uid(spec.seed, task.index, k, "sop"),
                "study_uid": _uid(spec.seed, task.index, k, "study"),
                "series_uid": _uid(spec.seed, task.index, k, "series"),
                "birth_date": f"{2026 - age0:04d}0615",
                "study_date": f"{2024 + k // 3:04d}{1 + k % 12:02d}10",
                "sex": traits.sex,
                "modality": "CR" if rng.random() < 0.5 else "DX",
                "body_part": "CHEST" if rng.random() < 0.85 else None,
                "view": study.view,
                "age": age if rng.random() < 0.7 else None,
            }
            name = f"IM{k:04d}" if rng.random() < 0.5 else f"IM{k:04d}.dcm"
            path = root / "dicom" / patient_id / f"study{k:02d}" / name
            syntax = DICOM_SYNTAXES[int(rng.integers(len(DICOM_SYNTAXES)))]
            write_dicom_image(path, image, meta, rng, syntax)
            files.append(("dicom", path.relative_to(root).as_posix()))
        else:
            kind = str(rng.choice(["png8", "png16", "png_rgb", "jpeg"], p=[0.8, 0.1, 0.05, 0.05]))
            name = f"{task.index:08d}_{k:03d}." + ("jpg" if kind == "jpeg" else "png")
            # NIH splits its images over numbered folders; so do we, by patient.
            folder = f"images_{(task.index - 1) // PATIENTS_PER_FOLDER + 1:03d}/images"
            path = root / "nih" / folder / name
            _save_raster(image, path, kind)
            files.append(("nih", path.relative_to(root).as_posix()))
            # Its own generator: the images stay what they were before the demo had reports.
            report = reports.write_report(
                drawn,
                view=study.view,
                age=age,
                sex=traits.sex,
                rng=np.random.default_rng([spec.seed, task.index, k, 17]),
            )
            uid = task.index * 100 + k
            report_path = root / "openi" / "ecgen-radiology" / f"{uid}.xml"
            report_path.parent.mkdir(parents=True, exist_ok=True)
            report_path.write_text(reports.openi_xml(report, uid, [Path(name).stem]))
            files.append(("openi", report_path.relative_to(root).as_posix()))
            rows.append(
                {
                    "Image Index": name,
                    "Finding Labels": "|".join(findings) if findings else "No Finding",
                    "Follow-up #": k,
                    "Patient ID": task.index,
                    "Patient Age": age,
                    "Patient Gender": traits.sex,
                    "View Position": study.view,
                    "OriginalImage[Width": int(2500 + rng.integers(0, 500)),
                    "Height]": int(2500 + rng.integers(0, 500)),
                    "OriginalImagePixelSpacing[x": 0.143,
                    "y]": 0.143,
                }
            )
    return {"rows": rows, "files": files}


def _write_bad_inputs(root: Path, spec: DemoSpec, nih_files: list[str], dicom_files: list[str]) -> list[str]:
    """The rejection path must run on every demo materialization: one file of each kind."""
    rng = np.random.default_rng([spec.seed, 99])
    written = []

    def add(relative: str, data: bytes) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(relative)

    add("nih/README.txt", b"Demo data generated by cxr-pipeline; NIH ChestX-ray14 layout.\n")
    add("nih/images_001/images/Thumbs.db", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    if dicom_files:
        source = (root / dicom_files[0]).read_bytes()
        add(str(Path(dicom_files[0]).parent / "IM_truncated.dcm"), source[: int(len(source) * 0.6)])
    # Exact duplicate: the same pixels re-encoded (different bytes, so a file hash would miss it).
    original = root / nih_files[0]
    with Image.open(original) as image:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)
    add(str(Path(nih_files[0]).parent / "copy_of_first_image.png"), buffer.getvalue())
    thumb = Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8))
    buffer = io.BytesIO()
    thumb.save(buffer, format="PNG")
    add("nih/images_001/images/thumbnail_small.png", buffer.getvalue())

    size = max(64, spec.source_size // 4)
    meta = {
        "patient_id": "DMOCT0001",
        "sop_uid": _uid(spec.seed, "ct"),
        "study_uid": _uid(spec.seed, "ct-study"),
        "series_uid": _uid(spec.seed, "ct-series"),
        "birth_date": "19600101",
        "study_date": "20250101",
        "sex": "F",
        "modality": "CT",
    }
    ct = _dicom_dataset(meta, CTImageStorage)
    ct.BodyPartExamined = "CHEST"
    ct.PhotometricInterpretation, ct.SamplesPerPixel = "MONOCHROME2", 1
    ct.Rows = ct.Columns = size
    ct.BitsAllocated, ct.BitsStored, ct.HighBit, ct.PixelRepresentation = 16, 12, 11, 0
    ct.RescaleSlope, ct.RescaleIntercept = "1", "-1024"
    ct.PixelData = rng.integers(0, 4095, (size, size), dtype=np.uint16).tobytes()
    path = root / "dicom" / "DMOCT0001" / "ct_chest_slice.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ct.save_as(path, enforce_file_format=True)
    written.append(path.relative_to(root).as_posix())

    meta.update(
        patient_id="DMOLAT0001",
        sop_uid=_uid(spec.seed, "lat"),
        study_uid=_uid(spec.seed, "lat-study"),
        series_uid=_uid(spec.seed, "lat-series"),
        modality="DX",
    )
    lateral = phantom.render_lateral(spec.seed, spec.source_size)
    path = root / "dicom" / "DMOLAT0001" / "lateral.dcm"
    write_dicom_image(
        path, lateral, {**meta, "body_part": "CHEST", "view": "LL", "age": 64}, rng, ExplicitVRLittleEndian
    )
    written.append(path.relative_to(root).as_posix())

    meta.update(
        patient_id="DMOKO0001",
        sop_uid=_uid(spec.seed, "ko"),
        study_uid=_uid(spec.seed, "ko-study"),
        series_uid=_uid(spec.seed, "ko-series"),
        modality="KO",
    )
    ko = _dicom_dataset(meta, KeyObjectSelectionDocumentStorage)
    path = root / "dicom" / "DMOKO0001" / "key_objects.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ko.save_as(path, enforce_file_format=True)
    written.append(path.relative_to(root).as_posix())
    return written


def read_spec(dest: Path) -> dict[str, Any] | None:
    """The summary a generated demo folder records (its spec included), or None."""
    try:
        return json.loads((dest / SPEC_FILE).read_text())
    except (OSError, ValueError):
        return None


def generate_demo_dataset(dest: Path, spec: DemoSpec, *, workers: int = 1) -> dict[str, Any]:
    """Write the demo dataset to ``dest`` unless the same spec is already there; return its summary."""
    dest = Path(dest)
    existing = read_spec(dest)
    if existing and existing.get("spec") == asdict(spec):
        return existing
    with atomic.atomic_folder(dest) as tmp:
        tasks = (_PatientTask(str(tmp), i, spec) for i in range(1, spec.patients + 1))
        rows: list[dict] = []
        nih_files: list[Any] = []
        dicom_files: list[Any] = []
        report_files: list[Any] = []
        for result in parallel.ordered_map(_make_patient, tasks, workers=workers, on_crash=_raise_crash):
            rows.extend(result["rows"])
            for source, path in result["files"]:
                {"nih": nih_files, "dicom": dicom_files, "openi": report_files}[source].append(path)
        with open(tmp / "nih" / "Data_Entry_2017.csv", "w", newline="") as handle:
            handle.write(NIH_HEADER + "\n")
            writer = csv.writer(handle, lineterminator="\n")
            for row in rows:
                writer.writerow([row[c] for c in NIH_COLUMNS] + [""])
        bad = _write_bad_inputs(tmp, spec, nih_files, dicom_files)
        labels = Counter(row["Finding Labels"] for row in rows)
        summary = {
            "spec": asdict(spec),
            "patients": spec.patients,
            "nih_images": len(nih_files),
            "dicom_images": len(dicom_files),
            "reports": len(report_files),
            "bad_inputs": bad,
            "label_counts": dict(sorted(labels.items())),
        }
        (tmp / SPEC_FILE).write_text(json.dumps(summary, indent=2))
    return summary


def _raise_crash(task: _PatientTask, error: BaseException) -> dict[str, Any]:
    raise RuntimeError(f"demo generation crashed for patient {task.index}") from error
