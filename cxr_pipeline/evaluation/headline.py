"""An evaluation's headline figures as its users look for them in MLflow: under plain names
(``psnr``, ``ssim``, ``mae``, ``detail``, ``fd``, ``kid``, ``cond_acc``, ``prompt_consistency``),
one row per method and setting (the model, each baseline, the real reference; per scale or dose),
so that a runs table compares the model and its baselines column by column.

The evaluation run keeps every figure under its full name (``psnr_sr_x4_ddim``: intervals, per
class, per dose); these rows only regroup the headline ones. Which methods exist is read from the
outcome itself (its per-image scores, its models' figures), never from a list kept here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..model_record import ModelRecord
from .outcome import EvaluationOutcome, is_headline

# restoration: <figure>_<task>_<method>, the methods and tasks those of the per-image scores
RESTORATION_FIGURES = ("psnr", "ssim", "mae", "detail")
# generation: <figure>_<model>[_<reference>]
GENERATION_FIGURES = {
    "fd_cxr": "fd",
    "fid_inception": "fid",
    "kid": "kid",
    "cond_acc": "cond_acc",
    "prompt_consistency": "prompt_consistency",
    "detail": "detail",
    "precision": "precision",
    "recall": "recall",
}
GENERATION_REFERENCES = ("real_reference", "chance", "retrieval", "unconditional")
# the synthetic-data experiment: <figure>_utility_<arm>
UTILITY = re.compile(r"^(auroc|accuracy)_utility_([a-z_]+)$")


@dataclass(frozen=True)
class MethodFigures:
    method: str  # "ddim", "bicubic", "class_ddpm", "real_reference", "real_balanced"
    setting: str  # "sr_x4", "denoise_i0_1000"; "" where the evaluation has one setting
    role: str  # "model", "baseline", "reference" or "arm"
    figures: dict[str, float]
    record: ModelRecord | None = None  # the evaluated version, for a model's row
    primary: bool = False  # the model's setting its promotion is decided on (its first must-beat pair)

    @property
    def name(self) -> str:
        return f"{self.method} · {self.setting}" if self.setting else self.method


def method_figures(outcome: EvaluationOutcome) -> list[MethodFigures]:
    """Model rows first (then baselines and references), each with its finite figures."""
    metrics = {k: float(v) for k, v in outcome.metrics.items() if math.isfinite(float(v))}
    rows = _restoration(outcome, metrics) or _generation(outcome, metrics) or _utility(metrics)
    return sorted(rows, key=lambda row: (row.role != "model", row.setting, row.role, row.method))


def _record_for(outcome: EvaluationOutcome, suffix: str) -> ModelRecord | None:
    return next((record for record, figures in outcome.evaluated if any(k.endswith(suffix) for k in figures)), None)


def _restoration(outcome: EvaluationOutcome, metrics: dict[str, float]) -> list[MethodFigures]:
    scores = outcome.scores
    if scores is None or not {"task", "method"} <= set(scores.columns):
        return []
    models = [model for model, _ in outcome.must_beat]
    rows = []
    for task, method in scores[["task", "method"]].drop_duplicates().itertuples(index=False):
        suffix = f"_{task}_{method}"
        figures = {name: metrics[name + suffix] for name in RESTORATION_FIGURES if name + suffix in metrics}
        if not figures:
            continue
        is_model = any(model.endswith(suffix) for model in models)
        record = _record_for(outcome, suffix) if is_model else None
        primary = bool(models) and models[0].endswith(suffix)
        rows.append(
            MethodFigures(str(method), str(task), "model" if is_model else "baseline", figures, record, primary)
        )
    return rows


def _generation(outcome: EvaluationOutcome, metrics: dict[str, float]) -> list[MethodFigures]:
    rows = []
    for record, figures in outcome.evaluated:
        # the figures' model tag: "fd_cxr_class_ddpm" -> "class_ddpm"
        tags = {key.removeprefix("fd_cxr_") for key in figures if key.startswith("fd_cxr_")}
        tags = {t for t in tags if not t.endswith(GENERATION_REFERENCES) and "_at_" not in t}
        for tag in sorted(tags):
            for reference in ("", *GENERATION_REFERENCES):
                suffix = f"_{tag}_{reference}" if reference else f"_{tag}"
                found = {
                    plain: metrics[key + suffix] for key, plain in GENERATION_FIGURES.items() if key + suffix in metrics
                }
                if found:
                    role = "reference" if reference else "model"
                    model = None if reference else record
                    rows.append(MethodFigures(reference or tag, "", role, found, model, primary=not reference))
    return rows


def _utility(metrics: dict[str, float]) -> list[MethodFigures]:
    arms: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        match = UTILITY.match(key)
        arm = match.group(2) if match else ""
        if match and is_headline(key) and not arm.startswith("diff_") and not arm.endswith("_seed_std"):
            arms.setdefault(match.group(2), {})[match.group(1)] = value
    return [MethodFigures(arm, "", "arm", figures) for arm, figures in arms.items()]


def model_metrics(rows: list[MethodFigures], record: ModelRecord) -> dict[str, float]:
    """One evaluated version's figures for its logged model and registered version: plain names
    for its first setting (the one its promotion is decided on), and ``<name>_<setting>`` for
    every setting when there are several."""
    mine = [row for row in rows if row.record is not None and row.record.mlflow_run_id == record.mlflow_run_id]
    if not mine:
        return {}
    figures = dict(next((row for row in mine if row.primary), mine[0]).figures)
    if len(mine) > 1:
        for row in mine:
            figures.update({f"{name}_{row.setting}": value for name, value in row.figures.items()})
    return figures
