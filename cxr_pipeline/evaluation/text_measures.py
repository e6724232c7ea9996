"""The measures of text-conditional generation, each on its own: the prompt sets of a split,
prompt consistency, negation, memorization, the retrieval baseline and the guidance sweep on val."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.feature_extraction.text import TfidfVectorizer

from ..data.image_store import ImageStore
from ..data.labels.report_text import finding_mentions, report_prompts
from ..data.labels.vocabulary import LABEL_COLUMNS, NO_FINDING
from ..metrics.distribution import (
    frechet_distance,
    nearest_distances,
)
from ..metrics.statistics import Summary, summarize
from ..models.batches import StoreImages
from ..models.classifier import embed
from ..models.pipelines import TextConditionalGenerator

MODEL_KEY = "text_ldm"
GUIDANCE_SWEEP = (1.0, 2.0, 4.0, 7.5)
PRDC_K = 5


@dataclass
class PromptSet:
    """Reports of one split with their real images and what the labels say they show."""

    prompts: list[str]
    class_ids: np.ndarray  # the single-label class (-1: several findings, or none the classifier knows)
    positives: list[set[str]]  # label columns that are 1
    images: torch.Tensor  # (N, 1, S, S) real images of the reports
    patients: np.ndarray
    image_ids: list[str]

    @classmethod
    def from_rows(
        cls, rows: pd.DataFrame, prompts: Sequence[str], images: torch.Tensor, label_columns: Sequence[str]
    ) -> PromptSet:
        values = rows[list(label_columns)].astype("float32").to_numpy()
        positives = [{c for c, v in zip(label_columns, row) if v == 1.0} for row in values]
        return cls(
            list(prompts),
            rows["class_id"].astype("Int64").fillna(-1).astype(int).to_numpy(),
            positives,
            images,
            rows["patient_key"].astype(str).to_numpy(),
            rows["image_id"].astype(str).tolist(),
        )

    def __len__(self) -> int:
        return len(self.prompts)

    def single_label(self) -> np.ndarray:
        return np.flatnonzero(self.class_ids >= 0)


def reported_rows(metadata: pd.DataFrame, split: str) -> pd.DataFrame:
    """The rows of one split that have a report (a non-empty prompt)."""
    rows = metadata[metadata["split"] == split].reset_index(drop=True)
    prompts = report_prompts(rows).to_numpy()
    return rows[[bool(p) for p in prompts]].reset_index(drop=True)


def prompts_of(rows: pd.DataFrame, store: ImageStore) -> PromptSet:
    """The reports of ``rows`` (all with one: ``reported_rows``) with their stored images."""
    rows = rows.reset_index(drop=True)
    return PromptSet.from_rows(rows, report_prompts(rows).tolist(), StoreImages(store, rows).stack(), LABEL_COLUMNS)


def prompt_set(metadata: pd.DataFrame, store: ImageStore, split: str, limit: int | None = None) -> PromptSet:
    """The reports of one split (rows without one are left out), the first ``limit`` of them."""
    rows = reported_rows(metadata, split)
    return prompts_of(rows.iloc[:limit] if limit else rows, store)


def consistency(
    predicted: np.ndarray, wanted: np.ndarray, class_names: Sequence[str]
) -> tuple[float, dict[str, float]]:
    """Share of samples whose predicted class is the report's, overall and per class (NaN: none)."""
    hits = np.asarray(predicted) == np.asarray(wanted)
    per = {
        name: float(hits[wanted == c].mean()) if (wanted == c).any() else float("nan")
        for c, name in enumerate(class_names)
    }
    return float(hits.mean()) if len(hits) else float("nan"), per


def predicted_classes(
    model: TextConditionalGenerator,
    classifier,
    prompts: Sequence[str],
    first: np.ndarray,
    samples: int,
    *,
    guidance: float,
    steps: int,
    seed: int,
) -> np.ndarray:
    """The classifier's class for ``samples`` samples of each prompt, sample by sample: ``first``
    is the one already drawn at ``seed``, the others are drawn at ``seed + 1000 k``."""
    more = [
        embed(
            classifier,
            model(list(prompts), guidance_scale=guidance, num_inference_steps=steps, generator=seed + 1000 * k),
        )[1].argmax(1)
        for k in range(1, samples)
    ]
    return np.concatenate([np.asarray(first), *more])


