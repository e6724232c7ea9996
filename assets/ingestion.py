"""Ingestion stage: raw files -> image store + manifest + rejected list."""

from typing import Any

import dagster as dg
import pandas as pd

from cxr_pipeline.data import atomic
from cxr_pipeline.data import ingest as ingestion
from cxr_pipeline.data.demo.ct_slices import CtDemoSpec, generate_ct_demo
from cxr_pipeline.data.demo.dataset import DemoSpec, generate_demo_dataset
from cxr_pipeline.data.dicom import DEFAULT_CT_WINDOW
from cxr_pipeline.data.geometry import AspectPolicy
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.parallel import default_workers
from cxr_pipeline.provenance import record_source
from cxr_pipeline.reports.grid import image_grid, markdown_image, png_bytes
from resources import CxrSettings

from .pools import WORK_FOLDER_WRITER

PREVIEW_COUNT = 32


@dg.asset(group_name="ingestion", kinds={"dicom", "png"})
def raw_images(context: dg.AssetExecutionContext, settings: CxrSettings) -> dg.MaterializeResult:
    """The raw data folder: ``CXR_DATA_DIR``, or the built-in demo dataset generated on first use."""
    root = settings.raw_data_dir()
    metadata: dict[str, Any] = {}
    if settings.uses_demo_data() and settings.demo_kind() == "ct_slices":
        profile = settings.profile_spec()
        ct_spec = CtDemoSpec(patients=profile.demo_patients, source_size=profile.demo_source_size)
        context.log.info(
            f"CT-slice demo ({profile.name}): {ct_spec.patients} patients at {ct_spec.source_size}px in {root}"
        )
        summary = generate_ct_demo(root, ct_spec, workers=settings.workers or default_workers())
        metadata.update(
            {
                "source": "built-in CT-slice demo dataset",
                "patients": summary["patients"],
                "slices": summary["images"],
                "patients_per_class": dg.MetadataValue.json(summary["patients_per_class"]),
                "deliberately_bad_inputs": dg.MetadataValue.json(summary["bad_inputs"]),
            }
        )
    elif settings.uses_demo_data():
        profile = settings.profile_spec()
        spec = DemoSpec(patients=profile.demo_patients, source_size=profile.demo_source_size)
        workers = settings.workers or default_workers()
        context.log.info(f"demo dataset ({profile.name}): {spec.patients} patients at {spec.source_size}px in {root}")
        summary = generate_demo_dataset(root, spec, workers=workers)
        labels = pd.Series(summary["label_counts"], name="images").rename_axis("Finding Labels")
        metadata.update(
            {
                "source": "built-in demo dataset",
                "patients": summary["patients"],
                "nih_layout_images": summary["nih_images"],
                "dicom_images": summary["dicom_images"],
                "deliberately_bad_inputs": dg.MetadataValue.json(summary["bad_inputs"]),
                "label_combinations": dg.MetadataValue.md(labels.sort_values(ascending=False).head(20).to_markdown()),
            }
        )
    else:
        if not root.is_dir():
            raise dg.Failure(f"CXR_DATA_DIR={root} does not exist or is not a folder")
        metadata["source"] = "CXR_DATA_DIR"
    count, total_bytes, digest = ingestion.listing_hash(root)
    metadata.update(
        {
            "path": dg.MetadataValue.path(str(root)),
            "files": count,
            "size_mb": round(total_bytes / 2**20, 1),
            "listing_hash": digest,
        }
    )
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(digest))


class IngestionConfig(dg.Config):
    aspect_policy: str = AspectPolicy.PAD.value  # pad | crop | stretch
    allowed_modalities: list[str] = ["CR", "DX"]  # add "CT" for CT slices (windowed in HU)
    ct_window: list[float] = list(DEFAULT_CT_WINDOW)  # centre, width in HU, where a slice names none
    ct_window_from_dicom: bool = True  # a slice's own window first
    frontal_only: bool = True
    min_side: int | None = None  # None: half the profile's training size
    shard_size: int = 512


def ingest_options(config: IngestionConfig, settings: CxrSettings) -> ingestion.IngestOptions:
    return ingestion.IngestOptions(
        image_size=settings.profile_spec().image_size,
        aspect_policy=AspectPolicy(config.aspect_policy),
        allowed_modalities=tuple(config.allowed_modalities),
        ct_window=(float(config.ct_window[0]), float(config.ct_window[1])),
        ct_window_from_dicom=config.ct_window_from_dicom,
        frontal_only=config.frontal_only,
        min_side=config.min_side,
        workers=settings.workers,
        shard_size=config.shard_size,
    )


