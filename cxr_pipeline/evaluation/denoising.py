"""Low-dose denoising against its classical baselines: the noisy input; non-local means on the
image as it is (the simple baseline); and the strongest classical one, non-local means inside a
variance-stabilising transform matched to how the pairs were made (generalized Anscombe on the
detector's counts, then its exact unbiased inverse). Each strength is tuned on val, per dose; the
diffusion denoiser's start is tuned on val too."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from skimage.restoration import denoise_nl_means, estimate_sigma

from ..compute import step_threads
from ..data.degrade import ELECTRONIC_NOISE, DetectorCounts
from ..metrics.restoration import per_image_scores
from ..metrics.statistics import Summary, summarize
from ..metrics.variance_stabilization import generalized_anscombe, inverse_generalized_anscombe
from ..models.pipelines import LowDoseDenoiser
from ..models.regression import ResidualCNN, restore
from ..reports.document import Figure, Table
from .restoration import (
    Method,
    RestorationEvaluation,
    comparison_grid,
    error_map,
    paired_gain,
    score_methods,
    seed_spread,
    spread_figure,
)

# --- Denoising --------------------------------------------------------------------------------------

NLM_FACTORS = (0.4, 0.6, 0.8, 1.0, 1.2, 1.5, 2.0)  # h as a multiple of the estimated noise sigma


def _nlm_one(image: np.ndarray, factor: float) -> np.ndarray:
    sigma = float(estimate_sigma(image))
    return denoise_nl_means(image, h=factor * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)


def _vst_nlm_one(image: np.ndarray, detector: DetectorCounts | None, factor: float) -> np.ndarray:
    """NLM where the noise is white: on the counts' generalized Anscombe transform (unit
    variance, so ``h`` is ``factor`` itself), back through the exact unbiased inverse. A CT
    slice's noise comes out of filtered back-projection, not off a detector pixel, and is close
    to Gaussian already: it gets NLM on the image (``detector`` None)."""
    if detector is None:
        return _nlm_one(image, factor)
    stabilized = generalized_anscombe(detector.counts(image), detector.electronic_noise)
    smoothed = denoise_nl_means(stabilized, h=factor, sigma=1.0, patch_size=5, patch_distance=6, fast_mode=True)
    return detector.image(inverse_generalized_anscombe(smoothed, detector.electronic_noise))


BM3D_FACTORS = (0.8, 1.0, 1.2, 1.4, 1.7)  # BM3D's sigma on the stabilized counts (1: the noise's own)
BM3D_MISSING = (
    "the BM3D baseline needs the bm3d package, which this project does not ship: its licence is free for "
    "non-commercial use only (Tampere University), not Apache-2.0. Install it yourself if your use allows "
    "(pip install bm3d), or leave the denoising evaluation's `bm3d` option off."
)


def bm3d_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bm3d") is not None


def _vst_bm3d_one(image: np.ndarray, detector: DetectorCounts | None, factor: float) -> np.ndarray:
    """BM3D on the counts' generalized Anscombe transform (sigma ``factor``, 1 being the noise's own)
    and back; a CT slice gets BM3D on the image at ``factor`` x its estimated sigma."""
    import bm3d  # optional, not a dependency: see BM3D_MISSING

    if detector is None:
        return bm3d.bm3d(image, sigma_psd=factor * float(estimate_sigma(image)))
    stabilized = generalized_anscombe(detector.counts(image), detector.electronic_noise)
    smoothed = bm3d.bm3d(stabilized, sigma_psd=factor)
    return detector.image(inverse_generalized_anscombe(smoothed, detector.electronic_noise))


def vst_bm3d_denoise(noisy: torch.Tensor, detectors: list[DetectorCounts | None], factor: float) -> torch.Tensor:
    """:func:`_vst_bm3d_one` per image, one at a time: the bm3d binaries abort when two threads
    call them at once."""
    if not bm3d_available():
        raise ModuleNotFoundError(BM3D_MISSING)
    out = [
        _vst_bm3d_one(image, detector, factor)
        for image, detector in zip(noisy[:, 0].double().numpy(), detectors, strict=True)
    ]
    return torch.from_numpy(np.clip(np.stack(out), 0, 1)).float().unsqueeze(1)


def _parallel(function, items: list, threads: int | None) -> torch.Tensor:
    with ThreadPoolExecutor(max_workers=threads or step_threads()) as pool:
        out = list(pool.map(function, items))
    return torch.from_numpy(np.clip(np.stack(out), 0, 1)).float().unsqueeze(1)


def nlm_denoise(noisy: torch.Tensor, factor: float, threads: int | None = None) -> torch.Tensor:
    """Non-local means (5x5 patches, 13x13 search) with h = factor x the noise sigma estimated
    per image (wavelet MAD), so one factor serves images of different noise levels. Images run
    on ``threads`` threads (default: the step's share of the cores; scikit-image's NLM releases the GIL, so 2 cores
    give 1.8x at 256 px, the same output): the CPU baseline never waits on one core while the
    diffusion model has a GPU."""
    return _parallel(lambda image: _nlm_one(image, factor), list(noisy[:, 0].double().numpy()), threads)


def vst_nlm_denoise(
    noisy: torch.Tensor, detectors: list[DetectorCounts | None], factor: float, threads: int | None = None
) -> torch.Tensor:
    """:func:`_vst_nlm_one` on each image with its own detector model (None: CT)."""
    images = list(zip(noisy[:, 0].double().numpy(), detectors, strict=True))
    return _parallel(lambda item: _vst_nlm_one(item[0], item[1], factor), images, threads)


def detectors_of(index: pd.DataFrame) -> list[DetectorCounts | None]:
    """Each pair's detector model from its pair-store index row (None where the noise was made
    through CT projections). Stores written before the read noise was recorded used the default."""
    return [
        DetectorCounts(float(row["photons"]), float(row.get("electronic_noise", ELECTRONIC_NOISE)))
        if row.get("noise_model", "projection") == "projection"
        else None
        for _, row in index.iterrows()
    ]


def tune_nlm(clean: torch.Tensor, noisy: torch.Tensor, factors=NLM_FACTORS) -> tuple[float, pd.DataFrame]:
    """The factor with the best mean PSNR on validation images, and the whole search."""
    return tune_factor(clean, lambda factor: nlm_denoise(noisy, factor), factors, "h / sigma")


VST_NLM_FACTORS = (0.3, 0.45, 0.6, 0.8, 1.0, 1.3, 1.6)  # h in the stabilized domain, where sigma is 1


def tune_vst_nlm(
    clean: torch.Tensor, noisy: torch.Tensor, detectors: list[DetectorCounts | None], factors=VST_NLM_FACTORS
) -> tuple[float, pd.DataFrame]:
    return tune_factor(clean, lambda factor: vst_nlm_denoise(noisy, detectors, factor), factors, "h (stabilized)")


def tune_factor(clean: torch.Tensor, denoise, factors, name: str) -> tuple[float, pd.DataFrame]:
    """The factor with the best mean PSNR on validation images, and the whole search."""
    rows = [
        {name: factor, "val PSNR": float(per_image_scores(denoise(factor), clean)["psnr"].mean())} for factor in factors
    ]
    table = pd.DataFrame(rows)
    return float(table.loc[table["val PSNR"].idxmax(), name]), table


DENOISER_STRENGTHS = (0.05, 0.1, 0.2, 0.4, 0.7, 1.0)  # share of T the sampler starts from; 1: pure noise


def tune_denoiser_strength(
    model: LowDoseDenoiser,
    clean: torch.Tensor,
    noisy: torch.Tensor,
    dose: float,
    strengths=DENOISER_STRENGTHS,
    ddim_steps: int = 50,
    seed: int = 0,
) -> tuple[float, pd.DataFrame]:
    """The sampling strength with the best mean PSNR on validation images: the diffusion model gets
    the same val-tuned treatment as NLM's h, never a choice made on test."""
    rows = [
        {
            "strength": strength,
            "val PSNR": float(
                per_image_scores(
                    model(noisy, dose=dose, strength=strength, num_inference_steps=ddim_steps, generator=seed), clean
                )["psnr"].mean()
            ),
        }
        for strength in strengths
    ]
    table = pd.DataFrame(rows)
    return float(table.loc[table["val PSNR"].idxmax(), "strength"]), table


