"""Label source adapters: each turns one public dataset's label format into the common table.

Every adapter returns a :class:`LabelSource`: one row per image it describes, keyed so it can be
matched to ingested images (``match_on`` says how: the file ``name``, its ``stem``, or the last
three path components ``tail3``), plus the tokens it could not map and the files it could not read.
Sources are recognized by their content (CSV header, XML root), not their names.
"""

from __future__ import annotations

import gzip
import re
import xml.etree.ElementTree as ElementTree
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from .vocabulary import LABEL_COLUMNS, NO_FINDING, PATHOLOGIES, normalize_label

LABEL_TABLE_SCHEMA: dict[str, str] = {
    "label_source": "string",
    "label_file": "string",
    "match_on": "string",
    "match_key": "string",
    "patient_id": "string",
    "study_id": "string",
    "view": "string",
    "sex": "string",
    "age_years": "float64",
    **{column: "float32" for column in LABEL_COLUMNS},
    "n_uncertain": "int64",  # uncertain mentions left unresolved (NaN) by the policy
    "other_findings": "string",  # positive findings outside the vocabulary, '|'-joined
    "unknown_tokens": "string",
    "findings_text": "string",
    "impression_text": "string",
    "official_split": "string",  # the dataset's own split (train / val / test) where it ships one
    "dataset_class": "string",  # the dataset's own class name (a class folder, a file-name label)
    "modality": "string",  # what the source says the images are (CT for slice datasets), where it does
}
# Bounding boxes (NIH BBox_List, RSNA, VinDr), in the original image's pixels, keyed like label rows.
BOX_SCHEMA: dict[str, str] = {
    "label_source": "string",
    "label_file": "string",
    "match_on": "string",
    "match_key": "string",
    "finding": "string",  # as the source names it
    "label": "string",  # the label column it maps to, where one does
    "reader": "string",  # the radiologist, where a source has several per image
    "x_min": "float64",
    "y_min": "float64",
    "x_max": "float64",
    "y_max": "float64",
}
MAX_PLAUSIBLE_AGE = 120  # NIH's Data_Entry_2017 has a few ages in the 400s


class SourceKind(str, Enum):
    NIH = "nih"
    CHEXPERT = "chexpert"
    INDIANA_CSV = "indiana_csv"
    INDIANA_XML = "indiana_xml"
    MIMIC = "mimic_cxr"
    PADCHEST = "padchest"
    VINDR = "vindr_cxr"
    RSNA = "rsna_pneumonia"
    SIIM = "siim_pneumothorax"
    FILENAME = "filename"
    CLASS_FOLDERS = "class_folders"
    DICOM = "dicom"


class UncertaintyPolicy(str, Enum):
    """CheXpert's -1 labels (Irvin et al. 2019)."""

    U_ONES = "u_ones"
    U_ZEROS = "u_zeros"
    U_IGNORE = "u_ignore"


@dataclass
class LabelSource:
    kind: SourceKind
    table: pd.DataFrame
    files: list[str] = field(default_factory=list)
    unknown_tokens: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # files or rows that could not be read
    boxes: pd.DataFrame | None = None  # BOX_SCHEMA rows, for sources with bounding boxes


def conform_boxes(frame: pd.DataFrame) -> pd.DataFrame:
    for column in BOX_SCHEMA:
        if column not in frame.columns:
            frame[column] = None
    frame["label"] = frame["finding"].map(lambda finding: normalize_label(str(finding)))
    return frame[list(BOX_SCHEMA)].astype(BOX_SCHEMA).reset_index(drop=True)


def empty_label_table() -> pd.DataFrame:
    return pd.DataFrame(columns=list(LABEL_TABLE_SCHEMA)).astype(LABEL_TABLE_SCHEMA)