REAL_NEGATION = "rate on the real images of the denying reports"


def negation_table(
    prompts: PromptSet, predicted: np.ndarray, class_names: Sequence[str], real_predicted: np.ndarray
) -> pd.DataFrame:
    """Per finding: the rate at which samples of reports denying it (without it in the labels)
    are classified as it, beside the rate for samples of normal reports; also for denying
    reports that state another finding (where the two sets do not overlap), and on the reports'
    real images (``real_predicted``, the classifier's class for each): most
    denying reports state another finding, which the classifier can mistake for the denied one
    on real images too, so normal reports are a floor the real data itself need not reach."""
    mentions = [finding_mentions(p) for p in prompts.prompts]
    normal = (
        prompts.class_ids == class_names.index(NO_FINDING)
        if NO_FINDING in class_names
        else np.zeros(len(prompts), bool)
    )
    rows = []
    for c, name in enumerate(class_names):
        if name == NO_FINDING:
            continue
        denied = np.array(
            [m.get(name) == "negated" and name not in pos for m, pos in zip(mentions, prompts.positives)], dtype=bool
        )
        other = denied & ~normal
        produced = predicted == c
        rows.append(
            {
                "finding": name,
                "denying reports": int(denied.sum()),
                "rate when denied": float(produced[denied].mean()) if denied.any() else np.nan,
                "rate for normal reports": float(produced[normal].mean()) if normal.any() else np.nan,
                "denying reports with another finding": int(other.sum()),
                "rate when denied beside another finding": float(produced[other].mean()) if other.any() else np.nan,
                REAL_NEGATION: float((real_predicted[denied] == c).mean()) if denied.any() else np.nan,
            }
        )
    return pd.DataFrame(rows)


MEMORIZATION_QUANTILE = 0.05  # of real test images' nearest-training distances: the bar a sample must clear
MEMORIZATION_MARGIN = 0.05  # the share a generator may exceed real unseen images' rate by


