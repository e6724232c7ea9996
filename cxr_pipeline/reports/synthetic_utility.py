"""How the synthetic-data experiment is shown: its goals, arms and per-class tables, the grouped
AUROC chart and the example grids of generated training images. The experiment itself (arms,
training, paired bootstrap) is ``cxr_pipeline.evaluation.synthetic_utility``; the statistics are
``cxr_pipeline.metrics.statistics``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..metrics.verdicts import NOT_WORSE_AUROC_MARGIN
from .document import Figure, Section, Table
from .grid import image_grid
from .plots import grouped_interval_bars


def interval_text(value: float, low: float, high: float, signed: bool = False) -> str:
    if not np.isfinite(value):
        return "—"
    sign = "+" if signed else ""
    return f"{value:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def arms_table(result: Any) -> pd.DataFrame:
    """One row per arm: images, macro AUROC and accuracy with intervals and the paired differences."""
    rows, reference = [], result.reference
    for arm in result.arms:
        macro, accuracy = result.scores.row(arm.name, "auroc_macro"), result.scores.row(arm.name, "accuracy")
        counts = result.arm_counts[arm.name]
        val = result.val_scores[result.val_scores["arm"] == arm.name]
        rows.append(
            {
                "arm": arm.name,
                "real / generated images": f"{int(counts.loc[reference].sum()) if reference in counts.index else 0} / "
                f"{int(counts.drop(index=reference, errors='ignore').to_numpy().sum())}",
                "macro AUROC [95% CI]": interval_text(macro["value"], macro["ci_low"], macro["ci_high"]),
                "Δ vs real [95% CI]": "—"
                if arm.name == reference
                else interval_text(macro["diff"], macro["diff_low"], macro["diff_high"], signed=True),
                "seed std": "—" if not np.isfinite(macro["seed_std"]) else f"{macro['seed_std']:.3f}",
                "accuracy [95% CI]": interval_text(accuracy["value"], accuracy["ci_low"], accuracy["ci_high"]),
                "Δ accuracy": "—"
                if arm.name == reference
                else interval_text(accuracy["diff"], accuracy["diff_low"], accuracy["diff_high"], signed=True),
                "val macro AUROC": f"{val['val_auroc_macro'].mean():.3f}" if len(val) else "—",
            }
        )
    return pd.DataFrame(rows)


def per_class_table(result: Any) -> pd.DataFrame:
    rows, table = [], result.scores.table
    for name, count in zip(result.class_names, result.real_counts):
        metric = f"auroc_{name}"
        row = {"class": name, "real train images": int(count)}
        for arm in result.arms:
            hit = table[(table["arm"] == arm.name) & (table["metric"] == metric)]
            if hit.empty:
                row[arm.name] = "—"
                continue
            r = hit.iloc[0]
            row[arm.name] = interval_text(r["value"], r["ci_low"], r["ci_high"])
            if arm.name != result.reference:
                row[f"Δ {arm.name}"] = interval_text(r["diff"], r["diff_low"], r["diff_high"], signed=True)
        rows.append(row)
    return pd.DataFrame(rows)


def goals_table(result: Any) -> pd.DataFrame:
    """The experiment's two goals, each judged on its paired interval (``metrics/verdicts.py``)."""
    rows = []
    verdict = result.not_worse()
    if verdict is not None:
        r = result.scores.row("real_synthetic", "auroc_macro")
        rows.append(
            {
                "goal": f"real + synthetic not worse than real only (macro AUROC difference's interval above "
                f"-{NOT_WORSE_AUROC_MARGIN:g})",
                "measured": interval_text(r["diff"], r["diff_low"], r["diff_high"], signed=True),
                "verdict": verdict.verdict.value,
                "why": verdict.reason,
            }
        )
    gain, judged = result.rarest_class_gain(), result.rarest_class_verdict()
    if gain is not None and judged is not None:
        real = result.scores.row(result.reference, f"auroc_{result.rarest_class}")["value"]
        rows.append(
            {
                "goal": f"balancing improves the rarest class ({result.rarest_class}, "
                f"{int(result.real_counts.min())} real training images): interval above 0",
                "measured": interval_text(gain["diff"], gain["diff_low"], gain["diff_high"], signed=True)
                + f" (real only: {real:.3f})",
                "verdict": judged.verdict.value,
                "why": judged.reason,
            }
        )
    return pd.DataFrame(rows)


