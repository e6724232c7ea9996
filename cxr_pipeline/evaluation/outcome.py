"""What every evaluation shares: the sampling budget, the promotion policy, the outcome a suite
returns, the inputs it reads, and ``Evaluation``, the one signature of an evaluation
(inputs, budget, policy, options -> outcome) that the Dagster layer builds every evaluation
asset and its run config from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
import pandas as pd

from .. import promotion
from ..metrics.statistics import MIN_BOOTSTRAP_UNITS
from ..model_record import ModelRecord
from ..promotion import Decision, PromotionRule
from ..reports.document import Report, markdown_table
from ..settings import WorkPaths
from .caps import Draw, EvaluationCaps, split_draw

if TYPE_CHECKING:
    from ..models.pipelines import CxrPipeline

Log = Callable[[str], None]
Options = TypeVar("Options")


@dataclass(frozen=True)
class SamplingBudget:
    """How hard every suite samples and resamples; the same knobs for every model."""

    ddim_steps: int = 50
    spread_seeds: int = 4  # seeds per input for the sample-spread guard (1 turns it off)
    spread_images: int = 16  # the first this many test images get the extra seeds
    bootstrap_resamples: int = 2000
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # the UNet's autocast while sampling (CxrPipeline): "auto", "no", "bf16", "fp16"

    def params(self, pipeline: type[CxrPipeline]) -> dict:
        """The budget for the run's params, with the precision this machine samples ``pipeline`` in."""
        return {**asdict(self), "sampling_precision": pipeline.resolved_precision(self.precision, self.device)}


@dataclass(frozen=True)
class PromotionPolicy:
    """A promotion rule with ``{scale}``-style placeholders, filled per evaluated model."""

    metric: str
    guards: tuple[str, ...] = ()
    tolerance: float = 0.0
    detail_guards: tuple[str, ...] = ()  # fine detail: not below the champion's beyond the interval

    def rule(self, must_beat: tuple[tuple[str, str], ...], **names) -> PromotionRule:
        return PromotionRule(
            self.metric.format(**names),
            tuple(g.format(**names) for g in self.guards),
            tolerance=self.tolerance,
            must_beat=must_beat,
            interval_guards=tuple(g.format(**names) for g in self.detail_guards),
        )


@dataclass(frozen=True)
class Promotion:
    """A champion/challenger decision and the test split it was made on; publishing the outcome
    records it in the registry (tags, aliases)."""

    record: ModelRecord
    decision: Decision
    comparison_key: str

    def publish(self) -> None:
        promotion.record_and_promote(self.record.registered_model, self.decision, self.comparison_key)


@dataclass
class EvaluationOutcome:
    """What one evaluation produced: the figures, the models they belong to, the promotion
    decisions, and the report that shows them."""

    name: str
    report: Report
    metrics: dict[str, float]
    evaluated: list[tuple[ModelRecord, dict[str, float]]]  # (model record, that model's figures)
    promotions: list[Promotion]  # decided here, written to the registry when the outcome is published
    must_beat: tuple[tuple[str, str], ...]  # (model figure, baseline figure) pairs
    summary: str  # Markdown tables for the asset page
    params: dict = field(default_factory=dict)
    scores: pd.DataFrame | None = None  # per image, per method
    draws: list[Draw] = field(default_factory=list)  # which images of each split were scored
    asset_metadata: dict[str, Any] = field(default_factory=dict)  # more for the asset page (counts, statuses)

    def note_draws(self, draws: Sequence[Draw]) -> None:
        """Say in the report and the run's params how many images of each split were scored and
        how they were drawn (``caps.py``)."""
        if not draws:
            return
        self.draws = [*self.draws, *draws]
        self.report.summary += " Images scored: " + "; ".join(d.describe() for d in draws) + "."
        for draw in draws:
            self.params.update(draw.params())
            patients = int(draw.rows["patient_key"].nunique()) if len(draw.rows) else 0
            self.metrics[f"patients_scored_{draw.split}"] = float(patients)
            self.asset_metadata[f"patients_scored_{draw.split}"] = patients
            if patients < MIN_BOOTSTRAP_UNITS:
                warning = (
                    f"Only {patients} patient(s) in {draw.split}: the patient-bootstrap intervals here cannot say "
                    "how the figures would move on other patients (one patient gives a zero-width interval); "
                    "read every figure as a point estimate."
                )
                self.report.summary += " **" + warning + "**"
                self.asset_metadata["interval_warning"] = warning

    def headline(self) -> dict[str, float]:
        return {k: float(round(v, 5)) for k, v in self.metrics.items() if is_headline(k) and np.isfinite(v)}

    def promotion_summary(self) -> str:
        return "\n\n".join(
            f"**{p.record.registered_model} v{p.decision.version}**: "
            f"{'promoted to champion' if p.decision.promoted else 'not promoted'} "
            f"({p.decision.reason})\n\n" + markdown_table(p.decision.table())
            for p in self.promotions
        )

    def baseline_verdicts(self) -> list[promotion.BaselineVerdict]:
        return promotion.against_baselines(self.must_beat, self.metrics)


def is_headline(name: str) -> bool:
    return not name.endswith(("_std", "_ci_low", "_ci_high"))


NO_PROMOTION = PromotionPolicy("")  # an evaluation that names no champion


@dataclass(frozen=True)
class SuiteInputs:
    """What an evaluation reads from the work folder, read once: the paths, the metadata, the
    caps on the images of each split it may score, and where its progress lines go."""

    paths: WorkPaths
    metadata: pd.DataFrame
    caps: EvaluationCaps
    profile: str = "demo"
    log: Log = print

    @classmethod
    def of(cls, paths: WorkPaths, caps: EvaluationCaps, profile: str, log: Log = print) -> SuiteInputs:
        return cls(paths, pd.read_parquet(paths.metadata), caps, profile, log)

    def draw(self, split: str, seed: int, *, labelled: bool = False) -> Draw:
        """The split's rows under its cap (``caps.py``): ``test`` or ``val``."""
        cap = {"test": self.caps.test_images, "val": self.caps.val_images}[split]
        return split_draw(self.metadata, split, cap, labelled=labelled, seed=seed)


@dataclass(frozen=True)
class Evaluation(Generic[Options]):
    """One evaluation: its name (the asset), the suite's own knobs (``options``, a dataclass with
    the why of each default), its default budget and promotion rule, the caps it honours, and
    ``run(inputs, budget, policy, options) -> outcome``. The asset's run config is generated from
    these, field for field, as the training configs are from the recipes."""

    name: str
    description: str
    run: Callable[[SuiteInputs, SamplingBudget, PromotionPolicy, Options], EvaluationOutcome]
    options: type[Options]
    budget: SamplingBudget = SamplingBudget()
    policy: PromotionPolicy = NO_PROMOTION
    # SamplingBudget fields the evaluation uses (its run config offers only these)
    budget_fields: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SamplingBudget))
    # EvaluationCaps fields it honours (its run config overrides them as ``max_<...>``)
    caps: tuple[str, ...] = ("test_images", "val_images", "train_reference")

    @property
    def promotes(self) -> bool:
        return bool(self.policy.metric)
