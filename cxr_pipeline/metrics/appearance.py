"""No-reference appearance figures shown beside every displayed image: what enhancement changes.

They describe an image, not its fidelity (for that, PSNR/SSIM against a reference in
``restoration.py``): RMS contrast (the standard deviation of intensities in [0, 1]), sharpness
(the variance of the Laplacian, the usual focus measure) and entropy (Shannon, in bits, of the
8-bit histogram).
"""

from __future__ import annotations

import numpy as np
from skimage import filters, measure


def contrast(image: np.ndarray) -> float:
    return float(np.std(np.asarray(image, dtype=np.float64)))


def sharpness(image: np.ndarray) -> float:
    return float(np.var(filters.laplace(np.asarray(image, dtype=np.float64), ksize=3)))


def entropy(image: np.ndarray) -> float:
    quantized = np.round(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    return float(measure.shannon_entropy(quantized, base=2))


def appearance(image: np.ndarray) -> dict[str, float]:
    return {"contrast": contrast(image), "sharpness": sharpness(image), "entropy": entropy(image)}
