"""From ingested images and label sources to ``metadata.parquet`` and the split CSVs.

Nothing is dropped silently: an image without a label row, or with a lateral view in its labels,
goes to the excluded table with a reason; a label row without an image goes to the unmatched
table; an image described by two sources is counted as a conflict (the higher-priority source wins).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import atomic, locks
from ..splits import SPLITS, assign_splits, check_fractions
from .public_sources import read_mimic, read_padchest, read_rsna, read_siim, read_vindr_boxes, read_vindr_labels
from .sources import (
    BOX_SCHEMA,
    LabelSource,
    SourceKind,
    UncertaintyPolicy,
    conform,
    empty_label_table,
    read_chexpert,
    read_class_folders,
    read_dicom_headers,
    read_filenames,
    read_indiana_csv,
    read_indiana_xml,
    read_nih,
    read_nih_boxes,
    sniff_label_file,
)
from .vocabulary import DEFAULT_CLASSES, LABEL_COLUMNS, NO_FINDING, PATHOLOGIES

# When two sources describe the same image, the first in this order wins: curated label files
# before what can be read off a file name or a header.
SOURCE_PRIORITY = (
    SourceKind.NIH,
    SourceKind.CHEXPERT,
    SourceKind.MIMIC,
    SourceKind.PADCHEST,
    SourceKind.VINDR,
    SourceKind.RSNA,
    SourceKind.SIIM,
    SourceKind.INDIANA_CSV,
    SourceKind.INDIANA_XML,
    SourceKind.FILENAME,
    SourceKind.CLASS_FOLDERS,
    SourceKind.DICOM,
)
# Filled from a lower-priority source of the same image (the DICOM header) where the chosen label
# row has none: SIIM's CSV has no patient, VinDr's and RSNA's no sex or age.
DEMOGRAPHICS = ("patient_id", "study_id", "view", "sex", "age_years", "modality")
# Report text can come from its own source (OpenI XML beside NIH labels, MIMIC reports beside
# CheXpert labels): the first source in priority order that has it gives it.
REPORT_TEXT = ("findings_text", "impression_text")
LATERAL_VIEWS = frozenset({"LATERAL", "LL", "RL", "LAT"})
# What frontal_only keeps: PA and AP (PadChest's AP_HORIZONTAL arrives as AP), a source's plain
# "frontal" (CheXpert, Indiana), and images no source gives a view for. Anything else a source
# names (PadChest's COSTAL rib series, decubitus views) is excluded with its view as the reason.
FRONTAL_VIEWS = frozenset({"PA", "AP", "FRONTAL"})
IMAGE_COLUMNS = ["image_id", "source_path", "shard", "shard_index", "pixel_hash", "format"]


@dataclass(frozen=True)
class LabelOptions:
    sources: tuple[str, ...] = ()  # empty: every source found in the data folder
    uncertainty: UncertaintyPolicy = UncertaintyPolicy.U_IGNORE
    filename_pattern: str | None = None  # enables the file-name adapter; wins over a recognized layout
    # empty: the dataset's own classes where its sources name them (class folders, a file-name
    # label), else the NIH six; or a list: of label columns (NIH findings) or of the dataset's names
    classes: tuple[str, ...] = ()
    frontal_only: bool = True
    split_fractions: tuple[float, ...] = (0.8, 0.1, 0.1)  # train, val, test (check_fractions)
    split_salt: str = "cxr-v1"
    official_split: bool = False  # use a dataset's own split where it ships one (MIMIC-CXR), else hash

    def __post_init__(self) -> None:
        unknown = set(self.sources) - {kind.value for kind in SourceKind}
        if unknown:
            raise ValueError(f"unknown label sources {sorted(unknown)}; choose from {[k.value for k in SourceKind]}")
        check_fractions(self.split_fractions)

    def wants(self, kind: SourceKind) -> bool:
        return not self.sources or kind.value in self.sources


def load_label_sources(
    data_dir: Path, text_files: Iterable[str], manifest: pd.DataFrame, options: LabelOptions
) -> list[LabelSource]:
    """Detect label files among the data folder's text files by content and read each."""
    found: dict[object, list[Path]] = {}
    for relative in sorted(text_files):
        kind = sniff_label_file(Path(data_dir) / relative)
        if kind is not None:
            found.setdefault(kind, []).append(Path(data_dir) / relative)
    sources: list[LabelSource] = []
    if options.wants(SourceKind.NIH):
        sources += [read_nih(path) for path in found.get(SourceKind.NIH, [])]
        sources += [read_nih_boxes(path) for path in found.get("nih_boxes", [])]
    if options.wants(SourceKind.CHEXPERT):
        sources += [read_chexpert(path, options.uncertainty) for path in found.get(SourceKind.CHEXPERT, [])]
    if options.wants(SourceKind.INDIANA_CSV):
        reports, projections = found.get("indiana_reports", []), found.get("indiana_projections", [])
        if reports and projections:
            sources.append(read_indiana_csv(reports[0], projections[0]))
    if options.wants(SourceKind.INDIANA_XML) and found.get(SourceKind.INDIANA_XML):
        sources.append(read_indiana_xml(found[SourceKind.INDIANA_XML]))
    if options.wants(SourceKind.MIMIC) and found.get("mimic_chexpert") and found.get("mimic_metadata"):
        split = found.get("mimic_split", [None])[0]
        sources.append(read_mimic(found["mimic_chexpert"][0], found["mimic_metadata"][0], split, options.uncertainty))
    if options.wants(SourceKind.PADCHEST):
        sources += [read_padchest(path) for path in found.get(SourceKind.PADCHEST, [])]
    if options.wants(SourceKind.VINDR):
        sources += [read_vindr_labels(path) for path in found.get("vindr_labels", [])]
        for path in found.get("vindr_boxes", []):
            boxes = read_vindr_boxes(path)
            if found.get("vindr_labels"):  # PhysioNet's image labels win; its annotations give the boxes
                boxes.table = boxes.table.iloc[0:0]
            sources.append(boxes)
    if options.wants(SourceKind.RSNA) and found.get("rsna_labels"):
        sources.append(read_rsna(found["rsna_labels"][0], found.get("rsna_classes", [None])[0]))
    if options.wants(SourceKind.SIIM):
        sources += [read_siim(path) for path in found.get(SourceKind.SIIM, [])]
    if options.filename_pattern and options.wants(SourceKind.FILENAME):
        sources.append(read_filenames(manifest["source_path"], options.filename_pattern))
    if options.wants(SourceKind.CLASS_FOLDERS):
        folders = read_class_folders(manifest["source_path"])
        if len(folders.table) or folders.problems:
            sources.append(folders)
    if options.wants(SourceKind.DICOM):
        sources.append(read_dicom_headers(manifest))
    return sources


