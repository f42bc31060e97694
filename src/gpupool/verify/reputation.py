"""Reputation (a number for the router, a portable record) and suspension.

Reputation is Bayesian: each provider's reliability is Beta(α, β), with
α = prior_α + decayed good evidence and β = prior_β + decayed bad evidence. Evidence
decays exponentially (half-life, default 7 days) so old behaviour fades and a
provider cannot bank goodwill forever, then cash it in by cheating.

Weights (defaults of `ReputationPolicy`): an audit pass adds 1 to α; a soft audit
failure adds 5 to β; a hard failure 50; a failed request (error, disconnect) 0.5; a
latency miss 0.2; a served request with a valid receipt 0.02 to α. Failures weigh more
than passes because one lie is stronger evidence than one honest answer.

`score()` is the posterior **mean** — the choice: the router must keep sending
newcomers some traffic (their trust is established by probation audits, not by
routing starvation), and the router already turns reputation into a mild cost factor.
The probation prior Beta(2, 2) has mean 0.5, the value the gateway uses for
"unknown", and needs a handful of observations to move. `lower_bound()` (mean − z·sd)
is offered for gating decisions where thin evidence should count against a provider.

Suspension is a separate, sharper rule on the recent audit window: suspend at k failed
audits among the last m, or at once on a hard failure. The defaults (k=4, m=50) come
from the math below — `p_honest_suspended` and `requests_until_suspension` — applied
to the measured false-positive rate; docs/verification.md lists the numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from functools import lru_cache
from typing import Any

from gpupool.verify.judgement import Judgement

# ------------------------------------------------------------------ reputation


class Event(str, Enum):
    """Things that move a provider's reputation."""

    AUDIT_PASS = "audit_pass"
    AUDIT_FAIL = "audit_fail"
    AUDIT_HARD_FAIL = "audit_hard_fail"
    SERVED = "served"            # answered, receipt verified, not (yet) audited
    REQUEST_FAILED = "request_failed"
    LATENCY_MISS = "latency_miss"


@dataclass(frozen=True)
class ReputationPolicy:
    """Prior, decay and evidence weights (see module docstring)."""

    half_life_s: float = 7 * 86400.0
    prior_alpha: float = 2.0
    prior_beta: float = 2.0
    audit_pass: float = 1.0
    audit_fail: float = 5.0
    audit_hard_fail: float = 50.0
    served: float = 0.02
    request_failed: float = 0.5
    latency_miss: float = 0.2

    def weight(self, event: Event) -> tuple[float, float]:
        """(Δα, Δβ) for one event."""
        return {
            Event.AUDIT_PASS: (self.audit_pass, 0.0),
            Event.AUDIT_FAIL: (0.0, self.audit_fail),
            Event.AUDIT_HARD_FAIL: (0.0, self.audit_hard_fail),
            Event.SERVED: (self.served, 0.0),
            Event.REQUEST_FAILED: (0.0, self.request_failed),
            Event.LATENCY_MISS: (0.0, self.latency_miss),
        }[event]


DEFAULT_REPUTATION = ReputationPolicy()


@dataclass(frozen=True)
class Reputation:
    """Decayed evidence about one provider, valid as of `as_of` (seconds, caller's clock).

    `good`/`bad` exclude the prior; counts are plain (undecayed) tallies for display.
    """

    provider_id: str
    good: float = 0.0
    bad: float = 0.0
    as_of: float = 0.0
    audits: int = 0
    audit_failures: int = 0

    @classmethod
    def new(cls, provider_id: str, now: float) -> Reputation:
        return cls(provider_id=provider_id, as_of=now)


def _decay(rep: Reputation, now: float, policy: ReputationPolicy) -> Reputation:
    # A clock running backwards (another gateway's record, skew) must not *grow*
    # evidence, so negative elapsed time counts as zero.
    dt = max(0.0, now - rep.as_of)
    f = 0.5 ** (dt / policy.half_life_s)
    return replace(rep, good=rep.good * f, bad=rep.bad * f, as_of=max(now, rep.as_of))


def observe(rep: Reputation, event: Event, now: float,
            policy: ReputationPolicy = DEFAULT_REPUTATION) -> Reputation:
    """The reputation after one event at time `now`."""
    rep = _decay(rep, now, policy)
    da, db = policy.weight(event)
    audit = event in (Event.AUDIT_PASS, Event.AUDIT_FAIL, Event.AUDIT_HARD_FAIL)
    return replace(rep, good=rep.good + da, bad=rep.bad + db,
                   audits=rep.audits + audit,
                   audit_failures=rep.audit_failures + (audit and event != Event.AUDIT_PASS))


