"""Metric functions against values computed by hand or by an independent numpy reference."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from cxr_pipeline.data.degrade import downsample
from cxr_pipeline.metrics.distribution import (
    conditional_accuracy,
    frechet_distance,
    kernel_inception_distance,
    mean_pairwise_ms_ssim,
    ms_ssim_betas,
)
from cxr_pipeline.metrics.inception import PUBLISHED_SHA256_PREFIX, inception_fid, sha256_of
from cxr_pipeline.metrics.restoration import lr_consistency_psnr, per_image_scores, sample_spread
from cxr_pipeline.metrics.statistics import bootstrap_means, summarize


def smooth_images(count: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    images = [0.5 + 0.25 * np.sin(6 * x + p) * np.cos(4 * y + 2 * p) for p in rng.uniform(0, 6, count)]
    return torch.from_numpy(np.stack(images)).float().unsqueeze(1)


def test_identical_images_score_perfectly():
    images = smooth_images(3)
    scores = per_image_scores(images, images.clone())
    assert np.isinf(scores["psnr"]).all()
    assert np.allclose(scores["ssim"], 1.0) and np.allclose(scores["mae"], 0.0)


def test_constant_shift_gives_hand_computed_scores():
    target = torch.full((2, 1, 32, 32), 0.5, dtype=torch.float64)
    shifted = target + 0.1
    scores = per_image_scores(shifted, target)
    assert scores["psnr"].to_numpy() == pytest.approx([20.0, 20.0], abs=1e-5)  # 10 log10(1 / 0.1^2)
    assert scores["mae"].to_numpy() == pytest.approx([0.1, 0.1], abs=1e-12)
    # Flat images: SSIM reduces to the luminance term (2ab + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 1)^2.
    expected = (2 * 0.5 * 0.6 + 1e-4) / (0.5**2 + 0.6**2 + 1e-4)
    assert scores["ssim"].to_numpy() == pytest.approx([expected, expected], abs=1e-6)


def test_known_noise_level_gives_the_expected_psnr():
    target = torch.full((1, 1, 512, 512), 0.5)
    noisy = target + 0.05 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    psnr = per_image_scores(noisy, target)["psnr"].iloc[0]
    assert psnr == pytest.approx(10 * math.log10(1 / 0.05**2), abs=0.05)  # 26.02 dB


def test_scores_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="equal"):
        per_image_scores(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 9))


def test_lr_consistency_is_perfect_for_the_image_that_made_the_lr_input():
    high = smooth_images(2)
    low = torch.from_numpy(np.stack([downsample(x[0].numpy(), 4) for x in high])).unsqueeze(1)
    assert np.isinf(lr_consistency_psnr(high, low)).all()
    brighter = (high + 0.05).clamp(0, 1)
    assert lr_consistency_psnr(brighter, low) == pytest.approx([26.02, 26.02], abs=0.2)


def test_sample_spread_of_two_seeds_is_half_the_difference_times_root_two():
    first = smooth_images(2)
    spread, maps = sample_spread(torch.stack([first, first + 0.1]))
    assert maps.shape == (2, 64, 64)
    assert spread == pytest.approx([0.1 / math.sqrt(2)] * 2, rel=1e-5)
    assert sample_spread(torch.stack([first, first, first]))[0] == pytest.approx([0.0, 0.0])


def test_bootstrap_interval_contains_the_mean_and_collapses_for_constant_values():
    summary = summarize(np.full(20, 3.0))
    assert (summary.mean, summary.ci_low, summary.ci_high, summary.std) == (3.0, 3.0, 3.0, 0.0)
    values = np.random.default_rng(1).normal(30, 2, 200)
    summary = summarize(values, seed=3)
    assert summary.ci_low < summary.mean < summary.ci_high
    assert summary.ci_high - summary.ci_low == pytest.approx(2 * 1.96 * 2 / math.sqrt(200), rel=0.2)


def test_patient_bootstrap_is_wider_than_image_bootstrap_for_clustered_scores():
    rng = np.random.default_rng(2)
    patient_effect = rng.normal(0, 2, 20)
    values = np.repeat(patient_effect, 10) + rng.normal(0, 0.1, 200)  # ten near-copies per patient
    groups = np.repeat(np.arange(20), 10)
    naive, clustered = bootstrap_means(values), bootstrap_means(values, groups)
    assert clustered.std() > 2.5 * naive.std()
    assert clustered.std() == pytest.approx(patient_effect.std() / math.sqrt(20), rel=0.25)


def numpy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def numpy_kid(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3 (Binkowski et al. 2018)."""
    m, d = len(a), a.shape[1]
    kernel = lambda x, y: (x @ y.T / d + 1) ** 3
    kxx, kyy, kxy = kernel(a, a), kernel(b, b), kernel(a, b)
    off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))
    return float(off(kxx) + off(kyy) - 2 * kxy.mean())