def combine(sources: Sequence[LabelSource]) -> pd.DataFrame:
    tables = [source.table for source in sources if len(source.table)]
    return conform(pd.concat(tables, ignore_index=True)) if tables else empty_label_table()


def combine_boxes(sources: Sequence[LabelSource]) -> pd.DataFrame:
    tables = [source.boxes for source in sources if source.boxes is not None and len(source.boxes)]
    frame = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(BOX_SCHEMA))
    return frame.astype(BOX_SCHEMA)


STORED = {"x_min": "x", "x_max": "x", "y_min": "y", "y_max": "y"}


def map_boxes(manifest: pd.DataFrame, boxes: pd.DataFrame) -> pd.DataFrame:
    """Boxes of ingested images, keyed by ``image_id``, with their corners also in the stored
    image's pixels: through the resize record ingestion kept (stored = (original - offset) x
    scale, clipped to the stored image)."""
    mapped, _ = join_to_images(manifest, boxes)
    columns = ["image_id", *BOX_SCHEMA, *(f"stored_{c}" for c in STORED)]
    if not mapped:
        return pd.DataFrame(columns=columns)
    frame = pd.concat(mapped, ignore_index=True)
    height, width = frame["original_height"], frame["original_width"]
    side = {"y": height, "x": width}
    square = np.where(
        frame["aspect_policy"] == "pad",
        np.maximum(height, width),
        np.where(frame["aspect_policy"] == "crop", np.minimum(height, width), -1),
    )
    for corner, axis in STORED.items():
        extent = np.where(square > 0, square, side[axis])  # the square's side; stretch keeps each axis
        size = np.round(frame[f"resize_scale_{axis}"] * extent)
        stored = (frame[corner] - frame[f"resize_offset_{axis}"]) * frame[f"resize_scale_{axis}"]
        frame[f"stored_{corner}"] = np.clip(stored, 0.0, size)
    return frame[columns].reset_index(drop=True)


