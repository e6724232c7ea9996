"""Champion / challenger promotion in the MLflow Model Registry.

A newly evaluated version takes ``champion`` only when it
beats its classical baseline on the same images (bicubic, non-local means, chance-level
conditional accuracy: a model that samples noise is never champion, not even the first one), and
beats the champion on the rule's metric *on the same test split* and is not worse on the guard
metrics (for super-resolution: PSNR up, LR-consistency not down, so a sharper but invented image
never wins). Otherwise it is the ``challenger``: the latest evaluated version that is not the
champion (the two aliases never name the same version; a promotion leaves no challenger). The
decision, both sets of numbers and the reason are recorded as model-version tags and returned for
the report and the asset metadata.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION, CHALLENGER = "champion", "challenger"
# Metric-name prefixes where lower is better; everything else (psnr, ssim, cond_acc, ...) is higher.
LOWER_IS_BETTER = ("mae", "fd_cxr", "kid", "fid_inception", "spread", "ms_ssim", "negation_rate", "memorized_share")


def higher_is_better(metric: str) -> bool:
    return not metric.startswith(LOWER_IS_BETTER)


@dataclass(frozen=True)
class PromotionRule:
    metric: str  # must improve by more than ``min_gain``
    guards: tuple[str, ...] = ()  # must not get worse by more than ``tolerance``
    min_gain: float = 0.0
    tolerance: float = 0.0
    # (model metric, baseline metric) pairs from the same evaluation; the model must be better on each
    must_beat: tuple[tuple[str, str], ...] = ()
    # must not fall below the champion's value beyond the challenger's own interval (``<metric>_ci_high``)
    interval_guards: tuple[str, ...] = ()

    def metrics(self) -> tuple[str, ...]:
        return (self.metric, *self.guards, *self.interval_guards)

    def importance(self) -> tuple[str, ...]:
        """The figures people should read first: the promotion metric and the baseline it must
        beat, the other model/baseline pairs, then the guards."""
        ordered: list[str] = [self.metric]
        for model, baseline in sorted(self.must_beat, key=lambda pair: pair[0] != self.metric):
            ordered += [model, baseline]
        ordered += [*self.guards, *self.interval_guards]
        return tuple(dict.fromkeys(ordered))


@dataclass(frozen=True)
class BaselineVerdict:
    metric: str
    baseline: str
    value: float
    baseline_value: float

    @property
    def beaten(self) -> bool:
        sign = 1.0 if higher_is_better(self.metric) else -1.0
        return math.isfinite(self.value) and sign * (self.value - self.baseline_value) > 0

    def describe(self) -> str:
        relation = "beats" if self.beaten else "does not beat"
        return f"{self.metric} = {self.value:.4f} {relation} {self.baseline} = {self.baseline_value:.4f}"


def against_baselines(pairs: tuple[tuple[str, str], ...], metrics: dict[str, float]) -> list[BaselineVerdict]:
    """Each model figure against its baseline figure; a missing figure is a failure (NaN)."""
    return [
        BaselineVerdict(metric, baseline, float(metrics.get(metric, math.nan)), float(metrics.get(baseline, math.nan)))
        for metric, baseline in pairs
    ]


@dataclass
class Decision:
    promoted: bool
    reason: str
    version: str
    champion_version: str | None
    challenger: dict[str, float]
    champion: dict[str, float] | None = None
    verdicts: dict[str, str] = field(default_factory=dict)
    importance: tuple[str, ...] = ()  # the rule's figures, most important first (``PromotionRule.importance``)

    def table(self) -> pd.DataFrame:
        rows = []
        for metric, verdict in self.verdicts.items():
            rows.append(
                {
                    "metric": metric,
                    f"challenger v{self.version}": _fmt(self.challenger.get(metric)),
                    f"champion v{self.champion_version}" if self.champion_version else "champion": _fmt(
                        (self.champion or {}).get(metric)
                    ),
                    "better is": "higher" if higher_is_better(metric) else "lower",
                    "verdict": verdict,
                }
            )
        return pd.DataFrame(rows)


def _fmt(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def decide(
    rule: PromotionRule,
    version: str,
    challenger: dict[str, float],
    champion_version: str | None,
    champion: dict[str, float] | None,
) -> Decision:
    """Pure: the decision from two sets of test-split metrics."""
    decision = _decide(rule, version, challenger, champion_version, champion)
    decision.importance = rule.importance()
    return decision


def _decide(
    rule: PromotionRule,
    version: str,
    challenger: dict[str, float],
    champion_version: str | None,
    champion: dict[str, float] | None,
) -> Decision:
    missing = [m for m in rule.metrics() if m not in challenger]
    if missing:
        return Decision(
            False, f"challenger lacks {', '.join(missing)}", version, champion_version, challenger, champion
        )
    failed = [v for v in against_baselines(rule.must_beat, challenger) if not v.beaten]
    if failed:
        return Decision(
            False,
            "does not beat its classical baseline: " + "; ".join(v.describe() for v in failed),
            version,
            champion_version,
            challenger,
            champion,
            {v.metric: f"not better than {v.baseline}" for v in failed},
        )
    if champion is None or champion_version is None:
        return Decision(
            True, "no champion yet", version, None, challenger, None, {m: "first model" for m in rule.metrics()}
        )
    if champion_version == version:
        return Decision(
            True,
            f"v{version} is the champion (re-evaluated)",
            version,
            champion_version,
            challenger,
            champion,
            {m: "same version" for m in rule.metrics()},
        )
    verdicts, failures = {}, []
    for metric in rule.metrics():
        if metric not in champion:
            verdicts[metric] = "champion has no value"
            continue
        sign = 1.0 if higher_is_better(metric) else -1.0
        change = sign * (challenger[metric] - champion[metric])  # > 0: the challenger is better
        if metric == rule.metric:
            ok = change > rule.min_gain
            verdicts[metric] = f"{'better' if ok else 'not better'} by {change:+.4f}"
        elif metric in rule.interval_guards:
            bound = challenger.get(f"{metric}_ci_high" if sign > 0 else f"{metric}_ci_low", challenger[metric])
            ok = sign * (bound - champion[metric]) >= 0
            verdicts[metric] = (
                f"{'within' if ok else 'below'} its interval of the champion's "
                f"({change:+.4f}, interval bound {bound:.4f})"
            )
        else:
            ok = change >= -rule.tolerance
            verdicts[metric] = f"{'not worse' if ok else 'worse'} ({change:+.4f})"
        if not ok:
            failures.append(metric)
    if failures:
        return Decision(
            False,
            f"v{champion_version} stays champion: {', '.join(failures)} "
            f"{'does' if len(failures) == 1 else 'do'} not pass",
            version,
            champion_version,
            challenger,
            champion,
            verdicts,
        )
    return Decision(
        True,
        f"beats v{champion_version} on {rule.metric} without losing on {', '.join(rule.guards) or 'any guard'}",
        version,
        champion_version,
        challenger,
        champion,
        verdicts,
    )


def by_importance(metrics: dict[str, float], importance: tuple[str, ...]) -> dict[str, float]:
    """``metrics`` with the headline figures first, in ``importance`` order, then the rest by name."""
    first = {k: metrics[k] for k in importance if k in metrics}
    return {**first, **{k: v for k, v in sorted(metrics.items()) if k not in first}}


def split_key(image_ids) -> str:
    """Identifies a test set: two evaluations compare only when they scored the same images."""
    return hashlib.sha256("\n".join(sorted(map(str, image_ids))).encode()).hexdigest()[:16]


def current_champion(name: str) -> tuple[str, dict[str, str]] | None:
    """(version, its tags) of the champion, or None."""
    try:
        version = MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return str(version.version), dict(version.tags)


def recorded_metrics(tags: dict[str, str], split_hash: str) -> dict[str, float] | None:
    """The metrics a version's own evaluation recorded, if that evaluation used this test split."""
    if tags.get("evaluation_split_hash") != split_hash or "evaluation_metrics" not in tags:
        return None
    return json.loads(tags["evaluation_metrics"])


