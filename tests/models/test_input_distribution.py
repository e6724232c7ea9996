"""The out-of-distribution score: calibration on val, and far inputs flagged. The app tests score
a real radiograph against models trained on the demo through the whole path."""

import numpy as np
import pytest

from cxr_pipeline.models.input_distribution import InputDistribution, latent_features, novelty


def latents(count: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, (count, 4, 1, 1)) + shift  # per-image brightness of each channel
    return (base + 0.3 * rng.normal(0, 1, (count, 4, 8, 8))).astype(np.float32)


def test_the_threshold_flags_about_one_in_a_hundred_held_out_images_and_every_far_one(tmp_path):
    train, val, test = latents(400, 0), latents(300, 1), latents(300, 2)
    reference = InputDistribution.fit(latent_features(train), latent_features(val), latent_features(test))
    assert reference.threshold > reference.val_median > 0
    # calibrated on val to flag 1 in 100, checked on images it never saw: about that rate, from both sides
    # (a detector that flags nothing, or everything, fails)
    assert 0.0 < reference.test_flagged_share <= 0.05
    far = novelty(reference, latents(20, 3, shift=4.0))
    assert all(n.out_of_distribution and n.ratio > 1 for n in far)
    assert far[0].message().startswith("Out of distribution")
    near = novelty(reference, test[:1])[0]
    assert near.as_dict()["ood_threshold"] == pytest.approx(reference.threshold, abs=1e-3)
    reference.save(tmp_path)  # travels with a model folder
    loaded = InputDistribution.load(tmp_path)
    np.testing.assert_allclose(loaded.distance(test[:5]), reference.distance(test[:5]))
    assert InputDistribution.load(tmp_path / "elsewhere") is None


def test_too_few_images_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="needs >= 2 train and >= 1 val images"):
        InputDistribution.fit(latent_features(latents(1, 0)), latent_features(latents(3, 1)))


def test_a_report_with_words_no_training_report_has_is_flagged():
    from cxr_pipeline.models.input_distribution import ReportDistribution

    train = [
        "FINDINGS: The lungs are clear. No pleural effusion. IMPRESSION: Normal chest.",
        "FINDINGS: Small right pleural effusion. IMPRESSION: Right effusion.",
        "FINDINGS: Heart size is enlarged. IMPRESSION: Cardiomegaly.",
    ] * 5
    val = ["FINDINGS: The lungs are clear. IMPRESSION: No effusion.", "FINDINGS: Heart size is normal."]
    vocabulary = ReportDistribution.fit(train, val)
    assert vocabulary.threshold == 0.0  # every val word occurs in training
    known = vocabulary.check("Findings: small left pleural effusion.")  # "left" is new, 1 of 5 words
    assert known.unseen == ("left",) and known.out_of_distribution
    assert not vocabulary.check("IMPRESSION: NORMAL CHEST, 2.").out_of_distribution  # case, numbers
    flagged = vocabulary.check("Biventricular pacemaker leads terminate appropriately.")
    assert flagged.share == 1.0 and "pacemaker" in flagged.message()
