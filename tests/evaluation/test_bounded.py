"""What keeps the cost and memory of a run bounded at any dataset size: evaluation and validation
sets drawn as whole patients under a cap, latents written and read through memory maps, and
statistics over a training set taken batch by batch, with the same figures as taken whole."""

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_pipeline.data import atomic
from cxr_pipeline.data.splits import patient_subset
from cxr_pipeline.evaluation.caps import EVALUATION_CAPS, draw_patients, split_draw
from cxr_pipeline.models.batches import RunningMoments
from cxr_pipeline.models.diffusion_training import LatentRows, residual_scale


def _rows(patients: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, size=patients)
    keys = np.repeat([f"nih:{i:05d}" for i in range(patients)], counts)
    return pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(len(keys))],
            "patient_key": keys,
            "split": "test",
            "class_id": rng.choice([0.0, 1.0, np.nan], size=len(keys)),
        }
    )


def test_a_split_under_its_cap_is_used_whole_and_in_order():
    rows = _rows(30)
    draw = draw_patients(rows, len(rows), "test")
    pd.testing.assert_frame_equal(draw.rows, rows)
    assert draw.whole and f"all {len(rows)} images of 30 patients" in draw.describe()


def test_a_capped_draw_takes_whole_patients_stably_as_data_grows():
    rows = _rows(400)
    draw = draw_patients(rows, 200, "test", seed=0)
    assert 190 <= len(draw.rows) <= 200 and not draw.whole
    drawn = set(draw.rows["patient_key"])
    # whole patients: every image of a drawn patient, none of the others
    assert set(rows.loc[rows["patient_key"].isin(drawn), "image_id"]) == set(draw.rows["image_id"])
    assert "whole patients drawn at random" in draw.describe() and "cap of 200" in draw.describe()
    # the same draw on every call, another with another seed
    assert set(draw_patients(rows, 200, "test", seed=0).rows["image_id"]) == set(draw.rows["image_id"])
    assert set(draw_patients(rows, 200, "test", seed=1).rows["patient_key"]) != drawn
    # a patient's rank is its own: with more patients arriving, the first drawn stay ahead of them
    grown = pd.concat([rows, _rows(400, seed=1).assign(patient_key=lambda f: "new:" + f["patient_key"])])
    regrown = set(draw_patients(grown, 400, "test").rows["patient_key"])
    assert drawn <= regrown or len(drawn - regrown) < len(drawn) / 2
    # the cost stops growing: a 4x bigger split still gives at most the cap
    assert len(draw_patients(pd.concat([rows] * 4, ignore_index=True), 200, "test").rows) <= 200


def test_a_single_patient_over_the_cap_is_still_drawn():
    rows = pd.DataFrame({"image_id": ["a", "b", "c"], "patient_key": ["p", "p", "p"]})
    assert len(patient_subset(rows, 2)) == 3
    with pytest.raises(ValueError, match="at least 1"):
        patient_subset(rows, 0)


def test_labelled_draws_and_profile_caps_cover_the_demo_splits():
    rows = _rows(50)
    assert split_draw(rows, "test", None, labelled=True).rows["class_id"].notna().all()
    demo = EVALUATION_CAPS["demo"]  # above every split of the 300-patient demo: its figures are unchanged
    assert min(demo.test_images, demo.val_images, demo.train_reference, demo.utility_train_images) >= 500
    full = EVALUATION_CAPS["full"]
    assert full.test_images <= 2000 and full.val_images <= 500


def test_npy_rows_writes_what_np_save_writes(tmp_path):
    array = np.random.default_rng(0).normal(size=(10, 3, 4, 4)).astype(np.float32)
    with atomic.npy_rows(tmp_path / "rows.npy", len(array)) as out:
        for start in range(0, 10, 3):
            out.append(array[start : start + 3])
    np.save(tmp_path / "whole.npy", array)
    assert (tmp_path / "rows.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()
    with atomic.npy_rows(tmp_path / "empty.npy", 0):
        pass
    assert np.load(tmp_path / "empty.npy").shape == (0,)
    with pytest.raises(ValueError, match="2 rows written, 3 expected"):
        with atomic.npy_rows(tmp_path / "short.npy", 3) as out:
            out.append(array[:2])
    assert not (tmp_path / "short.npy").exists()  # a short write leaves nothing behind


def test_streamed_statistics_equal_the_whole_tensor_ones(tmp_path):
    rng = np.random.default_rng(1)
    hr = rng.normal(0.3, 1.7, size=(700, 4, 8, 8)).astype(np.float32)
    lr = (hr + rng.normal(0, 0.2, size=hr.shape)).astype(np.float32)
    moments = RunningMoments()
    for start in range(0, len(hr), 97):
        moments.add(torch.from_numpy(hr[start : start + 97]))
    assert moments.std() == float(torch.from_numpy(hr).std())  # the same float32, not only close
    np.save(tmp_path / "hr_train.npy", hr)
    np.save(tmp_path / "lr_train.npy", lr)
    factor = 0.72
    lazy_hr, lazy_lr = (LatentRows(tmp_path / f"{name}_train.npy", factor) for name in ("hr", "lr"))
    whole_hr, whole_lr = torch.from_numpy(hr) * factor, torch.from_numpy(lr) * factor
    assert residual_scale(lazy_hr, lazy_lr) == float(1.0 / (whole_hr - whole_lr).std().clamp_min(1e-6))
    picked = torch.tensor([5, 3, 699, 3])
    torch.testing.assert_close(lazy_hr[picked], whole_hr[picked], rtol=0, atol=0)
    mask = np.arange(700) % 3 == 0
    subset = lazy_hr.subset(mask)
    assert len(subset) == mask.sum() and subset.shape == (mask.sum(), 4, 8, 8)
    torch.testing.assert_close(subset[torch.tensor([0, 2])], whole_hr[mask][[0, 2]], rtol=0, atol=0)
    torch.testing.assert_close(lazy_hr[:4], whole_hr[:4], rtol=0, atol=0)


def test_nlm_on_several_threads_gives_the_one_thread_output():
    from cxr_pipeline.evaluation.denoising import nlm_denoise

    noisy = torch.rand(6, 1, 48, 48, generator=torch.Generator().manual_seed(0)) * 0.3 + 0.35
    torch.testing.assert_close(nlm_denoise(noisy, 1.0, threads=1), nlm_denoise(noisy, 1.0, threads=3), rtol=0, atol=0)


def test_a_split_of_too_few_patients_is_flagged_in_the_report_and_the_run():
    from cxr_pipeline.evaluation.outcome import EvaluationOutcome
    from cxr_pipeline.reports.document import Report

    def outcome() -> EvaluationOutcome:
        return EvaluationOutcome("e", Report("t", "Scored.", []), {}, [], [], (), "")

    one_patient = pd.DataFrame({"image_id": ["a", "b"], "patient_key": ["p1", "p1"], "split": "test"})
    flagged = outcome()
    flagged.note_draws([draw_patients(one_patient, None, "test", 0)])
    assert flagged.metrics["patients_scored_test"] == 1.0
    assert "Only 1 patient(s) in test" in flagged.report.summary and "interval_warning" in flagged.asset_metadata
    many = pd.DataFrame({"image_id": list("abcdef"), "patient_key": [f"p{i}" for i in range(6)], "split": "test"})
    fine = outcome()
    fine.note_draws([draw_patients(many, None, "test", 0)])
    assert fine.metrics["patients_scored_test"] == 6.0 and "Only" not in fine.report.summary
