"""Degradations and pair stores: right sizes, physically sensible noise, deterministic per image."""

import numpy as np
import pandas as pd
import pytest

from cxr_pipeline.data.degrade import (
    DegradationMix,
    downsample,
    image_rng,
    simulate_low_dose,
    simulate_low_dose_ct,
    upsample_bicubic,
)
from cxr_pipeline.data.image_store import ImageStore, to_stored
from cxr_pipeline.data.pairs import build_low_dose_pairs, build_sr_pairs, low_dose_pair_dir, scales_built, sr_pair_dir


def phantom_like(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    return np.clip(0.5 + 0.3 * np.sin(6 * x + seed) * np.cos(4 * y) + rng.normal(0, 0.01, (size, size)), 0, 1).astype(
        np.float32
    )


def test_downsample_is_antialiased_and_sized():
    stripes = np.zeros((64, 64), dtype=np.float32)
    stripes[:, ::2] = 1.0
    low = downsample(stripes, 4)
    assert low.shape == (16, 16) and abs(float(low.mean()) - 0.5) < 0.02 and float(low.std()) < 0.05
    assert upsample_bicubic(low, 4).shape == (64, 64)
    with pytest.raises(ValueError):
        downsample(np.zeros((30, 30), dtype=np.float32), 4)


def test_low_dose_noise_follows_the_photon_count():
    image = phantom_like(0)
    errors = {}
    for photons in (100_000, 10_000, 1_000):
        noisy = simulate_low_dose(image, photons, np.random.default_rng(1), electronic_noise=0.0)
        errors[photons] = float(np.sqrt(((noisy - image) ** 2).mean()))
        assert abs(float(noisy.mean() - image.mean())) < 0.01  # the log transform keeps it unbiased
    # Quantum noise: RMS error ~ 1/sqrt(I0), so 10x fewer photons -> about 3.16x the noise.
    assert errors[1_000] / errors[10_000] == pytest.approx(np.sqrt(10), rel=0.15)
    assert errors[10_000] / errors[100_000] == pytest.approx(np.sqrt(10), rel=0.15)
    # Dense regions get fewer photons and so more noise than thin ones.
    dense = simulate_low_dose(np.full((64, 64), 0.9, np.float32), 1_000, np.random.default_rng(2), 0.0)
    thin = simulate_low_dose(np.full((64, 64), 0.1, np.float32), 1_000, np.random.default_rng(2), 0.0)
    assert dense.std() > 2 * thin.std()


def test_electronic_noise_adds_to_quantum_noise():
    image = phantom_like(3)
    quiet = simulate_low_dose(image, 3_000, np.random.default_rng(4), electronic_noise=0.0)
    loud = simulate_low_dose(image, 3_000, np.random.default_rng(4), electronic_noise=20.0)
    assert np.abs(loud - image).mean() > np.abs(quiet - image).mean()


def test_degradation_mix_records_what_it_did():
    rng = image_rng(0, "abc", "sr_x4")
    out, sigma, noise = DegradationMix(blur_probability=1.0, noise_probability=1.0).apply(phantom_like(1), rng)
    assert 0.2 <= sigma <= 1.2 and 0.0 <= noise <= 0.01 and out.dtype == np.float32


def test_pair_stores_are_complete_and_deterministic(tmp_path):
    store = ImageStore(tmp_path / "images")
    images = np.stack([phantom_like(i) for i in range(10)])
    shard = store.write_shard(to_stored(images))
    metadata = pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(10)],
            "shard": shard,
            "shard_index": range(10),
            "split": ["train"] * 8 + ["val"] * 2,
        }
    )
    first = build_sr_pairs(metadata, store, tmp_path / "pairs", [2, 4], DegradationMix(), seed=0)
    assert scales_built(tmp_path / "pairs") == [2, 4]
    low = ImageStore(sr_pair_dir(tmp_path / "pairs", 4))
    assert low.read(first[4]["shard"][0], 0).shape == (16, 16)
    assert first[4]["image_id"].tolist() == metadata["image_id"].tolist()
    again = build_sr_pairs(metadata, store, tmp_path / "again", [4], DegradationMix(), seed=0)
    other = ImageStore(sr_pair_dir(tmp_path / "again", 4))
    np.testing.assert_array_equal(
        low.read_many(list(first[4]["shard"]), list(first[4]["shard_index"])),
        other.read_many(list(again[4]["shard"]), list(again[4]["shard_index"])),
    )
    pd.testing.assert_series_equal(first[4]["blur_sigma"], again[4]["blur_sigma"])

    doses = build_low_dose_pairs(metadata, store, tmp_path / "pairs", [3000.0], electronic_noise=5.0, seed=0)
    noisy = ImageStore(low_dose_pair_dir(tmp_path / "pairs", 3000.0))
    assert noisy.read(doses[3000.0]["shard"][0], 0).shape == (64, 64)
    assert (doses[3000.0]["photons"] == 3000.0).all()


