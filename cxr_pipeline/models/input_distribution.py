"""Is an input like the images the models were trained on? An out-of-distribution score.

A model trained on one population (the demo phantom, one hospital's scanners) silently reshapes
inputs from another towards what it knows. Before restoring an upload, the app and the library
measure how far the input lies from the training split, in the space of the autoencoder that
every latent model works in:

- **features**: the input's VAE latent mean, average-pooled to a 4x4 grid per channel, and each
  channel's spatial standard deviation (layout and texture of the anatomy, at any image size);
- **distance**: Mahalanobis distance to the training split's features, with a Ledoit-Wolf
  shrunk covariance (scikit-learn), stable with a few hundred images per dozens of features;
- **calibration on val**: the threshold is the 99th percentile of the val images' distances, so
  about 1 in 100 in-distribution images is flagged; the test split's flagged share is recorded
  beside it as a check of that calibration (it is not used to set anything).

Fitted by the ``latents`` step from the latents it already encodes, saved as
``input_distribution.json`` and copied into each image-input model's folder at registration, so a
registered version carries the reference of the data it was trained on.

For the text model, whose input is a report, the same question is asked of words: the share of
the report's words that never occur in the training reports, against val reports
(``ReportDistribution``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from sklearn.covariance import LedoitWolf

from ..data import atomic
from ..data.labels.report_text import prompt_from_report
from .report_tokenizer import word_counts

FILE = "input_distribution.json"
GRID = 4  # pooled latent cells per side
QUANTILE = 0.99  # of the val distances: the threshold


def latent_features(latents: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, C, h, w) latents -> (N, C * (GRID^2 + 1)) features."""
    z = torch.as_tensor(np.asarray(latents), dtype=torch.float32)
    pooled = torch.nn.functional.adaptive_avg_pool2d(z, GRID).flatten(1)
    return torch.cat([pooled, z.flatten(2).std(-1)], dim=1).double().numpy()


class _Reference:
    """A fitted reference saved as ``file_name`` in a model folder (travels with the version)."""

    file_name: ClassVar[str]

    def save(self, folder: Path) -> Path:
        path = Path(folder) / self.file_name
        atomic.write_text(path, json.dumps(asdict(self)))  # type: ignore[call-overload]  # every subclass is a dataclass
        return path

    @classmethod
    def load(cls, folder: Path):
        """The reference in ``folder``, or None when the folder has none."""
        path = Path(folder) / cls.file_name
        return cls(**json.loads(path.read_text())) if path.exists() else None


@dataclass
class InputDistribution(_Reference):
    mean: list[float]
    precision: list[list[float]]
    threshold: float
    val_median: float
    train_images: int
    val_images: int
    test_flagged_share: float | None = None  # the calibration checked on held-out images
    vae: dict | None = None  # the autoencoder record whose latents these are (name, version, folder)
    file_name: ClassVar[str] = FILE

    @classmethod
    def fit(
        cls, train: np.ndarray, val: np.ndarray, test: np.ndarray | None = None, vae: dict | None = None
    ) -> InputDistribution:
        """From the ``latent_features`` of the train, val (and test) splits."""
        if len(train) < 2 or len(val) < 1:
            raise ValueError(
                f"an input distribution needs >= 2 train and >= 1 val images, got {len(train)} and {len(val)}"
            )
        shrunk = LedoitWolf().fit(train)
        fitted = cls(shrunk.location_.tolist(), shrunk.precision_.tolist(), 0.0, 0.0, len(train), len(val), vae=vae)
        val_distances = fitted.distance_of_features(val)
        fitted.threshold = float(np.quantile(val_distances, QUANTILE))
        fitted.val_median = float(np.median(val_distances))
        if test is not None and len(test):
            fitted.test_flagged_share = float(np.mean(fitted.distance_of_features(test) > fitted.threshold))
        return fitted

    def distance_of_features(self, features: np.ndarray) -> np.ndarray:
        centred = np.asarray(features, dtype=np.float64) - np.asarray(self.mean)
        return np.sqrt(np.einsum("ni,ij,nj->n", centred, np.asarray(self.precision), centred).clip(min=0))

    def distance(self, latents) -> np.ndarray:
        return self.distance_of_features(latent_features(latents))