@dataclass
class Memorization:
    """Re-identification per sample, as the field measures it: each sample's distance to its
    nearest training image divided by the 5th percentile of the same distance for real test
    images (which the model never saw). A ratio below 1 means the sample sits closer to a
    training image than 95% of unseen real images do: flagged. One near-duplicate among the test
    images moves a quantile little, where it moved the old bar (the single closest test image)
    all the way. Real val images, scored the same way, calibrate the share to expect without
    memorization (about the quantile, by construction)."""

    generated_feature: np.ndarray  # each sample's distance to its nearest training image
    real_feature: np.ndarray  # each real test image's
    generated_pixel: np.ndarray
    real_pixel: np.ndarray
    nearest_pixel: np.ndarray  # index of each sample's nearest training image (pixels)
    val_feature: np.ndarray  # each real val image's: the calibration
    val_pixel: np.ndarray
    nearest_feature: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    groups: np.ndarray | None = None  # each sample's patient (of the report it was drawn from)

    def _pair(self, space: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if space == "feature":
            return self.generated_feature, self.real_feature, self.val_feature
        return self.generated_pixel, self.real_pixel, self.val_pixel

    def threshold(self, space: str) -> float:
        return float(np.quantile(self._pair(space)[1], MEMORIZATION_QUANTILE))

    def ratios(self, space: str) -> np.ndarray:
        """Each sample's nearest-training distance over the threshold; below 1: flagged."""
        return self._pair(space)[0] / max(self.threshold(space), 1e-12)

    def flagged(self, space: str) -> np.ndarray:
        return (self.ratios(space) < 1.0).astype(float)

    def share(self, space: str) -> Summary:
        """The flagged share with its patient-bootstrap interval."""
        flags = self.flagged(space)
        return summarize(flags, self.groups if self.groups is not None else np.arange(len(flags)))

    def val_rate(self, space: str) -> float:
        """The share of real val images the same threshold flags: what no memorization looks like."""
        return float((self._pair(space)[2] < self.threshold(space)).mean())

    def allowed(self, space: str) -> float:
        """The goal's bar on the flagged share: the real rate plus the declared margin."""
        return self.val_rate(space) + MEMORIZATION_MARGIN


def memorization(
    generated: torch.Tensor,
    generated_features: np.ndarray,
    real: torch.Tensor,
    real_features: np.ndarray,
    train: torch.Tensor,
    train_features: np.ndarray,
    val: torch.Tensor,
    val_features: np.ndarray,
    groups: np.ndarray | None = None,
) -> Memorization:
    flat = lambda x: x.reshape(len(x), -1).double().numpy() / np.sqrt(x[0].numel())
    generated_pixel, nearest = nearest_distances(flat(generated), flat(train))
    generated_feature, nearest_feature = nearest_distances(generated_features, train_features)
    return Memorization(
        generated_feature,
        nearest_distances(real_features, train_features)[0],
        generated_pixel,
        nearest_distances(flat(real), flat(train))[0],
        nearest,
        nearest_distances(val_features, train_features)[0],
        nearest_distances(flat(val), flat(train))[0],
        nearest_feature,
        None if groups is None else np.asarray(groups),
    )


def retrieval_baseline(train_prompts: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """For each prompt, the index of the training report closest in TF-IDF (word 1- and 2-grams,
    cosine): a retrieval system returns that report's image."""
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(list(train_prompts))
    similarity = vectorizer.transform(list(prompts)) @ vectorizer.transform(list(train_prompts)).T
    return np.asarray(similarity.argmax(axis=1)).reshape(-1)


def guidance_sweep(
    model: TextConditionalGenerator,
    classifier,
    class_names: Sequence[str],
    val: PromptSet,
    reference: torch.Tensor,
    scales: Sequence[float],
    *,
    steps: int,
    seed: int,
    samples: int = 2,
    fd_bound: float = 3.0,
) -> tuple[pd.DataFrame, float]:
    """Consistency (over ``samples`` samples of each normal or single-finding val report: with
    one, the chosen scale flipped between runs) and fd_cxr (one sample per report) on val at each
    guidance scale, and the scale chosen: the most consistent among those within ``fd_bound``
    times the real reference (real ``reference`` images against real val images), else the
    lowest FD."""
    val_features, _ = embed(classifier, val.images)
    reference_features, _ = embed(classifier, reference)
    fd_real = frechet_distance(val_features, reference_features)
    single = val.single_label()
    rows = []
    for scale in scales:
        images = model(val.prompts, guidance_scale=scale, num_inference_steps=steps, generator=seed)
        features, probabilities = embed(classifier, images)
        predicted = predicted_classes(
            model,
            classifier,
            [val.prompts[i] for i in single],
            probabilities[single].argmax(1),
            samples,
            guidance=scale,
            steps=steps,
            seed=seed,
        )
        overall, _ = consistency(predicted, np.tile(val.class_ids[single], samples), class_names)
        rows.append(
            {
                "guidance": float(scale),
                "consistency": overall,
                "fd_cxr": frechet_distance(val_features, features),
                "fd_cxr_real_reference": fd_real,
                "consistency_samples": len(single) * samples,
            }
        )
    sweep = pd.DataFrame(rows)
    admissible = sweep[sweep["fd_cxr"] <= fd_bound * fd_real]
    chosen = (
        admissible.sort_values(["consistency", "fd_cxr"], ascending=[False, True]).iloc[0]
        if len(admissible)
        else sweep.sort_values("fd_cxr").iloc[0]
    )
    return sweep, float(chosen["guidance"])


def memorization_metrics(key: str, memo: Memorization) -> dict[str, float]:
    """Flat MLflow names per space: the flagged share with its interval, the real val rate and
    the goal's bar, the threshold, and the median nearest-training distances."""
    flat: dict[str, float] = {}
    for space in ("feature", "pixel"):
        share, name = memo.share(space), f"memorized_share_{key}_{space}"
        flat.update(
            {
                name: share.mean,
                f"{name}_ci_low": share.ci_low,
                f"{name}_ci_high": share.ci_high,
                f"{name}_val_reference": memo.val_rate(space),
                f"{name}_allowed": memo.allowed(space),
                f"memorization_threshold_{key}_{space}": memo.threshold(space),
                f"nn_ratio_{key}_{space}_min": float(memo.ratios(space).min()),
            }
        )
    return flat