@dg.asset(group_name="ingestion", deps=[raw_images], kinds={"parquet", "numpy"}, **WORK_FOLDER_WRITER)
def ingested_images(
    context: dg.AssetExecutionContext, config: IngestionConfig, settings: CxrSettings
) -> dg.MaterializeResult:
    """Every raw file decoded into the image store and listed in the manifest, or in the rejected
    list with a reason. Incremental: only new or changed files are decoded."""
    paths = settings.paths()
    store = ImageStore(paths.image_store)
    options = ingest_options(config, settings)

    def log_progress(p: ingestion.IngestProgress) -> None:
        rate = p.done / p.elapsed_s if p.elapsed_s else 0.0
        context.log.info(
            f"ingested {p.done}/{p.total} files ({p.accepted} accepted, {p.rejected} rejected, {rate:.0f} files/s)"
        )

    record_source(paths, settings.raw_data_dir())  # what every model trained on this data says it learnt from
    summary = ingestion.ingest(
        settings.raw_data_dir(),
        manifest_path=paths.manifest,
        rejected_path=paths.rejected,
        store=store,
        options=options,
        progress=log_progress,
        on_wait=context.log.warning,
    )
    if summary.repaired:
        context.log.warning(f"{summary.repaired} manifest rows named missing shards: decoded them again")
    manifest, rejected = summary.manifest, summary.rejected
    content_hash = ingestion.manifest_hash(manifest, summary.fingerprint)

    metadata: dict[str, Any] = {
        "accepted": summary.accepted_total,
        "rejected": summary.rejected_total,
        "rejected_share": round(summary.rejected_share, 4),
        "decoded_this_run": summary.processed,
        "unchanged": summary.unchanged,
        "removed_rows": summary.removed,
        "repaired_rows": summary.repaired,
        "files_per_second": round(summary.files_per_s, 1),
        "full_rebuild": summary.full_rebuild,
        "image_size": options.image_size,
        "content_hash": content_hash,
        "manifest": dg.MetadataValue.path(str(paths.manifest)),
        "rejected_list": dg.MetadataValue.path(str(paths.rejected)),
        "image_store": dg.MetadataValue.path(str(paths.image_store)),
        "decoders": dg.MetadataValue.json(manifest["decoder"].value_counts().to_dict()),
    }
    if len(rejected):
        table = rejected[["source_path", "reason", "message"]].head(50)
        metadata["rejected_files"] = dg.MetadataValue.md(table.to_markdown(index=False))
        metadata["rejected_by_reason"] = dg.MetadataValue.json(summary.rejected_by_reason)
    if len(manifest):
        sample = manifest.head(PREVIEW_COUNT)
        grid = image_grid(store.read_many(list(sample["shard"]), list(sample["shard_index"])))
        png = png_bytes(grid, upscale=max(1, 128 // options.image_size))
        atomic.write_bytes(paths.ingestion_preview, png)
        metadata["preview"] = dg.MetadataValue.md(markdown_image(png, "first accepted images"))
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(content_hash))


class RejectedShareConfig(dg.Config):
    max_rejected_share: float = 0.2


@dg.asset_check(asset=ingested_images, blocking=True)
def rejected_share_within_limit(config: RejectedShareConfig, settings: CxrSettings) -> dg.AssetCheckResult:
    """A high rejected share means a wrong folder, a missing decoder or a broken export."""
    paths = settings.paths()
    manifest = ingestion.read_manifest(paths.manifest)
    rejected = ingestion.read_rejected(paths.rejected)
    share = ingestion.rejected_share(rejected, len(manifest))
    return dg.AssetCheckResult(
        passed=share <= config.max_rejected_share and len(manifest) > 0,
        metadata={
            "rejected_share": round(share, 4),
            "limit": config.max_rejected_share,
            "accepted": len(manifest),
            "rejected": len(rejected),
            **{f"reason_{k}": int(v) for k, v in rejected["reason"].value_counts().items()},
        },
    )


@dg.asset_check(asset=ingested_images, blocking=True)
def every_input_accounted_for(settings: CxrSettings) -> dg.AssetCheckResult:
    """Nothing lost: each raw file is in exactly one of the manifest and the rejected list, and
    every manifest row points at a shard that exists."""
    paths = settings.paths()
    manifest = ingestion.read_manifest(paths.manifest)
    rejected = ingestion.read_rejected(paths.rejected)
    problems = ingestion.accounting(settings.raw_data_dir(), manifest, rejected)
    shards = ImageStore(paths.image_store).shard_names()
    problems["missing_shards"] = sorted(set(manifest["shard"]) - shards)
    problems["duplicate_pixel_hashes"] = sorted(manifest["pixel_hash"][manifest["pixel_hash"].duplicated()])
    failed = {k: v for k, v in problems.items() if v}
    return dg.AssetCheckResult(
        passed=not failed,
        metadata={
            **{f"{k}_count": len(v) for k, v in problems.items()},
            "examples": dg.MetadataValue.json({k: v[:10] for k, v in failed.items()}),
        },
    )
