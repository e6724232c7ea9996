"""The baselines every restoration model is measured against, and the rules goals are judged by:
the variance-stabilising transform and its unbiased inverse, NLM inside it, the regression CNN,
equal-count references, calibrated memorization and interval verdicts."""

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_pipeline.data.degrade import DetectorCounts, image_rng, simulate_low_dose
from cxr_pipeline.evaluation.denoising import (
    denoising_baselines,
    detectors_of,
    nlm_denoise,
    tune_vst_nlm,
    vst_nlm_denoise,
)
from cxr_pipeline.evaluation.restoration import (
    Method,
    RestorationEvaluation,
    detail_advantage,
    paired_gain,
    score_methods,
)
from cxr_pipeline.evaluation.text_measures import MEMORIZATION_QUANTILE, memorization
from cxr_pipeline.metrics.distribution import at_equal_counts, frechet_distance
from cxr_pipeline.metrics.restoration import per_image_scores
from cxr_pipeline.metrics.variance_stabilization import (
    algebraic_inverse,
    generalized_anscombe,
    inverse_generalized_anscombe,
)
from cxr_pipeline.metrics.verdicts import Verdict, at_least, improves, not_worse
from cxr_pipeline.models.regression import RegressionRecipe, ResidualCNN, restore, train_regression


def test_the_transform_gives_every_count_level_unit_variance_and_its_inverse_is_unbiased():
    rng = np.random.default_rng(0)
    for mean in (8.0, 60.0, 400.0, 5000.0):
        counts = rng.poisson(mean, 200_000) + rng.normal(0.0, 5.0, 200_000)
        stabilized = generalized_anscombe(counts, 5.0)
        assert stabilized.std() == pytest.approx(1.0, abs=0.03), mean  # raw counts: std sqrt(mean + 25)
        # the denoiser estimates E[f(z)]; only the exact unbiased inverse maps that back to the mean
        assert inverse_generalized_anscombe(stabilized.mean(), 5.0) == pytest.approx(mean, abs=0.05 * np.sqrt(mean))
    low = rng.poisson(20.0, 400_000) + rng.normal(0.0, 5.0, 400_000)
    biased = algebraic_inverse(generalized_anscombe(low, 5.0).mean(), 5.0) - 20.0
    unbiased = inverse_generalized_anscombe(generalized_anscombe(low, 5.0).mean(), 5.0) - 20.0
    assert biased < -0.15 and abs(unbiased) < 0.05


def test_detector_counts_round_trip_and_the_pairs_are_what_they_were():
    detector = DetectorCounts(1000.0)
    image = np.linspace(0, 1, 64).reshape(8, 8)
    np.testing.assert_allclose(detector.image(detector.counts(image)), image, atol=1e-12)
    # bit for bit the pairs made before the counts had a class of their own
    rng_a, rng_b = image_rng(0, "x", "lowdose_1000"), image_rng(0, "x", "lowdose_1000")
    mu = image * 4.0
    counts = np.maximum(rng_b.poisson(1000.0 * np.exp(-mu)) + rng_b.normal(0.0, 5.0, mu.shape), 1.0)
    before = np.clip(-np.log(counts / 1000.0) / 4.0, 0.0, 1.0).astype(np.float32)
    np.testing.assert_array_equal(simulate_low_dose(image, 1000.0, rng_a), before)