CLASSICAL_NAMES = {"nlm": "NLM on the image", "vst_nlm": "VST + NLM", "vst_bm3d": "VST + BM3D"}


@dataclass
class DenoisingBaselines:
    """Everything the diffusion denoiser is measured against at one dose, computed once (the
    current model and the champion meet the same outputs): the noisy input, NLM, NLM inside the
    variance-stabilising transform, and the regression CNN where one was trained."""

    dose: float
    methods: list[Method]
    strongest_classical: str  # the classical method with the better val PSNR: the gate
    tables: list[Table]
    notes: list[str]

    @property
    def noisy(self) -> torch.Tensor:
        return self.methods[0].images


def denoising_baselines(
    val_clean: torch.Tensor,
    val_noisy: torch.Tensor,
    val_detectors: list[DetectorCounts | None],
    noisy: torch.Tensor,
    detectors: list[DetectorCounts | None],
    dose: float,
    *,
    nlm_factors=NLM_FACTORS,
    vst_factors=VST_NLM_FACTORS,
    regression: ResidualCNN | None = None,
    bm3d_factors=None,
) -> DenoisingBaselines:
    """Tune the classical denoisers on val at this dose (BM3D too when ``bm3d_factors`` are
    given), run them and the CNN on ``noisy``."""
    nlm_factor, nlm_search = tune_nlm(val_clean, val_noisy, nlm_factors)
    vst_factor, vst_search = tune_vst_nlm(val_clean, val_noisy, val_detectors, vst_factors)
    val_best = {"nlm": nlm_search["val PSNR"].max(), "vst_nlm": vst_search["val PSNR"].max()}
    bm3d_search = None
    if bm3d_factors:
        bm3d_factor, bm3d_search = tune_factor(
            val_clean, lambda f: vst_bm3d_denoise(val_noisy, val_detectors, f), bm3d_factors, "sigma (stabilized)"
        )
        val_best["vst_bm3d"] = bm3d_search["val PSNR"].max()
    strongest = max(val_best, key=lambda key: (val_best[key], key == "vst_nlm"))
    projection = sum(d is not None for d in detectors)
    methods = [
        Method("noisy", "Low-dose input", noisy),
        Method("nlm", f"Non-local means (h = {nlm_factor:g} σ)", nlm_denoise(noisy, nlm_factor)),
        Method(
            "vst_nlm",
            f"Generalized Anscombe → NLM (h = {vst_factor:g}) → exact unbiased inverse",
            vst_nlm_denoise(noisy, detectors, vst_factor),
        ),
    ]
    if bm3d_search is not None:
        methods.append(
            Method(
                "vst_bm3d",
                f"Generalized Anscombe → BM3D (σ = {bm3d_factor:g}) → exact unbiased inverse",
                vst_bm3d_denoise(noisy, detectors, bm3d_factor),
            )
        )
    if regression is not None:
        methods.append(Method("regression", "Residual CNN, L1 on the same pairs", restore(regression, noisy)))
    notes = [
        f"Classical baselines tuned on val at this dose: NLM's h ({nlm_factor:g} x the estimated sigma), and "
        f"h = {vst_factor:g} for NLM on the counts' generalized Anscombe transform (unit noise), the noise model "
        f"the pairs were made with ({projection} of {len(detectors)} images; CT slices get NLM on the image). "
        f"The strongest classical baseline on val, {CLASSICAL_NAMES[strongest]}, is the one the denoiser has to "
        "beat to be promoted."
    ]
    tables = [
        Table(f"NLM h search on val, I0 = {dose:g}", nlm_search.round(3)),
        Table(f"VST + NLM h search on val, I0 = {dose:g}", vst_search.round(3)),
        *(
            [Table(f"VST + BM3D sigma search on val, I0 = {dose:g}", bm3d_search.round(3))]
            if bm3d_search is not None
            else []
        ),
    ]
    return DenoisingBaselines(dose, methods, strongest, tables, notes)


