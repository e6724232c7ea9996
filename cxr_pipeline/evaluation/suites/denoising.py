"""The low-dose denoiser per dose level against the noisy input and non-local means, both tuned on val."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ... import promotion
from ...data.image_store import ImageStore
from ...data.pairs import low_dose_pair_dir
from ...model_record import ModelRecord
from ...models.pipelines import (
    LowDoseDenoiser,
)
from ...reports.document import Report, Section, Table, markdown_table
from ..challenge import score_and_challenge
from ..denoising import DENOISER_STRENGTHS, NLM_FACTORS, evaluate_denoising, tune_denoiser_strength, tune_nlm
from ..inputs import degraded_images, split_description, stored_images, training_curve
from ..outcome import EvaluationOutcome, Log, PromotionPolicy, SamplingBudget


@dataclass(frozen=True)
class DenoisingOptions:
    nlm_factors: list[float] = field(default_factory=lambda: list(NLM_FACTORS))  # NLM's h / sigma, tuned on val
    strengths: list[float] = field(
        default_factory=lambda: list(DENOISER_STRENGTHS)
    )  # the denoiser's start, tuned on val
    val_images: int = 24  # validation images both are tuned on


def denoising_suite(
    record: ModelRecord,
    rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    image_store: Path,
    pairs_root: Path,
    doses: Sequence[float],
    budget: SamplingBudget,
    policy: PromotionPolicy,
    registry_cache: Path,
    options: DenoisingOptions,
    *,
    log: Log = print,
) -> EvaluationOutcome:
    """The low-dose denoiser per dose level on ``rows``, against the noisy input and non-local
    means, both tuned on ``val_rows`` (NLM's h, the denoiser's starting strength), then promotion."""
    nlm_factors, strengths = options.nlm_factors, options.strengths
    if not doses:
        raise FileNotFoundError("no low-dose pairs: materialize low_dose_pairs first")
    store = ImageStore(image_store)
    clean, val_clean = stored_images(store, rows), stored_images(store, val_rows)
    noisy = {
        dose: (
            degraded_images(low_dose_pair_dir(pairs_root, dose), val_rows),
            degraded_images(low_dose_pair_dir(pairs_root, dose), rows),
        )
        for dose in doses
    }

    def evaluate(model_dir: str):
        results, model = [], LowDoseDenoiser.from_pretrained(model_dir, budget.device, precision=budget.precision)
        for dose, (val_noisy, test_noisy) in noisy.items():
            factor, nlm_search = tune_nlm(val_clean, val_noisy, nlm_factors)
            strength, strength_search = tune_denoiser_strength(
                model, val_clean, val_noisy, dose, strengths, budget.ddim_steps, budget.seed
            )
            log(f"I0 {dose:g}: on val, NLM h = {factor:g} sigma, denoiser strength {strength:g}")
            tuning = [
                Table(f"NLM h search on val, I0 = {dose:g}", nlm_search.round(3)),
                Table(f"Denoiser strength search on val, I0 = {dose:g}", strength_search.round(3)),
            ]
            results.append(
                evaluate_denoising(
                    model,
                    clean,
                    test_noisy,
                    rows["image_id"],
                    rows["patient_key"],
                    dose,
                    factor,
                    strength,
                    tuning,
                    ddim_steps=budget.ddim_steps,
                    spread_seeds=budget.spread_seeds,
                    spread_images=budget.spread_images,
                    seed=budget.seed,
                    resamples=budget.bootstrap_resamples,
                )
            )
        return results

    def merged_metrics(results) -> dict[str, float]:
        return {k: v for result in results for k, v in result.metrics().items()}

    scored = score_and_challenge(  # every dose level must beat NLM
        record,
        evaluate,
        lambda results: (merged_metrics(results), tuple(pair for result in results for pair in result.must_beat())),
        policy,
        promotion.split_key(rows["image_id"]),
        registry_cache,
        log,
    )
    results, metrics, must_beat, promotion_section = (
        scored.results,
        scored.metrics,
        scored.must_beat,
        scored.promotion_section,
    )
    sections = [result.section() for result in results]
    sections += [Section("Training", figures=[training_curve(record, "Low-dose denoiser")]), promotion_section]
    tables = [f"**I0 = {r.task.removeprefix('denoise_i0_')}**\n\n" + markdown_table(r.table()) for r in results]
    return EvaluationOutcome(
        "denoising_evaluation",
        Report("Low-dose denoising evaluation", split_description(rows, [(record, metrics)]), sections),
        metrics,
        [(record, metrics)],
        [scored.promotion],
        must_beat,
        "\n\n".join(tables),
        params={
            **budget.params(LowDoseDenoiser),
            "nlm_factors": list(nlm_factors),
            "strengths": list(strengths),
            "val_images": len(val_rows),
        },
        scores=pd.concat([r.scores.assign(task=r.task) for r in results], ignore_index=True),
    )
