"""The text-conditional model on the test split's own reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ... import promotion
from ...data.image_store import ImageStore
from ...model_record import ModelRecord
from ...models.pipelines import (
    TextConditionalGenerator,
)
from ...reports.document import Report, markdown_table
from ..caps import EvaluationCaps, draw_patients
from ..challenge import score_and_challenge
from ..inputs import training_curve
from ..outcome import EvaluationOutcome, Log, PromotionPolicy, SamplingBudget
from ..text_generation import evaluate_text_generation
from ..text_measures import GUIDANCE_SWEEP, prompts_of, reported_rows


@dataclass(frozen=True)
class TextGenerationOptions:
    guidance_scales: list[float] = field(default_factory=lambda: list(GUIDANCE_SWEEP))  # swept on val
    guidance_scale: float | None = None  # set: use it and skip the sweep
    consistency_samples: int = 2  # samples per normal or single-finding test report for prompt consistency
    sweep_samples: int = 2  # the same on val, per guidance scale of the sweep


def text_generation_suite(
    record: ModelRecord,
    classifier: ModelRecord,
    metadata: pd.DataFrame,
    image_store: Path,
    budget: SamplingBudget,
    policy: PromotionPolicy,
    registry_cache: Path,
    options: TextGenerationOptions,
    *,
    caps: EvaluationCaps,
    log: Log = print,
) -> EvaluationOutcome:
    """The text-conditional model on the test split's reports: prompt consistency (against the
    unconditional floor and retrieval), negation, fd_cxr / KID / PRDC, memorization, diversity,
    with the guidance scale chosen on val; then promotion (under the same feature network).
    Each split's reports are drawn under ``caps``: test, val (the sweep) and the training
    reports memorization and retrieval compare against."""
    guidance_scales, guidance_scale = options.guidance_scales, options.guidance_scale
    consistency_samples, sweep_samples = options.consistency_samples, options.sweep_samples
    store = ImageStore(image_store)
    draws = [
        draw_patients(reported_rows(metadata, split), cap, split, budget.seed, unit="reports")
        for split, cap in (("test", caps.test_images), ("val", caps.val_images), ("train", caps.train_reference))
    ]
    test, val, train = (prompts_of(draw.rows, store) for draw in draws)
    if not len(test) or not len(val):
        raise ValueError("the text model's evaluation needs reports in the val and test splits")

    def evaluate(model_dir: str):
        model = TextConditionalGenerator.from_pretrained(model_dir, budget.device, precision=budget.precision)
        return evaluate_text_generation(
            model,
            classifier.model_dir,
            test,
            val,
            train,
            guidance_scales=guidance_scales,
            guidance=guidance_scale,
            consistency_samples=consistency_samples,
            sweep_samples=sweep_samples,
            ddim_steps=budget.ddim_steps,
            seed=budget.seed,
            device=budget.device,
        )

    # compared only on the same test reports and images, under the same feature network
    comparison_key = f"{promotion.split_key(test.image_ids)}-classifier-v{classifier.version}"
    scored = score_and_challenge(
        record, evaluate, lambda r: (r.metrics(), r.must_beat()), policy, comparison_key, registry_cache, log
    )
    result, metrics, promotion_section = scored.results, scored.metrics, scored.promotion_section
    log(f"guidance {result.guidance:g} (chosen on val), prompt consistency {result.consistency:.3f}")
    section = result.section()
    section.figures.append(training_curve(record, "Text-conditional LDM"))
    report = Report(
        "Text-conditional generation evaluation",
        f"{record.label} sampled from the {len(test)} test reports of "
        f"{len(set(test.patients))} patients, scored with {classifier.registered_model} "
        f"v{classifier.version}; guidance chosen on {len(val)} val reports.",
        [section, promotion_section],
    )
    outcome = EvaluationOutcome(
        "text_generation_evaluation",
        report,
        metrics,
        [(record, metrics)],
        [scored.promotion],
        scored.must_beat,
        markdown_table(result.headline()) + "\n\n" + markdown_table(result.per_class()),
        params={
            **budget.params(TextConditionalGenerator),
            "guidance_scales": list(guidance_scales),
            "guidance_scale": guidance_scale,
            "guidance_chosen": result.guidance,
            "consistency_samples": consistency_samples,
            "sweep_samples": sweep_samples,
            "classifier": f"v{classifier.version}",
            "test_reports": len(test),
            "val_reports": len(val),
        },
    )
    outcome.note_draws(draws)
    return outcome
