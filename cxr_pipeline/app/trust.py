"""What a model can be trusted with: its training data, how far an input (an upload, a report)
lies from that data, which zooms were evaluated, and what resizing an upload took."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .. import provenance
from ..kinds.base import native_size
from ..model_source import registry_folder
from ..models.input_distribution import InputDistribution, Novelty, ReportDistribution, ReportNovelty, novelty
from ..models.pipelines import CxrPipeline
from ..models.vae import encode_mean, load_vae
from .registry import APP_MODELS, AppContext, LocatedModel, ModelUnavailable, locate

# --- What a model can be trusted with -------------------------------------------------------------------------


def training_data(folder: Path) -> str:
    """The one-line provenance of a model folder (``cxr_pipeline.provenance``)."""
    return provenance.summary(provenance.read(folder))


@lru_cache(maxsize=4)
def _autoencoder(folder: str):
    return load_vae(Path(folder), "cpu")


def input_novelty(
    pipeline: CxrPipeline, located: LocatedModel, image: np.ndarray, context: AppContext
) -> Novelty | None:
    """How far ``image`` (at the model's size) lies from the model's training images, in the latent
    space of the autoencoder the reference was fitted with (``models/input_distribution.py``);
    None when the model folder has no reference (trained before references existed)."""
    reference = InputDistribution.load(located.folder)
    if reference is None:
        return None
    vae = pipeline.model.vae
    if vae is None:  # a pixel-space model: the autoencoder its reference names
        recorded = reference.vae or {}
        folder = Path(recorded.get("model_dir", ""))
        if not (folder / "config.json").exists():
            folder = registry_folder(
                recorded["registered_model"], recorded["version"], context.paths.registry_cache, context.tracking_uri
            )
        vae = _autoencoder(str(folder))
    latents = encode_mean(vae, torch.from_numpy(np.ascontiguousarray(image)).float()[None, None])
    return novelty(reference, latents)[0]


ZOOMS = (1.0, 2.0, 3.0, 4.0)


def zoom_offered(context: AppContext, alias: str, side: int) -> tuple[list[float], str | None]:
    """The zooms of a ``side``-px generated image the app offers, and why the others are not: only
    output sizes the arbitrary-scale model was evaluated at (up to its training images' side).
    Above it, at x4 on the demo, it paints the texture of its native pixel grid at output-pixel
    period (a diagonal hatch at 2.7 px at x1, x2, x3 and x4 alike: docs/recipes.md#the-apps-zoom)
    instead of enlarging the anatomy."""
    try:
        located = locate(APP_MODELS["arbitrary_sr"], context, alias)
    except ModelUnavailable:
        return [1.0], "Zoom needs the arbitrary-scale model, which is not available."
    measured = native_size(located.folder)
    offered = [z for z in ZOOMS if side * z <= measured]
    if len(offered) == len(ZOOMS):
        return offered, None
    return offered, (
        f"Zoom beyond {measured} px is not offered: {located.name} v{located.version} was evaluated only "
        f"up to its training images' {measured} px, and above that it draws a periodic texture instead "
        "of enlarging the anatomy."
    )


def report_novelty(folder: Path, report: str) -> ReportNovelty | None:
    """The report's words against the text model's training reports; None when the model folder
    has no record of them (trained before records existed) or the report is empty."""
    vocabulary = ReportDistribution.load(folder)
    return vocabulary.check(report) if vocabulary is not None and report.strip() else None


def resize_note(fields: dict, size: int) -> str | None:
    """What the reader did to the upload's size, for people, when it changed it."""
    height, width = fields.get("original_height"), fields.get("original_width")
    if not height or not width or (height, width) == (size, size):
        return None
    factor = size / max(height, width)
    return (
        f"Resized: the upload is {width}x{height} px; the models work at {size}x{size} px (the profile's image size), "
        f"so it was scaled by {factor:.3g} ({1 / factor:.1f}x smaller){', padded to a square' if height != width else ''}. "
        "Every figure below is at the model's size; detail finer than that is not seen by the model."
    )
