"""Text-conditional generation, judged against real reports and images of the test split.

Prompts are the test split's own reports (FINDINGS + IMPRESSION); what they state is known from
the labels. One sample per report makes the distribution set (``fd_cxr``, KID, precision /
recall / density / coverage at k = 5, all on the CXR feature network, each beside its real-vs-real
reference at the same count). On top of that:

- prompt consistency: on normal and single-finding reports (findings the classifier knows), how
  often the classifier assigns the generated image the report's finding; beside the classifier's
  accuracy on the real images of the same reports, the same model sampled without its prompt
  (guidance 0: what the prompt adds), and a retrieval baseline that returns the training image
  whose report is closest (TF-IDF), the classical answer to "an image for this text";
- negation: for each finding, how often reports that deny it ("No pneumothorax.") produce it,
  against how often normal reports do;
- memorization: each sample's distance to its nearest training image (classifier features and
  pixels) against the same distance for real test images; the share of samples closer to a
  training image than any real test image is, and the closest pairs, shown;
- within-prompt diversity: MS-SSIM between samples of the same report, beside real images of
  the same class;
- the guidance scale, chosen on val (:func:`guidance_sweep`), never on test.
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
    at_equal_counts,
    frechet_distance,
    kernel_inception_distance,
    mean_pairwise_ms_ssim,
    precision_recall_density_coverage,
    weakest_class,
)
from ..metrics.statistics import Summary, summarize
from ..models.classifier import embed, load_classifier
from ..models.pipelines import TextConditionalGenerator
from ..reports.document import Figure, Section, Table
from ..reports.grid import image_grid
from ..reports.plots import prompt_grid, sweep_plot
from .generation import RATIO_RESAMPLES, detail_metrics, detail_row
from .text_measures import (
    GUIDANCE_SWEEP,
    MEMORIZATION_QUANTILE,
    MODEL_KEY,
    PRDC_K,
    REAL_NEGATION,
    Memorization,
    PromptSet,
    consistency,
    guidance_sweep,
    memorization,
    memorization_metrics,
    negation_table,
    predicted_classes,
    retrieval_baseline,
)


@dataclass
class TextGenerationEvaluation:
    class_names: list[str]
    guidance: float
    consistency: float
    consistency_interval: tuple[float, float]  # patient bootstrap, 95%
    consistency_per_class: dict[str, float]
    consistency_unconditional: float
    consistency_retrieval: float
    real_accuracy: float
    real_accuracy_per_class: dict[str, float]
    negation: pd.DataFrame
    fd_cxr: float
    reference: RealReference  # real val vs real test, at the generated set's count
    kid: tuple[float, float]
    prdc: dict[str, float]
    prdc_real: dict[str, float]
    weakest: tuple[str, Summary]  # the finding with the lowest prompt consistency, its patient interval
    diversity: float  # mean within-prompt MS-SSIM of samples
    diversity_real: float  # mean within-class MS-SSIM of real test images
    memorization: Memorization
    sweep: pd.DataFrame
    counts: dict[str, int]
    detail: tuple[float, float, float]  # fine-detail ratio of one sample per report against the real test images
    detail_real: float  # real val against real test images
    figures: list[Figure] = field(default_factory=list)

    def negation_rates(self) -> tuple[float, float, float]:
        """Means over the findings that some report denies: of the rate when denied, of the rate
        for normal reports, and of the rate on the real images of the denying reports."""
        known = self.negation.dropna(subset=["rate when denied"])
        return (
            float(known["rate when denied"].mean()),
            float(known["rate for normal reports"].mean()),
            float(known[REAL_NEGATION].mean()),
        )

    def metrics(self) -> dict[str, float]:
        key = MODEL_KEY
        denied, normal, real = self.negation_rates()
        flat = {
            f"prompt_consistency_{key}": self.consistency,
            f"prompt_consistency_{key}_ci_low": self.consistency_interval[0],
            f"prompt_consistency_{key}_ci_high": self.consistency_interval[1],
            f"prompt_consistency_{key}_unconditional": self.consistency_unconditional,
            f"prompt_consistency_{key}_retrieval": self.consistency_retrieval,
            f"prompt_consistency_{key}_real_reference": self.real_accuracy,
            f"negation_rate_{key}": denied,
            f"negation_rate_{key}_normal_reference": normal,
            f"negation_rate_{key}_real_reference": real,
            f"fd_cxr_{key}": self.fd_cxr,
            **detail_metrics(key, self.detail, self.detail_real),
            f"kid_{key}": self.kid[0],
            f"kid_{key}_std": self.kid[1],
            **self.reference.metrics(key),
            **self.weakest[1].metrics(f"prompt_consistency_weakest_{key}"),
            f"ms_ssim_{key}_within_prompt": self.diversity,
            f"ms_ssim_{key}_real_reference": self.diversity_real,
            **memorization_metrics(key, self.memorization),
            f"nn_distance_{key}_feature": float(np.median(self.memorization.generated_feature)),
            f"nn_distance_{key}_feature_real_reference": float(np.median(self.memorization.real_feature)),
            f"nn_distance_{key}_pixel": float(np.median(self.memorization.generated_pixel)),
            f"nn_distance_{key}_pixel_real_reference": float(np.median(self.memorization.real_pixel)),
            f"guidance_{key}": self.guidance,
            f"prompts_{key}": float(self.counts["prompts"]),
            f"consistency_samples_{key}": float(self.counts["consistency_samples"]),
        }
        for name, value in self.prdc.items():
            flat[f"{name}_{key}"] = value
            flat[f"{name}_{key}_real_reference"] = self.prdc_real[name]
        for name, value in self.consistency_per_class.items():
            if np.isfinite(value):
                flat[f"prompt_consistency_{key}_{name}"] = value
        for row in self.negation.itertuples(index=False):
            if np.isfinite(row[2]):
                flat[f"negation_rate_{key}_{row[0]}"] = float(row[2])
        for row in self.sweep.itertuples(index=False):
            flat[f"val_prompt_consistency_{key}_w{row.guidance:g}"] = row.consistency
            flat[f"val_fd_cxr_{key}_w{row.guidance:g}"] = row.fd_cxr
        return flat

    @staticmethod
    def must_beat() -> tuple[tuple[str, str], ...]:
        """The prompt must matter: the same model without it is the floor."""
        return ((f"prompt_consistency_{MODEL_KEY}", f"prompt_consistency_{MODEL_KEY}_unconditional"),)

    def headline(self) -> pd.DataFrame:
        denied, normal, real = self.negation_rates()
        c = self.counts
        rows = [
            (
                "prompt consistency",
                f"{self.consistency:.3f} [{self.consistency_interval[0]:.3f}, {self.consistency_interval[1]:.3f}]",
                f"{self.real_accuracy:.3f} (classifier on the real images); {self.consistency_unconditional:.3f} "
                f"without the prompt; {self.consistency_retrieval:.3f} retrieval",
                f"{c['consistency_samples']} samples of {c['consistency_prompts']} normal and single-finding reports "
                f"of {c['consistency_patients']} patients (95% patient bootstrap)",
            ),
            (
                "negation rate",
                f"{denied:.3f}",
                f"{normal:.3f} (normal reports); {real:.3f} (the classifier on the real images of the denying reports)",
                "mean over findings denied somewhere",
            ),
            (
                "fd_cxr",
                f"{self.fd_cxr:.3f}",
                f"{self.reference.fd_real:.3f} (real val vs real test); generated at the same count {self.reference.fd:.3f}",
                f"{c['prompts']} generated vs {c['prompts']} real; reference at {self.reference.count}",
            ),
            detail_row(self.detail, self.detail_real, f"{c['prompts']} generated vs {c['prompts']} real"),
            (
                "kid",
                f"{self.kid[0]:.4f} ± {self.kid[1]:.4f}",
                f"{self.reference.kid_real:.4f}",
                f"reference at {self.reference.count}",
            ),
            *[(name, f"{self.prdc[name]:.3f}", f"{self.prdc_real[name]:.3f}", f"k = {PRDC_K}") for name in self.prdc],
            (
                "MS-SSIM within a prompt",
                f"{self.diversity:.3f}",
                f"{self.diversity_real:.3f} (real, within a class)",
                f"{c['diversity_prompts']} reports x {c['diversity_samples']} samples",
            ),
            *[
                (
                    f"memorized share ({space}): nearest training image closer than "
                    f"{MEMORIZATION_QUANTILE:.0%} of real test images' ({self.memorization.threshold(space):.4f})",
                    self.memorization.share(space).text(3),
                    f"{self.memorization.val_rate(space):.3f} (real val images); goal: at most "
                    f"{self.memorization.allowed(space):.3f}",
                    f"{len(self.memorization.flagged(space))} samples",
                )
                for space in ("feature", "pixel")
            ],
            (
                "median distance to the nearest training image (features)",
                f"{np.median(self.memorization.generated_feature):.3f}",
                f"{np.median(self.memorization.real_feature):.3f}",
                "",
            ),
            (
                "median distance to the nearest training image (pixels, RMS)",
                f"{np.median(self.memorization.generated_pixel):.4f}",
                f"{np.median(self.memorization.real_pixel):.4f}",
                "",
            ),
        ]
        return pd.DataFrame(rows, columns=["metric", "generated", "reference", "samples"])

    def per_class(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "finding": name,
                    "prompt consistency": _fmt(self.consistency_per_class[name]),
                    "classifier on the real images": _fmt(self.real_accuracy_per_class[name]),
                }
                for name in self.class_names
            ]
        )

    def section(self) -> Section:
        text = (
            f"Samples from the test split's own reports, classifier-free guidance w = {self.guidance:g} (chosen on "
            "val, below). Prompt consistency uses the normal and single-finding reports whose finding the CXR "
            "feature classifier knows. FD, KID and precision/recall/density/coverage use one sample per report "
            "against the real test images, at equal counts, beside two real sets at the same count. Memorization "
            "compares each sample's distance to its nearest training image with the same distance for real test "
            "images, which no model saw."
        )
        negation = self.negation.copy()
        for column in negation.columns[2:]:
            if negation[column].dtype.kind == "f":
                negation[column] = negation[column].map(_fmt)
        sweep = self.sweep.copy()
        for column in ("consistency", "fd_cxr", "fd_cxr_real_reference"):
            sweep[column] = sweep[column].map(_fmt)
        tables = [
            Table("Text-conditional generation: headline", self.headline()),
            Table("Prompt consistency per finding", self.per_class()),
            Table(
                "Negation",
                negation,
                "A report that denies a finding should produce it no more often than a "
                "normal report does; most denying reports state another finding, "
                "which the classifier can mistake for the denied one on the real "
                "images too (last column).",
            ),
            Table("Guidance on val", sweep, f"Chosen: w = {self.guidance:g}."),
        ]
        return Section("Text-conditional generation", text, tables, self.figures)


def _fmt(value: float) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.3f}"


def evaluate_text_generation(
    model: TextConditionalGenerator,
    classifier_dir: Path,
    test: PromptSet,
    val: PromptSet,
    train: PromptSet,
    *,
    guidance_scales: Sequence[float] = GUIDANCE_SWEEP,
    guidance: float | None = None,
    consistency_samples: int = 2,
    sweep_samples: int = 2,
    diversity_prompts: int = 6,
    diversity_samples: int = 4,
    ddim_steps: int = 20,
    seed: int = 0,
    device: str = "auto",
) -> TextGenerationEvaluation:
    """``guidance`` None: chosen on val over ``guidance_scales``; a number skips the sweep."""
    classifier, classifier_settings = load_classifier(classifier_dir, device)
    class_names = list(classifier_settings.classes)
    reference = train.images[np.random.default_rng(seed).permutation(len(train))[: len(val)]]
    sweep = pd.DataFrame(columns=["guidance", "consistency", "fd_cxr", "fd_cxr_real_reference", "consistency_samples"])
    if guidance is None:
        sweep, guidance = guidance_sweep(
            model,
            classifier,
            class_names,
            val,
            reference,
            guidance_scales,
            steps=ddim_steps,
            seed=seed,
            samples=sweep_samples,
        )

    # one sample per report (the distribution set), more for consistency, several of a few reports for diversity
    single = test.single_label()
    generated = model(test.prompts, guidance_scale=guidance, num_inference_steps=ddim_steps, generator=seed)
    unconditional = model(
        [test.prompts[i] for i in single], guidance_scale=0.0, num_inference_steps=ddim_steps, generator=seed
    )
    chosen = [
        int(single[test.class_ids[single] == c][0])
        for c in range(len(class_names))
        if (test.class_ids[single] == c).any()
    ][:diversity_prompts]
    repeated = [test.prompts[i] for i in chosen for _ in range(diversity_samples)]
    diverse = model(repeated, guidance_scale=guidance, num_inference_steps=ddim_steps, generator=seed + 7)

    real_features, real_probabilities = embed(classifier, test.images)
    val_features, _ = embed(classifier, val.images)
    train_features, _ = embed(classifier, train.images)
    features, probabilities = embed(classifier, generated)
    wanted = np.tile(test.class_ids[single], consistency_samples)
    predicted = predicted_classes(
        model,
        classifier,
        [test.prompts[i] for i in single],
        probabilities[single].argmax(1),
        consistency_samples,
        guidance=guidance,
        steps=ddim_steps,
        seed=seed,
    )
    overall, per_class = consistency(predicted, wanted, class_names)
    interval = summarize(
        (predicted == wanted).astype(float), np.tile(test.patients[single], consistency_samples), seed=seed
    )
    unconditional_overall, _ = consistency(
        embed(classifier, unconditional)[1].argmax(1), test.class_ids[single], class_names
    )
    retrieved = retrieval_baseline(train.prompts, test.prompts)
    retrieval_overall, _ = consistency(train.class_ids[retrieved][single], test.class_ids[single], class_names)
    real_overall, real_per_class = consistency(
        real_probabilities[single].argmax(1), test.class_ids[single], class_names
    )

    diversity = (
        float(
            np.mean(
                [
                    mean_pairwise_ms_ssim(diverse[k * diversity_samples : (k + 1) * diversity_samples])
                    for k in range(len(chosen))
                ]
            )
        )
        if chosen and diversity_samples > 1
        else float("nan")
    )
    real_within = [
        mean_pairwise_ms_ssim(test.images[test.class_ids == c][:8])
        for c in range(len(class_names))
        if (test.class_ids == c).sum() >= 2
    ]
    memo = memorization(
        generated,
        features,
        test.images,
        real_features,
        train.images,
        train_features,
        val.images,
        val_features,
        test.patients,
    )

    prdc_names = ("precision", "recall", "density", "coverage")
    _, prdc_real, _ = at_equal_counts(  # the four in one pass over the same equal-count draws
        lambda a, b: np.array([precision_recall_density_coverage(a, b, PRDC_K)[n] for n in prdc_names]),
        real_features,
        features,
        val_features,
        seed=seed,
    )
    figures = [
        Figure(
            "Reports and their samples",
            prompt_grid(generated[:12, 0].numpy(), test.prompts[:12], test.images[:12, 0].numpy()),
            "Each test report (left: the real image it belongs to; right: a sample from the report).",
        ),
    ]
    if chosen:
        figures.append(
            Figure(
                "Several samples of one report",
                image_grid(diverse[:, 0].numpy(), columns=diversity_samples),
                "One row per report: " + " | ".join(f"({k + 1}) {test.prompts[i]}" for k, i in enumerate(chosen)),
                upscale=2,
            )
        )
    if len(sweep):
        figures.append(
            Figure(
                "Guidance on val",
                sweep_plot(sweep, guidance),
                "Chosen on val: the most consistent scale within 3x the real FD reference.",
            )
        )
    figures.append(closest_pairs_figure(generated, train.images, memo))
    return TextGenerationEvaluation(
        class_names=class_names,
        guidance=float(guidance),
        consistency=overall,
        consistency_interval=(interval.ci_low, interval.ci_high),
        consistency_per_class=per_class,
        consistency_unconditional=unconditional_overall,
        consistency_retrieval=retrieval_overall,
        real_accuracy=real_overall,
        real_accuracy_per_class=real_per_class,
        negation=negation_table(test, probabilities.argmax(1), class_names, real_probabilities.argmax(1)),
        fd_cxr=frechet_distance(real_features, features),
        reference=RealReference.of(real_features, features, val_features, seed, RATIO_RESAMPLES),
        weakest=weakest_class(
            predicted == wanted, wanted, class_names, np.tile(test.patients[single], consistency_samples), seed=seed
        ),
        kid=kernel_inception_distance(real_features, features, seed=seed),
        prdc=precision_recall_density_coverage(real_features, features, PRDC_K),
        prdc_real={name: float(value) for name, value in zip(prdc_names, prdc_real)},
        diversity=diversity,
        diversity_real=float(np.mean(real_within)) if real_within else float("nan"),
        memorization=memo,
        sweep=sweep,
        detail=set_detail_interval(generated, test.images, seed=seed),
        detail_real=set_detail_ratio(val.images, test.images),
        counts={
            "prompts": len(test),
            "consistency_prompts": len(single),
            "consistency_samples": len(predicted),
            "consistency_patients": len(set(test.patients[single])),
            "diversity_prompts": len(chosen),
            "diversity_samples": diversity_samples,
            "train_images": len(train),
        },
        figures=figures,
    )


def closest_pairs_figure(generated: torch.Tensor, train: torch.Tensor, memo: Memorization, count: int = 5) -> Figure:
    """The samples nearest to a training image (pixels, by ratio to the threshold), each beside
    that training image and their difference: what a reader checks for copies."""
    ratios = memo.ratios("pixel")
    order = np.argsort(ratios)[:count]
    rows = [
        torch.stack(
            [
                generated[i, 0],
                train[memo.nearest_pixel[i], 0],
                ((generated[i, 0] - train[memo.nearest_pixel[i], 0]).abs() * 4).clamp(0, 1),
            ]
        )
        for i in order
    ]
    return Figure(
        "Memorization: the closest pairs",
        image_grid(torch.cat(rows).numpy(), columns=3),
        "The samples nearest to a training image in pixels, closest first: sample | its nearest training image | "
        "4x |difference|. Ratios to the threshold (the 5th percentile of real test images' nearest-training "
        "distance; below 1 is flagged): " + ", ".join(f"{ratios[i]:.2f}" for i in order) + ".",
        upscale=2,
    )