def record_and_promote(name: str, decision: Decision, split_hash: str) -> None:
    """Tag the evaluated version with its metrics and the decision; move the aliases: champion
    when promoted (and no challenger left), else challenger."""
    client = MlflowClient()
    metrics = {
        k: round(v, 6)
        for k, v in sorted(decision.challenger.items())
        if not k.endswith(("_std", "_ci_low", "_ci_high")) and math.isfinite(v)
    }
    metrics = by_importance(metrics, decision.importance)
    tags = {
        "evaluation_split_hash": split_hash,
        "evaluation_metrics": json.dumps(metrics),
        "promotion_decision": "promoted" if decision.promoted else "not promoted",
        "promotion_reason": decision.reason,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, decision.version, key, value)
    record_aliases(name, decision.version, decision.promoted)


def record_aliases(name: str, version: str, promoted: bool) -> None:
    """``champion`` (and no challenger left) when promoted, else ``challenger``."""
    client = MlflowClient()
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
        try:
            client.delete_registered_model_alias(name, CHALLENGER)
        except MlflowException:  # there was none
            pass
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)


def accept(name: str, version: str, acceptance: tuple[tuple[str, float, str], ...], metrics: dict[str, float]) -> bool:
    """For a model no evaluation promotes (VAE, classifier, report encoder): champion when its own
    final validation reaches every ``(metric, minimum, why)``; else challenger. Recorded as tags."""
    failed = [
        f"{metric} = {metrics.get(metric, math.nan):.4f} < {minimum:g} (needed: {why})"
        for metric, minimum, why in acceptance
        if not metrics.get(metric, -math.inf) >= minimum
    ]
    passed = not failed
    reason = (
        "passes its own validation: " + ", ".join(f"{m} = {metrics[m]:.4f} >= {v:g}" for m, v, _ in acceptance)
        if passed
        else "does not pass its own validation: " + "; ".join(failed)
    )
    client = MlflowClient()
    client.set_model_version_tag(name, version, "promotion_decision", "promoted" if passed else "not promoted")
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    record_aliases(name, version, passed)
    return passed