def per_class_figure(result: Any) -> Figure:
    series, table = {}, result.scores.table
    for arm in result.arms:
        values, lows, highs = [], [], []
        for name in result.class_names:
            hit = table[(table["arm"] == arm.name) & (table["metric"] == f"auroc_{name}")]
            r = hit.iloc[0] if len(hit) else None
            values.append(np.nan if r is None else r["value"])
            lows.append(np.nan if r is None else r["ci_low"])
            highs.append(np.nan if r is None else r["ci_high"])
        series[arm.name] = (values, lows, highs)
    image = grouped_interval_bars(
        result.class_names, series, "Test AUROC per class, by training arm", "AUROC", floor=0.5
    )
    return Figure("AUROC per class", image, "seed means with their 95% patient-and-seed bootstrap intervals")


def utility_section(result: Any) -> Section:
    arms = pd.DataFrame([{"arm": a.name, "what it trains on": a.description} for a in result.arms])
    counts = pd.concat(
        {arm: table.rename(columns=dict(enumerate(result.class_names))) for arm, table in result.arm_counts.items()},
        names=["arm", "source"],
    ).reset_index()
    figures = [per_class_figure(result)]
    for arm, (grid, rows) in result.examples.items():
        generators = " and ".join(next(a for a in result.arms if a.name == arm).generators)
        figures.append(
            Figure(
                f"Generated training images: {arm}",
                grid,
                f"from {generators}, alternating; one row per class: " + ", ".join(rows),
                upscale=2,
            )
        )
    level = int(round(result.scores.level * 100))
    return Section(
        "Synthetic data for a downstream classifier",
        f"The same classifier recipe is trained on each arm with {result.seeds} seed(s) and scored on the "
        f"{result.test_images} single-label real test images of {result.test_patients} patients. Values are "
        f"seed means; {level}% intervals resample test patients (shared by all arms, so differences are "
        f"paired) and each arm's seeds ({result.scores.resamples} draws). Every arm draws class-balanced "
        "batches, so the real-only arm already resamples its rare classes. No val or test image, and "
        "nothing generated from one, is in any arm; val AUROC is shown for reference only (nothing is "
        "selected on test).",
        tables=[
            Table("Goals", goals_table(result)),
            Table("Arms", arms_table(result)),
            Table("AUROC per class", per_class_table(result)),
            Table("What each arm trains on", arms),
            Table("Training images per source and class", counts),
        ],
        figures=figures,
    )


def example_grid(
    images: Any, labels: np.ndarray, sources: np.ndarray, class_names: Sequence[str], reference: str, per_class: int = 8
) -> tuple[np.ndarray, list[str]] | None:
    """Up to ``per_class`` generated images of each class an arm generated (``sources`` other
    than ``reference``), alternating between its generators, one row per class; with the rows'
    class names."""
    generated = np.flatnonzero(sources != reference)
    if not len(generated):
        return None
    side = int(images.batch(generated[:1]).shape[-1])
    rows, names = [], []
    for c, name in enumerate(class_names):
        of_class = generated[labels[generated] == c]
        if not len(of_class):
            continue
        queues = [of_class[sources[of_class] == s] for s in dict.fromkeys(sources[of_class])]
        picks = [q[k] for k in range(per_class) for q in queues if k < len(q)][:per_class]
        batch = images.batch(picks)[:, 0].numpy()
        rows.append(np.concatenate([batch, np.zeros((per_class - len(batch), side, side), np.float32)]))
        names.append(name)
    return image_grid(np.concatenate(rows), columns=per_class), names