def radiographs(count: int, size: int = 48, seed: int = 0) -> torch.Tensor:
    """Smooth anatomy with dense and lucent regions: where signal-dependent noise differs most."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(count):
        cx, cy, w = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.15)
        body = 0.15 + 0.6 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / w)
        ribs = 0.05 * (np.sin(2 * np.pi * (6 + rng.uniform(-1, 1)) * y + rng.uniform(0, 6)) > 0.7)
        images.append(np.clip(body + ribs, 0, 1))
    return torch.from_numpy(np.stack(images)).float().unsqueeze(1)


def noisy_pairs(clean: torch.Tensor, photons: float, seed: int = 0) -> torch.Tensor:
    noisy = [simulate_low_dose(c[0].numpy(), photons, image_rng(seed, str(i), "lowdose")) for i, c in enumerate(clean)]
    return torch.from_numpy(np.stack(noisy)).unsqueeze(1)


def test_nlm_on_the_stabilized_counts_beats_nlm_on_the_image_at_low_dose():
    clean = radiographs(12)
    noisy = noisy_pairs(clean, 1000.0)
    detectors = [DetectorCounts(1000.0)] * len(clean)
    factor, search = tune_vst_nlm(clean[:6], noisy[:6], detectors[:6], factors=(0.5, 0.8, 1.2))
    assert factor == search.loc[search["val PSNR"].idxmax(), "h (stabilized)"]
    stabilized = per_image_scores(vst_nlm_denoise(noisy[6:], detectors[6:], factor, threads=1), clean[6:])["psnr"]
    raw = max(per_image_scores(nlm_denoise(noisy[6:], f, threads=1), clean[6:])["psnr"].mean() for f in (0.6, 1.0, 1.5))
    assert stabilized.mean() > raw + 0.2  # even against NLM's best h chosen on test itself


def test_the_baselines_name_the_stronger_classical_one_on_val_and_ct_gets_plain_nlm():
    index = pd.DataFrame(
        {"photons": [1000.0, 1000.0], "noise_model": ["projection", "ct"], "electronic_noise": [3.0, 3.0]}
    )
    projection, ct = detectors_of(index)
    assert projection == DetectorCounts(1000.0, 3.0) and ct is None
    clean = radiographs(8)
    noisy = noisy_pairs(clean, 1000.0)
    detectors = [DetectorCounts(1000.0)] * 8
    baselines = denoising_baselines(
        clean[:4], noisy[:4], detectors[:4], noisy[4:], detectors[4:], 1000.0, nlm_factors=(1.0,), vst_factors=(0.8,)
    )
    assert [m.key for m in baselines.methods] == ["noisy", "nlm", "vst_nlm"]
    nlm_val, vst_val = (float(t.frame["val PSNR"].max()) for t in baselines.tables)
    assert baselines.strongest_classical == ("vst_nlm" if vst_val >= nlm_val else "nlm")
    # on CT slices the "VST" path is NLM on the image itself, the same output
    only_ct = vst_nlm_denoise(noisy[4:], [None] * 4, 1.0, threads=1)
    torch.testing.assert_close(only_ct, nlm_denoise(noisy[4:], 1.0, threads=1), rtol=0, atol=0)


def test_the_regression_cnn_starts_as_its_skip_path_and_learns_to_denoise():
    sr = ResidualCNN(scale=4, channels=8, blocks=1)
    low = torch.rand(2, 1, 6, 6)
    expected = torch.nn.functional.interpolate(low, scale_factor=4, mode="bicubic", align_corners=False)
    torch.testing.assert_close(sr(low), expected)  # the tail starts at zero: bicubic
    clean = radiographs(40, size=32)
    noisy = noisy_pairs(clean, 300.0)
    recipe = RegressionRecipe(channels=16, blocks=2, steps=150, batch_size=8, crop=32, validate_every=50)
    trained = train_regression(noisy[:32], clean[:32], noisy[32:36], clean[32:36], recipe)
    assert [step for step, _, _ in trained.curve] == [0, 50, 100, 150]
    best = max(trained.curve, key=lambda point: point[2])
    assert trained.best_step == best[0] > 0  # the val-best checkpoint, not the last one by default
    gain = (
        per_image_scores(restore(trained.model, noisy[36:]), clean[36:])["psnr"]
        - per_image_scores(noisy[36:], clean[36:])["psnr"]
    )
    assert gain.mean() > 2.0, gain  # held-out images it never saw, in training or in choosing the checkpoint


def test_the_tradeoff_says_who_wins_on_psnr_and_who_on_detail():
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.uniform(0, 1, (12, 1, 32, 32))).float()
    smooth = torch.from_numpy(np.stack([np.full((1, 32, 32), t.mean().item()) for t in target])).float()
    textured = (target + torch.from_numpy(rng.normal(0, 0.15, target.shape)).float()).clamp(0, 1)
    methods = [Method("noisy", "noisy", textured), Method("cnn", "CNN", smooth), Method("model", "model", textured)]
    ids, groups = [f"i{k}" for k in range(12)], [f"p{k}" for k in range(12)]
    scores, summaries, gains = score_methods(methods, target, ids, groups, "noisy", 200)
    advantage = detail_advantage(scores, "model", "cnn", 200)
    assert advantage.ci_low > 0  # the textured output keeps detail the flat one lost
    evaluation = RestorationEvaluation(
        "t", "T", "noisy", scores, summaries, gains, {m.key: m.label for m in methods}, [], [], model="model"
    )
    evaluation.versus = {"cnn": paired_gain(scores, "model", "cnn", 200)}
    evaluation.add_tradeoff(200)
    assert "on PSNR it wins" in evaluation.notes[-1]  # noise of 0.15 is closer than a flat mean of uniform pixels
    assert "on fine detail it wins" in evaluation.notes[-1]
    assert evaluation.figures[-1].title.endswith("perception-distortion plane")
    assert evaluation.metrics()["detail_advantage_t_model_vs_cnn"] == pytest.approx(advantage.mean)


def test_the_real_reference_no_longer_depends_on_how_many_val_images_the_cap_allows():
    rng = np.random.default_rng(0)
    test, generated = rng.normal(0, 1, (400, 8)), rng.normal(0, 1, (400, 8))  # a generator as good as real
    ratios, unequal = [], []
    for cap in (60, 120, 400):
        val = rng.normal(0, 1, (cap, 8))
        fd, reference, count = at_equal_counts(frechet_distance, test, generated, val, seed=0)
        assert count == cap
        ratios.append(fd / reference)
        unequal.append(frechet_distance(test, generated) / frechet_distance(test, val))
    assert all(0.7 < r < 1.4 for r in ratios), ratios
    assert unequal[0] < 0.6  # compared at unequal counts, the small reference flattered the generator


def memorization_case(copied: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    train = torch.from_numpy(rng.uniform(0, 1, (200, 1, 8, 8))).float()
    fresh = lambda n: torch.from_numpy(rng.uniform(0, 1, (n, 1, 8, 8))).float()
    real, val = fresh(100), fresh(100)
    generated = torch.cat([train[:copied] + 0.01 * torch.randn(copied, 1, 8, 8), fresh(100 - copied)])
    flat = lambda x: x.reshape(len(x), -1).numpy()
    return memorization(
        generated,
        flat(generated),
        real,
        flat(real),
        train,
        flat(train),
        val,
        flat(val),
        np.arange(100),
    )


def test_memorization_flags_copies_per_sample_against_a_calibrated_quantile():
    clean, copying = memorization_case(0), memorization_case(30)
    for space in ("feature", "pixel"):
        assert 0.0 < clean.val_rate(space) < 0.15  # real unseen images: about the quantile, by construction
        assert clean.share(space).mean < clean.allowed(space)
        assert copying.share(space).mean >= 0.3 and copying.share(space).ci_low > copying.allowed(space)
        assert set(np.argsort(copying.ratios(space))[:30]) == set(range(30))  # the copies are the closest
    assert MEMORIZATION_QUANTILE == 0.05


def test_goals_are_judged_on_their_intervals():
    assert at_least(0.82, 0.95, 0.8).verdict is Verdict.MET
    assert at_least(0.70, 0.90, 0.8).verdict is Verdict.CANNOT_BE_JUDGED
    assert at_least(0.60, 0.75, 0.8).verdict is Verdict.MISSED
    assert not_worse(-0.006, 0.078).verdict is Verdict.MET
    assert not_worse(-0.05, 0.03).verdict is Verdict.CANNOT_BE_JUDGED  # wider than the margin: unresolved
    assert not_worse(-0.09, -0.03).verdict is Verdict.MISSED
    assert improves(0.01, 0.04, reference=0.9).verdict is Verdict.MET
    assert improves(-0.008, 0.0, reference=0.9).verdict is Verdict.MISSED  # the bare estimate is not enough
    assert improves(-0.008, 0.0, reference=1.0).verdict is Verdict.CANNOT_BE_JUDGED


def test_bm3d_is_optional_and_says_why_it_is_not_shipped(monkeypatch):
    from cxr_pipeline.evaluation import denoising

    monkeypatch.setattr(denoising, "bm3d_available", lambda: False)
    with pytest.raises(ModuleNotFoundError, match="non-commercial"):
        denoising.vst_bm3d_denoise(torch.zeros(1, 1, 8, 8), [None], 1.0)


def test_bm3d_where_installed_runs_on_the_stabilized_counts_and_can_be_the_gate():
    pytest.importorskip("bm3d")  # not a dependency (licence): runs where a user installed it
    clean = radiographs(10)
    noisy = noisy_pairs(clean, 1000.0)
    detectors = [DetectorCounts(1000.0)] * 10
    baselines = denoising_baselines(
        clean[:4], noisy[:4], detectors[:4], noisy[4:], detectors[4:], 1000.0, bm3d_factors=(1.0, 1.4)
    )
    assert [m.key for m in baselines.methods] == ["noisy", "nlm", "vst_nlm", "vst_bm3d"]
    best = {t.title.split(" search")[0]: float(t.frame["val PSNR"].max()) for t in baselines.tables}
    assert (
        baselines.strongest_classical
        == {"NLM h": "nlm", "VST + NLM h": "vst_nlm", "VST + BM3D sigma": "vst_bm3d"}[max(best, key=best.get)]
    )
    bm3d_psnr = per_image_scores(baselines.methods[3].images, clean[4:])["psnr"].mean()
    assert bm3d_psnr > per_image_scores(noisy[4:], clean[4:])["psnr"].mean() + 3.0