@dataclass(frozen=True)
class Novelty:
    """One input's score against a model's training data."""

    distance: float
    threshold: float
    val_median: float

    @property
    def out_of_distribution(self) -> bool:
        return self.distance > self.threshold

    @property
    def ratio(self) -> float:
        return self.distance / self.threshold if self.threshold > 0 else float("inf")

    def message(self) -> str:
        figures = (
            f"distance {self.distance:.1f} to the training images, against {self.threshold:.1f} for the "
            f"farthest 1% of validation images (median {self.val_median:.1f})"
        )
        if self.out_of_distribution:
            return (
                f"Out of distribution: this image is unlike the images the model was trained on ({figures}). "
                "The output may reshape it towards the training data; do not trust it for this image."
            )
        return f"Within the training distribution ({figures})."

    def as_dict(self) -> dict:
        return {
            "ood_distance": round(self.distance, 3),
            "ood_threshold": round(self.threshold, 3),
            "out_of_distribution": self.out_of_distribution,
        }


def novelty(reference: InputDistribution, latents) -> list[Novelty]:
    return [Novelty(float(d), reference.threshold, reference.val_median) for d in reference.distance(latents)]


# --- Reports: the text model's input ---------------------------------------------------------------------

REPORT_FILE = "report_distribution.json"


def report_words(report: str) -> list[str]:
    """The words of a report as the tokenizer cuts them (BERT's normalizer and pre-tokenizer),
    letters only: punctuation and numbers carry no learnt meaning of their own."""
    return [word for word in word_counts([report]) if any(c.isalpha() for c in word)]


@dataclass
class ReportDistribution(_Reference):
    """A report is out of distribution when more of its words never occur in the training reports
    than in all but 1% of val reports: the text model has learnt nothing about those words (the
    tokenizer still cuts them into pieces, so nothing fails; the image just ignores them)."""

    vocabulary: list[str]  # every word of the training reports, sorted
    threshold: float  # share of unseen words: the 99th percentile over val reports
    val_median: float
    train_reports: int
    val_reports: int
    file_name: ClassVar[str] = REPORT_FILE

    @classmethod
    def fit(cls, train_reports: list[str], val_reports: list[str]) -> ReportDistribution:
        if not train_reports or not val_reports:
            raise ValueError(
                f"a report distribution needs train and val reports, got {len(train_reports)} and {len(val_reports)}"
            )
        vocabulary = sorted({w for report in train_reports for w in report_words(report)})
        fitted = cls(vocabulary, 0.0, 0.0, len(train_reports), len(val_reports))
        shares = np.array([fitted.unseen_share(report) for report in val_reports])
        fitted.threshold, fitted.val_median = float(np.quantile(shares, QUANTILE)), float(np.median(shares))
        return fitted

    def unseen(self, report: str) -> list[str]:
        known = set(self.vocabulary)
        return [word for word in report_words(report) if word not in known]

    def unseen_share(self, report: str) -> float:
        words = report_words(report)
        return len(self.unseen(report)) / len(words) if words else 0.0

    def check(self, report: str) -> ReportNovelty:
        """The report as the text model reads it (headers removed: ``prompt_from_report``)."""
        report = prompt_from_report(report)
        return ReportNovelty(self.unseen_share(report), self.threshold, tuple(dict.fromkeys(self.unseen(report))))


@dataclass(frozen=True)
class ReportNovelty:
    share: float
    threshold: float
    unseen: tuple[str, ...]

    @property
    def out_of_distribution(self) -> bool:
        return self.share > self.threshold

    def message(self) -> str:
        listed = ", ".join(self.unseen[:12]) + (" ..." if len(self.unseen) > 12 else "")
        if self.out_of_distribution:
            return (
                f"Out of distribution: {self.share:.0%} of this report's words never occur in the training reports "
                f"(at most {self.threshold:.0%} in 99% of validation reports): {listed}. The model has learnt "
                "nothing about them; the image will not follow them."
            )
        return f"Within the training reports' vocabulary ({self.share:.0%} unseen words" + (
            f": {listed})." if self.unseen else ")."
        )