def evaluate_denoising(
    model: LowDoseDenoiser,
    clean: torch.Tensor,
    baselines: DenoisingBaselines,
    image_ids,
    groups,
    strength: float,
    tuning: list[Table] | None = None,
    *,
    ddim_steps: int = 50,
    spread_seeds: int = 4,
    spread_images: int = 16,
    seed: int = 0,
    resamples: int = 2000,
) -> RestorationEvaluation:
    dose, noisy = baselines.dose, baselines.noisy
    task = f"denoise_i0_{dose:g}"
    restored = model(noisy, dose=dose, strength=strength, num_inference_steps=ddim_steps, generator=seed)
    figures = []
    spread = seed_spread(
        lambda inputs, s: model(inputs, dose=dose, strength=strength, num_inference_steps=ddim_steps, generator=s),
        noisy,
        restored,
        spread_seeds,
        spread_images,
        seed,
    )
    if spread is not None:
        figures.append(spread_figure(spread[1], restored, f"Sample spread, I0 = {dose:g}, {spread_seeds} seeds"))
    methods = [
        *baselines.methods,
        Method("diffusion", f"Diffusion denoiser, DDIM {ddim_steps} from strength {strength:g}", restored),
    ]
    by_key = {m.key: m.images for m in methods}
    shown = [key for key in ("noisy", baselines.strongest_classical, "regression", "diffusion") if key in by_key]
    figures.insert(
        0,
        Figure(
            f"Denoising, I0 = {dose:g} photons",
            comparison_grid([by_key[key] for key in shown] + [clean, error_map(restored, clean)]),
            " | ".join(
                {"noisy": "low dose", "nlm": "NLM", "vst_nlm": "VST + NLM", "regression": "CNN"}.get(k, k)
                for k in shown
            )
            + " | normal dose | 4x |diffusion - normal dose|",
            upscale=2,
        ),
    )
    notes = [*baselines.notes, f"The denoiser's starting strength ({strength:g} of T) was chosen on val too."]
    scores, summaries, gains = score_methods(methods, clean, image_ids, groups, "noisy", resamples)
    if spread is not None:
        summaries["diffusion"]["spread"] = summarize(
            spread[0], np.asarray(groups)[: len(spread[0])], resamples=resamples
        )
        notes.append(f"Spread: over {spread_seeds} seeds, on the first {len(spread[0])} test images.")
    versus: dict[str, Summary] = {
        key: paired_gain(scores, "diffusion", key, resamples)
        for key in ("nlm", "vst_nlm", "vst_bm3d", "regression")
        if key in by_key
    }
    evaluation = RestorationEvaluation(
        task,
        f"Low-dose denoising, I0 = {dose:g} photons",
        "noisy",
        scores,
        summaries,
        gains,
        {m.key: m.label for m in methods},
        figures,
        notes,
        tables=[*baselines.tables, *(tuning or [])],
        model="diffusion",
        classical=baselines.strongest_classical,
        versus=versus,
    )
    evaluation.add_tradeoff(resamples)
    return evaluation