def ct_slice(seed: int = 0, size: int = 64) -> np.ndarray:
    from cxr_pipeline.data.demo.ct_slices import render_slice, sample_chest, to_window

    rng = np.random.default_rng(seed)
    return to_window(render_slice(sample_chest(rng), 0.5, size, "Normal", rng))


def test_ct_low_dose_noise_lives_in_the_projections_not_in_the_pixels():
    """CT's noise after filtered back-projection is correlated along the rays it came from
    (streaks): neighbouring pixels' noise correlates along the streaks' direction, where a
    radiograph's per-pixel noise does not correlate at all; and it grows as the dose falls."""

    def streakiness(noise: np.ndarray, inside: np.ndarray) -> float:
        """The larger of the horizontal and vertical neighbour correlations of a noise field."""
        horizontal = np.corrcoef(noise[:, :-1][inside[:, :-1]], noise[:, 1:][inside[:, :-1]])[0, 1]
        vertical = np.corrcoef(noise[:-1][inside[:-1]], noise[1:][inside[:-1]])[0, 1]
        return float(max(abs(horizontal), abs(vertical)))

    ct, radiograph = [], []
    for seed in range(4):
        image = ct_slice(seed)
        soft = (image > 0.05) & (image < 0.95)  # away from the window's clipping
        noise = {i0: simulate_low_dose_ct(image, i0, np.random.default_rng(seed)) - image for i0 in (10000.0, 1000.0)}
        assert np.sqrt((noise[1000.0][soft] ** 2).mean()) > 2 * np.sqrt((noise[10000.0][soft] ** 2).mean()) > 0
        ct.append(streakiness(noise[1000.0], soft))
        flat = simulate_low_dose(image, 1000.0, np.random.default_rng(seed)) - image
        radiograph.append(streakiness(flat, soft))
    assert np.mean(ct) > 0.15 and np.mean(radiograph) < 0.08, (ct, radiograph)
    # deterministic per stream, and the slice stays in [0, 1]
    image = ct_slice(0)
    once = simulate_low_dose_ct(image, 1000.0, np.random.default_rng(1))
    np.testing.assert_array_equal(simulate_low_dose_ct(image, 1000.0, np.random.default_rng(1)), once)
    assert once.min() >= 0 and once.max() <= 1


def test_low_dose_pairs_follow_each_images_modality(tmp_path):
    store = ImageStore(tmp_path / "images")
    shard = store.write_shard(to_stored(np.stack([ct_slice(0), ct_slice(1), phantom_like(0)])))
    metadata = pd.DataFrame(
        {
            "image_id": ["ct0", "ct1", "cr0"],
            "shard": shard,
            "shard_index": range(3),
            "split": "train",
            "modality": ["CT", "CT", None],
        }
    )
    index = build_low_dose_pairs(metadata, store, tmp_path / "pairs", [1000.0], electronic_noise=5.0, seed=0)[1000.0]
    assert index["noise_model"].tolist() == ["ct", "ct", "projection"]
    noisy = ImageStore(low_dose_pair_dir(tmp_path / "pairs", 1000.0)).read(index["shard"][0], 0)
    clean = store.read(shard, 0)  # what the pair was made from: the stored slice
    np.testing.assert_allclose(
        noisy, simulate_low_dose_ct(clean, 1000.0, image_rng(0, "ct0", "lowdose_1000")), atol=1e-3
    )
