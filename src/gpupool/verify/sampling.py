"""Audit sampling: which served requests get re-executed by a checker.

Two separate questions, both pure, answered together by `decide`:

* `audit_rate(record, policy)` — how often to audit this provider, from its record.
* `should_audit(secret, request_id, rate)` — whether *this* request is audited.

The second is decided from HMAC-SHA256(gateway secret, request id), *after* the
provider has committed (signed its receipt). Without the secret a provider cannot
predict the decision, so it cannot be honest only on audited work; with the secret a
gateway can re-derive and prove every decision later (no hidden RNG state).

Rate formula (numbers are the `SamplingPolicy` defaults)::

    n = record.served                # requests served since admission
    c = record.consecutive_passes    # audit streak (halved, not reset, by a failure)
    if n < probation_requests (50):          rate = 1.0            # probation
    elif n < record.recheck_until:           rate = 1.0            # just failed an audit
    elif c < track_record_passes (100):      rate = ramp_rate (0.25)
    else:  rate = max(floor (0.03), ramp_rate * (track_record_passes / c) ** 2)

and on top of the rate, `decide` audits any request that would make `max_gap` (50)
requests in a row without an audit. So a newcomer is audited on all of its first 50
requests, then a quarter of its requests until it has 100 passed audits in a row
(about 400 requests), then a rate that falls with the square of its streak, reaching
the 3% floor at c = 289 passes (about 3,000 more requests). It never reaches zero.

Why each part:
* The gap cap bounds how long a provider that turns bad after a long honest record
  can go unaudited: its first bad answer is audited within 50 requests whatever the
  rate. The provider cannot time it: it never sees which requests were audited.
  With the 3% floor it makes the steady audit share 0.03 / (1 - 0.97**50) = 3.8%.
* A failed audit puts the provider back on full audit for its next 20 requests
  (`recheck_requests`), which turns one failure into a suspension (k failures among
  the last m audits, `reputation.suspension`) within a few requests for a provider
  that keeps cheating, and costs an honest provider 20 audits per false positive.
* A failure halves the streak instead of zeroing it: a rare false positive must not
  undo an honest provider's history (with a reset, honest providers at a 1.5e-3
  false-positive rate averaged a ~10% audit rate instead of the floor), while
  repeated failures still bring the rate back up quickly.

At steady state (honest, c large) the audit share is ~3.8% plus 20 audits per false
positive. bench/verification measures the compute that costs: ~3% of served compute for
embeddings (checkers batch the audits that `checker_for_slot` sends them together) and
~0.2% for generation (an audit is one scoring pass); see bench/README.md.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from gpupool.frozen_records import builder
from gpupool.verify.judgement import Judgement

# 2**64 buckets: far finer than any rate we use, and a plain integer compare.
_SPACE = 1 << 64
# Audits of one model go to one checker per slot of this many seconds (`checker_for_slot`).
AUDIT_SLOT_S = 2.0
# A provider with this many audits still awaiting verdicts gets no new work while others can
# take it (the gateway's trust/audits.py, and the simulator): checkers are slower than the
# traffic during probation, and without this bound a cheater would keep serving (bad)
# answers until the verdicts caught up.
MAX_AWAITING_VERDICTS = 6
C = TypeVar("C")


@dataclass(frozen=True)
class SamplingPolicy:
    """Knobs of the audit-rate formula; see the module docstring."""

    probation_requests: int = 50
    ramp_rate: float = 0.25
    track_record_passes: int = 100
    floor: float = 0.03
    max_gap: int = 50           # never this many requests in a row unaudited
    recheck_requests: int = 20  # full audit for this many requests after a failure

    def __post_init__(self) -> None:
        if not 0.0 < self.floor <= self.ramp_rate <= 1.0:
            raise ValueError("need 0 < floor <= ramp_rate <= 1")
        if self.probation_requests < 0 or self.track_record_passes < 1:
            raise ValueError("probation_requests >= 0 and track_record_passes >= 1")
        if self.max_gap < 1 or self.recheck_requests < 0:
            raise ValueError("max_gap >= 1 and recheck_requests >= 0")


DEFAULT_SAMPLING = SamplingPolicy()


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What the sampler needs to know about one provider (kept by the caller)."""

    served: int = 0              # requests served (audited or not) since admission
    audited: int = 0             # audits with a verdict
    failed: int = 0              # failed audits, ever
    consecutive_passes: int = 0  # the audit streak: +1 per pass, halved by a failure
    since_audit: int = 0         # requests served since the last one chosen for audit
    recheck_until: int = 0       # audit every request while served < this


