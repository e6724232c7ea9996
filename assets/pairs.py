"""Pairs stage: degraded copies of every usable image, for restoration models."""

import dagster as dg
import numpy as np
import pandas as pd

from cxr_pipeline.data import degrade
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.pairs import build_low_dose_pairs, build_sr_pairs, low_dose_pair_dir, sr_pair_dir
from cxr_pipeline.reports.grid import image_grid, markdown_image, png_bytes
from resources import CxrSettings

from .labels import image_metadata
from .pools import WORK_FOLDER_WRITER

PREVIEW = 6


class PairsConfig(dg.Config):
    sr_scales: list[int] = [2, 4]
    degradation_mix: bool = True  # random blur and mild noise before downsampling
    low_dose_photons: list[float] = [10000.0, 3000.0, 1000.0]  # I0 per dose level (lower = noisier)
    electronic_noise: float = 5.0  # sigma_e, in photons
    seed: int = 0


def _clean_images(settings: CxrSettings) -> tuple[pd.DataFrame, ImageStore]:
    paths = settings.paths()
    return pd.read_parquet(paths.metadata), ImageStore(paths.image_store)


@dg.asset(group_name="pairs", deps=[image_metadata], kinds={"numpy"}, **WORK_FOLDER_WRITER)
def sr_pairs(context: dg.AssetExecutionContext, config: PairsConfig, settings: CxrSettings) -> dg.MaterializeResult:
    """Low-resolution copies (antialiased, with an optional blur/noise mix) at each scale."""
    metadata, store = _clean_images(settings)
    mix = degrade.DegradationMix() if config.degradation_mix else None
    indexes = build_sr_pairs(metadata, store, settings.paths().pairs, config.sr_scales, mix, config.seed)
    sample = metadata.head(PREVIEW)
    hr = store.read_many(list(sample["shard"]), list(sample["shard_index"]))
    columns = [hr]
    for scale, index in indexes.items():
        low = ImageStore(sr_pair_dir(settings.paths().pairs, scale)).read_many(
            list(index["shard"].head(PREVIEW)), list(index["shard_index"].head(PREVIEW))
        )
        columns.append(np.stack([np.kron(image, np.ones((scale, scale), dtype=np.float32)) for image in low]))
    grid = image_grid(np.concatenate(columns), columns=PREVIEW)
    context.log.info(f"built SR pairs at scales {sorted(indexes)} for {len(metadata)} images")
    return dg.MaterializeResult(
        metadata={
            "images": len(metadata),
            "scales": dg.MetadataValue.json(sorted(indexes)),
            "lr_size": dg.MetadataValue.json({f"x{s}": int(hr.shape[-1]) // s for s in indexes}),
            "path": dg.MetadataValue.path(str(settings.paths().pairs)),
            "preview": dg.MetadataValue.md(
                "rows: HR, then LR per scale (nearest-neighbour enlarged)\n\n"
                + markdown_image(png_bytes(grid, upscale=2), "SR pairs")
            ),
        }
    )


@dg.asset(group_name="pairs", deps=[image_metadata], kinds={"numpy"}, **WORK_FOLDER_WRITER)
def low_dose_pairs(
    context: dg.AssetExecutionContext, config: PairsConfig, settings: CxrSettings
) -> dg.MaterializeResult:
    """Simulated low-dose acquisitions: Poisson quantum noise plus Gaussian electronic noise on
    the transmitted photon counts, at each dose level (an approximation on post-processed images)."""
    metadata, store = _clean_images(settings)
    indexes = build_low_dose_pairs(
        metadata, store, settings.paths().pairs, config.low_dose_photons, config.electronic_noise, config.seed
    )
    sample = metadata.head(PREVIEW)
    rows = [store.read_many(list(sample["shard"]), list(sample["shard_index"]))]
    noise = {}
    for photons, index in indexes.items():
        noisy = ImageStore(low_dose_pair_dir(settings.paths().pairs, photons)).read_many(
            list(index["shard"].head(PREVIEW)), list(index["shard_index"].head(PREVIEW))
        )
        rows.append(noisy)
        noise[f"I0={photons:g}"] = round(float(np.sqrt(((noisy - rows[0]) ** 2).mean())), 4)
    grid = image_grid(np.concatenate(rows), columns=PREVIEW)
    context.log.info(f"built low-dose pairs at I0 {sorted(indexes)}; RMS noise {noise}")
    return dg.MaterializeResult(
        metadata={
            "images": len(metadata),
            "photons": dg.MetadataValue.json(sorted(indexes)),
            "rms_noise_on_preview": dg.MetadataValue.json(noise),
            "path": dg.MetadataValue.path(str(settings.paths().pairs)),
            "preview": dg.MetadataValue.md(
                "rows: normal dose, then each dose level\n\n"
                + markdown_image(png_bytes(grid, upscale=2), "low-dose pairs")
            ),
        }
    )
