"""What the interactive app does, without Streamlit: find and load the champion models through
MLflow, generate, restore uploads beside their classical baselines, browse the work folder and
the registry. ``main.py`` only lays these out, so each part is testable on its own.

Every figure shown beside an image says which image it describes: model output (raw) or the
enhanced display copy (``cxr_pipeline.reports.enhancement``); restoration metrics (PSNR/SSIM
against the original) are always computed on raw outputs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.degrade import DetectorCounts, bicubic_to, resize, simulate_low_dose
from ..data.image_store import ImageStore, from_stored
from ..data.ingest import IngestOptions, ingest_file, read_rejected
from ..evaluation.denoising import nlm_denoise, vst_nlm_denoise
from ..metrics.appearance import appearance
from ..metrics.restoration import per_image_scores, sample_spread
from ..models.diffusion import sampling_progress
from ..models.pipelines import ArbitraryScaleSuperResolution, CxrPipeline, LowDoseDenoiser
from .registry import AppContext

Progress = Callable[[int, int], None]  # (steps done, steps in all)


# --- Generation ---------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(
    pipeline: CxrPipeline,
    conditions: Sequence,
    *,
    guidance: float,
    steps: int,
    seed: int,
    progress: Progress | None = None,
) -> np.ndarray:
    """(N, S, S) raw images in [0, 1]: one per condition (a report for the text model, a class id
    for the class model), the i-th from seed ``seed + i`` (so image i is reproducible alone)."""
    with sampling_progress(_over(progress, len(conditions))):
        return np.stack(
            [
                pipeline([condition], guidance_scale=guidance, num_inference_steps=steps, generator=seed + i)[0, 0]
                .float()
                .cpu()
                .numpy()
                for i, condition in enumerate(conditions)
            ]
        )


@torch.no_grad()
def upscale(
    pipeline: ArbitraryScaleSuperResolution,
    images: np.ndarray,
    scale: float,
    *,
    steps: int = 20,
    seed: int = 0,
    progress: Progress | None = None,
) -> np.ndarray:
    """Generated images (N, S, S) brought to ``scale`` x S through the arbitrary-scale model: the
    generators' resolution is their training resolution; this is how the app offers more."""
    with sampling_progress(_over(progress, len(images))):
        return np.stack(
            [
                pipeline(
                    torch.from_numpy(np.ascontiguousarray(image)).float()[None, None],
                    scale=scale,
                    num_inference_steps=steps,
                    generator=seed + i,
                )[0, 0]
                .float()
                .cpu()
                .numpy()
                for i, image in enumerate(images)
            ]
        )


def _over(progress: Progress | None, chains: int):
    """A per-step callback counting over ``chains`` reverse-diffusion chains run one after another."""
    if progress is None:
        return None
    state = {"chain": 0}

    def step(done: int, total: int) -> None:
        progress(min(state["chain"] * total + done, chains * total), chains * total)
        if done == total:
            state["chain"] += 1

    return step


# --- Uploads and restoration --------------------------------------------------------------------------------


