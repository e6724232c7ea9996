"""The augmentation experiment's parts on hand-made data: which images each arm trains on, and the
paired, patient-level intervals it reports."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxr_pipeline.data.image_store import ImageStore, to_stored
from cxr_pipeline.evaluation.synthetic_utility import (
    ARMS,
    CLASS_GENERATOR,
    REAL,
    TEXT_GENERATOR,
    arm_training_set,
    arms_named,
    check_provenance,
    generate_pool,
    pool_plan,
    synthetic_counts,
    training_reports,
    utility_scores,
)
from cxr_pipeline.metrics.statistics import patient_weights, weighted_auroc

CLASSES = ["No_Finding", "Effusion", "Pneumothorax"]
SIDE = 8


@pytest.fixture()
def tiny(tmp_path):
    """Real images whose pixels all hold one value per image (so an image is known by its pixels),
    in train / val / test, with a report each naming its split."""
    counts = {"train": [6, 3, 1], "val": [2, 2, 1], "test": [2, 2, 2]}
    rows, pixels = [], []
    for split, per_class in counts.items():
        for c, n in enumerate(per_class):
            for k in range(n):
                index = len(rows)
                rows.append(
                    {
                        "image_id": f"{split}-{c}-{k}",
                        "split": split,
                        "class_id": c,
                        "class_name": CLASSES[c],
                        "patient_key": f"p-{split}-{index // 2}",
                        "findings_text": f"{split} report {index} of {CLASSES[c]}.",
                        "impression_text": "",
                    }
                )
                pixels.append(np.full((SIDE, SIDE), (index + 1) / 100.0))
    store = ImageStore(tmp_path / "images")
    store.initialize(image_size=SIDE, fingerprint="test")
    shard = store.write_shard(to_stored(np.stack(pixels)))
    metadata = pd.DataFrame(rows).assign(shard=shard, shard_index=np.arange(len(rows)))
    return metadata, store


def pixel_value(images: torch.Tensor) -> np.ndarray:
    return np.round(images.mean(dim=(1, 2, 3)).numpy() * 100.0, 2)


def recording_samplers(seen: dict):
    """Class images hold 0.5 + class / 100, text images 0.8; the prompts they are given are kept."""

    def class_sampler(ids, seed):
        seen.setdefault("classes", []).extend(ids)
        return torch.stack([torch.full((1, SIDE, SIDE), 0.5 + c / 100.0) for c in ids])

    def text_sampler(reports, seed):
        seen.setdefault("reports", []).extend(reports)
        return torch.full((len(reports), 1, SIDE, SIDE), 0.8)

    return {CLASS_GENERATOR: class_sampler, TEXT_GENERATOR: text_sampler}


def test_counts_per_arm_follow_their_definition():
    real = np.array([6, 3, 1])
    assert synthetic_counts(ARMS[REAL], real, 1.0) == {}
    matched = synthetic_counts(ARMS["real_synthetic"], real, 1.0)
    assert matched[CLASS_GENERATOR].tolist() == [3, 2, 1] and matched[TEXT_GENERATOR].tolist() == [3, 1, 0]
    balanced = synthetic_counts(ARMS["real_balanced"], real, 1.0)
    assert (balanced[CLASS_GENERATOR] + balanced[TEXT_GENERATOR] + real).tolist() == [6, 6, 6]
    assert synthetic_counts(ARMS["real_class"], real, 0.5)[CLASS_GENERATOR].tolist() == [3, 2, 0]
    plan = pool_plan(arms_named(["real", "real_synthetic", "real_balanced"]), real, 1.0)
    assert plan[CLASS_GENERATOR].tolist() == [3, 2, 3] and plan[TEXT_GENERATOR].tolist() == [3, 1, 2]
    with pytest.raises(ValueError, match="must include 'real'"):
        arms_named(["synthetic"])


def test_arms_hold_exactly_their_images_and_nothing_from_val_or_test(tiny, tmp_path):
    metadata, store = tiny
    train = metadata[metadata["split"] == "train"].reset_index(drop=True)
    arms = arms_named(["real", "real_synthetic", "synthetic", "real_balanced", "real_text"])
    real_counts = np.bincount(train["class_id"], minlength=3)
    seen = {}
    pool = generate_pool(
        pool_plan(arms, real_counts, 1.0),
        CLASSES,
        training_reports(train),
        recording_samplers(seen),
        tmp_path / "pool",
        seed=0,
        log=lambda m: None,
    )
    # the text model was prompted with training reports only, each class with its own reports
    assert seen["reports"] and all(
        r.startswith("FINDINGS: train report") or "train report" in r for r in seen["reports"]
    )
    assert not any(("val report" in r) or ("test report" in r) for r in seen["reports"])
    text_rows = pool[pool["generator"] == TEXT_GENERATOR]
    assert set(text_rows["origin"]) <= set(train["image_id"])
    assert (train.set_index("image_id").loc[text_rows["origin"], "class_id"].to_numpy() == text_rows["class_id"]).all()
    pool_store = ImageStore(tmp_path / "pool")
    train_values = set(
        pixel_value(torch.from_numpy(np.stack([np.full((1, SIDE, SIDE), (i + 1) / 100.0) for i in train.index])))
    )
    outside = set(np.round((metadata.index[metadata["split"] != "train"] + 1).to_numpy(dtype=float), 2))
    for arm in arms:
        data = arm_training_set(arm, train, store, pool, pool_store, 1.0, 3)
        check_provenance(data, set(train["image_id"]), CLASSES)
        values = pixel_value(data.images.stack())
        real_values = values[data.sources == REAL]
        assert not (set(real_values) & outside)  # no val or test image, by its pixels
        assert set(real_values) == (train_values if arm.real else set())
        # generated images are what their generator made, for the class they are labelled with
        for source, value, label in zip(data.sources, values, data.labels):
            if source == CLASS_GENERATOR:
                assert value == pytest.approx(50 + label, abs=0.01)
            elif source == TEXT_GENERATOR:
                assert value == pytest.approx(80, abs=0.01)
        per_class = np.bincount(data.labels, minlength=3)
        if arm.name == "real_balanced":
            assert per_class.tolist() == [6, 6, 6]
        elif arm.name in ("real_synthetic", "real_text"):
            assert per_class.tolist() == (2 * real_counts).tolist()
        elif arm.name == "synthetic":
            assert per_class.tolist() == real_counts.tolist() and (data.sources != REAL).all()
        if arm.name == "real_text":
            assert set(data.sources) == {REAL, TEXT_GENERATOR}


def test_provenance_check_refuses_val_or_test_images_and_reports(tiny, tmp_path):
    metadata, store = tiny
    train = metadata[metadata["split"] == "train"].reset_index(drop=True)
    leaky = pd.concat([train, metadata[metadata["split"] == "test"].head(1)], ignore_index=True)
    data = arm_training_set(ARMS[REAL], leaky, store, pd.DataFrame(), None, 1.0, 3)
    with pytest.raises(ValueError, match="real image 'test-0-0' is not in the training split"):
        check_provenance(data, set(train["image_id"]), CLASSES)
    # a text sample prompted by a test report is refused too
    reports = training_reports(leaky)
    plan = {TEXT_GENERATOR: np.array([7, 0, 0])}  # more than the 6 training reports of class 0: the test one is drawn
    pool = generate_pool(plan, CLASSES, reports, recording_samplers({}), tmp_path / "pool", log=lambda m: None)
    arm = ARMS["real_text"]
    data = arm_training_set(arm, train.iloc[:6], store, pool, ImageStore(tmp_path / "pool"), 7 / 6, 3)
    with pytest.raises(ValueError, match="text_ldm sample prompted by image 'test-0-0'"):
        check_provenance(data, set(train["image_id"]), CLASSES)


def test_a_complete_pool_is_reused_not_regenerated(tiny, tmp_path):
    metadata, _ = tiny
    train = metadata[metadata["split"] == "train"].reset_index(drop=True)
    plan = {CLASS_GENERATOR: np.array([1, 1, 1])}
    first = generate_pool(
        plan, CLASSES, training_reports(train), recording_samplers({}), tmp_path / "pool", log=lambda m: None
    )
    seen = {}
    again = generate_pool(
        plan, CLASSES, training_reports(train), recording_samplers(seen), tmp_path / "pool", log=lambda m: None
    )
    assert not seen and again.equals(first)


def test_weighted_auroc_equals_the_auroc_of_the_resampled_set():
    rng = np.random.default_rng(0)
    scores, positive = np.round(rng.random(40), 1), rng.random(40) < 0.4  # ties on purpose
    weights = np.vstack([np.ones(40), rng.integers(0, 3, size=(5, 40))]).astype(float)
    got = weighted_auroc(scores, positive, weights)
    for row, value in zip(weights, got):
        picked = np.repeat(np.arange(40), row.astype(int))
        assert value == pytest.approx(roc_auc_score(positive[picked], scores[picked]))
    assert np.isnan(weighted_auroc(scores, positive, np.where(positive, 0.0, 1.0)[None]))[0]


def test_patient_bootstrap_moves_whole_patients():
    patients = np.array(["a", "a", "a", "b", "c", "c"])
    weights = patient_weights(patients, 200, np.random.default_rng(0))
    assert (weights[0] == 1).all() and weights.shape == (201, 6)
    assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 1] == weights[:, 2]).all()
    assert (weights[:, 4] == weights[:, 5]).all()
    assert (weights[1:, [0, 3, 4]].sum(axis=1) == 3).all()  # three patients drawn per resample


def test_paired_difference_on_a_hand_made_case():
    """Real-only ranks nothing (constant scores: AUROC 0.5 on every resample); the other arm ranks
    perfectly (1.0 on every resample): the difference is exactly +0.5 with a zero-width interval.
    An arm identical to real has a difference of exactly 0."""
    labels = np.repeat(np.arange(3), 4)
    patients = np.arange(12) // 2
    flat = np.full((12, 3), 1 / 3)
    perfect = np.eye(3)[labels] * 0.9 + 0.05
    scores = utility_scores(
        {"real": [flat, flat], "better": [perfect, perfect], "same": [flat, flat]},
        labels,
        patients,
        CLASSES,
        resamples=300,
    )
    better = scores.row("better", "auroc_macro")
    assert better["value"] == pytest.approx(1.0) and scores.row("real", "auroc_macro")["value"] == pytest.approx(0.5)
    assert better["diff"] == pytest.approx(0.5)
    assert better["diff_low"] == pytest.approx(0.5) and better["diff_high"] == pytest.approx(0.5)
    same = scores.row("same", "auroc_macro")
    assert same["diff"] == 0.0 and same["diff_low"] == 0.0 and same["diff_high"] == 0.0
    assert np.isnan(scores.row("real", "auroc_macro")["diff"])


def test_seed_noise_widens_the_interval():
    """Two seeds that disagree give a wider interval than the same seed twice."""
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 10)
    patients = np.arange(30)
    good = np.eye(3)[labels] * 0.6 + rng.random((30, 3)) * 0.4
    poor = rng.random((30, 3))
    steady = utility_scores({"real": [good, good]}, labels, patients, CLASSES, resamples=500)
    noisy = utility_scores({"real": [good, poor]}, labels, patients, CLASSES, resamples=500)
    width = lambda s: s.row("real", "auroc_macro")["ci_high"] - s.row("real", "auroc_macro")["ci_low"]
    assert width(noisy) > width(steady)
    assert noisy.row("real", "auroc_macro")["seed_std"] > 0 == steady.row("real", "auroc_macro")["seed_std"]
