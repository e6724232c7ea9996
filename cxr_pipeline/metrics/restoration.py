"""Full-reference scores for restoration, and the two hallucination guards.

Images are (N, 1, H, W) float tensors in [0, 1], so the data range of every score is 1.0:
PSNR = 10 log10(1 / MSE), SSIM with the standard 11-pixel Gaussian window (sigma 1.5,
K1 0.01, K2 0.03), MAE in the same intensity units, and the fine-detail ratio (``detail.py``),
the one of these that a smooth average cannot win.
"""

from __future__ import annotations

from typing import cast

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ..data.degrade import resize
from .detail import paired_detail_ratios

DATA_RANGE = 1.0


def per_image_scores(prediction: torch.Tensor, target: torch.Tensor) -> pd.DataFrame:
    """PSNR (dB), SSIM, MAE and the fine-detail ratio (metrics/detail.py: 1 keeps the target's fine
    anatomy, below 1 smooths it away, above 1 adds texture the target does not have) of each pair."""
    if prediction.shape != target.shape or prediction.ndim != 4:
        raise ValueError(f"expected equal (N, C, H, W) shapes, got {tuple(prediction.shape)} and {tuple(target.shape)}")
    prediction, target = prediction.detach().double(), target.detach().double()
    psnr = peak_signal_noise_ratio(prediction, target, data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))
    ssim = cast(
        torch.Tensor, structural_similarity_index_measure(prediction, target, data_range=DATA_RANGE, reduction="none")
    )
    mae = (prediction - target).abs().mean(dim=(1, 2, 3))
    return pd.DataFrame(
        {
            "psnr": psnr.numpy(),
            "ssim": ssim.numpy(),
            "mae": mae.numpy(),
            "detail": paired_detail_ratios(prediction, target),
        }
    )


def lr_consistency_psnr(super_resolved: torch.Tensor, low_resolution: torch.Tensor) -> np.ndarray:
    """PSNR between the SR output brought back down to the LR grid (the same antialiased
    downsampling that made the pairs, at any scale) and the LR input. Detail the LR image does not
    support lowers it: a model that invents structure fails here even when its output looks plausible."""
    size = (int(low_resolution.shape[-2]), int(low_resolution.shape[-1]))
    reduced = torch.from_numpy(np.stack([resize(image[0].numpy(), size) for image in super_resolved.float()]))
    return peak_signal_noise_ratio(
        reduced.unsqueeze(1).double(), low_resolution.double(), data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3)
    ).numpy()


def sample_spread(samples: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Samples (K seeds, N, 1, H, W) -> per-image mean of the per-pixel std over seeds, and the
    std map of each image (N, H, W). Where seeds disagree, the output is the model's guess."""
    if samples.ndim != 5 or samples.shape[0] < 2:
        raise ValueError("expected (K >= 2, N, 1, H, W) samples")
    maps = samples.double().std(dim=0, unbiased=True)[:, 0]
    return maps.mean(dim=(1, 2)).numpy(), maps.float().numpy()


def registration_shift(
    output: np.ndarray, truth: np.ndarray, scale: float = 1.0, margin: int | None = None
) -> tuple[float, float]:
    """How far ``output`` sits from ``truth`` (dy, dx), in output pixels: the sub-pixel shift
    that, applied to ``output`` (cubic spline), brings it closest to ``truth`` in least squares,
    both first blurred alike to the band an LR image at ``scale`` carries (a Gaussian of
    0.75 ``scale`` px), over the interior (``margin`` px from each border left out, a tenth of the
    side by default). Detail only the truth has, and the aliasing of the LR grid, would otherwise
    bias it on asymmetric anatomy (by up to 0.8 px for bicubic itself at x6); blurred alike,
    bicubic sits within 0.06 px of the truth at x2 to x4, and a blur alone moves the estimate by
    at most 0.15 px where edges cross the border of the scored interior. A geometry error shows."""
    from scipy import ndimage, optimize

    sigma = 0.75 * scale
    truth64, output64 = (
        ndimage.gaussian_filter(np.asarray(x, dtype=np.float64), sigma, mode="nearest") for x in (truth, output)
    )
    m = max(2, round(0.1 * min(truth64.shape))) if margin is None else margin
    inner = (slice(m, truth64.shape[0] - m), slice(m, truth64.shape[1] - m))

    def cost(shift: np.ndarray) -> float:
        moved = ndimage.shift(output64, shift, order=3, mode="nearest")
        return float(np.mean((moved[inner] - truth64[inner]) ** 2))

    simplex = np.array([[0.0, 0.0], [0.5, 0.0], [0.0, 0.5]])
    found = optimize.minimize(
        cost, np.zeros(2), method="Nelder-Mead", options={"xatol": 1e-3, "fatol": 1e-14, "initial_simplex": simplex}
    )
    return float(-found.x[0]), float(-found.x[1])
