"""Periodic artifacts: a grid, hatch or ripple at a fixed period, the signature of a model that
paints a texture per cell (a latent cell, a pixel of its training grid) whatever the scale.

A periodic pattern of period ``p`` pixels puts a narrow peak in the power spectrum at 1/p cycles
per pixel. The score is the strongest peak of the set's mean power spectrum (images windowed
with a Hann window, so the border adds nothing) above the median power of every other frequency
at the same distance from the centre (its ring): a natural radiograph's spectrum falls smoothly
with frequency and varies little around a ring, so a peak that stands tens of dB above its ring
at the same frequency in every image is a pattern, not anatomy. Averaging the spectra over the
set keeps what repeats in every image and averages out the content.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def power_spectrum(image: np.ndarray) -> np.ndarray:
    """|FFT|^2 of the Hann-windowed, mean-removed image, zero frequency at the centre."""
    image = np.asarray(image, dtype=np.float64)
    window = np.outer(np.hanning(image.shape[0]), np.hanning(image.shape[1]))
    return np.abs(np.fft.fftshift(np.fft.fft2((image - image.mean()) * window))) ** 2


@dataclass(frozen=True)
class SpectralPeak:
    db: float  # above the ring's median power
    frequency: tuple[int, int]  # (y, x) cycles per image
    period_px: float  # 1 / (cycles per pixel)


def strongest_peak(images: np.ndarray, lowest: int = 3) -> SpectralPeak:
    """The strongest narrow peak of the mean spectrum of ``images`` (N, H, W), at least ``lowest``
    cycles per image from the centre (below that, the body's outline) and inside the Nyquist
    circle (the rest of the square has no full ring to compare with)."""
    images = np.asarray(images, dtype=np.float64)
    power = np.mean([power_spectrum(image) for image in images], axis=0)
    height, width = power.shape
    cy, cx = height // 2, width // 2
    yy, xx = np.mgrid[0:height, 0:width]
    ring = np.hypot(yy - cy, xx - cx).round().astype(int)
    medians = np.array([np.median(power[ring == r]) for r in range(ring.max() + 1)])
    excess = 10 * np.log10(np.maximum(power, 1e-30) / np.maximum(medians[ring], 1e-30))
    excess[(ring < lowest) | (ring > min(cy, cx))] = -np.inf
    index = int(np.argmax(excess))
    fy, fx = int(yy.ravel()[index] - cy), int(xx.ravel()[index] - cx)
    cycles_per_pixel = float(np.hypot(fy / height, fx / width))
    return SpectralPeak(float(excess.ravel()[index]), (fy, fx), 1.0 / cycles_per_pixel)