def conform(frame: pd.DataFrame) -> pd.DataFrame:
    """Add missing columns (as unknown) and fix dtypes, so every source concatenates cleanly."""
    for column in LABEL_TABLE_SCHEMA:
        if column not in frame.columns:
            frame[column] = np.nan if column in LABEL_COLUMNS else None
    frame["n_uncertain"] = frame["n_uncertain"].fillna(0)
    return frame[list(LABEL_TABLE_SCHEMA)].astype(LABEL_TABLE_SCHEMA).reset_index(drop=True)


def _age(values: pd.Series) -> pd.Series:
    """NIH ages are integers in 2017 and ``058Y`` strings in older copies; implausible ones are NaN."""
    numbers = pd.to_numeric(values.astype("string").str.extract(r"^\s*(\d+(?:\.\d+)?)", expand=False), errors="coerce")
    return numbers.where((numbers >= 0) & (numbers <= MAX_PLAUSIBLE_AGE))


def _sex(values: pd.Series) -> pd.Series:
    first = values.astype("string").str.strip().str.upper().str[:1]
    return first.where(first.isin(["M", "F"]))


def _one_hot(tokens: pd.Series) -> tuple[pd.DataFrame, Counter, pd.Series]:
    """Lists of raw tokens per row -> label columns (1/0), unknown-token counts, unknown per row."""
    exploded = tokens.explode().dropna().astype(str).str.strip()
    exploded = exploded[exploded != ""]
    mapping = {token: normalize_label(token) for token in exploded.unique()}
    mapped = exploded.map(mapping)
    unknown = exploded[mapped.isna()]
    known = mapped.dropna()
    matrix = np.zeros((len(tokens), len(LABEL_COLUMNS)), dtype=np.float32)
    matrix[tokens.index.get_indexer(known.index), pd.Index(LABEL_COLUMNS).get_indexer(known.to_numpy())] = 1.0
    hot = pd.DataFrame(matrix, index=tokens.index, columns=list(LABEL_COLUMNS))
    unknown_per_row = unknown.groupby(level=0).agg("|".join).reindex(tokens.index)
    return hot, Counter(unknown.tolist()), unknown_per_row


# --- NIH ChestX-ray14 -------------------------------------------------------------------------------

NIH_FIELDS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age")


def read_nih(path: Path) -> LabelSource:
    """``Data_Entry_2017.csv`` (and ``_v2020``). The header ``OriginalImage[Width,Height]`` holds a
    comma, so it spills into two columns (and a trailing comma adds an empty one): we read fields by
    position after checking the names that matter."""
    with Path(path).open(encoding="utf-8-sig") as file:
        header = file.readline().strip()
    names = [name.strip().strip('"') for name in header.split(",")]
    if tuple(names[:5]) != NIH_FIELDS:
        raise ValueError(f"{path}: not an NIH Data_Entry file (header starts {names[:5]})")
    frame = pd.read_csv(
        path,
        header=None,
        skiprows=1,
        usecols=range(7),
        dtype=str,
        keep_default_na=False,
        names=["image", "findings", "follow_up", "patient", "age", "sex", "view"],
    )
    hot, unknown, unknown_per_row = _one_hot(frame["findings"].str.split("|"))
    table = pd.DataFrame(
        {
            "label_source": SourceKind.NIH.value,
            "label_file": str(path),
            "match_on": "name",
            "match_key": frame["image"].str.strip(),
            "patient_id": frame["patient"].str.strip().str.lstrip("0").replace("", "0"),
            "study_id": frame["follow_up"].str.strip(),
            "view": frame["view"].str.strip().str.upper(),
            "sex": _sex(frame["sex"]),
            "age_years": _age(frame["age"]),
            "unknown_tokens": unknown_per_row,
        }
    )
    table = pd.concat([table, hot], axis=1)
    return LabelSource(SourceKind.NIH, conform(table), files=[str(path)], unknown_tokens=unknown)


