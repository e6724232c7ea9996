"""Labels stage: label sources -> label table -> metadata.parquet and patient-level splits."""

import json
from collections import Counter

import dagster as dg
import pandas as pd

from cxr_pipeline.data import atomic, locks
from cxr_pipeline.data import ingest as ingestion
from cxr_pipeline.data.labels import metadata as labels_lib
from cxr_pipeline.data.labels.sources import UncertaintyPolicy
from resources import CxrSettings

from .ingestion import ingested_images
from .pools import WORK_FOLDER_WRITER


class LabelConfig(dg.Config):
    # empty: every source found; or any of nih, chexpert, mimic_cxr, padchest, vindr_cxr, rsna_pneumonia,
    # siim_pneumothorax, indiana_csv, indiana_xml, filename, dicom
    sources: list[str] = []
    chexpert_uncertainty: str = UncertaintyPolicy.U_IGNORE.value  # u_ones | u_zeros | u_ignore
    filename_pattern: str | None = None  # regex with (?P<patient>...) and optionally (?P<label>...)
    # empty: the dataset's own classes (class folders, a file-name label), else the NIH six;
    # or a list of NIH label columns, or of the dataset's own class names
    classes: list[str] = []
    frontal_only: bool = True
    split_fractions: list[float] = [0.8, 0.1, 0.1]
    split_salt: str = "cxr-v1"
    official_split: bool = False  # a dataset's own split where it ships one (MIMIC-CXR); else the hash split

    def options(self) -> labels_lib.LabelOptions:
        return labels_lib.LabelOptions(
            sources=tuple(self.sources),
            uncertainty=UncertaintyPolicy(self.chexpert_uncertainty),
            filename_pattern=self.filename_pattern,
            classes=tuple(self.classes),
            frontal_only=self.frontal_only,
            split_fractions=tuple(self.split_fractions),
            split_salt=self.split_salt,
            official_split=self.official_split,
        )


@dg.asset(group_name="labels", deps=[ingested_images], kinds={"parquet"}, **WORK_FOLDER_WRITER)
def label_table(context: dg.AssetExecutionContext, config: LabelConfig, settings: CxrSettings) -> dg.MaterializeResult:
    """Every label source found among the data folder's text files (NIH, CheXpert, MIMIC-CXR,
    PadChest, VinDr-CXR, RSNA Pneumonia, SIIM-ACR, Indiana/OpenI),
    plus file-name patterns and DICOM headers, in one table keyed to the images."""
    paths = settings.paths()
    manifest = ingestion.read_manifest(paths.manifest)
    rejected = ingestion.read_rejected(paths.rejected)
    text_files = rejected.loc[rejected["reason"] == "text_file", "source_path"]
    sources = labels_lib.load_label_sources(settings.raw_data_dir(), text_files, manifest, config.options())
    table = labels_lib.combine(sources)
    boxes = labels_lib.combine_boxes(sources)
    with locks.exclusive(paths.labels, "label table", on_wait=context.log.warning):
        atomic.write_parquet(paths.label_table, table)
        atomic.write_parquet(paths.box_table, boxes)
    unknown: Counter = Counter()
    for source in sources:
        unknown.update(source.unknown_tokens)
    problems = [problem for source in sources for problem in source.problems]
    for problem in problems[:20]:
        context.log.warning(problem)
    for token, count in unknown.most_common(20):
        context.log.warning(f"unknown finding token {token!r} in {count} rows (not mapped to a label)")
    per_source = pd.DataFrame(
        [
            {
                "source": s.kind.value,
                "rows": len(s.table),
                "boxes": 0 if s.boxes is None else len(s.boxes),
                "files": len(s.files),
            }
            for s in sources
        ]
    )
    return dg.MaterializeResult(
        metadata={
            "rows": len(table),
            "boxes": len(boxes),
            "sources": dg.MetadataValue.md(per_source.to_markdown(index=False) if len(per_source) else "none found"),
            "unknown_tokens": dg.MetadataValue.json(dict(unknown.most_common(50))),
            "problems": len(problems),
            "label_table": dg.MetadataValue.path(str(paths.label_table)),
        }
    )