class UploadRejected(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


def read_upload(data: bytes, name: str, image_size: int) -> tuple[np.ndarray, dict]:
    """An uploaded file through ingestion's own reader (the same sniffing, LUT/VOI and
    MONOCHROME1 decisions, resizing, and rejection reasons): the (S, S) image in [0, 1] and
    what the reader recorded about it."""
    suffix = Path(name).suffix if Path(name).suffix.lower() in (".dcm", ".png", ".jpg", ".jpeg") else ""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        outcome = ingest_file(path, IngestOptions(image_size=image_size, workers=1))
    if not outcome.accepted:
        raise UploadRejected(outcome.reason or "rejected", outcome.message or "the file was not accepted")
    assert outcome.stored is not None, "an accepted file was read"
    return from_stored(outcome.stored), {"file kind": outcome.file_kind, **outcome.fields}


@dataclass
class Restoration:
    """One restored image beside its baseline and input, with the spread over seeds."""

    task: str
    input: np.ndarray  # what the model received (the LR or noisy image)
    baseline: np.ndarray
    baseline_name: str
    output: np.ndarray  # the first seed's sample
    spread: np.ndarray | None  # per-pixel std over seeds
    reference: np.ndarray | None  # the original, when the degradation was simulated
    scores: pd.DataFrame = field(default_factory=pd.DataFrame)  # method -> PSNR/SSIM/MAE against the reference


def _scores(reference: np.ndarray | None, methods: dict[str, np.ndarray]) -> pd.DataFrame:
    if reference is None:
        return pd.DataFrame()
    target = torch.from_numpy(reference).float()[None, None]
    rows = []
    for name, image in methods.items():
        row = per_image_scores(torch.from_numpy(image).float()[None, None], target).iloc[0].to_dict()
        rows.append({"method": name, **{k: round(float(v), 4) for k, v in row.items()}})
    return pd.DataFrame(rows)


def _over_seeds(
    restore: Callable[[int], torch.Tensor], seeds: int, progress: Progress | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The first seed's output (1, 1, H, W -> H, W) and the per-pixel spread over ``seeds`` seeds
    (``sample_spread``; None for one seed)."""
    with sampling_progress(_over(progress, seeds)):
        samples = torch.stack([restore(seed).float().cpu() for seed in range(seeds)])
    spread = sample_spread(samples)[1][0] if seeds > 1 else None
    return samples[0, 0, 0].numpy(), spread


@torch.no_grad()
def super_resolve_upload(
    pipeline: ArbitraryScaleSuperResolution,
    image: np.ndarray,
    scale: float,
    *,
    simulate: bool,
    seeds: int = 3,
    steps: int = 20,
    progress: Progress | None = None,
) -> Restoration:
    """``simulate``: shrink the image by ``scale`` (antialiased, as the pairs are made), restore it
    to its size and score both against the original; otherwise super-resolve it as it is."""
    if simulate:
        low = resize(image, (max(1, round(image.shape[0] / scale)), max(1, round(image.shape[1] / scale))))
        target, reference = image.shape, image
    else:
        low, reference = image, None
        target = (round(image.shape[0] * scale), round(image.shape[1] * scale))
    bicubic = bicubic_to(low, target)
    batch = torch.from_numpy(np.ascontiguousarray(low)).float()[None, None]
    output, spread = _over_seeds(
        lambda seed: pipeline(batch, size=target, num_inference_steps=steps, generator=seed), seeds, progress
    )
    return Restoration(
        "super-resolution",
        low,
        bicubic,
        "bicubic",
        output,
        spread,
        reference,
        _scores(reference, {"bicubic": bicubic, "diffusion": output}),
    )


@torch.no_grad()
def denoise_upload(
    pipeline: LowDoseDenoiser,
    image: np.ndarray,
    dose: float,
    *,
    simulate: bool,
    seeds: int = 3,
    steps: int = 20,
    nlm_factor: float = 1.0,
    vst_factor: float = 0.8,
    progress: Progress | None = None,
) -> Restoration:
    """``simulate``: a low-dose acquisition of the image at ``dose`` photons (the pairs' physics),
    restored and scored against the original; otherwise the image is taken as the low-dose one.
    The classical baseline is the strongest one the noise allows: NLM inside the variance-
    stabilising transform when the noise is the simulated detector's, NLM on the image otherwise."""
    noisy = simulate_low_dose(image, dose, np.random.default_rng(0)) if simulate else image.astype(np.float32)
    batch = torch.from_numpy(np.ascontiguousarray(noisy)).float()[None, None]
    if simulate:
        baseline_name = "VST + non-local means"
        baseline = vst_nlm_denoise(batch, [DetectorCounts(dose)], vst_factor)[0, 0].numpy()
    else:
        baseline_name, baseline = "non-local means", nlm_denoise(batch, nlm_factor)[0, 0].numpy()
    output, spread = _over_seeds(
        lambda seed: pipeline(batch, dose=dose, num_inference_steps=steps, generator=seed), seeds, progress
    )
    reference = image if simulate else None
    return Restoration(
        "denoising",
        noisy,
        baseline,
        baseline_name,
        output,
        spread,
        reference,
        _scores(reference, {"low-dose input": noisy, baseline_name: baseline, "diffusion": output}),
    )


# --- The work folder -----------------------------------------------------------------------


def metadata(context: AppContext) -> pd.DataFrame:
    path = context.paths.metadata
    if not path.exists():
        raise FileNotFoundError(f"no {path}: materialize `image_metadata` (job `ingestion`) first")
    return pd.read_parquet(path)


def rejected(context: AppContext) -> pd.DataFrame:
    path = context.paths.ingestion / "rejected.parquet"
    return read_rejected(path) if path.exists() else pd.DataFrame(columns=["source_path", "reason", "message"])


def filter_images(
    rows: pd.DataFrame,
    *,
    splits: Sequence[str] = (),
    classes: Sequence[str] = (),
    finding: str | None = None,
    text: str = "",
) -> pd.DataFrame:
    """Rows in any of ``splits`` and ``classes`` (empty: all), positive for ``finding``, whose
    report contains ``text`` (case-insensitive)."""
    keep = pd.Series(True, index=rows.index)
    if splits:
        keep &= rows["split"].isin(list(splits))
    if classes:
        keep &= rows["class_name"].isin(list(classes))
    if finding:
        keep &= rows[finding] == 1.0
    if text:
        report = rows["findings_text"].fillna("") + " " + rows["impression_text"].fillna("")
        keep &= report.str.contains(text, case=False, regex=False)
    return rows[keep]


def stored_image(context: AppContext, row: pd.Series) -> np.ndarray:
    return ImageStore(context.paths.image_store).read_many([row["shard"]], [int(row["shard_index"])])[0]


def image_metrics(image: np.ndarray) -> dict[str, float]:
    return {k: round(v, 4) for k, v in appearance(image).items()}
