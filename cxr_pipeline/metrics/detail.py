"""Fine-detail realism: does an image carry the fine anatomy (rib edges, vessel markings) of a real
radiograph, or is it a smooth average that PSNR and a findings-classifier FD both reward?

The measure is the **detail ratio**: the radially averaged power spectrum of an image (mean
removed, Hann-windowed so the image border adds no false edges), compared with a reference's in
the band of periods 8 px down to 8/3 px (1/8 to 3/8 cycles per pixel). That band is exactly what a
latent grid 4x coarser than the image cannot carry by itself, and at 64 px it holds the rib pitch;
below it sit the body outline and lung fields, above it mostly sensor noise. Per frequency bin the
two spectra are divided, and the ratios averaged in log (a geometric mean over the band), so each
bin counts the same whatever its power. 1.0 is the reference's detail; a Gaussian blur of 0.7 px
gives about 0.3; values above 1 mean more high-frequency content than real (noise or invented
texture), which is why goals on generated images are two-sided.

Two forms:
- ``set_detail_ratio(generated, real)``: sets, e.g. samples against real test images (the spectra
  are averaged over each set first, so no pairing is needed);
- ``paired_detail_ratios(prediction, target)``: one ratio per restored image against its ground
  truth, summarized like PSNR (mean over images, patient-bootstrap interval).
"""

from __future__ import annotations

import numpy as np
import torch

from .statistics import percentile_interval

BAND = (1 / 8, 3 / 8)  # cycles per pixel
FLOOR = 1e-12  # power added to both sides of a ratio, so flat images compare as equal, not as 0/0


def _as_array(images) -> np.ndarray:
    """(N, 1, H, W) or (N, H, W) tensors/arrays -> (N, H, W) float64."""
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 4:
        if images.shape[1] != 1:
            raise ValueError(f"expected one-channel images, got shape {images.shape}")
        images = images[:, 0]
    if images.ndim != 3 or min(images.shape[1:]) < 8:
        raise ValueError(f"expected (N, [1,] H, W) images of at least 8 px, got shape {images.shape}")
    return images


def radial_power_spectra(images, band: tuple[float, float] = BAND) -> tuple[np.ndarray, np.ndarray]:
    """Per image, the power spectrum averaged over rings of one bin (1 / min(H, W) cycles per pixel)
    inside ``band``. Returns (bin centre frequencies, (N, bins) powers)."""
    images = _as_array(images)
    height, width = images.shape[1:]
    window = np.outer(np.hanning(height), np.hanning(width))
    centred = (images - images.mean(axis=(1, 2), keepdims=True)) * window
    power = np.abs(np.fft.fft2(centred)) ** 2 / (window**2).sum()
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(height), np.fft.fftfreq(width), indexing="ij"))
    step = 1.0 / min(height, width)
    bins = np.round(radius / step).astype(int)
    chosen = np.arange(int(np.ceil(band[0] / step)), int(np.floor(band[1] / step)) + 1)
    flat_bins, flat_power = bins.ravel(), power.reshape(len(images), -1)
    spectra = np.stack([flat_power[:, flat_bins == b].mean(axis=1) for b in chosen], axis=1)
    return chosen * step, spectra


def _set_spectra(images, reference, band: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    _, mine = radial_power_spectra(images, band)
    _, theirs = radial_power_spectra(reference, band)
    if mine.shape[1] != theirs.shape[1]:
        raise ValueError("the two sets must have the same image size")
    return mine, theirs


def _ratio_of_mean_spectra(mine: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.exp(np.mean(np.log((mine.mean(axis=0) + FLOOR) / (theirs.mean(axis=0) + FLOOR)))))


def set_detail_ratio(images, reference, band: tuple[float, float] = BAND) -> float:
    """Fine detail of a set of images as a share of a reference set's (same image size)."""
    return _ratio_of_mean_spectra(*_set_spectra(images, reference, band))


def paired_detail_ratios(prediction, target, band: tuple[float, float] = BAND) -> np.ndarray:
    """Per image pair, the prediction's fine detail as a share of its ground truth's."""
    _, mine = radial_power_spectra(prediction, band)
    _, theirs = radial_power_spectra(target, band)
    if mine.shape != theirs.shape:
        raise ValueError("expected the same number of images of the same size")
    return np.exp(np.mean(np.log((mine + FLOOR) / (theirs + FLOOR)), axis=1))


def set_detail_interval(
    images, reference, band: tuple[float, float] = BAND, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """``set_detail_ratio`` with a percentile bootstrap interval, both sets resampled image by image."""
    mine, theirs = _set_spectra(images, reference, band)
    rng = np.random.default_rng(seed)
    draws = np.array(
        [
            _ratio_of_mean_spectra(
                mine[rng.integers(0, len(mine), len(mine))], theirs[rng.integers(0, len(theirs), len(theirs))]
            )
            for _ in range(resamples)
        ]
    )
    return (_ratio_of_mean_spectra(mine, theirs), *percentile_interval(draws, level))
