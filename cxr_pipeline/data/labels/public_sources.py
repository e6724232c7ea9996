"""Adapters for the public datasets CXR generators are trained on today, read as downloaded:
MIMIC-CXR-JPG, PadChest, VinDr-CXR, RSNA Pneumonia Detection and SIIM-ACR Pneumothorax.

Each returns the common label table of ``sources.py``: findings mapped onto the 14 NIH findings
plus No_Finding where the finding exists, left unknown where the dataset does not annotate it,
every unmapped positive kept in ``other_findings``; views from the dataset's own column; reports
where the dataset has them. Where a dataset has no patient column (SIIM), the patient comes from
the images' DICOM headers when the metadata is built.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from .sources import (
    LabelSource,
    SourceKind,
    UncertaintyPolicy,
    _age,
    _clean_text,
    _labels_from_terms,
    _sex,
    chexpert_labels,
    conform,
    conform_boxes,
)
from .vocabulary import LABEL_COLUMNS, NO_FINDING, PATHOLOGIES, normalize_label


def _csv(path: Path) -> pd.DataFrame:
    """As strings, blanks kept as ''; ``.gz`` by content as well as by name."""
    with open(path, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, compression="gzip" if compressed else None)
    frame.columns = [c.strip() for c in frame.columns]
    return frame


# --- MIMIC-CXR-JPG ----------------------------------------------------------------------------------

MIMIC_SPLITS = {"train": "train", "validate": "val", "test": "test"}
REPORT_SECTIONS = re.compile(r"^\s*(FINDINGS|IMPRESSION)\s*:", re.MULTILINE)


def mimic_report_sections(text: str) -> tuple[str | None, str | None]:
    """FINDINGS and IMPRESSION of a MIMIC-CXR free-text report (each up to the next upper-case
    section header); either may be absent."""
    found: dict[str, str] = {}
    matches = list(REPORT_SECTIONS.finditer(text))
    for match, following in zip(matches, matches[1:] + [None]):
        body = text[match.end() : following.start() if following else len(text)]
        body = re.split(r"\n\s*[A-Z][A-Z /&()]+:", body)[0]  # stop at any other header
        found[match.group(1)] = body
    return _clean_text(found.get("FINDINGS")), _clean_text(found.get("IMPRESSION"))


def read_mimic(
    chexpert_path: Path,
    metadata_path: Path,
    split_path: Path | None,
    policy: UncertaintyPolicy = UncertaintyPolicy.U_IGNORE,
) -> LabelSource:
    """``mimic-cxr-2.0.0-chexpert.csv(.gz)`` (one row per study), ``-metadata.csv(.gz)`` (one row
    per image, with ``ViewPosition``) and optionally ``-split.csv(.gz)``; images
    ``files/pNN/p<subject>/s<study>/<dicom_id>.jpg``, matched by file stem; reports
    ``files/pNN/p<subject>/s<study>.txt`` beside them when the reports archive is unpacked there."""
    labels, images = _csv(chexpert_path), _csv(metadata_path)
    frame = images.merge(labels, on=["subject_id", "study_id"], how="left", indicator=True)
    problems = [
        f"{metadata_path}: image {d} has no CheXpert row (study {s})"
        for d, s in zip(
            frame.loc[frame["_merge"] == "left_only", "dicom_id"], frame.loc[frame["_merge"] == "left_only", "study_id"]
        )
    ][:100]
    frame = frame[frame["_merge"] == "both"].drop(columns="_merge").reset_index(drop=True)
    view = frame["ViewPosition"].str.strip().str.upper()
    view = view.mask(view == "")
    table = pd.DataFrame(
        {
            "label_source": SourceKind.MIMIC.value,
            "label_file": str(chexpert_path),
            "match_on": "stem",
            "match_key": frame["dicom_id"].str.strip(),
            "patient_id": frame["subject_id"].str.strip(),
            "study_id": frame["study_id"].str.strip(),
            "view": view,
        }
    )
    hot, table["n_uncertain"], table["other_findings"] = chexpert_labels(frame, policy)
    table = pd.concat([table, hot], axis=1)
    if split_path is not None:
        split = _csv(split_path).drop_duplicates("dicom_id").set_index("dicom_id")["split"].str.strip()
        table["official_split"] = table["match_key"].map(split).map(MIMIC_SPLITS)
    root = Path(chexpert_path).parent
    findings, impressions = [], []
    for subject, study in zip(table["patient_id"], table["study_id"]):
        report = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"
        sections = mimic_report_sections(report.read_text(errors="replace")) if report.exists() else (None, None)
        findings.append(sections[0])
        impressions.append(sections[1])
    table["findings_text"], table["impression_text"] = findings, impressions
    files = [str(p) for p in (chexpert_path, metadata_path, split_path) if p is not None]
    return LabelSource(SourceKind.MIMIC, conform(table), files=files, problems=problems)


# --- PadChest ------------------------------------------------------------------------------------------

PADCHEST_VIEWS = {"PA": "PA", "AP": "AP", "AP_HORIZONTAL": "AP", "L": "LATERAL", "COSTAL": "COSTAL"}


def _literal_list(text: str) -> list[str] | None:
    """PadChest's ``Labels`` cell: a Python list literal ("['pleural effusion', 'cardiomegaly']");
    None when it does not parse."""
    try:
        value = ast.literal_eval(text) if text.strip() else []
    except (ValueError, SyntaxError):
        return None
    return [str(item).strip() for item in value if str(item).strip()] if isinstance(value, list) else None


def read_padchest(path: Path) -> LabelSource:
    """``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv``: one row per image (16-bit PNG),
    ``Labels`` as a list literal of lower-case terms (radiologist- or NLP-extracted, see
    ``MethodLabel``), the Spanish ``Report``. Like a report's coded terms: mapped terms positive,
    the rest of the vocabulary negative; an unparseable or empty label list says nothing."""
    frame = _csv(path)
    parsed = frame["Labels"].map(_literal_list)
    problems = [
        f"{path}: image {i} has an unreadable Labels cell {cell[:60]!r}"
        for i, cell in zip(frame.loc[parsed.isna(), "ImageID"], frame.loc[parsed.isna(), "Labels"])
    ][:100]
    terms = [terms or [] for terms in parsed]
    hot, others = _labels_from_terms(terms, frame.index)
    projection = frame["Projection"].str.strip().str.upper()
    table = pd.DataFrame(
        {
            "label_source": SourceKind.PADCHEST.value,
            "label_file": str(path),
            "match_on": "name",
            "match_key": frame["ImageID"].str.strip(),
            "patient_id": frame["PatientID"].str.strip(),
            "study_id": frame.get("StudyID", frame["PatientID"]).str.strip(),
            "view": projection.map(PADCHEST_VIEWS).fillna(projection.where(projection != "")),  # others by name
            "sex": _sex(frame.get("PatientSex_DICOM", pd.Series("", index=frame.index))),
            "age_years": _years_from_birth(frame),
            "other_findings": others,
            "findings_text": frame.get("Report", pd.Series(None, index=frame.index)).map(_clean_text),
        }
    )
    return LabelSource(
        SourceKind.PADCHEST, conform(pd.concat([table, hot], axis=1)), files=[str(path)], problems=problems
    )


def _years_from_birth(frame: pd.DataFrame) -> pd.Series:
    """PadChest has the birth year and the study date (YYYYMMDD), not the age."""
    if "PatientBirth" not in frame or "StudyDate_DICOM" not in frame:
        return pd.Series(np.nan, index=frame.index)
    born = pd.to_numeric(frame["PatientBirth"], errors="coerce")
    year = pd.to_numeric(frame["StudyDate_DICOM"].str[:4], errors="coerce")
    return _age((year - born).astype("string"))


# --- VinDr-CXR -----------------------------------------------------------------------------------------

VINDR_AMBIGUOUS = {"Nodule/Mass": ("Nodule", "Mass")}  # positive: one or the other, not known which


def _vindr_table(per_reader: pd.DataFrame, findings: list[str], label_file: Path) -> tuple[pd.DataFrame, Counter]:
    """``per_reader``: one row per (image, radiologist), a 0/1 column per finding. An image's
    finding is positive when more than half of its radiologists marked it (ties negative)."""
    votes = per_reader.groupby("image_id")[findings].mean()
    positive = votes > 0.5
    matrix = pd.DataFrame(np.nan, index=votes.index, columns=list(LABEL_COLUMNS), dtype="float32")
    others = pd.Series([[] for _ in range(len(votes))], index=votes.index)
    unknown: Counter = Counter()
    for finding in findings:
        column = normalize_label(finding)
        if column is not None:
            matrix[column] = positive[finding].astype("float32")
            continue
        if finding in VINDR_AMBIGUOUS:  # negative is certain; a positive is one or the other
            for name in VINDR_AMBIGUOUS[finding]:
                matrix[name] = np.where(positive[finding], np.nan, 0.0)
        elif positive[finding].any():
            unknown[finding] += int(positive[finding].sum())
        for image in positive.index[positive[finding]]:
            others[image].append(finding)
    table = pd.DataFrame(
        {
            "label_source": SourceKind.VINDR.value,
            "label_file": str(label_file),
            "match_on": "stem",
            "match_key": votes.index,
            "patient_id": votes.index,  # VinDr-CXR has no patient linkage: each image is its own patient
            "study_id": votes.index,
            "other_findings": others.map(lambda names: "|".join(names) or None),
        }
    ).reset_index(drop=True)
    return pd.concat([table, matrix.reset_index(drop=True)], axis=1), unknown


def read_vindr_labels(path: Path) -> LabelSource:
    """PhysioNet's ``annotations/image_labels_train.csv`` (or ``_test``): image_id, rad_id, one
    0/1 column per finding, several radiologists per image, combined by majority vote."""
    frame = _csv(path)
    findings = [c for c in frame.columns if c not in ("image_id", "rad_id")]
    for column in findings:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").fillna(0.0)
    table, unknown = _vindr_table(frame, findings, path)
    return LabelSource(SourceKind.VINDR, conform(table), files=[str(path)], unknown_tokens=unknown)


def read_vindr_boxes(path: Path) -> LabelSource:
    """The Kaggle VinBigData ``train.csv``: one row per radiologist per box (class_name, x_min,
    y_min, x_max, y_max), "No finding" rows without a box; combined by majority vote per image,
    as the PhysioNet labels are."""
    frame = _csv(path)
    findings = sorted(frame["class_name"].str.strip().unique())
    per_reader = (
        pd.crosstab([frame["image_id"].str.strip(), frame["rad_id"].str.strip()], frame["class_name"].str.strip())
        .clip(upper=1)
        .reset_index()
    )
    table, unknown = _vindr_table(per_reader, findings, path)
    drawn = frame[frame["x_min"].str.strip() != ""]
    boxes = pd.DataFrame(
        {
            "label_source": SourceKind.VINDR.value,
            "label_file": str(path),
            "match_on": "stem",
            "match_key": drawn["image_id"].str.strip(),
            "finding": drawn["class_name"].str.strip(),
            "reader": drawn["rad_id"].str.strip(),
            **{c: pd.to_numeric(drawn[c], errors="coerce") for c in ("x_min", "y_min", "x_max", "y_max")},
        }
    )
    return LabelSource(
        SourceKind.VINDR, conform(table), files=[str(path)], unknown_tokens=unknown, boxes=conform_boxes(boxes)
    )


# --- RSNA Pneumonia Detection ----------------------------------------------------------------------------

RSNA_NORMAL = "Normal"


def read_rsna(labels_path: Path, classes_path: Path | None = None) -> LabelSource:
    """``stage_2_train_labels.csv``: patientId (one image each, ``<patientId>.dcm``), a box and
    ``Target`` per row, several rows for several boxes. Pneumonia is positive when any row is;
    with ``stage_2_detailed_class_info.csv`` a "Normal" image is No Finding (and every finding
    negative); "No Lung Opacity / Not Normal" is negative for pneumonia only."""
    frame = _csv(labels_path)
    target = pd.to_numeric(frame["Target"], errors="coerce").fillna(0).groupby(frame["patientId"].str.strip()).max()
    hot = pd.DataFrame(np.nan, index=target.index, columns=list(LABEL_COLUMNS), dtype="float32")
    hot["Pneumonia"] = target.astype("float32")
    files = [str(labels_path)]
    if classes_path is not None:
        classes = _csv(classes_path).drop_duplicates("patientId").set_index("patientId")["class"].str.strip()
        normal = classes.reindex(target.index) == RSNA_NORMAL
        hot.loc[normal, list(PATHOLOGIES)] = 0.0
        hot[NO_FINDING] = np.where(normal, 1.0, np.where(target > 0, 0.0, np.nan))
        files.append(str(classes_path))
    table = pd.DataFrame(
        {
            "label_source": SourceKind.RSNA.value,
            "label_file": str(labels_path),
            "match_on": "stem",
            "match_key": target.index,
            "patient_id": target.index,
            "study_id": target.index,
        }
    ).reset_index(drop=True)
    drawn = frame[frame["x"].str.strip() != ""]
    x, y = pd.to_numeric(drawn["x"], errors="coerce"), pd.to_numeric(drawn["y"], errors="coerce")
    boxes = pd.DataFrame(
        {
            "label_source": SourceKind.RSNA.value,
            "label_file": str(labels_path),
            "match_on": "stem",
            "match_key": drawn["patientId"].str.strip(),
            "finding": "Pneumonia",  # lung opacity boxes
            "x_min": x,
            "y_min": y,
            "x_max": x + pd.to_numeric(drawn["width"], errors="coerce"),
            "y_max": y + pd.to_numeric(drawn["height"], errors="coerce"),
        }
    )
    return LabelSource(
        SourceKind.RSNA,
        conform(pd.concat([table, hot.reset_index(drop=True)], axis=1)),
        files=files,
        boxes=conform_boxes(boxes),
    )


# --- SIIM-ACR Pneumothorax ----------------------------------------------------------------------------------


def read_siim(path: Path) -> LabelSource:
    """``train-rle.csv``: ImageId (the DICOM SOP Instance UID, ``<ImageId>.dcm``) and
    EncodedPixels, ``-1`` for no pneumothorax, one row per mask when there are several.
    Pneumothorax only; the patient comes from the DICOM header."""
    frame = _csv(path)
    has_mask = frame["EncodedPixels"].str.strip() != "-1"
    positive = has_mask.groupby(frame["ImageId"].str.strip()).any()
    hot = pd.DataFrame(np.nan, index=positive.index, columns=list(LABEL_COLUMNS), dtype="float32")
    hot["Pneumothorax"] = positive.astype("float32")
    table = pd.DataFrame(
        {
            "label_source": SourceKind.SIIM.value,
            "label_file": str(path),
            "match_on": "stem",
            "match_key": positive.index,
        }
    ).reset_index(drop=True)
    return LabelSource(
        SourceKind.SIIM, conform(pd.concat([table, hot.reset_index(drop=True)], axis=1)), files=[str(path)]
    )
