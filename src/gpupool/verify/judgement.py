"""The one result type every comparator returns, shared by reputation and suspension.

A `Judgement` is a comparator's opinion of one answer; a checker signs it into the
wire message `protocol.Verdict` (checker/agent.py, `sign_verdict`).

Kept in its own module with no numpy import, so the gateway's suspension and
reputation code (pure Python) can use it without the ml extra installed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Judgement:
    """Outcome of one audit.

    passed: the provider's output is consistent with the reference.
    hard:   a failure that no honest provider produces (wrong model, garbage, bad
            signature, gross usage inflation). Suspends at once. Always False when passed.
    reason: short machine-friendly reason ("ok", "token_mismatch", "truncated", ...).
    score:  comparator-specific similarity in [0, 1] where 1 is a perfect match
            (min cosine for embeddings, fraction of matching tokens for greedy, ...).
    position: first offending position (token index or embedding row), if any.
    """

    passed: bool
    hard: bool = False
    reason: str = "ok"
    score: float = 1.0
    position: int | None = None

    def __post_init__(self) -> None:
        if self.passed and self.hard:
            raise ValueError("a passing verdict cannot be a hard failure")


PASS = Judgement(passed=True)


def fail(reason: str, *, hard: bool = False, score: float = 0.0, position: int | None = None) -> Judgement:
    """A failing verdict; `hard` marks failures that suspend immediately."""
    return Judgement(passed=False, hard=hard, reason=reason, score=score, position=position)


def combine(*verdicts: Judgement) -> Judgement:
    """One verdict for an audit made of several checks (e.g. tokens + usage).

    Hard failures win over soft ones, soft over passes; among passes the lowest score
    is kept so the combined score never overstates agreement.
    """
    if not verdicts:
        return PASS
    hard = [v for v in verdicts if not v.passed and v.hard]
    if hard:
        return hard[0]
    soft = [v for v in verdicts if not v.passed]
    if soft:
        return soft[0]
    return min(verdicts, key=lambda v: v.score)
