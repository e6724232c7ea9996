"""Evaluation parts that need no trained diffusion model: the feature classifier, NLM tuning, reports."""

import base64
import re

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_pipeline.data.image_store import ImageStore, to_stored
from cxr_pipeline.evaluation.denoising import nlm_denoise, tune_nlm
from cxr_pipeline.evaluation.restoration import comparison_grid
from cxr_pipeline.metrics.restoration import per_image_scores
from cxr_pipeline.models.classifier import (
    ClassifierConfig,
    augment,
    classification_scores,
    embed,
    load_classifier,
    train_classifier,
)
from cxr_pipeline.models.training import TrainConfig
from cxr_pipeline.reports.document import Figure, Report, Section, Table, render_html, render_markdown, write_report


def blob_dataset(root, per_split=(48, 16, 8), size=32):
    """Two classes a classifier must tell apart by laterality: a bright blob on the left or the right."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    images, labels, splits = [], [], []
    for split, count in zip(("train", "val", "test"), per_split):
        for k in range(count):
            label = k % 2
            centre = (0.3 if label == 0 else 0.7) + rng.normal(0, 0.03)
            blob = 0.5 * np.exp(-((x - centre) ** 2 + (y - 0.5 - rng.normal(0, 0.05)) ** 2) / 0.01)
            images.append(np.clip(0.2 + blob + rng.normal(0, 0.03, (size, size)), 0, 1))
            labels.append(label)
            splits.append(split)
    store = ImageStore(root / "images")
    shard = store.write_shard(to_stored(np.stack(images).astype(np.float32)))
    metadata = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(len(images))],
            "shard": shard,
            "shard_index": range(len(images)),
            "split": splits,
            "class_id": np.array(labels, float),
        }
    )
    return metadata, store


def test_classifier_learns_laterality_and_reloads_with_the_same_features(tmp_path):
    metadata, store = blob_dataset(tmp_path)
    train_config = TrainConfig(
        steps=60,
        batch_size=16,
        learning_rate=3e-3,
        warmup_steps=5,
        eval_every=30,
        checkpoint_every=30,
        log_every=10,
        device="cpu",
    )
    outcome = train_classifier(
        metadata,
        store,
        ["left", "right"],
        ClassifierConfig(widths=(8, 16, 32)),
        train_config,
        tmp_path / "runs",
        "hash",
    )
    assert outcome.final_step == 60
    assert outcome.metrics["val_auroc_left"] > 0.95 and outcome.metrics["val_accuracy"] > 0.85
    model, settings = load_classifier(outcome.model_dir, "cpu")
    assert settings.classes == ["left", "right"] and settings.num_features == 32 and settings.training.step > 0
    test = metadata[metadata["split"] == "test"]
    images = torch.from_numpy(store.read_many(list(test["shard"]), list(test["shard_index"]))).unsqueeze(1)
    features, probabilities = embed(model, images)
    assert features.shape == (len(test), 32) and np.allclose(probabilities.sum(axis=1), 1.0)
    assert (probabilities.argmax(axis=1) == test["class_id"].to_numpy()).mean() > 0.85
    one_by_one = np.concatenate([embed(model, images[i : i + 1])[0] for i in range(len(images))])
    assert np.allclose(one_by_one, features, atol=1e-5)  # no batch dependence (GroupNorm)


def test_augmentation_shifts_and_adjusts_gamma_but_never_flips():
    image = torch.zeros(1, 1, 16, 16)
    image[0, 0, 4:12, 1:4] = 0.8  # a bar on the left
    out = augment(image.repeat(32, 1, 1, 1), ClassifierConfig(max_shift=2), np.random.default_rng(0))
    columns = out[:, 0].sum(dim=1)  # intensity by column
    assert (columns[:, :8].sum(dim=1) > columns[:, 8:].sum(dim=1)).all()  # still on the left
    assert len({tuple(c.nonzero().flatten().tolist()) for c in (columns > 0.1)}) > 1  # but moved


def test_classification_scores_leave_out_classes_without_positives():
    probabilities = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0]])
    scores = classification_scores(probabilities, np.array([0, 1, 0, 1]), ["a", "b", "c"])
    assert scores["val_auroc_a"] == pytest.approx(1.0) and scores["val_accuracy"] == pytest.approx(1.0)
    assert "val_auroc_c" not in scores and scores["val_auroc_macro"] == pytest.approx(1.0)


def test_nlm_tuned_on_validation_beats_the_noisy_input():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:48] / 48
    clean = (
        torch.from_numpy(np.stack([0.5 + 0.2 * np.sin(4 * x + p) for p in rng.uniform(0, 6, 6)])).float().unsqueeze(1)
    )
    noisy = (clean + torch.from_numpy(rng.normal(0, 0.05, clean.shape)).float()).clamp(0, 1)
    factor, search = tune_nlm(clean[:3], noisy[:3], factors=(0.2, 0.8, 1.5))
    assert factor == search.loc[search["val PSNR"].idxmax(), "h / sigma"]
    assert search["val PSNR"].nunique() == 3
    denoised = nlm_denoise(noisy[3:], factor)
    gain = per_image_scores(denoised, clean[3:])["psnr"] - per_image_scores(noisy[3:], clean[3:])["psnr"]
    assert (gain > 3.0).all()


def test_comparison_grid_has_one_row_per_image_and_one_column_per_version():
    columns = [torch.full((3, 1, 8, 8), v) for v in (0.0, 0.5, 1.0)]
    grid = comparison_grid(columns, rows=2)
    assert grid.shape == (2 * 8 + 2, 3 * 8 + 2 * 2)
    assert grid[0, 9] == 0.0 and grid[0, 10] == 0.5 and grid[0, 20] == 1.0  # gap, second, third column


def test_report_renders_tables_and_images_in_html_and_markdown(tmp_path):
    table = Table("Scores", pd.DataFrame({"method": ["bicubic", "<model>"], "psnr": ["30.1", "31.2"]}), "a note")
    gray = Figure("Grid", np.linspace(0, 1, 64).reshape(8, 8), "caption")
    color = Figure("Heat", np.random.default_rng(0).random((8, 8, 3)))
    report = Report("Evaluation", "summary text", [Section("Super-resolution x4", "text", [table], [gray, color])])
    html = render_html(report)
    assert "<table" in html and "31.2" in html and "&lt;model&gt;" in html  # escaped, not markup
    embedded = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    assert len(embedded) == 2 and all(base64.b64decode(e).startswith(b"\x89PNG") for e in embedded)
    assert "src='http" not in html and 'src="http' not in html  # self-contained
    markdown, files = render_markdown(report)
    assert "| method" in markdown and "31.2" in markdown and len(files) == 2
    html_path, markdown_path = write_report(report, tmp_path / "report")
    for name in files:
        assert (tmp_path / "report" / name).read_bytes().startswith(b"\x89PNG")
        assert f"]({name})" in markdown_path.read_text()
    assert html_path.read_text() == html


def test_paired_gain_is_image_by_image_with_a_patient_bootstrap():
    from cxr_pipeline.evaluation.restoration import paired_gain

    # 6 images of 3 patients; the model beats the reference by exactly 1 dB on every image, while
    # both methods' own PSNRs vary by 10 dB across images: the paired interval is tight at 1
    base = np.array([20.0, 30.0, 25.0, 22.0, 28.0, 24.0])
    frame = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(6)] * 2,
            "patient": ["a", "a", "b", "b", "c", "c"] * 2,
            "method": ["model"] * 6 + ["ref"] * 6,
            "psnr": np.concatenate([base + 1.0, base]),
        }
    )
    # the reference rows in reverse order: pairing must follow image ids, not row order
    frame = pd.concat([frame.iloc[:6], frame.iloc[6:].iloc[::-1]], ignore_index=True)
    gain = paired_gain(frame, "model", "ref", resamples=200)
    assert gain.mean == pytest.approx(1.0) and gain.ci_low == pytest.approx(1.0) and gain.ci_high == pytest.approx(1.0)
    # gains that differ between patients (+3, -1, +1): same mean, an interval that now has width
    frame.loc[frame["method"] == "model", "psnr"] = base + np.array([3.0, 3.0, -1.0, -1.0, 1.0, 1.0])
    mixed = paired_gain(frame, "model", "ref", resamples=500)
    assert mixed.mean == pytest.approx(1.0) and mixed.ci_low < 1.0 < mixed.ci_high
