"""Distribution-level scores for generated images, computed on features of a network we choose.

Fréchet distance and KID come from torchmetrics; the network that makes the features is passed
in as features already computed (one forward pass serves FD, KID and conditional accuracy).
Both are biased at small sample counts: compare two figures only at equal counts.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from .statistics import summarize

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, five scales


class _Precomputed(torch.nn.Module):
    """A "feature extractor" that passes features through, so torchmetrics accepts them."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def _as_tensor(features) -> torch.Tensor:
    tensor = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    if tensor.ndim != 2 or len(tensor) < 2:
        raise ValueError(f"expected (N >= 2, D) features, got shape {tuple(tensor.shape)}")
    return tensor


def frechet_distance(real_features, fake_features) -> float:
    real, fake = _as_tensor(real_features), _as_tensor(fake_features)
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]), reset_real_features=True)
    metric.set_dtype(torch.float64)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def kernel_inception_distance(
    real_features, fake_features, subset_size: int | None = None, subsets: int = 100, seed: int = 0
) -> tuple[float, float]:
    """Unbiased squared MMD with the cubic polynomial kernel, mean and std over random subsets of
    ``subset_size`` (default: half the smaller set, so the std says how stable the figure is;
    the estimate is unbiased at any subset size)."""
    real, fake = _as_tensor(real_features), _as_tensor(fake_features)
    size = min(len(real), len(fake), subset_size or max(2, min(len(real), len(fake)) // 2))
    with warnings.catch_warnings():  # "will save all extracted features": they are already in memory
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size)
    metric.set_dtype(torch.float64)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # torchmetrics draws the subsets from the global generator
    try:
        mean, std = metric.compute()
    finally:
        torch.random.set_rng_state(state)
    return float(mean), float(std)


def ms_ssim_betas(size: int, kernel_size: int = 11) -> tuple[float, ...]:
    """The standard scale weights, truncated (and renormalized) to the scales an image of this
    size supports: five at 256 px, three at 64 px."""
    for scales in range(len(MS_SSIM_BETAS), 0, -1):
        if size >= 2**scales and size // max(1, scales - 1) ** 2 > kernel_size - 1:
            betas = np.asarray(MS_SSIM_BETAS[:scales])
            return tuple(float(b) for b in betas / betas.sum())
    raise ValueError(f"images of {size} px are too small for MS-SSIM")


def mean_pairwise_ms_ssim(images: torch.Tensor, max_pairs: int = 200, seed: int = 0) -> float:
    """Mean MS-SSIM over distinct pairs of a set (N, 1, H, W) in [0, 1]: 1 means identical images
    (mode collapse); lower is more diverse. Compare with the same figure on real images."""
    count = len(images)
    if count < 2:
        raise ValueError("need at least two images")
    pairs = np.array([(i, j) for i in range(count) for j in range(i + 1, count)])
    if len(pairs) > max_pairs:
        pairs = pairs[np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False)]
    first, second = images[pairs[:, 0]].double(), images[pairs[:, 1]].double()
    scores = multiscale_structural_similarity_index_measure(
        first, second, data_range=1.0, betas=ms_ssim_betas(images.shape[-1]), normalize="relu", reduction="none"
    )
    return float(scores.mean())


def conditional_accuracy(predicted: np.ndarray, wanted: np.ndarray, num_classes: int) -> tuple[float, np.ndarray]:
    """Share of samples generated for class c that the classifier assigns to c: overall, and per
    class (NaN for a class with no samples)."""
    predicted, wanted = np.asarray(predicted), np.asarray(wanted)
    hits = predicted == wanted
    per_class = np.array([hits[wanted == c].mean() if (wanted == c).any() else np.nan for c in range(num_classes)])
    return float(hits.mean()), per_class


