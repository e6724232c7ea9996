"""Degradations that make training pairs: low resolution and low dose.

Both are deterministic per image: the random stream is seeded by (seed, image id, degradation),
so a pair can be rebuilt bit for bit, and adding images never changes existing pairs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage


def image_rng(seed: int, image_id: str, tag: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\0{image_id}\0{tag}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def resize(
    image: np.ndarray, size: tuple[int, ...], resample: Image.Resampling = Image.Resampling.LANCZOS
) -> np.ndarray:
    """``image`` resized to ``size`` (height, width), clipped to [0, 1]. Pillow's filters scale
    their support with the ratio, so Lanczos shrinking is antialiased at any ratio."""
    height, width = size
    out = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize((width, height), resample)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def low_resolution_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """The LR grid of an HR grid at ``scale`` (rounded; exact when ``scale`` divides the size)."""
    height, width = (max(1, int(round(side / scale))) for side in size)
    return height, width


def downsample(image: np.ndarray, scale: int) -> np.ndarray:
    """Antialiased (Lanczos with Pillow's scale-aware support) downsampling by an integer factor."""
    height, width = image.shape
    if height % scale or width % scale:
        raise ValueError(f"{height}x{width} is not divisible by scale {scale}")
    return resize(image, (height // scale, width // scale))


def upsample_bicubic(image: np.ndarray, scale: int) -> np.ndarray:
    """The classical baseline, and how an LR image is brought to HR size before encoding."""
    height, width = image.shape
    return resize(image, (height * scale, width * scale), Image.Resampling.BICUBIC)


def bicubic_to(image: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Bicubic resampling to any size: the baseline at non-integer scales."""
    return resize(image, size, Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class DegradationMix:
    """Applied before downsampling so models do not learn one exact kernel (Real-ESRGAN's lesson)."""

    blur_probability: float = 0.5
    blur_sigma: tuple[float, float] = (0.2, 1.2)  # in HR pixels
    noise_probability: float = 0.3
    noise_std: tuple[float, float] = (0.0, 0.01)

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float, float]:
        sigma = float(rng.uniform(*self.blur_sigma)) if rng.random() < self.blur_probability else 0.0
        noise = float(rng.uniform(*self.noise_std)) if rng.random() < self.noise_probability else 0.0
        out = ndimage.gaussian_filter(image, sigma) if sigma > 0 else image
        if noise > 0:
            out = out + rng.normal(0.0, noise, out.shape).astype(np.float32)
        return np.clip(out, 0.0, 1.0).astype(np.float32), sigma, noise


def make_low_resolution(
    image: np.ndarray, scale: float, rng: np.random.Generator, mix: DegradationMix | None
) -> tuple[np.ndarray, float, float]:
    """Blur and noise from ``mix``, then antialiased downsampling by ``scale``, integer or not
    (to the rounded LR grid, :func:`low_resolution_size`)."""
    blurred, sigma, noise = mix.apply(image, rng) if mix else (image, 0.0, 0.0)
    return resize(blurred, low_resolution_size(image.shape, scale)), sigma, noise


MU_MAX = 4.0  # attenuation line integral a normalized intensity of 1 stands for
ELECTRONIC_NOISE = 5.0  # the detector's read noise sigma_e, in photons


@dataclass(frozen=True)
class DetectorCounts:
    """How a normalized radiograph maps to the photon counts a detector would see: the intensity
    is the attenuation line integral ``mu = image * mu_max`` and the expected count
    ``I0 * exp(-mu)``. Pairs are made in counts (where the noise is Poisson-Gaussian), and the
    classical denoiser undoes them there too, so the two share this one mapping."""

    photons: float  # I0: counts of an unattenuated ray
    electronic_noise: float = ELECTRONIC_NOISE
    mu_max: float = MU_MAX

    def counts(self, image: np.ndarray) -> np.ndarray:
        return self.photons * np.exp(-np.clip(image, 0.0, 1.0).astype(np.float64) * self.mu_max)

    def image(self, counts: np.ndarray) -> np.ndarray:
        """The log transform back to intensities, counts clamped to at least one photon."""
        return np.clip(-np.log(np.maximum(counts, 1.0) / self.photons) / self.mu_max, 0.0, 1.0)


def simulate_low_dose(
    image: np.ndarray,
    photons: float,
    rng: np.random.Generator,
    electronic_noise: float = ELECTRONIC_NOISE,
    mu_max: float = MU_MAX,
) -> np.ndarray:
    """A lower-dose acquisition of the same anatomy.

    The detector sees ``I = Poisson(I0 * exp(-mu)) + Normal(0, sigma_e^2)`` (quantum plus electronic
    noise; :class:`DetectorCounts` says what ``mu`` is), clamped to at least one photon, and the
    log transform ``-log(I / I0)`` maps it back. Public PNGs are already log-transformed, windowed
    and post-processed, so this is an approximation of a low-dose raw acquisition, not a
    replacement for one.
    """
    detector = DetectorCounts(photons, electronic_noise, mu_max)
    expected = detector.counts(image)
    counts = rng.poisson(expected) + rng.normal(0.0, electronic_noise, expected.shape)
    return detector.image(counts).astype(np.float32)


# What a CT slice's stored values mean when nothing recorded its window: a lung window
# (centre -600 HU, width 1500), the usual one for chest CT slices published as PNG.
DEFAULT_CT_WINDOW = (-1350.0, 150.0)
WATER_MU_PER_MM = 0.0195  # linear attenuation of water near 70 keV


def simulate_low_dose_ct(
    image: np.ndarray,
    photons: float,
    rng: np.random.Generator,
    electronic_noise: float = ELECTRONIC_NOISE,
    window: tuple[float, float] = DEFAULT_CT_WINDOW,
    field_of_view_mm: float = 350.0,
) -> np.ndarray:
    """A lower-dose acquisition of a CT slice, simulated where CT's noise arises: in the
    projections. The windowed slice is taken back to Hounsfield units and to attenuation,
    forward-projected (Radon transform, parallel beam, ``pi/2`` times the side in views), each
    ray's count drawn as ``Poisson(I0 * exp(-line integral)) + Normal(0, sigma_e^2)``, and the
    noisy projections reconstructed by filtered back-projection (ramp filter). The noise alone
    (reconstruction of the noisy minus that of the clean projections) is added to the slice, so a
    pair differs by CT's noise (correlated, streaks along dense paths), not by reconstruction
    error. A radiograph's model (:func:`simulate_low_dose`) would put independent noise on each
    pixel, which a CT image never has."""
    from skimage.transform import iradon, radon  # only CT needs it; keeps import time down

    side = image.shape[0]
    if image.shape[0] != image.shape[1]:
        raise ValueError(f"CT slices are square; got {image.shape}")
    low, high = window
    hu = low + np.clip(image, 0.0, 1.0).astype(np.float64) * (high - low)
    pixel_mm = field_of_view_mm / side
    mu = np.clip(WATER_MU_PER_MM * (1.0 + hu / 1000.0), 0.0, None) * pixel_mm  # per pixel
    angles = np.linspace(0.0, 180.0, max(16, int(np.ceil(side * np.pi / 2))), endpoint=False)
    sinogram = radon(mu, theta=angles, circle=False)
    counts = rng.poisson(photons * np.exp(-sinogram)) + rng.normal(0.0, electronic_noise, sinogram.shape)
    noisy_sinogram = -np.log(np.maximum(counts, 1.0) / photons)
    noise = iradon(noisy_sinogram - sinogram, theta=angles, filter_name="ramp", circle=False, output_size=side)
    noisy_hu = hu + noise / pixel_mm / WATER_MU_PER_MM * 1000.0
    return np.clip((noisy_hu - low) / (high - low), 0.0, 1.0).astype(np.float32)


def low_dose_model(modality: object) -> str:
    """Which physics a modality's low-dose pairs follow: ``ct`` (projections, then filtered
    back-projection) for CT, ``projection`` (noise on the detector's counts) for radiographs
    (CR, DX) and for images nothing says are CT."""
    return "ct" if isinstance(modality, str) and modality.upper() == "CT" else "projection"