def event_for(verdict: Judgement) -> Event:
    """The reputation event an audit verdict stands for."""
    if verdict.passed:
        return Event.AUDIT_PASS
    return Event.AUDIT_HARD_FAIL if verdict.hard else Event.AUDIT_FAIL


def observe_verdict(rep: Reputation, verdict: Judgement, now: float,
                    policy: ReputationPolicy = DEFAULT_REPUTATION) -> Reputation:
    """`observe` for an audit verdict."""
    return observe(rep, event_for(verdict), now, policy)


def beta_params(rep: Reputation, now: float,
                policy: ReputationPolicy = DEFAULT_REPUTATION) -> tuple[float, float]:
    """Posterior (α, β) at `now`: prior plus decayed evidence."""
    d = _decay(rep, now, policy)
    return policy.prior_alpha + d.good, policy.prior_beta + d.bad


def score(rep: Reputation, now: float, policy: ReputationPolicy = DEFAULT_REPUTATION) -> float:
    """Reputation in [0, 1] for the router: the posterior mean α / (α + β)."""
    a, b = beta_params(rep, now, policy)
    return a / (a + b)


def lower_bound(rep: Reputation, now: float, z: float = 1.2816,
                policy: ReputationPolicy = DEFAULT_REPUTATION) -> float:
    """Approximate lower credible bound (default ~10%): mean − z·sd of the Beta, in [0, 1]."""
    a, b = beta_params(rep, now, policy)
    n = a + b
    mean = a / n
    sd = math.sqrt(a * b / (n * n * (n + 1)))
    return min(1.0, max(0.0, mean - z * sd))


RECORD_VERSION = 1


def to_record(rep: Reputation, now: float,
              policy: ReputationPolicy = DEFAULT_REPUTATION) -> dict[str, Any]:
    """A portable record of the evidence, decayed to `now`; the caller signs
    `record_bytes(record)` with the gateway's key and ships both."""
    d = _decay(rep, now, policy)
    return {
        "v": RECORD_VERSION,
        "provider_id": d.provider_id,
        "good": round(d.good, 6),
        "bad": round(d.bad, 6),
        "audits": d.audits,
        "audit_failures": d.audit_failures,
        "half_life_s": policy.half_life_s,
        "issued_at": d.as_of,
    }