def nearest_distances(queries, references, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each query row to its nearest reference row, and that row's index.
    ``exclude_self``: queries are the references (the nearest *other* row)."""
    q, r = _as_tensor(queries), _as_tensor(references)
    distances = torch.cdist(q, r)
    if exclude_self:
        distances.fill_diagonal_(float("inf"))
    values, indices = distances.min(dim=1)
    return values.numpy(), indices.numpy()


def precision_recall_density_coverage(real_features, fake_features, k: int = 5) -> dict[str, float]:
    """Naeem et al. 2020 on k-nearest-neighbour balls around the real features (radius: distance
    to the k-th nearest other real sample). Precision: fakes inside some real ball (fidelity);
    recall: reals inside some fake ball (the fakes' own k-NN radii; diversity); density: how many
    real balls hold each fake, over k (can exceed 1); coverage: reals whose ball holds a fake."""
    real, fake = _as_tensor(real_features), _as_tensor(fake_features)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"need more than k = {k} real and fake samples, got {len(real)} and {len(fake)}")
    real_radii = torch.cdist(real, real).kthvalue(k + 1, dim=1).values  # +1: each point is its own nearest
    fake_radii = torch.cdist(fake, fake).kthvalue(k + 1, dim=1).values
    real_to_fake = torch.cdist(real, fake)  # (R, F)
    inside_real = real_to_fake <= real_radii[:, None]  # fake f inside real ball r
    inside_fake = real_to_fake <= fake_radii[None, :]  # real r inside fake ball f
    return {
        "precision": float(inside_real.any(dim=0).double().mean()),
        "recall": float(inside_fake.any(dim=1).double().mean()),
        "density": float(inside_real.sum(dim=0).double().mean() / k),
        "coverage": float((real_to_fake.min(dim=1).values <= real_radii).double().mean()),
    }


def at_equal_counts(measure, real, generated, reference, draws: int = 5, seed: int = 0) -> tuple[Any, Any, int]:
    """``measure(real, generated)`` and its real-vs-real reference ``measure(real, reference)``
    with the two compared sets at the same count. FD (and KID's variance, and precision/recall)
    depend on how many samples a set holds, so a reference drawn from fewer images than the
    generated set reads too high and makes "within k x real" easier. Where one side is larger it
    is cut to the other's count by random subsets, and the figure averaged over ``draws`` of them
    (a side at the count is used once, whole). ``measure`` may return one number or an array of
    them (averaged element by element). Returns (generated, reference, count)."""
    count = min(len(generated), len(reference))
    rng = np.random.default_rng(seed)

    def averaged(features):
        if len(features) == count:
            return measure(real, features)
        return np.mean(
            [measure(real, features[rng.choice(len(features), count, replace=False)]) for _ in range(draws)], axis=0
        )

    return averaged(generated), averaged(reference), count


def ratio_interval(
    measure, real, generated, reference, count: int, resamples: int = 200, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Bootstrap interval of ``measure(real, generated) / measure(real, reference)`` with both
    compared sets at ``count``, resampling all three sets (so the reference's uncertainty counts
    too): the form in which a "within k x the real reference" goal can be judged."""
    real, generated, reference = (np.asarray(x) for x in (real, generated, reference))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        r = real[rng.integers(0, len(real), len(real))]
        g = generated[rng.integers(0, len(generated), count)]
        v = reference[rng.integers(0, len(reference), count)]
        draws.append(measure(r, g) / max(measure(r, v), 1e-12))
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class RealReference:
    """A generated set's FD and KID against real test features beside real val against real
    test, both at the same count (:func:`at_equal_counts`), and FD's ratio to its reference with
    a bootstrap interval: what every generation suite logs and judges "within k x real" on."""

    fd: float  # the generated set at the reference's count (its whole FD when val is not smaller)
    fd_real: float
    kid: float
    kid_real: float
    count: int
    ratio: tuple[float, float, float]  # FD / FD_real, interval

    @classmethod
    def of(cls, real, generated, reference, seed: int = 0, resamples: int = 100) -> RealReference:
        fd, fd_real, count = at_equal_counts(frechet_distance, real, generated, reference, seed=seed)
        kid, kid_real, _ = at_equal_counts(
            lambda a, b: kernel_inception_distance(a, b, seed=seed)[0], real, generated, reference, seed=seed
        )
        low, high = ratio_interval(frechet_distance, real, generated, reference, count, resamples, seed)
        return cls(
            float(fd), float(fd_real), float(kid), float(kid_real), count, (float(fd / max(fd_real, 1e-12)), low, high)
        )

    def metrics(self, key: str) -> dict[str, float]:
        ratio, low, high = self.ratio
        return {
            f"fd_cxr_{key}_real_reference": self.fd_real,
            f"kid_{key}_real_reference": self.kid_real,
            f"fd_cxr_{key}_at_reference_count": self.fd,
            f"kid_{key}_at_reference_count": self.kid,
            f"fd_reference_count_{key}": float(self.count),
            f"fd_ratio_{key}": ratio,
            f"fd_ratio_{key}_ci_low": low,
            f"fd_ratio_{key}_ci_high": high,
        }


def weakest_class(hits: np.ndarray, wanted: np.ndarray, class_names, groups=None, seed: int = 0):
    """The class with the lowest hit rate among those asked for, with the bootstrap interval of
    that rate (samples, or ``groups`` such as patients, resampled): what "every class at least x"
    is judged on."""
    hits, wanted = np.asarray(hits, dtype=float), np.asarray(wanted)
    rates = {c: hits[wanted == c].mean() for c in range(len(class_names)) if (wanted == c).any()}
    worst = min(rates, key=lambda c: rates[c])
    mask = wanted == worst
    units = np.asarray(groups)[mask] if groups is not None else None
    return class_names[worst], summarize(hits[mask], units, seed=seed)
