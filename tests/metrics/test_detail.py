"""The fine-detail measure sees what PSNR and a findings-classifier FD miss: a real radiograph
ranks above the same image slightly blurred, and above what a latent grid 4x coarser than the
image carries, with margins far outside the spread between two real sets."""

import numpy as np
import pydicom
import pytest
import torch
from scipy.ndimage import gaussian_filter

from cxr_pipeline.data.degrade import resize, upsample_bicubic
from cxr_pipeline.data.demo.phantom import render, sample_patient, sample_study
from cxr_pipeline.metrics.detail import (
    paired_detail_ratios,
    radial_power_spectra,
    set_detail_interval,
    set_detail_ratio,
)
from cxr_pipeline.metrics.restoration import per_image_scores
from cxr_pipeline.promotion import PromotionRule, decide
from tests.conftest import pydicom_file


def demo_radiographs(count: int, first_seed: int) -> np.ndarray:
    """Demo phantoms rendered at 256 px and brought to the 64 px of the demo profile, as ingestion does."""
    images = []
    for seed in range(first_seed, first_seed + count):
        rng = np.random.default_rng(seed)
        traits = sample_patient(rng, seed)
        images.append(resize(render(traits, sample_study(rng, (), seed=seed), 256), (64, 64)))
    return np.stack(images)


def real_radiograph_tiles() -> np.ndarray:
    """64 px tiles of a real chest CR (pydicom-data), brought to 256 px: real anatomy, not the phantom."""
    pixels = pydicom.dcmread(pydicom_file("RG1_UNCR.dcm")).pixel_array.astype(np.float32)
    pixels = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    image = resize(pixels, (256, 256))
    return np.stack([image[r : r + 64, c : c + 64] for r in range(0, 256, 64) for c in range(0, 256, 64)])


def blurred(images: np.ndarray, sigma: float) -> np.ndarray:
    return np.stack([gaussian_filter(image, sigma) for image in images])


def coarse_grid(images: np.ndarray, factor: int = 4) -> np.ndarray:
    """What a grid ``factor`` times coarser carries: antialiased down, bicubic back up."""
    side = images.shape[-1] // factor
    return np.stack([upsample_bicubic(resize(image, (side, side)), factor) for image in images])


@pytest.fixture(scope="module")
def demo_sets():
    return demo_radiographs(24, 0), demo_radiographs(24, 100)


def test_two_real_sets_agree_and_blur_falls_far_outside_that_spread(demo_sets):
    first, second = demo_sets
    real, low, high = set_detail_interval(first, second, resamples=400)
    assert 0.85 < real < 1.15 and low < 1.0 < high, (real, low, high)
    blur_ratio, _, blur_high = set_detail_interval(blurred(first, 0.7), second, resamples=400)
    # a 0.7 px blur is barely visible at a glance, and its whole interval lies below the real one's
    assert blur_ratio < 0.45 and blur_high < low, (blur_ratio, blur_high, low)
    assert set_detail_ratio(blurred(first, 1.0), second) < set_detail_ratio(blurred(first, 0.5), second) < real
    assert set_detail_ratio(coarse_grid(first), second) < 0.05


def test_pairs_rank_real_above_blurred_and_coarse_grid_on_a_real_radiograph():
    tiles = real_radiograph_tiles()
    assert np.allclose(paired_detail_ratios(tiles, tiles), 1.0)
    half = paired_detail_ratios(blurred(tiles, 0.5), tiles)
    more = paired_detail_ratios(blurred(tiles, 0.7), tiles)
    coarse = paired_detail_ratios(coarse_grid(tiles), tiles)
    # every tile, not just on average: the ranking holds image by image
    assert (more < half).all() and (half < 0.9).all() and (coarse < more).all(), (half, more, coarse)
    noisy = tiles + np.random.default_rng(0).normal(0, 0.02, tiles.shape)
    assert (paired_detail_ratios(noisy, tiles) > 1.0).all()  # added texture reads above 1, not as "better"


def test_psnr_prefers_the_blur_that_the_detail_ratio_rejects(demo_sets):
    """Why the measure exists: against a noisy reconstruction that keeps the ribs, a smooth one
    wins on PSNR yet loses on detail."""
    target = torch.from_numpy(demo_sets[0]).unsqueeze(1).double()
    smooth = torch.from_numpy(blurred(demo_sets[0], 0.7)).unsqueeze(1).double()
    textured = (target + 0.04 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    smooth_scores, textured_scores = per_image_scores(smooth, target), per_image_scores(textured, target)
    assert smooth_scores["psnr"].mean() > textured_scores["psnr"].mean()
    assert abs(np.log(textured_scores["detail"]).mean()) < abs(np.log(smooth_scores["detail"]).mean())


def test_spectra_bins_and_input_checks():
    frequencies, spectra = radial_power_spectra(np.zeros((2, 64, 64)))
    assert frequencies[0] == pytest.approx(8 / 64) and frequencies[-1] == pytest.approx(24 / 64)
    assert spectra.shape == (2, 17) and np.all(spectra == 0)
    assert np.allclose(paired_detail_ratios(np.zeros((2, 64, 64)), np.zeros((2, 64, 64))), 1.0)  # flat = flat
    with pytest.raises(ValueError, match="same image size"):
        set_detail_ratio(np.zeros((2, 64, 64)), np.zeros((2, 32, 32)))
    with pytest.raises(ValueError, match="one-channel"):
        paired_detail_ratios(np.zeros((2, 3, 64, 64)), np.zeros((2, 3, 64, 64)))


def test_promotion_refuses_a_challenger_that_loses_detail_beyond_its_interval():
    rule = PromotionRule("psnr_x", interval_guards=("detail_x",))
    champion = {"psnr_x": 30.0, "detail_x": 0.90}
    smoother = {"psnr_x": 31.0, "detail_x": 0.60, "detail_x_ci_low": 0.55, "detail_x_ci_high": 0.66}
    decision = decide(rule, "2", smoother, "1", champion)
    assert not decision.promoted and "detail_x" in decision.reason
    within = {"psnr_x": 31.0, "detail_x": 0.86, "detail_x_ci_low": 0.80, "detail_x_ci_high": 0.93}
    assert decide(rule, "2", within, "1", champion).promoted