# `AuditRecord(...)` with every field, positional: ~4x cheaper than the frozen __init__
# (gpupool/frozen_records.py). The record is rebuilt per served request and per verdict.
_record = builder(AuditRecord)


def record_served(record: AuditRecord) -> AuditRecord:
    """Count one more served request (not chosen for audit; `decide` does both)."""
    # Direct construction rather than `dataclasses.replace`: this runs once per served
    # request (the simulator's hottest record update), and replace costs ~4x as much.
    return _record(record.served + 1, record.audited, record.failed, record.consecutive_passes,
                   record.since_audit + 1, record.recheck_until)


def record_verdict(record: AuditRecord, verdict: Judgement,
                   policy: SamplingPolicy = DEFAULT_SAMPLING) -> AuditRecord:
    """Fold one audit verdict into the record; a failure halves the streak and starts a recheck."""
    if verdict.passed:
        return _record(record.served, record.audited + 1, record.failed, record.consecutive_passes + 1,
                       record.since_audit, record.recheck_until)
    return _record(record.served, record.audited + 1, record.failed + 1, record.consecutive_passes // 2,
                   record.since_audit, record.served + policy.recheck_requests)


def audit_rate(record: AuditRecord, policy: SamplingPolicy = DEFAULT_SAMPLING) -> float:
    """Fraction of this provider's requests to audit, in [floor, 1]; never zero."""
    if record.served < policy.probation_requests or record.served < record.recheck_until:
        return 1.0
    c = record.consecutive_passes
    if c < policy.track_record_passes:
        return policy.ramp_rate
    return max(policy.floor, policy.ramp_rate * (policy.track_record_passes / c) ** 2)


def decide(record: AuditRecord, secret: bytes, request_id: str,
           policy: SamplingPolicy = DEFAULT_SAMPLING) -> tuple[bool, AuditRecord]:
    """Whether to audit this just-served request, and the provider's updated record.

    Audited when the HMAC draw falls under the record's rate, or when the request
    would otherwise be the `max_gap`-th in a row without an audit.
    """
    rate = audit_rate(record, policy)
    # At rate 1 every draw (in [0, 1)) is under the rate: skip the HMAC, keep its check of the secret.
    if rate >= 1.0:
        if not secret:
            raise ValueError("an empty secret would make audit decisions predictable")
        audit = True
    else:
        audit = should_audit(secret, request_id, rate) or record.since_audit + 1 >= policy.max_gap
    # One record built, not two (`record_served`, then the gap reset): the same fields.
    return audit, _record(record.served + 1, record.audited, record.failed, record.consecutive_passes,
                          0 if audit else record.since_audit + 1, record.recheck_until)


def audit_draw(secret: bytes, request_id: str) -> float:
    """The request's position in [0, 1): HMAC-SHA256(secret, request id), first 64 bits.

    Uniform and independent across request ids for anyone without the secret.
    """
    if not secret:
        raise ValueError("an empty secret would make audit decisions predictable")
    digest = hmac.new(secret, request_id.encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / _SPACE


def should_audit(secret: bytes, request_id: str, rate: float) -> bool:
    """Whether to audit this request, at `rate` in [0, 1].

    Deterministic in (secret, request id): the gateway can re-derive the decision for
    evidence, and the same request retried is audited consistently. Monotone in rate:
    a request audited at rate r is audited at every rate above r.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    return audit_draw(secret, request_id) < rate


def checker_for_slot(options: Sequence[C], held: tuple[int, C] | None, now: float, rng: random.Random,
                     slot_s: float = AUDIT_SLOT_S) -> tuple[int, C] | None:
    """Which checker gets an audit job now: (slot, checker), to keep as `held` for the next.

    All jobs within one time slot go to the same checker, so it can batch them into shared
    forward passes (a lone audit costs a checker ~2-4x what a served request costs a provider
    that batches its concurrent traffic). The checker is drawn at random per slot, so none
    can attract a provider's audits (by holding jobs, say) beyond its share of slots.
    """
    if not options:
        return None
    slot = int(now // slot_s)
    if held is not None and held[0] == slot and held[1] in options:
        return held
    return slot, rng.choice(options)