def test_frechet_distance_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(80, 12)), rng.normal(0.3, 1.4, size=(70, 12))
    assert frechet_distance(real, fake) == pytest.approx(numpy_frechet(real, fake), rel=1e-6)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)


def test_kid_matches_a_numpy_reference():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(40, 16)), rng.normal(0.5, 1.0, size=(40, 16))
    mean, std = kernel_inception_distance(real, fake, subset_size=40, subsets=1)
    assert mean == pytest.approx(numpy_kid(real, fake), rel=1e-6) and std == 0.0
    same_mean, _ = kernel_inception_distance(real, rng.normal(size=(40, 16)), subset_size=40, subsets=1)
    halves, spread = kernel_inception_distance(real, fake)  # default: 100 subsets of 20
    assert spread > 0 and halves == pytest.approx(mean, rel=0.3)
    assert abs(same_mean) < mean / 5


def test_ms_ssim_betas_fit_the_image_size_and_identical_sets_score_one():
    assert len(ms_ssim_betas(256)) == 5 and len(ms_ssim_betas(64)) == 3
    assert sum(ms_ssim_betas(64)) == pytest.approx(1.0)
    images = smooth_images(1).repeat(4, 1, 1, 1)
    assert mean_pairwise_ms_ssim(images) == pytest.approx(1.0, abs=1e-6)
    assert mean_pairwise_ms_ssim(smooth_images(4, seed=5)) < 0.9


def test_conditional_accuracy_by_hand():
    overall, per_class = conditional_accuracy(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]), 4)
    assert overall == pytest.approx(4 / 6)
    assert per_class[:3] == pytest.approx([0.5, 0.5, 1.0]) and np.isnan(per_class[3])


def test_inception_fid_is_not_computed_without_a_verified_weights_file(tmp_path):
    images = smooth_images(4)
    missing = inception_fid(images, images, None)
    assert missing.value is None and "no Inception-v3 weights file configured" in missing.reason
    absent = inception_fid(images, images, str(tmp_path / "nothing.pth"))
    assert absent.value is None and "does not exist" in absent.reason
    impostor = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    impostor.write_bytes(b"not the weights")
    wrong = inception_fid(images, images, str(impostor))
    assert wrong.value is None and sha256_of(impostor) in wrong.reason and PUBLISHED_SHA256_PREFIX in wrong.reason
    pinned = inception_fid(images, images, str(impostor), expected_sha256="0" * 64)
    assert pinned.value is None and "expected " + "0" * 64 in pinned.reason


def test_a_planted_hatch_is_found_at_its_period_and_real_anatomy_has_no_such_peak():
    import pydicom
    from skimage.transform import resize

    from cxr_pipeline.metrics.periodic import strongest_peak
    from tests.conftest import pydicom_file

    pixels = pydicom.dcmread(pydicom_file("RG1_UNCR.dcm")).pixel_array.astype(np.float64)
    tiles = [
        resize(pixels[y : y + 640, x : x + 640], (128, 128), anti_aliasing=True)
        for y, x in ((400, 300), (500, 900), (900, 500))
    ]
    tiles = np.stack([(t - t.min()) / (t.max() - t.min()) for t in tiles])
    clean = strongest_peak(tiles)
    y, x = np.mgrid[0:128, 0:128]
    hatch = 0.03 * np.sin(2 * np.pi * (x + y) / 4.0)  # a faint diagonal pattern, period 4 / sqrt(2) px
    hatched = strongest_peak(tiles + hatch)
    assert hatched.db > clean.db + 10 and hatched.db > 20
    assert hatched.period_px == pytest.approx(4 / math.sqrt(2), rel=0.05)
    assert abs(hatched.frequency[0]) == abs(hatched.frequency[1]) == 32  # (x + y) / 4: 32 cycles each way
    assert clean.db < 15  # real anatomy: no narrow peak tens of dB above its ring
