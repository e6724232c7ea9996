"""Class-conditional generation, judged by our CXR feature network against real test images.

Two sample sets come from one sampling pass:
- a *prior-matched* set, whose classes follow the real test set's class counts, for the Fréchet
  distance and KID (a class-balanced set against an imbalanced real set would be penalized for
  the class mix alone);
- a *balanced* set, ``samples_per_class`` of each class, for conditional accuracy and diversity.
Each figure comes with its reference: the classifier's accuracy on real test images, FD/KID
between real val and real test images (the floor at this sample size), MS-SSIM of real images,
and the fine-detail ratio (metrics/detail.py) of real val against real test images. FD on a
findings classifier does not see whether ribs are drawn; the detail ratio does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..metrics.detail import set_detail_interval, set_detail_ratio
from ..metrics.distribution import (
    RealReference,
    conditional_accuracy,
    frechet_distance,
    kernel_inception_distance,
    mean_pairwise_ms_ssim,
    weakest_class,
)
from ..metrics.inception import InceptionFid, inception_fid
from ..metrics.statistics import Summary, summarize
from ..models.classifier import embed, load_classifier
from ..models.pipelines import ClassConditionalGenerator
from ..reports.document import Figure, Section, Table
from ..reports.grid import image_grid

MODEL_KEY = "class_ddpm"
RATIO_RESAMPLES = 100  # bootstrap draws of the FD ratio (each two Frechet distances)


@dataclass
class GenerationEvaluation:
    class_names: list[str]
    fd_cxr: float
    kid: tuple[float, float]
    reference: RealReference  # real val vs real test, at the generated set's count
    cond_acc_interval: tuple[float, float]  # samples resampled
    weakest: tuple[str, Summary]  # the class with the lowest conditional accuracy, its interval
    cond_acc: float
    cond_acc_per_class: np.ndarray
    real_accuracy_per_class: np.ndarray  # the classifier on real test images
    real_accuracy: float
    diversity: dict[str, tuple[float, float]]  # class -> (generated MS-SSIM, real MS-SSIM)
    fid: InceptionFid
    counts: dict[str, int]
    guidance: float
    detail: tuple[float, float, float]  # the samples' fine-detail ratio against real test images, 95% interval
    detail_real: float  # real val against real test images
    figures: list[Figure] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Flat MLflow names, ``<metric>_class_ddpm[_<class>]``; FID only when computed."""
        key = MODEL_KEY
        flat = {
            f"fd_cxr_{key}": self.fd_cxr,
            **detail_metrics(key, self.detail, self.detail_real),
            f"kid_{key}": self.kid[0],
            f"kid_{key}_std": self.kid[1],
            **self.reference.metrics(key),
            f"cond_acc_{key}_ci_low": self.cond_acc_interval[0],
            f"cond_acc_{key}_ci_high": self.cond_acc_interval[1],
            **self.weakest[1].metrics(f"cond_acc_weakest_{key}"),
            f"cond_acc_{key}": self.cond_acc,
            f"cond_acc_{key}_real_reference": self.real_accuracy,
            f"cond_acc_{key}_chance": 1.0 / len(self.class_names),
            f"fd_samples_{key}": float(self.counts["fd_generated"]),
            f"cond_acc_samples_{key}": float(self.counts["balanced_generated"]),
        }
        for name, accuracy in zip(self.class_names, self.cond_acc_per_class):
            if not np.isnan(accuracy):
                flat[f"cond_acc_{key}_{name}"] = float(accuracy)
        generated = [g for g, _ in self.diversity.values() if not np.isnan(g)]
        real = [r for _, r in self.diversity.values() if not np.isnan(r)]
        if generated:
            flat[f"ms_ssim_{key}"] = float(np.mean(generated))
        if real:
            flat[f"ms_ssim_{key}_real_reference"] = float(np.mean(real))
        differences = [g - r for g, r in self.diversity.values() if np.isfinite(g) and np.isfinite(r)]
        if len(differences) >= 2:  # generated minus real within-class MS-SSIM, classes resampled
            spread = summarize(np.asarray(differences))
            flat.update(
                {
                    f"ms_ssim_diff_{key}": spread.mean,
                    f"ms_ssim_diff_{key}_ci_low": spread.ci_low,
                    f"ms_ssim_diff_{key}_ci_high": spread.ci_high,
                }
            )
        if self.fid.computed and self.fid.value is not None:
            flat[f"fid_inception_{key}"] = self.fid.value
        return flat

    @staticmethod
    def must_beat() -> tuple[tuple[str, str], ...]:
        """A generator whose classes the feature network cannot tell apart is not conditional."""
        return ((f"cond_acc_{MODEL_KEY}", f"cond_acc_{MODEL_KEY}_chance"),)

    def headline(self) -> pd.DataFrame:
        counts, ref = self.counts, self.reference
        at = f"{counts['fd_generated']} generated vs {counts['real_test']} real; reference at {ref.count}"
        rows = [
            (
                "fd_cxr",
                f"{self.fd_cxr:.3f}",
                f"{ref.fd_real:.3f} (real val vs real test); generated at the same count {ref.fd:.3f}",
                at,
            ),
            (
                "kid",
                f"{self.kid[0]:.4f} ± {self.kid[1]:.4f}",
                f"{ref.kid_real:.4f}; generated at the same count {ref.kid:.4f}",
                at,
            ),
            detail_row(
                self.detail, self.detail_real, f"{counts['fd_generated']} generated vs {counts['real_test']} real"
            ),
            ("fid_inception", f"{self.fid.value:.2f}" if self.fid.computed else "not computed", "—", self.fid.reason),
            (
                "cond_acc",
                f"{self.cond_acc:.3f}",
                f"{self.real_accuracy:.3f} (classifier on real test images)",
                f"{counts['balanced_generated']} generated, {counts['balanced_generated'] // len(self.class_names)} per class",
            ),
        ]
        return pd.DataFrame(rows, columns=["metric", "generated", "real reference", "samples"])

    def per_class(self) -> pd.DataFrame:
        rows = []
        for index, name in enumerate(self.class_names):
            generated, real = self.diversity.get(name, (np.nan, np.nan))
            rows.append(
                {
                    "class": name,
                    "cond_acc": _fmt(self.cond_acc_per_class[index]),
                    "classifier accuracy on real test": _fmt(self.real_accuracy_per_class[index]),
                    "MS-SSIM generated": _fmt(generated),
                    "MS-SSIM real": _fmt(real),
                }
            )
        return pd.DataFrame(rows)

    def section(self) -> Section:
        text = (
            f"Class-conditional DDPM sampled with classifier-free guidance w = {self.guidance:g}. Features and "
            "predictions come from the CXR feature classifier trained on the train split. FD and KID are biased at "
            "small sample counts: compare them only at equal counts, and against the real-vs-real reference. "
            "MS-SSIM is the mean over pairs within a class: lower is more diverse; generated far above real means "
            "mode collapse."
        )
        tables = [
            Table("Generation: headline", self.headline()),
            Table("Generation: per class", self.per_class(), "NaN: no test images of that class."),
        ]
        return Section("Class-conditional generation", text, tables, self.figures)