def record_bytes(record: dict[str, Any]) -> bytes:
    """Canonical bytes of a record, for signing and verifying (sorted keys, no spaces)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode("utf-8")


def from_record(record: dict[str, Any], trust: float = 1.0) -> Reputation:
    """A reputation from another gateway's (already signature-checked) record.

    `trust` in [0, 1] scales the *good* evidence: a gateway may discount what another
    says in a provider's favour, but bad evidence is kept whole (a provider showing a
    record is choosing to show it; it would never show a bad one voluntarily anyway).
    """
    if record.get("v") != RECORD_VERSION:
        raise ValueError(f"unsupported reputation record version {record.get('v')!r}")
    if not 0.0 <= trust <= 1.0:
        raise ValueError("trust must be in [0, 1]")
    good, bad = float(record["good"]), float(record["bad"])
    if good < 0 or bad < 0 or not (math.isfinite(good) and math.isfinite(bad)):
        raise ValueError("record evidence must be finite and non-negative")
    return Reputation(provider_id=str(record["provider_id"]), good=good * trust, bad=bad,
                      as_of=float(record["issued_at"]), audits=int(record["audits"]),
                      audit_failures=int(record["audit_failures"]))


# ------------------------------------------------------------------ suspension

# Chosen with the functions below (tests/unit/test_verify_reputation.py checks them):
#
# * Design false-positive rate p = 1e-3 per audit: measured 0 false positives in 2,000
#   honest (bf16 vs fp32) embedding audits, 95% upper bound 1.5e-3 (rule of three);
#   at 1.5e-3 the honest risk below is still 8.5e-4 (docs/verification.md).
# * Honest provider, p = 1e-3, 10,000 audits: P(ever suspended) ≈ 1.7e-4 (exact DP).
# * Cheating on every request, audited at the 25% ramp rate (ignoring probation,
#   where every request is audited and suspension comes after 4 requests): 99% suspended
#   within 37 requests (target: 100).
# * Cheating on 10% of requests, at the ramp rate: 99% within 535 requests (target 1,000).
# k=3 would react faster but gives P ≈ 1.1e-2 for the honest provider; k=5 needs far
# more audits from a 10% cheater (769 requests) for a risk (2e-6) we do not need.
DEFAULT_SUSPEND_K = 4
DEFAULT_SUSPEND_M = 50
DESIGN_FALSE_POSITIVE_RATE = 1e-3


@dataclass(frozen=True)
class SuspensionPolicy:
    """Suspend at `k` soft failures among the last `m` audits; any hard failure suspends."""

    k: int = DEFAULT_SUSPEND_K
    m: int = DEFAULT_SUSPEND_M

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.m:
            raise ValueError("need 1 <= k <= m")


DEFAULT_SUSPENSION = SuspensionPolicy()


@dataclass(frozen=True)
class Decision:
    """Whether to suspend, and why (for the provider's notice and the evidence record)."""

    suspend: bool
    reason: str
    failures: int          # failed audits in the window
    window: int            # audits in the window (<= m)
    hard: bool = False     # suspended for a hard failure


def suspension(history: Iterable[Judgement],
               policy: SuspensionPolicy = DEFAULT_SUSPENSION) -> Decision:
    """Decision from a provider's recent verdicts, oldest first (e.g. a deque(maxlen=m)).

    Only the last m verdicts count. A hard failure among them suspends at once;
    otherwise k or more failures suspend. Slashing is a separate step that needs the
    verdict confirmed by a second checker; this only stops new traffic.
    """
    window = list(history)[-policy.m:]
    hard = [v for v in window if not v.passed and v.hard]
    failures = sum(1 for v in window if not v.passed)
    if hard:
        return Decision(True, f"hard failure: {hard[-1].reason}", failures, len(window), hard=True)
    if failures >= policy.k:
        return Decision(True, f"{failures} failed audits in the last {len(window)}",
                        failures, len(window))
    return Decision(False, "ok", failures, len(window))


# -- the math behind the defaults ------------------------------------------------
#
# Exact Markov chain over audits. State: the ages (1..m-1) of the soft failures still
# inside the window of the *next* audit, at most k-1 of them (k would have suspended).
# A pass ages every failure by one (dropping those that leave the window); a failure
# also adds age 1, or suspends when it makes k. There are sum_{j<k} C(m-1, j) states
# (19,650 for k=4, m=50), so numpy is used for the iteration (imported lazily: this
# module's runtime functions stay pure Python).


@lru_cache(maxsize=16)
def _chain(k: int, m: int) -> tuple[Any, Any]:
    """Index arrays (next state after pass, after failure; -1 = suspended)."""
    import itertools

    import numpy as np

    states: list[tuple[int, ...]] = []
    for j in range(k):
        states.extend(itertools.combinations(range(1, m), j))
    index = {s: i for i, s in enumerate(states)}
    nxt_pass = np.empty(len(states), dtype=np.int64)
    nxt_fail = np.empty(len(states), dtype=np.int64)
    for i, s in enumerate(states):
        aged = tuple(a + 1 for a in s if a + 1 <= m - 1)
        nxt_pass[i] = index[aged]
        if len(s) + 1 >= k:
            nxt_fail[i] = -1
        else:
            nxt_fail[i] = index[(1,) + aged] if m > 1 else -1
    return nxt_pass, nxt_fail


def suspension_cdf(q: float, k: int, m: int, n_audits: int) -> list[float]:
    """F[j] = P(suspended within the first j audits), j = 0..n_audits, when each audit
    fails independently with probability q (exact)."""
    import numpy as np

    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be in [0, 1]")
    nxt_pass, nxt_fail = _chain(k, m)
    size = nxt_pass.size
    prob = np.zeros(size)
    prob[0] = 1.0                     # state 0 is the empty tuple
    to_fail = nxt_fail >= 0
    cdf = [0.0]
    done = 0.0
    for _ in range(n_audits):
        new = np.bincount(nxt_pass, weights=prob * (1.0 - q), minlength=size)
        new += np.bincount(nxt_fail[to_fail], weights=prob[to_fail] * q, minlength=size)
        done += float(prob[~to_fail].sum()) * q
        prob = new
        cdf.append(min(1.0, done))
    return cdf


def p_honest_suspended(p: float, k: int = DEFAULT_SUSPEND_K, m: int = DEFAULT_SUSPEND_M,
                       n_audits: int = 10_000) -> float:
    """Probability that a provider whose audits fail only by false positives (rate p,
    independent) is ever suspended over `n_audits` audits (exact)."""
    return suspension_cdf(p, k, m, n_audits)[-1]


def p_honest_suspended_bound(p: float, k: int = DEFAULT_SUSPEND_K, m: int = DEFAULT_SUSPEND_M,
                             n_audits: int = 10_000) -> float:
    """Cheap union upper bound on `p_honest_suspended`: the audit that triggers a
    suspension fails and has >= k-1 failures among the m-1 before it, so
    P <= n · p · P(Binomial(m-1, p) >= k-1)."""
    tail = 1.0 - sum(math.comb(m - 1, j) * p**j * (1 - p) ** (m - 1 - j) for j in range(k - 1))
    return min(1.0, n_audits * p * max(tail, 0.0))


def requests_until_suspension(q: float, r: float, k: int = DEFAULT_SUSPEND_K,
                              m: int = DEFAULT_SUSPEND_M, confidence: float = 0.99,
                              max_requests: int = 200_000) -> int | None:
    """Smallest number of requests n such that a provider whose audits fail with
    probability q, audited at rate r, is suspended within n requests with probability
    >= `confidence`; None if not within `max_requests`.

    The number of audits in n requests is Binomial(n, r) (independent of outcomes), so
    P(suspended by request n) = Σ_j Bin(n, r)(j) · F[j] with F from `suspension_cdf`.
    For a cheater, q = cheat fraction × detection power (+ false positives).
    """
    import numpy as np

    if not 0.0 < r <= 1.0:
        raise ValueError("r must be in (0, 1]")
    # Enough audits to reach the confidence in the audit chain, then requests.
    n_audits = 64
    while True:
        cdf = suspension_cdf(q, k, m, n_audits)
        if cdf[-1] >= confidence or n_audits >= max_requests:
            break
        n_audits *= 2
    if cdf[-1] < confidence:
        return None
    F = np.asarray(cdf)
    lo, hi = 1, max_requests
    lfact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, max_requests + 1)))])

    def p_by(n: int) -> float:
        j = np.arange(0, min(n, F.size - 1) + 1)
        if r == 1.0:
            return float(F[min(n, F.size - 1)])
        logpmf = lfact[n] - lfact[j] - lfact[n - j] + j * math.log(r) + (n - j) * math.log1p(-r)
        # Audits beyond the computed chain count as "suspended by then" only at the last
        # computed value (F is non-decreasing, so this is a lower bound).
        tail = max(0.0, 1.0 - float(np.exp(logpmf).sum()))
        return float((np.exp(logpmf) * F[j]).sum() + tail * F[-1])

    if p_by(hi) < confidence:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        if p_by(mid) >= confidence:
            hi = mid
        else:
            lo = mid + 1
    return lo