def read_nih_boxes(path: Path) -> LabelSource:
    """``BBox_List_2017.csv``: Image Index, Finding Label, then ``Bbox [x,y,w,h]`` whose commas
    split it into four columns (plus trailing empty ones); x, y, w, h in the original pixels."""
    frame = pd.read_csv(
        path,
        header=None,
        skiprows=1,
        usecols=range(6),
        dtype=str,
        keep_default_na=False,
        names=["image", "finding", "x", "y", "w", "h"],
    )
    x, y, w, h = (pd.to_numeric(frame[c], errors="coerce") for c in ("x", "y", "w", "h"))
    boxes = pd.DataFrame(
        {
            "label_source": SourceKind.NIH.value,
            "label_file": str(path),
            "match_on": "name",
            "match_key": frame["image"].str.strip(),
            "finding": frame["finding"].str.strip(),
            "x_min": x,
            "y_min": y,
            "x_max": x + w,
            "y_max": y + h,
        }
    )
    return LabelSource(SourceKind.NIH, empty_label_table(), files=[str(path)], boxes=conform_boxes(boxes))


# --- CheXpert ------------------------------------------------------------------------------------

CHEXPERT_OBSERVATIONS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)


def chexpert_labels(frame: pd.DataFrame, policy: UncertaintyPolicy) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """CheXpert-style observation columns (1 / 0 / -1 / blank, as strings) -> label columns,
    uncertain mentions left unresolved, and positives outside the vocabulary. Shared by CheXpert
    and MIMIC-CXR, which label with the same tool."""
    hot = pd.DataFrame(index=frame.index)
    n_uncertain = pd.Series(0, index=frame.index)
    others = pd.Series([[] for _ in range(len(frame))], index=frame.index)
    for observation in CHEXPERT_OBSERVATIONS:
        if observation not in frame:
            continue
        raw = pd.to_numeric(frame[observation].replace("", "0"), errors="coerce").fillna(0.0)
        uncertain = raw == -1
        if policy is UncertaintyPolicy.U_ONES:
            values = raw.where(~uncertain, 1.0)
        elif policy is UncertaintyPolicy.U_ZEROS:
            values = raw.where(~uncertain, 0.0)
        else:
            values = raw.where(~uncertain, np.nan)
            n_uncertain += uncertain.astype(int)
        column = normalize_label(observation)
        if column is None:
            for index in values.index[values == 1.0]:
                others[index].append(observation)
        else:
            hot[column] = values.astype("float32")
    return hot, n_uncertain, others.map(lambda names: "|".join(names) or None)


def read_chexpert(path: Path, policy: UncertaintyPolicy = UncertaintyPolicy.U_IGNORE) -> LabelSource:
    """CheXpert ``train.csv``/``valid.csv``: 1 positive, 0 negative, -1 uncertain (resolved by
    ``policy``), blank = not mentioned (negative, the usual convention). Findings CheXpert does
    not annotate (Nodule, Mass, ...) stay unknown, never negative."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"Path", "Sex", "Age", "Frontal/Lateral"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: not a CheXpert label file (missing {sorted(missing)})")
    paths = frame["Path"].str.replace("\\", "/", regex=False)
    lateral = frame["Frontal/Lateral"].str.strip().str.lower() == "lateral"
    ap_pa = frame["AP/PA"].str.strip().str.upper() if "AP/PA" in frame else pd.Series("", index=frame.index)
    table = pd.DataFrame(
        {
            "label_source": SourceKind.CHEXPERT.value,
            "label_file": str(path),
            "match_on": "tail3",
            "match_key": paths.map(lambda p: "/".join(PurePosixPath(p).parts[-3:])),
            "patient_id": paths.str.extract(r"(patient\d+)", expand=False),
            "study_id": paths.str.extract(r"(study\d+)", expand=False),
            "view": np.where(lateral, "LATERAL", ap_pa.where(ap_pa.isin(["AP", "PA"]), "FRONTAL")),
            "sex": _sex(frame["Sex"].where(frame["Sex"].str.lower() != "unknown", "")),
            "age_years": _age(frame["Age"]),
        }
    )
    hot, table["n_uncertain"], table["other_findings"] = chexpert_labels(frame, policy)
    table = pd.concat([table, hot], axis=1)
    return LabelSource(SourceKind.CHEXPERT, conform(table), files=[str(path)])


# --- Indiana University / OpenI ------------------------------------------------------------------------


def _clean_text(text: object) -> str | None:
    """Collapse whitespace; empty and placeholder sections become missing. ``XXXX`` (the
    de-identification mask) is kept so text models can learn it is not a word."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return None
    cleaned = re.sub(r"\s+", " ", str(text)).strip()
    return None if cleaned.lower() in ("", "none", "none.", "nan") else cleaned


