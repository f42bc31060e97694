"""Audit sampling: which served requests get re-executed by a checker.

Two separate questions, both pure:

* `audit_rate(record, policy)` — how often to audit this provider, from its record.
* `should_audit(secret, request_id, rate)` — whether *this* request is audited.

The second is decided from HMAC-SHA256(gateway secret, request id), *after* the
provider has committed (signed its receipt). Without the secret a provider cannot
predict the decision, so it cannot be honest only on audited work; with the secret a
gateway can re-derive and prove every decision later (no hidden RNG state).

Rate formula (numbers are the `SamplingPolicy` defaults)::

    n = record.served                # requests served since admission
    c = record.consecutive_passes    # audits passed since the last failed audit
    if n < probation_requests (50):          rate = 1.0            # probation
    elif c < track_record_passes (100):      rate = ramp_rate (0.25)
    else:  rate = max(floor (0.03), ramp_rate * track_record_passes / c)

So a newcomer is audited on all of its first 50 requests; then a quarter of its
requests until it has 100 consecutive passed audits (about 400 requests); after that
the rate decays as 1/c (25 / c), reaching the 3% floor at c ≈ 833 passes. It never
reaches zero. Any failed audit resets c to 0, sending the provider straight back to
the 25% ramp rate — which is what makes a provider cheating on a fraction of requests
keep being audited heavily (see `reputation.requests_until_suspension`).

At steady state (honest, c large) the audit cost is the 3% floor, inside the issue's
5% audit-compute budget.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, replace

from gpupool.verify.verdict import Verdict

# 2**64 buckets: far finer than any rate we use, and a plain integer compare.
_SPACE = 1 << 64


@dataclass(frozen=True)
class SamplingPolicy:
    """Knobs of the audit-rate formula; see the module docstring."""

    probation_requests: int = 50
    ramp_rate: float = 0.25
    track_record_passes: int = 100
    floor: float = 0.03

    def __post_init__(self) -> None:
        if not 0.0 < self.floor <= self.ramp_rate <= 1.0:
            raise ValueError("need 0 < floor <= ramp_rate <= 1")
        if self.probation_requests < 0 or self.track_record_passes < 1:
            raise ValueError("probation_requests >= 0 and track_record_passes >= 1")


DEFAULT_SAMPLING = SamplingPolicy()


@dataclass(frozen=True)
class AuditRecord:
    """What the sampler needs to know about one provider (kept by the caller)."""

    served: int = 0              # requests served (audited or not) since admission
    audited: int = 0             # audits with a verdict
    failed: int = 0              # failed audits, ever
    consecutive_passes: int = 0  # passed audits since the last failed one


def record_served(record: AuditRecord) -> AuditRecord:
    """Count one more served request."""
    return replace(record, served=record.served + 1)


def record_verdict(record: AuditRecord, verdict: Verdict) -> AuditRecord:
    """Fold one audit verdict into the record; a failure resets the pass streak."""
    if verdict.passed:
        return replace(record, audited=record.audited + 1,
                       consecutive_passes=record.consecutive_passes + 1)
    return replace(record, audited=record.audited + 1, failed=record.failed + 1,
                   consecutive_passes=0)


def audit_rate(record: AuditRecord, policy: SamplingPolicy = DEFAULT_SAMPLING) -> float:
    """Fraction of this provider's requests to audit, in [floor, 1]; never zero."""
    if record.served < policy.probation_requests:
        return 1.0
    c = record.consecutive_passes
    if c < policy.track_record_passes:
        return policy.ramp_rate
    return max(policy.floor, policy.ramp_rate * policy.track_record_passes / c)


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
