"""Latent super-resolution at fixed scales against bicubic, bicubic through the VAE and the VAE ceiling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ... import promotion
from ...data.image_store import ImageStore
from ...data.pairs import sr_pair_dir
from ...model_record import ModelRecord
from ...models.pipelines import (
    LatentSuperResolution,
)
from ...models.regression import RegressionRecipe, restore
from ...reports.document import Report, markdown_table
from ..challenge import score_and_challenge
from ..inputs import degraded_images, split_description, stored_images, training_curve
from ..outcome import EvaluationOutcome, Log, PromotionPolicy, SamplingBudget
from ..regression_baseline import fit_regression_baseline
from ..restoration import evaluate_super_resolution


@dataclass(frozen=True)
class SrOptions:
    full_chain: bool = False  # also sample with the full ancestral chain (T = 1000 steps: minutes on CPU)
    lr_start_strength: float | None = 0.3  # also sample from the LR latent noised to this share of T; None: off
    # The learned regression baseline (models/regression.py), trained per scale on the training pairs with
    # its checkpoint chosen on val: steps (0: off), training images and val images. 1,500 steps take about
    # a minute at 64 px on 2 cores, near the latent SR model's own training time; on val, 32 channels trained
    # this long matched or beat 48 and 64 channels trained for the same time (experiments/regression_recipe.py).
    regression_steps: int = 1500
    regression_train_images: int = 2000
    regression_val_images: int = 24


def super_resolution_suite(
    models: Sequence[tuple[int, ModelRecord]],
    rows: pd.DataFrame,
    train_rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    image_store: Path,
    pairs_root: Path,
    budget: SamplingBudget,
    policy: PromotionPolicy,
    registry_cache: Path,
    options: SrOptions,
    *,
    log: Log = print,
) -> EvaluationOutcome:
    """Each latent SR model ((scale, record) pairs) on ``rows`` against bicubic, bicubic through
    the VAE, the VAE ceiling and a regression CNN trained on ``train_rows``' pairs (checkpoint
    chosen on ``val_rows``), then promotion per scale."""
    full_chain, lr_start_strength = options.full_chain, options.lr_start_strength
    if not models:
        raise FileNotFoundError("no trained latent SR model: materialize latent_sr first")
    store = ImageStore(image_store)
    high_resolution = stored_images(store, rows)
    outcome = EvaluationOutcome(
        "sr_evaluation",
        Report("Super-resolution evaluation", "", []),
        {},
        [],
        [],
        (),
        "",
        params={
            **budget.params(LatentSuperResolution),
            "full_chain": full_chain,
            "lr_start_strength": lr_start_strength,
            "regression": {
                **RegressionRecipe(steps=options.regression_steps).params(),
                "train_images": len(train_rows),
            },
        },
    )
    tables, scores = [], []
    train_high = val_high = None  # the regression baseline's HR sides, read once for every scale
    if options.regression_steps > 0 and len(train_rows) and len(val_rows):
        train_high, val_high = stored_images(store, train_rows), stored_images(store, val_rows)
    for scale, record in models:
        low_resolution = degraded_images(sr_pair_dir(pairs_root, scale), rows)
        regression, regression_parts = None, None
        if train_high is not None and val_high is not None:
            model, curve, note = fit_regression_baseline(
                degraded_images(sr_pair_dir(pairs_root, scale), train_rows),
                train_high,
                degraded_images(sr_pair_dir(pairs_root, scale), val_rows),
                val_high,
                RegressionRecipe(steps=options.regression_steps),
                f"sr_x{scale}",
                device=budget.device,
                log=log,
            )
            regression, regression_parts = restore(model, low_resolution), (curve, note)

        def evaluate(model_dir: str, low_resolution: torch.Tensor = low_resolution, regression=regression):
            return evaluate_super_resolution(
                LatentSuperResolution.from_pretrained(model_dir, budget.device, precision=budget.precision),
                high_resolution,
                low_resolution,
                rows["image_id"],
                rows["patient_key"],
                ddim_steps=budget.ddim_steps,
                full_chain=full_chain,
                lr_start_strength=lr_start_strength,
                regression=regression,
                spread_seeds=budget.spread_seeds,
                spread_images=budget.spread_images,
                seed=budget.seed,
                resamples=budget.bootstrap_resamples,
            )

        log(f"evaluating {record.label} on {len(rows)} test images")
        scored = score_and_challenge(
            record,
            evaluate,
            lambda r: (r.metrics(), r.must_beat()),
            policy,
            promotion.split_key(rows["image_id"]),
            registry_cache,
            log,
            scale=scale,
        )
        result = scored.results
        if regression_parts is not None:
            result.tables.append(regression_parts[0])
            result.notes.insert(0, regression_parts[1])
        section = result.section()
        section.figures.append(training_curve(record, f"Latent SR x{scale}"))
        outcome.report.sections += [section, scored.promotion_section]
        outcome.metrics.update(scored.metrics)
        outcome.evaluated.append((record, scored.metrics))
        outcome.promotions.append(scored.promotion)
        outcome.must_beat += scored.must_beat
        tables.append(f"**x{scale}**\n\n" + markdown_table(result.table()))
        scores.append(result.scores.assign(task=result.task))
    outcome.report.summary = split_description(rows, outcome.evaluated)
    outcome.summary = "\n\n".join(tables)
    outcome.scores = pd.concat(scores, ignore_index=True)
    return outcome
