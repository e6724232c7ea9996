"""Champion / challenger: the skeleton every suite shares. Score the model, flatten its figures,
then challenge the registry's champion on the same test split, scoring the champion again only
when its recorded figures are not comparable. Decides only: publishing writes the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import promotion
from ..model_record import ModelRecord
from ..model_source import registry_folder
from ..promotion import PromotionRule
from ..reports.document import Section, Table
from .outcome import Log, Promotion, PromotionPolicy


def challenge_champion(
    record: ModelRecord,
    metrics: dict[str, float],
    rule: PromotionRule,
    comparison_key: str,
    evaluate: Callable[[str], dict[str, float]],
    registry_cache: Path,
    log: Log = print,
) -> tuple[Promotion, Section]:
    """Challenger against champion on the same test split (``comparison_key``): the champion's
    recorded figures when its evaluation used the same split, else it is evaluated again now
    (``evaluate`` takes a model folder). Decides only: nothing is written to the registry here."""
    name, version = record.registered_model, str(record.version)
    champion_version, champion_tags = promotion.current_champion(name) or (None, {})
    champion_metrics = None
    if champion_version is not None and champion_version != version:
        champion_metrics = promotion.recorded_metrics(champion_tags, comparison_key)
        if champion_metrics is None:
            log(f"{name} v{champion_version} (champion) was evaluated on another test split: evaluating it now")
            champion_metrics = evaluate(str(registry_folder(name, champion_version, registry_cache)))
    decision = promotion.decide(rule, version, metrics, champion_version, champion_metrics)
    verb = "promoted to champion" if decision.promoted else "not promoted"
    log(f"{name} v{version}: {verb} ({decision.reason})")
    text = (
        f"{name} v{version} is the challenger. Rule: {rule.metric} must improve; "
        f"{', '.join(rule.guards) or 'no guard'} must not get worse"
        + (
            f"; {', '.join(rule.interval_guards)} must not fall below the champion's beyond its 95% interval"
            if rule.interval_guards
            else ""
        )
        + f". Decision: {verb}: {decision.reason}."
    )
    return (
        Promotion(record, decision, comparison_key),
        Section(f"Promotion: {name}", text, [Table("Challenger against champion", decision.table())]),
    )


@dataclass
class Scored:
    """One model through a suite: its results, flat figures, (figure, baseline) pairs it must beat,
    and the promotion decided on the same test split, with the promotion's report section."""

    results: Any
    metrics: dict[str, float]
    must_beat: tuple[tuple[str, str], ...]
    promotion: Promotion
    promotion_section: Section


def score_and_challenge(
    record: ModelRecord,
    score: Callable[[str], Any],
    figures: Callable[[Any], tuple[dict[str, float], tuple[tuple[str, str], ...]]],
    policy: PromotionPolicy,
    comparison_key: str,
    registry_cache: Path,
    log: Log = print,
    rescore: Callable[[str], Any] | None = None,
    **names,
) -> Scored:
    """The skeleton every suite shares: score the model's folder (``score``), flatten the results
    (``figures``: metrics and must-beat pairs), then challenge the champion on the same split,
    scoring the champion (``rescore``, else ``score``) when its recorded figures are not comparable."""
    results = score(str(record.model_dir))
    metrics, must_beat = figures(results)
    decided, section = challenge_champion(
        record,
        metrics,
        policy.rule(must_beat, **names),
        comparison_key,
        lambda folder: figures((rescore or score)(folder))[0],
        registry_cache,
        log,
    )
    return Scored(results, metrics, must_beat, decided, section)