def _terms(*fields: object) -> list[str]:
    """MeSH ``Cardiomegaly/borderline;Pulmonary Artery/enlarged`` and Problems ``a;b`` -> terms."""
    terms: list[str] = []
    for value in fields:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue
        for part in str(value).split(";"):
            term = part.split("/")[0].strip()
            if term and term not in terms:
                terms.append(term)
    return terms


def _labels_from_terms(rows: list[list[str]], index: pd.Index) -> tuple[pd.DataFrame, pd.Series]:
    """Mapped terms are positives and the rest of the vocabulary negative (a report lists what it
    sees); terms outside the vocabulary are kept as ``other_findings``."""
    hot, _, unknown_per_row = _one_hot(pd.Series(rows, index=index, dtype=object))
    pathology_positive = hot[list(PATHOLOGIES)].sum(axis=1) > 0
    hot.loc[pathology_positive, NO_FINDING] = 0.0  # 'normal' next to a finding is contradictory
    # A report without any coded term says nothing either way.
    hot.loc[[len(terms) == 0 for terms in rows], :] = np.nan
    return hot, unknown_per_row


def read_indiana_csv(reports_path: Path, projections_path: Path) -> LabelSource:
    """Kaggle's ``indiana_reports.csv`` + ``indiana_projections.csv`` (one row per image)."""
    reports = pd.read_csv(reports_path, dtype=str, keep_default_na=False)
    projections = pd.read_csv(projections_path, dtype=str, keep_default_na=False)
    frame = projections.merge(reports, on="uid", how="left", indicator=True)
    problems = [
        f"{projections_path}: image {f} has no report (uid {u})"
        for f, u in zip(
            frame.loc[frame["_merge"] == "left_only", "filename"], frame.loc[frame["_merge"] == "left_only", "uid"]
        )
    ]
    absent = pd.Series(None, index=frame.index, dtype=object)
    terms = [_terms(mesh, problem) for mesh, problem in zip(frame.get("MeSH", absent), frame.get("Problems", absent))]
    hot, others = _labels_from_terms(terms, frame.index)
    projection = frame["projection"].str.strip().str.lower()
    table = pd.DataFrame(
        {
            "label_source": SourceKind.INDIANA_CSV.value,
            "label_file": str(reports_path),
            "match_on": "name",
            "match_key": frame["filename"].str.strip(),
            "patient_id": frame["uid"].str.strip(),
            "study_id": frame["uid"].str.strip(),
            "view": projection.map({"frontal": "FRONTAL", "lateral": "LATERAL"}),
            "other_findings": others,
            "findings_text": frame["findings"].map(_clean_text),
            "impression_text": frame["impression"].map(_clean_text),
        }
    )
    table = pd.concat([table, hot], axis=1)
    return LabelSource(
        SourceKind.INDIANA_CSV, conform(table), files=[str(reports_path), str(projections_path)], problems=problems
    )


