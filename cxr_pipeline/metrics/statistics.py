"""Summaries of per-image scores: mean, spread and a bootstrap confidence interval.

Test sets hold several images per patient, and those images are not independent draws, so the
interval resamples *patients* (a cluster bootstrap) whenever groups are given; resampling images
would give intervals that are too narrow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    mean: float
    std: float
    ci_low: float
    ci_high: float
    count: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def text(self, digits: int = 2) -> str:
        """``mean ± std [low, high]``, as it appears in report tables."""
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} [{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}]"


def bootstrap_means(values: np.ndarray, groups: np.ndarray | None = None, resamples: int = 2000,
                    seed: int = 0) -> np.ndarray:
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
    return Summary(float(values.mean()), std, float(low), float(high), len(values))
