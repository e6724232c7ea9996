"""Arbitrary-scale super-resolution at each scale against bicubic, its own latent path without
diffusion and the fixed-scale models on the same inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ... import promotion
from ...data.degrade import DegradationMix
from ...data.image_store import ImageStore
from ...data.pairs import scale_exact_pairs
from ...model_record import ModelRecord
from ...models.model_folder import describe
from ...models.model_settings import ArbitrarySRSettings
from ...models.pipelines import (
    ArbitraryScaleSuperResolution,
    LatentSuperResolution,
)
from ...reports.document import Figure, Report, Section, Table, markdown_table
from ...reports.plots import interval_plot
from ..challenge import score_and_challenge
from ..inputs import split_description, stored_images, training_curve
from ..outcome import EvaluationOutcome, Log, PromotionPolicy, SamplingBudget
from ..restoration import evaluate_arbitrary_scale


@dataclass(frozen=True)
class ArbitrarySrOptions:
    scales: list[float] = field(default_factory=lambda: [2.0, 2.5, 3.0, 4.0, 6.0])  # x6 is outside the training range
    degradation_mix: bool = True  # LR made as sr_pairs makes it (at x2 and x4, the same images)
    pair_seed: int = 0


def arbitrary_super_resolution_suite(
    record: ModelRecord,
    fixed_models: Sequence[tuple[int, ModelRecord]],
    rows: pd.DataFrame,
    image_store: Path,
    budget: SamplingBudget,
    policy: PromotionPolicy,
    registry_cache: Path,
    options: ArbitrarySrOptions,
    *,
    log: Log = print,
) -> EvaluationOutcome:
    """The arbitrary-scale model at each scale on ``rows`` against bicubic at that scale, its own
    latent path without diffusion and, at the scales a fixed-scale model was trained for, that
    model on the same inputs; a plot of the gain over bicubic by scale; then promotion."""
    scales, degradation_mix, pair_seed = options.scales, options.degradation_mix, options.pair_seed
    ids, groups = rows["image_id"].astype(str), rows["patient_key"]
    inputs = scale_exact_pairs(
        stored_images(ImageStore(image_store), rows),
        ids,
        scales,
        DegradationMix() if degradation_mix else None,
        pair_seed,
    )
    fixed = {float(scale): p for scale, p in fixed_models}

    def evaluate(model_dir: str, compare: bool = False):
        model = ArbitraryScaleSuperResolution.from_pretrained(model_dir, budget.device, precision=budget.precision)
        results = []
        for scale, (high, low) in inputs.items():
            reference = (
                LatentSuperResolution.from_pretrained(fixed[scale].model_dir, budget.device, precision=budget.precision)
                if compare and scale in fixed
                else None
            )
            log(
                f"x{scale:g}: {len(high)} test images, LR {tuple(low.shape[-2:])} -> HR {tuple(high.shape[-2:])}"
                + (f", beside {fixed[scale].label}" if reference else "")
            )
            results.append(
                (
                    scale,
                    evaluate_arbitrary_scale(
                        model,
                        high,
                        low,
                        ids,
                        groups,
                        scale,
                        fixed=reference,
                        ddim_steps=budget.ddim_steps,
                        spread_seeds=budget.spread_seeds,
                        spread_images=budget.spread_images,
                        seed=budget.seed,
                        resamples=budget.bootstrap_resamples,
                    ),
                )
            )
        return results

    def merged_metrics(results) -> dict[str, float]:
        metrics = {k: v for _, result in results for k, v in result.metrics().items()}
        metrics["psnr_gain_sr_mean_arbitrary"] = float(np.mean([r.gains["arbitrary"].mean for _, r in results]))
        return metrics

    # every scale must beat bicubic; the champion is rescored without the fixed-scale comparison
    scored = score_and_challenge(
        record,
        lambda folder: evaluate(folder, compare=True),
        lambda results: (merged_metrics(results), tuple(pair for _, result in results for pair in result.must_beat())),
        policy,
        promotion.split_key(rows["image_id"]),
        registry_cache,
        log,
        rescore=evaluate,
    )
    results, metrics, must_beat, promotion_section = (
        scored.results,
        scored.metrics,
        scored.must_beat,
        scored.promotion_section,
    )
    low, high = describe(record.model_dir).settings_as(ArbitrarySRSettings).scale_range

    def gains_of(method: str) -> tuple[list, list, list, list]:
        points = [(scale, r.gains[method]) for scale, r in results if method in r.gains]
        return (
            [s for s, _ in points],
            [g.mean for _, g in points],
            [g.ci_low for _, g in points],
            [g.ci_high for _, g in points],
        )

    series = {"arbitrary-scale model": gains_of("arbitrary")}
    if any("fixed" in r.gains for _, r in results):
        series["fixed-scale model"] = gains_of("fixed")
    plot = Figure(
        "PSNR gain over bicubic by scale",
        interval_plot(
            series, "PSNR gain over bicubic (paired, 95% patient-bootstrap interval)", "scale", "dB", shade=(low, high)
        ),
        f"Shaded: the training range [{low:g}, {high:g}]; outside it the model extrapolates.",
    )
    rows_ = []
    for scale, result in results:
        gain, versus = result.gains["arbitrary"], result.versus
        rows_.append(
            {
                "scale": f"x{scale:g}",
                "bicubic PSNR": round(result.summaries["bicubic"]["psnr"].mean, 2),
                "arbitrary PSNR": round(result.summaries["arbitrary"]["psnr"].mean, 2),
                "gain over bicubic": gain.text(2),
                "arbitrary − fixed-scale": versus["fixed"].text(2) if "fixed" in versus else "—",
                "LR-consistency": round(result.summaries["arbitrary"]["lr_consistency_psnr"].mean, 2),
                "registration (px)": round(result.summaries["arbitrary"]["registration_px"].mean, 3),
                "bicubic registration (px)": round(result.summaries["bicubic"]["registration_px"].mean, 3),
            }
        )
    table = pd.DataFrame(rows_)
    sections = [Section("Gain by scale", "", [Table("Arbitrary-scale SR by scale", table)], [plot])]
    sections += [result.section() for _, result in results]
    sections += [Section("Training", figures=[training_curve(record, "Arbitrary-scale SR")]), promotion_section]
    evaluated = [(record, metrics)]
    return EvaluationOutcome(
        "arbitrary_sr_evaluation",
        Report("Arbitrary-scale super-resolution evaluation", split_description(rows, evaluated), sections),
        metrics,
        evaluated,
        [scored.promotion],
        must_beat,
        markdown_table(table),
        params={
            **budget.params(ArbitraryScaleSuperResolution),
            "scales": list(scales),
            "degradation_mix": degradation_mix,
            "pair_seed": pair_seed,
            "fixed_scale_models": ", ".join(p.label for _, p in fixed_models),
        },
        scores=pd.concat([r.scores.assign(task=r.task) for _, r in results], ignore_index=True),
    )