def read_indiana_xml(paths: list[Path]) -> LabelSource:
    """OpenI report XML files (``ecgen-radiology``): one report, its MeSH terms, and the ids of
    its images (``parentImage``), which are the image file stems. Missing sections are None; a
    file that does not parse is reported, not fatal."""
    rows, problems = [], []
    for path in paths:
        try:
            root = ElementTree.parse(path).getroot()
        except ElementTree.ParseError as error:
            problems.append(f"{path}: XML does not parse ({error})")
            continue
        sections = {(node.get("Label") or "").upper(): node.text for node in root.iter("AbstractText")}
        mesh = [node.text or "" for node in root.iter() if node.tag in ("major", "minor")]
        uid_node = root.find("uId")
        uid = uid_node.get("id") if uid_node is not None else Path(path).stem
        images = [node.get("id") for node in root.iter("parentImage") if node.get("id")]
        if not images:
            problems.append(f"{path}: report {uid} lists no images")
        for image in images:
            rows.append(
                {
                    "match_key": image,
                    "patient_id": uid,
                    "study_id": uid,
                    "terms": _terms(";".join(mesh)),
                    "findings_text": _clean_text(sections.get("FINDINGS")),
                    "impression_text": _clean_text(sections.get("IMPRESSION")),
                    "label_file": str(path),
                }
            )
    frame = pd.DataFrame(
        rows, columns=["match_key", "patient_id", "study_id", "terms", "findings_text", "impression_text", "label_file"]
    )
    hot, others = _labels_from_terms(frame["terms"].tolist(), frame.index)
    table = pd.concat([frame.drop(columns="terms"), hot], axis=1)
    table["label_source"] = SourceKind.INDIANA_XML.value
    table["match_on"] = "stem"
    table["other_findings"] = others
    return LabelSource(SourceKind.INDIANA_XML, conform(table), files=[str(p) for p in paths], problems=problems)


# --- Patient (and class) in the file name; DICOM headers -------------------------------------------


def read_filenames(source_paths: pd.Series, pattern: str) -> LabelSource:
    """For datasets that encode the patient in the name (``covid_p16_ns002i00001_slice_001.png``):
    ``pattern`` is a regular expression with a ``patient`` group and optionally a ``label`` group."""
    regex = re.compile(pattern)
    if "patient" not in regex.groupindex:
        raise ValueError(f"filename pattern {pattern!r} needs a (?P<patient>...) group")
    names = source_paths.map(lambda p: PurePosixPath(p).name)
    parts = names.str.extract(regex)
    matched = parts["patient"].notna()
    table = pd.DataFrame(
        {
            "label_source": SourceKind.FILENAME.value,
            "label_file": None,
            "match_on": "name",
            "match_key": names[matched],
            "patient_id": parts.loc[matched, "patient"],
        }
    )
    unknown: Counter = Counter()
    if "label" in regex.groupindex:
        labels = parts.loc[matched, "label"]
        hot, unknown, unknown_per_row = _one_hot(labels.map(lambda v: [v]))
        table = pd.concat([table, hot], axis=1)
        table["unknown_tokens"] = unknown_per_row
        table["dataset_class"] = labels  # the dataset's own name, whether or not it is a finding
    problems = [f"{name}: does not match the filename pattern" for name in names[~matched].head(100)]
    return LabelSource(SourceKind.FILENAME, conform(table), unknown_tokens=unknown, problems=problems)


# Single-slice CT datasets (COVID-CT and its kin): ``single-slice-<Class>/<prefix>_p<N>_..._slice_<K>.png``.
SLICE_FOLDER = re.compile(r"^single-slice-(?P<label>[^/]+)$")
SLICE_NAME = re.compile(r"^(?P<patient>[A-Za-z0-9]+_p\d+)_(?:.*_)?slice_(?P<slice>\d+)\.[A-Za-z0-9]+$")