def choose_k_m(p: float, cheat_targets: Sequence[tuple[float, float, int]],
               honest_audits: int = 10_000, max_p_honest: float = 1e-3,
               candidates: Iterable[tuple[int, int]] = ((k, m) for m in (20, 30, 50)
                                                        for k in range(2, 5)),
               ) -> tuple[int, int] | None:
    """A (k, m) meeting every target, or None: each of `cheat_targets`
    [(q, r, max_requests)] must be suspended within max_requests at 99%, and an honest
    provider's P(ever suspended) over `honest_audits` (union bound) must be <=
    `max_p_honest`. Among feasible pairs, the smallest k, then the largest m (the most
    audits a cheater has to fit its failures into). The chain has sum_{j<k} C(m-1, j)
    states, so keep k <= 5 and m <= 50 (k=5, m=50 takes seconds; k=5, m=100 minutes)."""
    feasible: list[tuple[int, int]] = []
    for k, m in candidates:
        if k > m:
            continue
        if p_honest_suspended_bound(p, k, m, honest_audits) > max_p_honest:
            continue
        ok = True
        for q, r, limit in cheat_targets:
            n = requests_until_suspension(q, r, k, m, max_requests=limit)
            if n is None or n > limit:
                ok = False
                break
        if ok:
            feasible.append((k, m))
    return min(feasible, key=lambda km: (km[0], -km[1])) if feasible else None
