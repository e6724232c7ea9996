"""How a goal is judged: on the interval of its estimate, against a margin declared in advance.

A point estimate that clears a bar by less than its own uncertainty has not cleared it, and an
interval that reaches the bar has not shown the bar was missed either. Three outcomes, then:
*met* (the whole interval is on the right side), *missed* (the whole interval is on the wrong
side, or the question the goal asks has no room to be answered the right way) and *cannot be
judged* (the interval straddles the bar, or the reference is already at the ceiling, so no
improvement is possible). The margins are declared here, once, with why.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Verdict(str, Enum):
    MET = "met"
    MISSED = "missed"
    CANNOT_BE_JUDGED = "cannot be judged"


# "Not worse" for a macro AUROC: the paired difference's lower end must be above -0.02. A loss
# smaller than that is below the seed-to-seed spread of one classifier recipe on a few hundred
# test images (the real-only arm's own seeds differ by about that much), so no experiment of
# this size could tell it from no loss; larger losses are what a reader would act on.
NOT_WORSE_AUROC_MARGIN = 0.02
# A score at or above this leaves no room for an improvement to show (AUROC of 1.000 on test).
CEILING_AUROC = 0.999


@dataclass(frozen=True)
class Judged:
    verdict: Verdict
    reason: str

    @property
    def met(self) -> bool:
        return self.verdict is Verdict.MET


def at_least(low: float, high: float, bar: float, what: str = "the interval") -> Judged:
    """The quantity is at least ``bar``: met when the interval's lower end is, missed when even
    its upper end is below, otherwise the interval cannot resolve it."""
    if low >= bar:
        return Judged(Verdict.MET, f"{what} [{low:.3f}, {high:.3f}] is at or above {bar:g}")
    if high < bar:
        return Judged(Verdict.MISSED, f"{what} [{low:.3f}, {high:.3f}] is below {bar:g}")
    return Judged(Verdict.CANNOT_BE_JUDGED, f"{what} [{low:.3f}, {high:.3f}] straddles {bar:g}")


def at_most(low: float, high: float, bar: float, what: str = "the interval") -> Judged:
    """The mirror of :func:`at_least`."""
    if high <= bar:
        return Judged(Verdict.MET, f"{what} [{low:.3f}, {high:.3f}] is at or below {bar:g}")
    if low > bar:
        return Judged(Verdict.MISSED, f"{what} [{low:.3f}, {high:.3f}] is above {bar:g}")
    return Judged(Verdict.CANNOT_BE_JUDGED, f"{what} [{low:.3f}, {high:.3f}] straddles {bar:g}")


def not_worse(diff_low: float, diff_high: float, margin: float = NOT_WORSE_AUROC_MARGIN) -> Judged:
    """Non-inferiority of a paired difference (arm - reference): met when the lower end is
    above ``-margin``; missed when the whole interval is below it; an interval that straddles
    it cannot resolve the question (more seeds or test images would)."""
    return at_least(diff_low, diff_high, -margin, "the paired difference's interval")


def improves(diff_low: float, diff_high: float, reference: float, ceiling: float = CEILING_AUROC) -> Judged:
    """An improvement over a reference: met when the paired interval is above 0, missed when it
    is not; cannot be judged when the reference is already at the ceiling."""
    if reference >= ceiling:
        return Judged(Verdict.CANNOT_BE_JUDGED, f"the reference is already {reference:.3f}: nothing left to improve")
    if diff_low > 0:
        return Judged(Verdict.MET, f"the paired interval [{diff_low:+.3f}, {diff_high:+.3f}] is above 0")
    return Judged(Verdict.MISSED, f"the paired interval [{diff_low:+.3f}, {diff_high:+.3f}] reaches 0 or below")


def within(low: float, high: float, margin: float, what: str = "the difference's interval") -> Judged:
    """Equivalence: the interval of a difference lies inside ``[-margin, +margin]``."""
    if -margin <= low and high <= margin:
        return Judged(Verdict.MET, f"{what} [{low:+.3f}, {high:+.3f}] is inside ±{margin:g}")
    if high < -margin or low > margin:
        return Judged(Verdict.MISSED, f"{what} [{low:+.3f}, {high:+.3f}] is outside ±{margin:g}")
    return Judged(Verdict.CANNOT_BE_JUDGED, f"{what} [{low:+.3f}, {high:+.3f}] crosses ±{margin:g}")


def no_interval(why: str) -> Judged:
    return Judged(Verdict.CANNOT_BE_JUDGED, f"no interval: {why}")