def read_class_folders(source_paths: pd.Series) -> LabelSource:
    """Images in a ``single-slice-<Class>`` folder with the patient and the slice in the name:
    the folder gives the class (the dataset's own name), the name's ``<prefix>_p<N>`` the
    patient, and the images are CT slices. Images elsewhere are not this source's; an image in
    such a folder whose name does not parse is a problem, reported."""
    paths = source_paths.astype(str).map(PurePosixPath)
    folders = paths.map(lambda p: SLICE_FOLDER.match(p.parent.name))
    inside = folders.map(lambda m: m is not None)
    names = paths[inside].map(lambda p: p.name)
    parts = names.str.extract(SLICE_NAME)
    parsed = parts["patient"].notna()
    rows = parsed[parsed].index
    table = pd.DataFrame(
        {
            "label_source": SourceKind.CLASS_FOLDERS.value,
            "label_file": None,
            "match_on": "path",
            "match_key": source_paths.loc[rows].astype(str),
            "patient_id": parts.loc[rows, "patient"],
            "study_id": parts.loc[rows, "patient"],
            "dataset_class": folders.loc[rows].map(lambda m: m.group("label")),
            "modality": "CT",
        }
    )
    problems = [
        f"{name}: in a class folder but no <prefix>_p<N>_..._slice_<K> name" for name in names[~parsed].head(100)
    ]
    return LabelSource(SourceKind.CLASS_FOLDERS, conform(table), problems=problems)


def read_dicom_headers(manifest: pd.DataFrame) -> LabelSource:
    """Unlabelled DICOM: the patient from PatientID, labels unknown."""
    rows = manifest[(manifest["format"] == "dicom") & manifest["patient_id"].notna()]
    table = pd.DataFrame(
        {
            "label_source": SourceKind.DICOM.value,
            "match_on": "path",
            "match_key": rows["source_path"],
            "patient_id": rows["patient_id"],
            "study_id": rows["study_uid"],
            "view": rows["view_position"].str.upper(),
            "sex": rows["sex"],
            "age_years": rows["age_years"],
            "modality": rows["modality"],
        }
    )
    return LabelSource(SourceKind.DICOM, conform(table))


# --- Detection -----------------------------------------------------------------------------------------


def read_text_head(path: Path, size: int = 4096) -> str:
    """The first characters of a text file, gzip-compressed or not (MIMIC ships ``.csv.gz``)."""
    with open(path, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    with opener(path, "rt", encoding="utf-8-sig", errors="replace") as handle:
        return handle.read(size)


def sniff_label_file(path: Path) -> SourceKind | str | None:
    """Which label format a text file is, from its first bytes; None when it is none of them.
    Datasets whose labels span several files (Indiana, MIMIC, VinDr, RSNA) return a marker per
    file, and their reader takes the set."""
    try:
        head = read_text_head(path)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    first_line = head.splitlines()[0] if head else ""
    columns = [c.strip().strip('"') for c in first_line.split(",")]
    names = set(columns)
    if tuple(columns[:5]) == NIH_FIELDS:
        return SourceKind.NIH
    if columns[:3] == ["Image Index", "Finding Label", "Bbox [x"]:
        return "nih_boxes"
    if "Path" in columns and "Frontal/Lateral" in columns:
        return SourceKind.CHEXPERT
    if columns[:1] == ["uid"] and {"findings", "impression"} <= names:
        return "indiana_reports"
    if columns[:3] == ["uid", "filename", "projection"]:
        return "indiana_projections"
    if {"subject_id", "study_id", "No Finding"} <= names:
        return "mimic_chexpert"
    if {"dicom_id", "subject_id", "study_id", "ViewPosition"} <= names:
        return "mimic_metadata"
    if {"dicom_id", "subject_id", "study_id", "split"} <= names:
        return "mimic_split"
    if {"ImageID", "PatientID", "Projection", "Labels"} <= names:
        return SourceKind.PADCHEST
    if {"image_id", "rad_id", "No finding"} <= names:
        return "vindr_labels"
    if {"image_id", "class_name", "rad_id", "x_min", "y_min", "x_max", "y_max"} <= names:
        return "vindr_boxes"
    if {"patientId", "x", "y", "width", "height", "Target"} <= names:
        return "rsna_labels"
    if columns == ["patientId", "class"]:
        return "rsna_classes"
    if columns[:2] == ["ImageId", "EncodedPixels"]:
        return SourceKind.SIIM
    if "<eCitation" in head or "parentImage" in head:
        return SourceKind.INDIANA_XML
    return None