@dg.asset(group_name="labels", deps=[label_table, ingested_images], kinds={"parquet", "csv"}, **WORK_FOLDER_WRITER)
def image_metadata(
    context: dg.AssetExecutionContext, config: LabelConfig, settings: CxrSettings
) -> dg.MaterializeResult:
    """``metadata.parquet`` (one row per usable image) and ``splits/{train,val,test}.csv``:
    patient-level splits by a stable hash, the single-label ``class_id``, and the accounting of
    every image and label row that did not make it."""
    paths = settings.paths()
    manifest = ingestion.read_manifest(paths.manifest)
    labels = pd.read_parquet(paths.label_table)
    result = labels_lib.build_metadata(manifest, labels, config.options())
    labels_lib.write_outputs(result, metadata_path=paths.metadata, splits_dir=paths.splits, labels_dir=paths.labels)
    box_table = pd.read_parquet(paths.box_table) if paths.box_table.exists() else labels_lib.combine_boxes([])
    boxes = labels_lib.map_boxes(manifest, box_table)
    with locks.exclusive(paths.labels, "bounding boxes", on_wait=context.log.warning):
        atomic.write_parquet(paths.boxes, boxes)
    metadata = result.metadata
    balance = labels_lib.split_balance(metadata, result.classes)
    content_hash = labels_lib.content_hash(metadata)
    context.log.info(f"{len(metadata)} usable images; split sizes {balance.loc['images'].to_dict()}")
    return dg.MaterializeResult(
        metadata={
            "images": len(metadata),
            "patients": int(metadata["patient_key"].nunique()),
            **{f"{split}_images": int(balance.loc["images", split]) for split in balance.columns},
            "class_conditional_images": int(metadata["class_id"].notna().sum()),
            "excluded_images": len(result.excluded),
            "excluded_by_reason": dg.MetadataValue.json(result.excluded["reason"].value_counts().to_dict()),
            "label_rows_without_image": len(result.unmatched_label_rows),
            "boxes": len(boxes),
            "boxes_by_finding": dg.MetadataValue.json(
                {str(k): int(v) for k, v in boxes["finding"].value_counts().head(20).items()}
            ),
            "images_with_conflicting_sources": result.conflicts,
            "classes": dg.MetadataValue.json(list(result.classes)),
            "class_vocabulary": result.vocabulary.origin,
            "images_per_class": dg.MetadataValue.json(
                {name: int((metadata["class_id"] == i).sum()) for i, name in enumerate(result.classes)}
            ),
            "own_classes_outside_the_classes": dg.MetadataValue.json(result.unmatched_classes),
            "label_balance": dg.MetadataValue.md(balance.to_markdown()),
            "content_hash": content_hash,
            "metadata": dg.MetadataValue.path(str(paths.metadata)),
            "splits": dg.MetadataValue.path(str(paths.splits)),
        },
        data_version=dg.DataVersion(content_hash),
    )


def _metadata(settings: CxrSettings) -> pd.DataFrame:
    return pd.read_parquet(settings.paths().metadata)


@dg.asset_check(asset=image_metadata, blocking=True)
def no_leakage_between_splits(settings: CxrSettings) -> dg.AssetCheckResult:
    """No patient and no pixel hash in more than one split: the one bug that silently inflates
    every test metric."""
    leaks = labels_lib.leakage(_metadata(settings))
    return dg.AssetCheckResult(
        passed=not any(leaks.values()),
        metadata={
            "patients_in_several_splits": len(leaks["patient_key"]),
            "pixel_hashes_in_several_splits": len(leaks["pixel_hash"]),
            "examples": dg.MetadataValue.json({k: v[:10] for k, v in leaks.items()}),
        },
    )


@dg.asset_check(asset=image_metadata, blocking=True)
def every_split_non_empty(settings: CxrSettings) -> dg.AssetCheckResult:
    counts = _metadata(settings)["split"].value_counts()
    sizes = {split: int(counts.get(split, 0)) for split in ("train", "val", "test")}
    return dg.AssetCheckResult(passed=all(sizes.values()), metadata=sizes)


@dg.asset_check(asset=image_metadata)
def every_class_label_has_a_class(settings: CxrSettings) -> dg.AssetCheckResult:
    """Images whose own class (folder, file-name label) is not among the configured classes keep
    no class_id: the class models do not see them. Warns, per value, so it is never silent."""
    found = json.loads((settings.paths().labels / labels_lib.CLASSES_FILE).read_text())
    unmatched = found.get("unmatched", {})
    return dg.AssetCheckResult(
        passed=not unmatched,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "classes": dg.MetadataValue.json(found["classes"]),
            "class_vocabulary": found["origin"],
            "images_per_unmatched_value": dg.MetadataValue.json(unmatched),
        },
    )


@dg.asset_check(asset=image_metadata)
def label_coverage(settings: CxrSettings) -> dg.AssetCheckResult:
    """Images without a label row are excluded (warns); label rows without an image are normal for
    partial downloads and only reported. Both are listed under CXR_HOME/labels/."""
    paths = settings.paths()
    excluded = pd.read_parquet(paths.labels / "excluded.parquet")
    unmatched = pd.read_parquet(paths.labels / "unmatched_label_rows.parquet")
    no_label = excluded[excluded["reason"] == "no_label_row"]
    return dg.AssetCheckResult(
        passed=len(no_label) == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "images_without_label_row": len(no_label),
            "label_rows_without_image": len(unmatched),
            "examples_images": dg.MetadataValue.json(no_label["source_path"].head(20).tolist()),
            "examples_label_rows": dg.MetadataValue.json(unmatched["match_key"].head(20).tolist()),
        },
    )