def detail_metrics(key: str, detail: tuple[float, float, float], real: float) -> dict[str, float]:
    return {
        f"detail_{key}": detail[0],
        f"detail_{key}_ci_low": detail[1],
        f"detail_{key}_ci_high": detail[2],
        f"detail_{key}_real_reference": real,
    }


def detail_row(detail: tuple[float, float, float], real: float, samples: str) -> tuple[str, str, str, str]:
    """The headline row of the fine-detail ratio: 1 draws the real images' fine anatomy."""
    return (
        "detail (fine anatomy, 1 = real)",
        f"{detail[0]:.3f} [{detail[1]:.3f}, {detail[2]:.3f}]",
        f"{real:.3f} (real val vs real test)",
        samples,
    )


def _fmt(value: float) -> str:
    return "—" if value is None or np.isnan(value) else f"{value:.3f}"


def evaluate_generation(
    model: ClassConditionalGenerator,
    classifier_dir: Path,
    real_test: torch.Tensor,
    real_test_labels: Sequence[int],
    real_val: torch.Tensor,
    *,
    samples_per_class: int = 16,
    fd_samples: int | None = None,
    ddim_steps: int = 50,
    guidance: float | None = None,
    seed: int = 0,
    inception_weights: str | None = None,
    inception_sha256: str | None = None,
    device: str = "auto",
) -> GenerationEvaluation:
    classifier, classifier_settings = load_classifier(classifier_dir, device)
    class_names = list(classifier_settings.classes)
    labels = np.asarray(real_test_labels, dtype=int)
    count = fd_samples or len(labels)
    prior_matched = np.resize(labels, count)  # the test class mix, repeated or cut to the count
    balanced = np.repeat(np.arange(len(class_names)), samples_per_class)
    wanted = np.concatenate([prior_matched, balanced])
    samples = model(wanted.tolist(), guidance_scale=guidance, num_inference_steps=ddim_steps, generator=seed)
    fd_set, balanced_set = samples[:count], samples[count:]

    real_features, real_probabilities = embed(classifier, real_test)
    val_features, _ = embed(classifier, real_val)
    fake_features, _ = embed(classifier, fd_set)
    _, balanced_probabilities = embed(classifier, balanced_set)
    predicted = balanced_probabilities.argmax(axis=1)
    cond_acc, per_class = conditional_accuracy(predicted, balanced, len(class_names))
    hits = predicted == balanced
    overall = summarize(hits.astype(float), seed=seed)
    real_accuracy, real_per_class = conditional_accuracy(real_probabilities.argmax(axis=1), labels, len(class_names))

    diversity = {}
    for index, name in enumerate(class_names):
        real_of_class = real_test[labels == index]
        generated = mean_pairwise_ms_ssim(balanced_set[balanced == index]) if samples_per_class >= 2 else np.nan
        real = (
            mean_pairwise_ms_ssim(real_of_class[:samples_per_class])
            if min(len(real_of_class), samples_per_class) >= 2
            else np.nan
        )
        diversity[name] = (generated, real)

    used_guidance = guidance if guidance is not None else model.settings.guidance_scale
    columns = min(samples_per_class, 8)
    figures = [
        Figure(
            "Samples per class",
            image_grid(
                _per_class_rows(balanced_set, balanced, len(class_names), real_test, labels, columns),
                columns=columns + 1,
            ),
            "One row per class, top to bottom: " + ", ".join(class_names) + ". First column: a real test "
            "image of the class (blank when the test split has none), at the same display scale; compare "
            "the ribs and lung markings, not only the outline.",
            upscale=2,
        )
    ]
    return GenerationEvaluation(
        class_names=class_names,
        fd_cxr=frechet_distance(real_features, fake_features),
        kid=kernel_inception_distance(real_features, fake_features, seed=seed),
        reference=RealReference.of(real_features, fake_features, val_features, seed, RATIO_RESAMPLES),
        cond_acc_interval=(overall.ci_low, overall.ci_high),
        weakest=weakest_class(hits, balanced, class_names, seed=seed),
        cond_acc=cond_acc,
        cond_acc_per_class=per_class,
        real_accuracy=real_accuracy,
        real_accuracy_per_class=real_per_class,
        diversity=diversity,
        fid=inception_fid(real_test, fd_set, inception_weights, inception_sha256),
        counts={
            "fd_generated": count,
            "real_test": len(labels),
            "real_val": len(real_val),
            "balanced_generated": len(balanced),
        },
        guidance=float(used_guidance),
        detail=set_detail_interval(fd_set, real_test, seed=seed),
        detail_real=set_detail_ratio(real_val, real_test),
        figures=figures,
    )


def _per_class_rows(
    images: torch.Tensor,
    classes: np.ndarray,
    num_classes: int,
    real: torch.Tensor,
    real_classes: np.ndarray,
    per_row: int = 8,
) -> np.ndarray:
    """Per class, a real test image of the class then ``per_row`` samples."""
    rows = [images[classes == c][:per_row, 0] for c in range(num_classes)]
    width = min(per_row, min(len(r) for r in rows))
    blank = torch.zeros_like(images[0, 0])
    return torch.cat(
        [
            torch.cat([(real[real_classes == c][:1, 0] if (real_classes == c).any() else blank[None]), r[:width]])
            for c, r in enumerate(rows)
        ]
    ).numpy()