def match_key(source_paths: pd.Series, match_on: str) -> pd.Series:
    """The key a label row of kind ``match_on`` is compared with, for each image (vectorized:
    this runs over every image of a 100k-image dataset)."""
    paths = source_paths.astype("string")
    if match_on == "path":
        return paths
    if match_on == "tail3":
        return paths.str.extract(r"((?:[^/]*/){0,2}[^/]*)$", expand=False)
    names = paths.str.rsplit("/", n=1).str[-1]
    if match_on == "name":
        return names
    if match_on == "stem":
        return names.str.replace(r"(?<=.)\.[^.]*$", "", regex=True)
    raise ValueError(f"unknown match kind {match_on!r}")


def assign_classes(labels: pd.DataFrame, classes: Sequence[str] = DEFAULT_CLASSES) -> pd.Series:
    """class_id for the single-label subset: No Finding alone, or exactly one pathology that is in
    ``classes``; rows with unresolved uncertain labels never qualify. Others get <NA>."""
    unknown = [c for c in classes if c not in LABEL_COLUMNS]
    if unknown:
        raise ValueError(f"classes {unknown} are not label columns {list(LABEL_COLUMNS)}")
    pathologies = labels[list(PATHOLOGIES)].astype("float32").to_numpy()
    positive = pathologies == 1.0
    count = positive.sum(axis=1)
    certain = labels["n_uncertain"].to_numpy() == 0
    only = np.asarray(PATHOLOGIES, dtype=object)[positive.argmax(axis=1)]
    name = np.where(
        (labels[NO_FINDING].to_numpy() == 1.0) & (count == 0), NO_FINDING, np.where(count == 1, only, np.asarray(None))
    )
    name = np.where(certain, name, np.asarray(None))
    class_id = pd.Series(name, index=labels.index).map({c: i for i, c in enumerate(classes)})
    return class_id.astype("Int64").rename("class_id")


@dataclass(frozen=True)
class ClassVocabulary:
    """The classes of the class-conditional models and where they came from: ``nih`` (findings
    mapped onto the NIH label columns), ``dataset`` (the dataset's own names, as found) or
    ``configured`` (the dataset's names, listed by the user)."""

    classes: tuple[str, ...]
    origin: str

    @property
    def from_findings(self) -> bool:
        return self.origin == "nih"

    def to_json(self) -> dict:
        return {"classes": list(self.classes), "origin": self.origin}


def class_vocabulary(labels: pd.DataFrame, configured: Sequence[str] = ()) -> ClassVocabulary:
    """What decides the classes: a configured list (of label columns, or of the dataset's names),
    else the dataset's own class names where its sources give any (sorted), else the NIH six."""
    if configured:
        if all(c in LABEL_COLUMNS for c in configured):
            return ClassVocabulary(tuple(configured), "nih")
        return ClassVocabulary(tuple(configured), "configured")
    names = labels["dataset_class"].dropna().astype(str).unique() if "dataset_class" in labels else []
    if len(names):
        return ClassVocabulary(tuple(sorted(names)), "dataset")
    return ClassVocabulary(DEFAULT_CLASSES, "nih")


def unmatched_classes(labels: pd.DataFrame, vocabulary: ClassVocabulary) -> dict[str, int]:
    """Per value, the images whose own class is not among the classes (never dropped silently:
    they stay in the metadata without a class_id, for the restoration models)."""
    if vocabulary.from_findings:
        return {}
    values = labels["dataset_class"].dropna().astype(str)
    counts = values[~values.isin(vocabulary.classes)].value_counts()
    return {str(k): int(v) for k, v in counts.items()}


@dataclass
class MetadataResult:
    metadata: pd.DataFrame  # one row per usable image
    excluded: pd.DataFrame  # image_id, source_path, reason
    unmatched_label_rows: pd.DataFrame  # label rows whose image is not among the ingested images
    conflicts: int  # images to which two sources give different labels (the higher-priority one wins)
    vocabulary: ClassVocabulary = ClassVocabulary(DEFAULT_CLASSES, "nih")
    unmatched_classes: dict[str, int] = field(default_factory=dict)  # own class values outside the classes

    @property
    def classes(self) -> tuple[str, ...]:
        return self.vocabulary.classes


