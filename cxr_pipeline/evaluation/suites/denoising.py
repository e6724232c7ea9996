"""The low-dose denoiser per dose level against the noisy input, non-local means with and without
a variance-stabilising transform (both tuned on val) and a regression CNN trained on the same pairs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from ... import promotion
from ...data.image_store import ImageStore
from ...data.pairs import low_dose_pair_dir
from ...model_record import ModelRecord
from ...models.pipelines import (
    LowDoseDenoiser,
)
from ...models.regression import RegressionRecipe
from ...reports.document import Report, Section, Table, markdown_table
from ..challenge import score_and_challenge
from ..denoising import (
    BM3D_FACTORS,
    BM3D_MISSING,
    DENOISER_STRENGTHS,
    NLM_FACTORS,
    VST_NLM_FACTORS,
    bm3d_available,
    denoising_baselines,
    detectors_of,
    evaluate_denoising,
    tune_denoiser_strength,
)
from ..inputs import degraded_images, split_description, stored_images, training_curve
from ..outcome import EvaluationOutcome, Log, PromotionPolicy, SamplingBudget
from ..regression_baseline import fit_regression_baseline


@dataclass(frozen=True)
class DenoisingOptions:
    nlm_factors: list[float] = field(default_factory=lambda: list(NLM_FACTORS))  # NLM's h / sigma, tuned on val
    strengths: list[float] = field(
        default_factory=lambda: list(DENOISER_STRENGTHS)
    )  # the denoiser's start, tuned on val
    val_images: int = 24  # validation images both are tuned on
    vst_nlm_factors: list[float] = field(default_factory=lambda: list(VST_NLM_FACTORS))  # NLM's h on the GAT
    # The regression CNN (models/regression.py), one for every dose, trained on the training pairs of all
    # doses, its checkpoint chosen on the val images above: steps (0: off) and training images. 1,000 steps
    # on 32 px crops take about 2 min at 64 px on 2 cores; the recipe, blind to the dose (telling it the dose
    # scored 0.9 dB lower), was chosen on val (experiments/regression_recipe.py).
    regression_steps: int = 1000
    regression_train_images: int = 1000
    # BM3D on the stabilized counts, its sigma tuned on val: the strongest classical denoiser, off by default
    # because the bm3d package is free for non-commercial use only and not shipped (install it yourself)
    bm3d: bool = False
    bm3d_factors: list[float] = field(default_factory=lambda: list(BM3D_FACTORS))


def denoising_suite(
    record: ModelRecord,
    rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    train_rows: pd.DataFrame,
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
    """The low-dose denoiser per dose level on ``rows``, against the noisy input, NLM with and
    without the variance-stabilising transform (each tuned on ``val_rows``, as is the denoiser's
    starting strength) and a regression CNN trained on ``train_rows``' pairs, then promotion."""
    nlm_factors, strengths = options.nlm_factors, options.strengths
    if not doses:
        raise FileNotFoundError("no low-dose pairs: materialize low_dose_pairs first")
    if options.bm3d and not bm3d_available():
        raise ModuleNotFoundError(BM3D_MISSING)
    store = ImageStore(image_store)
    clean, val_clean = stored_images(store, rows), stored_images(store, val_rows)

    def pairs(dose: float, split_rows: pd.DataFrame):
        directory = low_dose_pair_dir(pairs_root, dose)
        index = pd.read_parquet(directory / "index.parquet").set_index("image_id").loc[split_rows["image_id"]]
        return degraded_images(directory, split_rows), detectors_of(index.reset_index())

    noisy = {dose: (pairs(dose, val_rows), pairs(dose, rows)) for dose in doses}
    regression, regression_parts = None, None
    if options.regression_steps > 0 and len(train_rows):
        model, curve, note = fit_regression_baseline(
            torch.cat([degraded_images(low_dose_pair_dir(pairs_root, dose), train_rows) for dose in doses]),
            stored_images(store, train_rows).repeat(len(doses), 1, 1, 1),
            torch.cat([val for (val, _), _ in noisy.values()]),
            val_clean.repeat(len(doses), 1, 1, 1),
            RegressionRecipe(steps=options.regression_steps, crop=32),
            "denoising",
            device=budget.device,
            log=log,
        )
        regression, regression_parts = model, (curve, note)
    baselines = {}
    for dose, ((val_noisy, val_detectors), (test_noisy, test_detectors)) in noisy.items():
        baselines[dose] = denoising_baselines(
            val_clean,
            val_noisy,
            val_detectors,
            test_noisy,
            test_detectors,
            dose,
            nlm_factors=nlm_factors,
            vst_factors=options.vst_nlm_factors,
            regression=regression,
            bm3d_factors=options.bm3d_factors if options.bm3d else None,
        )
        if regression_parts is not None:
            baselines[dose].notes.insert(0, regression_parts[1])
            baselines[dose].tables.append(regression_parts[0])
        log(f"I0 {dose:g}: the strongest classical baseline on val is {baselines[dose].strongest_classical}")

    def evaluate(model_dir: str):
        results, model = [], LowDoseDenoiser.from_pretrained(model_dir, budget.device, precision=budget.precision)
        for dose, ((val_noisy, _), _) in noisy.items():
            strength, strength_search = tune_denoiser_strength(
                model, val_clean, val_noisy, dose, strengths, budget.ddim_steps, budget.seed
            )
            log(f"I0 {dose:g}: on val, denoiser strength {strength:g}")
            tuning = [Table(f"Denoiser strength search on val, I0 = {dose:g}", strength_search.round(3))]
            results.append(
                evaluate_denoising(
                    model,
                    clean,
                    baselines[dose],
                    rows["image_id"],
                    rows["patient_key"],
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

    scored = score_and_challenge(  # every dose level must beat its strongest classical baseline
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
            "vst_nlm_factors": list(options.vst_nlm_factors),
            "strengths": list(strengths),
            "val_images": len(val_rows),
            "regression": {
                **RegressionRecipe(steps=options.regression_steps, crop=32).params(),
                "train_images": len(train_rows),
            },
        },
        scores=pd.concat([r.scores.assign(task=r.task) for r in results], ignore_index=True),
    )
