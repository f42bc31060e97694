"""Audits, reputation and suspension in the internet simulator: the gateway's own policy code.

    t = Trust(sc, earth, secret=b"...")
    audit = t.served(i, request_id, cheated, now)  # verify.sampling.decide; True: a checker re-runs it
    t.verdict(i, judgement, now)                   # reputation.observe_verdict, suspension_rule.suspension

The verdict a checker would reach is drawn from the scenario (a cheated answer fails with
the strategy's detection rate, an honest one with the false-positive rate); everything the
gateway decides from it comes from `gpupool.verify`, unchanged.
"""

from __future__ import annotations

from array import array
from collections import deque
from dataclasses import dataclass

from gpupool.sim.earth import STRATEGIES, Earth
from gpupool.sim.scenario import Scenario
from gpupool.verify import reputation, sampling, suspension_rule
from gpupool.verify.judgement import PASS, Judgement, fail


@dataclass
class TrustTally:
    """What the report reads of a day's trust, without the per-provider state (a shard's, merged)."""

    suspensions: list[tuple[float, int, bool]]  # (time, provider, was a cheater)
    cheater_identities: int
    audits: int


class Trust:
    def __init__(self, sc: Scenario, earth: Earth, secret: bytes) -> None:
        n = earth.n
        self.sc, self.secret = sc, secret
        self.policy = suspension_rule.DEFAULT_SUSPENSION
        self.records = [sampling.AuditRecord()] * n
        self.reps = [reputation.Reputation.new(f"p{i}", 0.0) for i in range(n)]
        # The router's reputation, refreshed on each event. Packed arrays (a bytearray for flags), not
        # lists: each routing draw reads one random provider's entries, one cache line each this way.
        self.score = array("d", [0.5]) * n
        self.history: list[deque[Judgement]] = [deque(maxlen=self.policy.m) for _ in range(n)]
        self.suspended = bytearray(n)  # 1: suspended
        self.identity = [0] * n  # Sybils come back under new identities
        self.strategy = earth.strategy.tolist()
        self.cheater_identities = sum(1 for s in self.strategy if s)
        self.suspensions: list[tuple[float, int, bool]] = []  # (time, provider, was a cheater)
        self.audits = 0
        self.rejoins: list[tuple[float, int]] = []
        # Audits sent, verdicts not back; from MAX_AWAITING_VERDICTS on, routing passes the
        # provider over (`held_back`), as the gateway's router does.
        self.awaiting = [0] * n
        self.held_back = bytearray(n)  # 1: passed over by routing

    def served(self, i: int, request_id: str, now: float) -> bool:
        # Like the gateway (gateway/trust/audits.py), only audit verdicts move reputation; the
        # router learns about failures through its breakers and speeds.
        audit, self.records[i] = sampling.decide(self.records[i], self.secret, request_id)
        if audit:
            self.audits += 1
            self.awaiting[i] += 1
            self.held_back[i] = self.awaiting[i] >= sampling.MAX_AWAITING_VERDICTS
        return audit

    def judge(self, cheated: str | None, u: float) -> Judgement:
        """The checker's verdict on one audited answer (drawn; its consequences are the real code's)."""
        if cheated is None:
            return fail("token_mismatch") if u < self.sc.cheaters.honest_false_positive else PASS
        if u >= self.sc.cheaters.detect.get(cheated, 1.0):
            return PASS
        if cheated == "random_vectors":
            return fail("garbage", hard=True)
        return fail("truncated" if cheated == "truncated" else "token_mismatch")

    def verdict(self, i: int, identity: int, v: Judgement, now: float) -> bool:
        """Fold a verdict in; True when it suspends the provider now."""
        if identity != self.identity[i]:
            return False  # the identity it judged is gone
        self.awaiting[i] -= 1
        self.held_back[i] = self.awaiting[i] >= sampling.MAX_AWAITING_VERDICTS
        if self.suspended[i]:
            return False
        self.records[i] = sampling.record_verdict(self.records[i], v)
        self.reps[i] = reputation.observe_verdict(self.reps[i], v, now)
        self.score[i] = reputation.score(self.reps[i], now)
        self.history[i].append(v)
        # Its window did not suspend before this verdict (or it would be suspended), and a pass
        # cannot change that (`may_suspend`): the rule itself runs on failures only.
        if not suspension_rule.may_suspend(v) or not suspension_rule.suspension(self.history[i], self.policy).suspend:
            return False
        self.suspended[i] = True
        self.suspensions.append((now, i, self.strategy[i] != 0))
        if self.strategy[i] == STRATEGIES.index("sybil"):
            self.rejoins.append((now + self.sc.cheaters.sybil_rejoin_s, i))
        return True

    def rejoin(self, i: int, now: float) -> None:
        """A Sybil comes back under a fresh key: a newcomer again (probation, prior reputation)."""
        self.identity[i] += 1
        self.cheater_identities += 1
        self.records[i] = sampling.AuditRecord()
        self.reps[i] = reputation.Reputation.new(f"p{i}.{self.identity[i]}", now)
        self.score[i] = 0.5
        self.history[i].clear()
        self.suspended[i] = False
        self.awaiting[i], self.held_back[i] = 0, False