def join_to_images(images: pd.DataFrame, rows: pd.DataFrame) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    """Rows keyed like label rows (``match_on``, ``match_key``) joined to the images whose source
    path gives that key, per kind of key; and, per kind, the rows that match no image."""
    joined, unmatched = [], []
    for match_on, group in rows.groupby("match_on", sort=False):
        keyed = images.assign(match_key=match_key(images["source_path"], match_on).to_numpy())
        joined.append(keyed.merge(group, on="match_key", how="inner"))
        unmatched.append(group[~group["match_key"].isin(set(keyed["match_key"]))])
    return joined, unmatched


def build_metadata(manifest: pd.DataFrame, labels: pd.DataFrame, options: LabelOptions) -> MetadataResult:
    candidates, unmatched = join_to_images(manifest[["image_id", "source_path"]], labels)
    candidates = [frame.drop(columns="source_path") for frame in candidates]
    matched = (
        pd.concat(candidates, ignore_index=True)
        if candidates
        else conform(pd.DataFrame()).assign(image_id=pd.Series(dtype="string"))
    )
    rank = {kind.value: i for i, kind in enumerate(SOURCE_PRIORITY)}
    matched["_rank"] = matched["label_source"].map(rank)
    matched = matched.sort_values(["image_id", "_rank"], kind="stable")
    # A conflict is two sources giving the same image different labels; a report source that agrees
    # with the label file (OpenI beside NIH) is not one. DICOM headers carry no findings.
    findings = matched[matched["label_source"] != SourceKind.DICOM.value]
    label_sets = pd.Series(
        findings[list(LABEL_COLUMNS)].astype("float32").fillna(-1.0).to_numpy().tolist(), index=findings.index
    ).map(tuple)
    disagreeing = label_sets.groupby(findings["image_id"]).nunique()
    headers = matched[matched["label_source"] == SourceKind.DICOM.value].drop_duplicates("image_id")
    report_text = matched.groupby("image_id", sort=False)[list(REPORT_TEXT)].first()  # first non-null
    matched = matched.drop_duplicates("image_id").drop(columns=["_rank", "match_key", "match_on"])
    for column in REPORT_TEXT:
        matched[column] = matched["image_id"].map(report_text[column])
    if len(headers):
        from_header = headers.set_index("image_id")[list(DEMOGRAPHICS)]
        for column in DEMOGRAPHICS:
            matched[column] = matched[column].fillna(matched["image_id"].map(from_header[column]))

    images = manifest[IMAGE_COLUMNS].merge(matched, on="image_id", how="left", indicator=True)
    no_label = images["_merge"] == "left_only"
    view = images["view"].astype("string").str.upper()
    lateral = view.isin(LATERAL_VIEWS).fillna(False).astype(bool) & options.frontal_only
    other_view = (~view.isna() & ~view.isin(FRONTAL_VIEWS) & ~view.isin(LATERAL_VIEWS)).fillna(False).astype(bool)
    other_view &= options.frontal_only & ~no_label
    excluded = pd.concat(
        [
            images.loc[no_label, ["image_id", "source_path"]].assign(reason="no_label_row"),
            images.loc[lateral & ~no_label, ["image_id", "source_path"]].assign(reason="lateral_view"),
            images.loc[other_view, ["image_id", "source_path"]].assign(reason="not_frontal_view: " + view[other_view]),
        ],
        ignore_index=True,
    )

    usable = images[~no_label & ~lateral & ~other_view].drop(columns="_merge").reset_index(drop=True)
    usable["patient_key"] = usable["label_source"].astype(str) + ":" + usable["patient_id"].astype(str)
    missing_patient = usable["patient_id"].isna()
    excluded = pd.concat(
        [excluded, usable.loc[missing_patient, ["image_id", "source_path"]].assign(reason="no_patient_id")],
        ignore_index=True,
    )
    usable = usable[~missing_patient].reset_index(drop=True)
    vocabulary = class_vocabulary(usable, options.classes)
    if vocabulary.from_findings:
        usable["class_id"] = assign_classes(usable, vocabulary.classes)
    else:
        ids = {name: i for i, name in enumerate(vocabulary.classes)}
        usable["class_id"] = usable["dataset_class"].map(ids).astype("Int64")
    class_names = pd.Series(vocabulary.classes, dtype="string")
    usable["class_name"] = class_names.reindex(usable["class_id"].to_numpy()).to_numpy()
    usable["split"] = assign_splits(usable["patient_key"], options.split_fractions, options.split_salt).astype("string")
    if options.official_split:
        usable["split"] = usable["official_split"].fillna(usable["split"]).astype("string")
    usable = usable.sort_values("source_path", kind="stable").reset_index(drop=True)
    usable = usable.astype({"image_id": "string", "patient_key": "string"})

    unmatched_rows = pd.concat(unmatched, ignore_index=True) if unmatched else empty_label_table()
    unmatched_rows = unmatched_rows[unmatched_rows["label_source"] != SourceKind.DICOM.value]
    return MetadataResult(
        metadata=usable,
        excluded=excluded.astype({"reason": "string"}),
        unmatched_label_rows=unmatched_rows.reset_index(drop=True),
        conflicts=int((disagreeing > 1).sum()),
        vocabulary=vocabulary,
        unmatched_classes=unmatched_classes(usable, vocabulary),
    )


