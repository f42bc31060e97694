"""When a provider is suspended: a sharp rule on its recent audits, and the maths behind its defaults.

    decision = suspension(recent_verdicts)          # oldest first, e.g. a deque(maxlen=m)
    if decision.suspend: ...                        # stop new traffic; slashing is separate

Suspend at k failed audits among the last m, or at once on a hard failure. The
defaults (k=4, m=50) come from the exact analysis below (`p_honest_suspended`,
`requests_until_suspension`, `choose_k_m`) applied to the measured false-positive
rate; docs/verification.md lists the numbers. Reputation, the softer signal the
router uses, is in `reputation`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from gpupool.verify.judgement import Judgement

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
    window = list(history)
    if len(window) > policy.m:
        window = window[-policy.m:]
    # One pass over the window (this runs per verdict): the failures and the last hard one.
    failures = 0
    last_hard: Judgement | None = None
    for v in window:
        if not v.passed:
            failures += 1
            if v.hard:
                last_hard = v
    if last_hard is not None:
        return Decision(True, f"hard failure: {last_hard.reason}", failures, len(window), hard=True)
    if failures >= policy.k:
        return Decision(True, f"{failures} failed audits in the last {len(window)}",
                        failures, len(window))
    return Decision(False, "ok", failures, len(window))


def may_suspend(verdict: Judgement) -> bool:
    """Whether adding `verdict` to a window that did not suspend can make it suspend.

    Only a failure can: a pass adds no failure, and where the window is full it pushes the
    oldest verdict out, so the failures (and hard ones among them) can only fall. A caller
    that asks `suspension` after every verdict may skip it for a pass (the simulator does:
    a day has millions of verdicts; tests/unit/test_verify_fast_paths.py checks the claim).
    """
    return not verdict.passed


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
