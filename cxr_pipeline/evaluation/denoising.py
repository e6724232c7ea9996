"""Low-dose denoising against its classical baselines: the noisy input, and non-local means with
its strength tuned on val; the diffusion denoiser's start tuned on val too."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch
from skimage.restoration import denoise_nl_means, estimate_sigma

from ..compute import step_threads
from ..metrics.restoration import per_image_scores
from ..metrics.statistics import summarize
from ..models.pipelines import LowDoseDenoiser
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


def nlm_denoise(noisy: torch.Tensor, factor: float, threads: int | None = None) -> torch.Tensor:
    """Non-local means (5x5 patches, 13x13 search) with h = factor x the noise sigma estimated
    per image (wavelet MAD), so one factor serves images of different noise levels. Images run
    on ``threads`` threads (default: the step's share of the cores; scikit-image's NLM releases the GIL, so 2 cores
    give 1.8x at 256 px, the same output): the CPU baseline never waits on one core while the
    diffusion model has a GPU."""
    images = list(noisy[:, 0].double().numpy())
    with ThreadPoolExecutor(max_workers=threads or step_threads()) as pool:
        out = list(pool.map(lambda image: _nlm_one(image, factor), images))
    return torch.from_numpy(np.clip(np.stack(out), 0, 1)).float().unsqueeze(1)


def tune_nlm(clean: torch.Tensor, noisy: torch.Tensor, factors=NLM_FACTORS) -> tuple[float, pd.DataFrame]:
    """The factor with the best mean PSNR on validation images, and the whole search."""
    rows = [
        {"h / sigma": factor, "val PSNR": float(per_image_scores(nlm_denoise(noisy, factor), clean)["psnr"].mean())}
        for factor in factors
    ]
    table = pd.DataFrame(rows)
    return float(table.loc[table["val PSNR"].idxmax(), "h / sigma"]), table


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
                per_image_scores(model(noisy, dose=dose, strength=strength, steps=ddim_steps, seed=seed), clean)[
                    "psnr"
                ].mean()
            ),
        }
        for strength in strengths
    ]
    table = pd.DataFrame(rows)
    return float(table.loc[table["val PSNR"].idxmax(), "strength"]), table


def evaluate_denoising(
    model: LowDoseDenoiser,
    clean: torch.Tensor,
    noisy: torch.Tensor,
    image_ids,
    groups,
    dose: float,
    nlm_factor: float,
    strength: float,
    tuning: list[Table] | None = None,
    *,
    ddim_steps: int = 50,
    spread_seeds: int = 4,
    spread_images: int = 16,
    seed: int = 0,
    resamples: int = 2000,
) -> RestorationEvaluation:
    task = f"denoise_i0_{dose:g}"
    nlm = nlm_denoise(noisy, nlm_factor)
    restored = model(noisy, dose=dose, strength=strength, steps=ddim_steps, seed=seed)
    figures = []
    spread = seed_spread(
        lambda inputs, s: model(inputs, dose=dose, strength=strength, steps=ddim_steps, seed=s),
        noisy,
        restored,
        spread_seeds,
        spread_images,
        seed,
    )
    if spread is not None:
        figures.append(spread_figure(spread[1], restored, f"Sample spread, I0 = {dose:g}, {spread_seeds} seeds"))
    methods = [
        Method("noisy", "Low-dose input", noisy),
        Method("nlm", f"Non-local means (h = {nlm_factor:g} σ)", nlm),
        Method("diffusion", f"Diffusion denoiser, DDIM {ddim_steps} from strength {strength:g}", restored),
    ]
    figures.insert(
        0,
        Figure(
            f"Denoising, I0 = {dose:g} photons",
            comparison_grid([noisy, nlm, restored, clean, error_map(restored, clean)]),
            "low dose | NLM | diffusion | normal dose | 4x |diffusion - normal dose|",
            upscale=2,
        ),
    )
    notes = [
        f"Chosen on the validation split, never on test: NLM's h ({nlm_factor:g} x the estimated sigma) and the "
        f"denoiser's starting strength ({strength:g} of T)."
    ]
    scores, summaries, gains = score_methods(methods, clean, image_ids, groups, "noisy", resamples)
    if spread is not None:
        summaries["diffusion"]["spread"] = summarize(
            spread[0], np.asarray(groups)[: len(spread[0])], resamples=resamples
        )
        notes.append(f"Spread: over {spread_seeds} seeds, on the first {len(spread[0])} test images.")
    return RestorationEvaluation(
        task,
        f"Low-dose denoising, I0 = {dose:g} photons",
        "noisy",
        scores,
        summaries,
        gains,
        {m.key: m.label for m in methods},
        figures,
        notes,
        tables=list(tuning or []),
        model="diffusion",
        classical="nlm",
        versus={"nlm": paired_gain(scores, "diffusion", "nlm", resamples)},
    )