def split_balance(metadata: pd.DataFrame, classes: Sequence[str] = DEFAULT_CLASSES) -> pd.DataFrame:
    """Per split: images, patients, positives per label and images per class."""
    rows = {}
    for split in SPLITS:
        part = metadata[metadata["split"] == split]
        row = {"images": len(part), "patients": part["patient_key"].nunique()}
        row.update({label: int((part[label] == 1.0).sum()) for label in LABEL_COLUMNS})
        row.update({f"class:{name}": int((part["class_id"] == i).sum()) for i, name in enumerate(classes)})
        rows[split] = row
    return pd.DataFrame(rows)


def content_hash(metadata: pd.DataFrame) -> str:
    """Which images, in which split, with which labels: changes exactly when downstream should rerun."""
    columns = ["image_id", "split", "class_id", *LABEL_COLUMNS]
    hashed = pd.util.hash_pandas_object(metadata[columns].astype(str), index=False)
    return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()[:16]


def leakage(metadata: pd.DataFrame) -> dict[str, list[str]]:
    """Patients and pixel hashes found in more than one split (both must be empty)."""
    out = {}
    for column in ("patient_key", "pixel_hash"):
        splits_per_value = metadata.groupby(column)["split"].nunique()
        out[column] = sorted(splits_per_value[splits_per_value > 1].index.astype(str))
    return out


def write_outputs(
    result: MetadataResult, *, metadata_path: Path, splits_dir: Path, labels_dir: Path
) -> dict[str, Path]:
    """Atomically write metadata.parquet, splits/{train,val,test}.csv and the accounting tables,
    under the labels folder's writer lock so two runs never interleave their splits."""
    written = {"metadata": Path(metadata_path)}
    with locks.exclusive(labels_dir, "metadata and splits"):
        atomic.write_parquet(metadata_path, result.metadata)
        for split in SPLITS:
            path = Path(splits_dir) / f"{split}.csv"
            atomic.write_csv(path, result.metadata[result.metadata["split"] == split])
            written[split] = path
        for name, frame in (("excluded", result.excluded), ("unmatched_label_rows", result.unmatched_label_rows)):
            path = Path(labels_dir) / f"{name}.parquet"
            atomic.write_parquet(path, frame)
            written[name] = path
        classes = Path(labels_dir) / CLASSES_FILE
        atomic.write_text(classes, json.dumps({**result.vocabulary.to_json(), "unmatched": result.unmatched_classes}))
        written["classes"] = classes
    return written


CLASSES_FILE = "classes.json"


def read_classes(labels_dir: Path) -> ClassVocabulary:
    """The classes the labels stage decided (``labels/classes.json``), for every model that
    conditions on or predicts them."""
    path = Path(labels_dir) / CLASSES_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: materialize image_metadata first")
    found = json.loads(path.read_text())
    return ClassVocabulary(tuple(found["classes"]), found["origin"])
