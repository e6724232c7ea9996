"""Summaries of per-image scores: mean, spread and a bootstrap confidence interval.

Test sets hold several images per patient, and those images are not independent draws, so the
interval resamples *patients* (a cluster bootstrap) whenever groups are given; resampling images
would give intervals that are too narrow.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float
    ci_low: float
    ci_high: float
    count: int
    units: int = 0  # what the bootstrap resampled: patients when grouped, else images (0: not recorded)

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "units"}

    def metrics(self, name: str) -> dict[str, float]:
        """``name``, ``name_ci_low``, ``name_ci_high``: how every interval is logged."""
        return {name: self.mean, f"{name}_ci_low": self.ci_low, f"{name}_ci_high": self.ci_high}

    @property
    def degenerate(self) -> bool:
        """Too few patients (or images) resampled for the interval to mean anything: one patient
        gives a zero-width interval, which is not certainty but ignorance."""
        return 0 < self.units < MIN_BOOTSTRAP_UNITS

    def text(self, digits: int = 2) -> str:
        """``mean ± std [low, high]``, as it appears in report tables; with the count of patients
        behind it where they are too few for an interval."""
        text = f"{self.mean:.{digits}f} ± {self.std:.{digits}f} [{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]"
        return f"{text} (only {self.units} resampled: no real interval)" if self.degenerate else text


# Below this many patients a bootstrap over patients cannot estimate how a figure would move on
# others (with one it returns the same mean every time); reports and runs say so.
MIN_BOOTSTRAP_UNITS = 5


def bootstrap_means(
    values: np.ndarray, groups: np.ndarray | None = None, resamples: int = 2000, seed: int = 0
) -> np.ndarray:
    """Means of ``resamples`` bootstrap resamples, resampling whole groups when given."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or not len(values):
        raise ValueError("expected a non-empty 1-D array of per-image values")
    rng = np.random.default_rng(seed)
    if groups is None:
        picks = rng.integers(0, len(values), size=(resamples, len(values)))
        return values[picks].mean(axis=1)
    _, codes = np.unique(np.asarray(groups), return_inverse=True)
    sums = np.bincount(codes, weights=values)
    counts = np.bincount(codes).astype(np.float64)
    picks = rng.integers(0, len(sums), size=(resamples, len(sums)))
    return sums[picks].sum(axis=1) / counts[picks].sum(axis=1)


def summarize(values, groups=None, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Summary:
    """Mean, standard deviation across images, and the percentile bootstrap interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    means = bootstrap_means(values, groups, resamples, seed)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    units = len(np.unique(np.asarray(groups))) if groups is not None else len(values)
    return Summary(float(values.mean()), std, float(low), float(high), len(values), units)


# --- Patient-bootstrap weights: many resamples scored at once ---------------------------------------------


def patient_weights(patients: Sequence, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples + 1, N) image weights: row 0 all ones (the point estimate), then one row per
    bootstrap draw of patients with replacement (a patient drawn twice weighs its images twice)."""
    _, codes = np.unique(np.asarray(patients), return_inverse=True)
    count = int(codes.max()) + 1
    picks = rng.integers(0, count, size=(resamples, count))
    flat = picks + np.arange(resamples)[:, None] * count
    per_patient = np.bincount(flat.ravel(), minlength=resamples * count).reshape(resamples, count)
    return np.vstack([np.ones(len(codes)), per_patient[:, codes]]).astype(np.float64)


def weighted_auroc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC under each row of ``weights`` (R, N): the weighted share of
    (positive, negative) pairs ranked correctly, ties counting half. NaN where a row weighs no
    positive or no negative. O(R N) after one sort, so full-size test sets are fine."""
    order = np.argsort(scores, kind="stable")
    ordered, is_positive = scores[order], positive[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # groups of tied scores
    w = weights[:, order]
    positives = np.add.reduceat(w * is_positive, starts, axis=1)
    negatives = np.add.reduceat(w * ~is_positive, starts, axis=1)
    above = positives.sum(axis=1, keepdims=True) - np.cumsum(positives, axis=1)  # positives scored higher
    correct = (negatives * (above + 0.5 * positives)).sum(axis=1)
    pairs = positives.sum(axis=1) * negatives.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, correct / np.where(pairs > 0, pairs, 1.0), np.nan)


def weighted_classification_scores(
    probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray, class_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Accuracy, macro AUROC and per-class AUROC under each weight row. Macro averages the
    classes with positives and negatives in the test split (NaN-aware per row)."""
    labels = np.asarray(labels)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    out = {"accuracy": (weights * correct).sum(axis=1) / weights.sum(axis=1)}
    present = [c for c in range(len(class_names)) if 0 < (labels == c).sum() < len(labels)]
    per_class = {class_names[c]: weighted_auroc(probabilities[:, c], labels == c, weights) for c in present}
    if per_class:
        stacked = np.stack(list(per_class.values()))
        defined = np.isfinite(stacked)
        out["auroc_macro"] = np.where(
            defined.any(axis=0),
            np.where(defined, stacked, 0.0).sum(axis=0) / np.maximum(defined.sum(axis=0), 1),
            np.nan,
        )
    else:
        out["auroc_macro"] = np.full(len(weights), np.nan)
    out.update({f"auroc_{name}": values for name, values in per_class.items()})
    return out


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The central ``level`` interval of bootstrap draws (NaN draws ignored)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)
