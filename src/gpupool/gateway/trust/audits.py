"""Audits at the gateway: pick served requests for checkers, act on their signed verdicts.

After a provider answered (its receipt is in hand), `after_served` decides from an
HMAC of the request id under this gateway's secret whether the request is audited
(`verify.decide`: a draw under the rate the provider's record earns, and never too
many requests in a row unaudited), and if so sends an `AuditJob` with the request and
the provider's committed output to a checker holding that model. The provider cannot tell audited work from the rest.
Checkers are those the hub admitted (the operator's `--checker` list, or stake); a job never
goes to the audited node's own key, and a checker whose failing verdict a second checker
contradicts is struck (and slashed where it staked): after MAX_OVERRULED strikes it gets no jobs.

Each signed `Verdict` updates the provider's record and reputation (which the router
uses) and its recent verdicts; `verify.suspension` decides whether to suspend it
(suspended providers get no traffic). A suspension confirmed by a second checker's
verdict is fraud: the provider is slashed through the ledger and every request it
served since its last passed audit is refunded (any of them may be a bad answer the
audits did not sample), from its held earnings and stake; the checker gets the bounty.
All decisions are the pure functions of `gpupool.verify`; this class holds state.

A suspension has three ways back, since honest providers can be suspended too (near-tie
answers, a poisoned canary, a checker in error): a second admitted checker passing the
re-check of the answer that tipped it (the appeal every suspension gets when a second
checker exists), `expiry_s` after it began (unless fraud was confirmed and slashed), or
the operator (`lift`: POST /admin/providers/{node_id}/unsuspend, `gpupool provider
unsuspend`). A lifted provider starts a fresh window of verdicts.

Canaries (trust/canaries.py) hand answers that differ from a canary's to `recheck`: a
checker judges them with the audits' own tolerance, and only its failing verdict counts.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gpupool import protocol
from gpupool.gateway.peers.hub import Hub
from gpupool.gateway.peers.session import ProviderSession
from gpupool.gateway.store import Store
from gpupool.identity import Identity
from gpupool.ledger import Ledger, LedgerError
from gpupool.ledger.interface import Charge
from gpupool.protocol import AuditJob, Done, Payload
from gpupool.verify import (
    DEFAULT_SAMPLING,
    AuditRecord,
    Reputation,
    SamplingPolicy,
    audit_rate,
    checker_for_slot,
    decide,
    observe_verdict,
    record_bytes,
    record_verdict,
    score,
    suspension,
    to_record,
)
from gpupool.verify import Judgement
from gpupool.verify.sampling import MAX_AWAITING_VERDICTS  # the simulator holds providers back by it too


log = logging.getLogger("gpupool.gateway.audits")
BOUNTY_BPS = 2_000  # the checker whose verdict led to a slash gets 20% of what is left after refunds
JOB_TIMEOUT_S = 120.0
# A checker whose failing verdicts a second checker contradicted this many times gets no more jobs.
MAX_OVERRULED = 3
# Past this many provider records, those of providers gone with nothing at stake are dropped.
MAX_PROVIDER_RECORDS = 20_000


@dataclass
class ProviderAudits:
    """What this gateway knows about one provider's honesty."""

    record: AuditRecord = field(default_factory=AuditRecord)
    reputation: Reputation | None = None
    recent: deque[Judgement] = field(default_factory=lambda: deque(maxlen=200))
    owed: dict[str, int] = field(default_factory=dict)  # client -> µcr of failed audited requests
    failed_requests: list[str] = field(default_factory=list)
    # (request id, client, cost) served since the last passed audit: refunded on confirmed fraud.
    unvouched: deque[tuple[str, str, int]] = field(default_factory=lambda: deque(maxlen=10_000))
    suspended: str = ""  # the reason, once suspended
    suspended_at: float = 0.0  # time.time() when suspended (expiry)
    slashing: bool = False  # a confirmed slash is under way
    slashed: bool = False
    awaiting: int = 0  # audit jobs sent, verdicts not yet back


@dataclass
class PendingJob:
    job: AuditJob
    provider: str
    client: str
    cost: int
    checker: str
    sent_at: float
    confirmation: bool = False
    accuser: str = ""  # a confirmation: the checker whose failing verdict it re-checks
    # The provider-signed charge for the audited answer: what an on-chain slash must show.
    evidence: Charge | None = None
    operator: str = ""  # the audited provider's operator (ProviderSession.operator)
    canary: str = ""  # a canary's key: this job re-checks an answer that differed from that canary's


class Auditor:
    def __init__(self, hub: Hub, store: Store, ledger: Ledger, secret: bytes | None = None,
                 rng: random.Random | None = None, sampling: SamplingPolicy = DEFAULT_SAMPLING,
                 expiry_s: float = 0.0):
        self.hub = hub  # the registry: connected providers and admitted checkers
        self.store = store  # peer events (suspended, slashed, overruled)
        self.ledger = ledger
        self.sampling = sampling
        self.expiry_s = expiry_s  # a suspension not confirmed as fraud ends after this long (0: never)
        self.secret = secret or secrets.token_bytes(32)  # never leaves the gateway
        self.rng = rng or random.Random()
        self.providers: dict[str, ProviderAudits] = {}
        self.pending: dict[str, PendingJob] = {}
        self._slot_checker: dict[tuple[str, str], tuple[int, ProviderSession]] = {}
        # Admitted checker -> how often a second checker contradicted its failing verdict.
        self.overruled: dict[str, int] = {}
        # Called with each audit job whose answer a checker passed, and the verdict (the canaries' source).
        self.on_passed: Callable[[AuditJob, str, Judgement], None] = lambda job, provider, verdict: None
        # Called with a canary's key when a checker passed an answer that differs from it: the
        # prompt has more than one right answer (a near tie), so it is no canary.
        self.on_ambiguous_canary: Callable[[str], None] = lambda key: None
        # Awaited before a slash: lets billing settle the provider's queued charges first.
        self.before_slash: Callable[[str], Awaitable[None]] = _nothing
        self.stats = {"served": 0, "audited": 0, "no_checker": 0, "passed": 0, "failed": 0,
                      "suspended": 0, "slashed": 0, "refunded": 0}

    def of(self, node_id: str) -> ProviderAudits:
        state = self.providers.get(node_id)
        if state is None:
            if len(self.providers) >= MAX_PROVIDER_RECORDS:
                self._prune()
            state = self.providers[node_id] = ProviderAudits(reputation=Reputation.new(node_id, time.time()))
        return state

    def _prune(self) -> None:
        """Forget the records of providers that left with nothing at stake here: fresh keys cost
        nothing, so the table is bounded. A returning node starts over on probation (every
        answer audited), the cautious side; suspended, slashed or owing ones are kept."""
        busy = {p.provider for p in self.pending.values()}
        for node_id in [n for n, s in self.providers.items()
                        if n not in self.hub.sessions and n not in busy and not s.suspended and not s.slashed
                        and not s.slashing and not s.owed and s.awaiting <= 0]:
            del self.providers[node_id]

    def is_suspended(self, node_id: str) -> bool:
        state = self.providers.get(node_id)
        if state is None or not state.suspended:
            return False
        if self.expiry_s > 0 and not state.slashed and not state.slashing \
                and time.time() - state.suspended_at > self.expiry_s:
            self.lift(node_id, f"expired after {self.expiry_s:g} s")
            return False
        return True

    def lift(self, node_id: str, why: str) -> bool:
        """End the provider's suspension (appeal passed, expiry, operator); False if it was not
        suspended. Its window of recent verdicts starts afresh, so the old failures do not
        suspend it again on the next verdict; its record stays (reputation, audit rate)."""
        state = self.providers.get(node_id)
        if state is None or not state.suspended:
            return False
        state.suspended, state.suspended_at = "", 0.0
        state.recent.clear()
        self.stats["lifted"] = self.stats.get("lifted", 0) + 1
        self.store.record_event(node_id, "suspension_lifted", why)
        log.warning("suspension of provider %s lifted: %s", node_id[:12], why)
        return True

    def is_slashed(self, node_id: str) -> bool:
        state = self.providers.get(node_id)
        return state is not None and state.slashed

    def is_held_back(self, node_id: str) -> bool:
        """Too many of its answers still await a verdict: route elsewhere if anyone else can serve."""
        state = self.providers.get(node_id)
        return state is not None and state.awaiting >= MAX_AWAITING_VERDICTS

    # ------------------------------------------------------------ choosing work to audit

    def after_served(self, request_id: str, model: str, session: ProviderSession, payload: Payload,
                     done: Done, text: str, client: str, cost: int) -> None:
        """Called for every answer accepted from a provider; maybe sends it to a checker."""
        state = self.of(session.node_id)
        # Every answer audited (probation, recheck): how soon verdicts come bounds the damage.
        urgent = audit_rate(state.record, self.sampling) >= 1.0
        audit, state.record = decide(state.record, self.secret, request_id, self.sampling)
        if cost > 0:
            state.unvouched.append((request_id, client, cost))
        self.stats["served"] += 1
        if not audit:
            return
        # Never the audited node itself, nor a checker of its operator (it would pass its own work).
        checker = self._checker_for(model, exclude="", provider=session.node_id, operator=session.operator)
        if checker is None:
            self.stats["no_checker"] += 1
            return
        job = audit_job("aud-", model, payload, done, text, urgent)
        # Only a charge the provider signed with its settlement key (an EVM ledger) is evidence
        # the contract accepts; on SQL the gateway's own receipt check stands in for it.
        evidence = (Charge(request_id, client, session.node_id, cost, signature=done.settlement_sig)
                    if cost > 0 and len(done.settlement_sig) == 65 else None)
        self._send(PendingJob(job, session.node_id, client, cost, checker.node_id, time.monotonic(),
                              evidence=evidence, operator=session.operator), checker)

    def recheck(self, session: ProviderSession, model: str, payload: Payload, done: Done, text: str,
                canary: str) -> bool:
        """A checker judges an answer that differed from canary `canary`'s (False: no checker holds
        the model; then the difference counts for nothing). Its verdict counts like an audit's."""
        checker = self._checker_for(model, exclude="", provider=session.node_id, operator=session.operator)
        if checker is None:
            return False
        self._send(PendingJob(audit_job("can-", model, payload, done, text, True), session.node_id, "", 0,
                              checker.node_id, time.monotonic(), operator=session.operator, canary=canary), checker)
        return True

    def _checker_for(self, model: str, exclude: str, provider: str = "", operator: str = "") -> ProviderSession | None:
        # Only admitted checkers are in `hub.checkers` (gateway/peers/hub.py refuses the rest). "The same
        # operator" is what offers declare (a signed operator key); an operator who hides its key
        # is caught only by the admission of its checkers, which the gateway's operator decides.
        options = [c for c in self.hub.checkers.values()
                   if model in c.models and c.node_id not in (exclude, provider) and not c.closed
                   and (not operator or c.operator != operator)
                   and self.overruled.get(c.node_id, 0) < MAX_OVERRULED]
        chosen = checker_for_slot(options, self._slot_checker.get((model, exclude)), time.monotonic(), self.rng)
        if chosen is None:
            return None
        self._slot_checker[(model, exclude)] = chosen
        return chosen[1]

    def _send(self, pending: PendingJob, checker: ProviderSession) -> None:
        self.pending[pending.job.job_id] = pending
        self.stats["audited"] += 1
        if not pending.confirmation:
            self.of(pending.provider).awaiting += 1

        async def send() -> None:
            try:
                await checker.send(pending.job)
            except ConnectionError:
                self._forget(pending.job.job_id)

        asyncio.ensure_future(send())
        cutoff = time.monotonic() - JOB_TIMEOUT_S
        for job_id in [j for j, p in self.pending.items() if p.sent_at < cutoff]:
            self._forget(job_id)  # a checker that never answered: the audit is simply lost

    def _forget(self, job_id: str) -> PendingJob | None:
        pending = self.pending.pop(job_id, None)
        if pending is not None and not pending.confirmation:
            self.of(pending.provider).awaiting -= 1
        return pending

    # ------------------------------------------------------------ verdicts

    async def on_verdict(self, checker: ProviderSession, verdict: protocol.Verdict) -> None:
        """A checker's verdict (its signature already verified by the hub)."""
        pending = self.pending.get(verdict.job_id)
        if pending is None or pending.checker != checker.node_id or verdict.provider != pending.provider:
            return  # unknown, late, or not the job we gave this checker
        self._forget(verdict.job_id)
        judgement = Judgement(passed=verdict.passed, hard=verdict.hard and not verdict.passed,
                              reason=verdict.reason, score=verdict.score)
        state = self.of(pending.provider)
        if pending.confirmation:
            await self._confirmed(pending, state, judgement, checker.node_id)
            return
        if judgement.passed:
            if pending.canary:
                self.on_ambiguous_canary(pending.canary)
            else:
                self.on_passed(pending.job, pending.provider, judgement)
            _drop_through(state.unvouched, pending.job.receipt.request_id)
        else:
            if pending.cost > 0:
                state.owed[pending.client] = state.owed.get(pending.client, 0) + pending.cost
            state.failed_requests.append(pending.job.receipt.request_id)
        source = f"{'canary, ' if pending.canary else ''}checker {checker.node_id[:12]}"
        if self.apply(pending.provider, judgement, source):
            # Fraud needs a second opinion: the same job to another checker.
            second = self._checker_for(pending.job.model, exclude=checker.node_id, provider=pending.provider,
                                       operator=pending.operator)
            if second is not None:
                job = AuditJob(**{**_fields(pending.job), "job_id": "conf-" + uuid.uuid4().hex, "urgent": True})
                self._send(PendingJob(job, pending.provider, pending.client, pending.cost, second.node_id,
                                      time.monotonic(), confirmation=True, evidence=pending.evidence), second)
                self.pending[job.job_id].accuser = checker.node_id
            else:
                self.store.record_event(pending.provider, "slash_pending",
                                            "no second checker to confirm the fraud; suspended, not slashed")

    def apply(self, provider: str, judgement: Judgement, source: str) -> bool:
        """Fold one verdict (a checker's, or a canary's) into the provider's record, reputation and
        recent verdicts; suspend if `verify.suspension` says so. True when this verdict suspended it."""
        state = self.of(provider)
        now = time.time()
        state.record = record_verdict(state.record, judgement, self.sampling)
        state.reputation = observe_verdict(state.reputation or Reputation.new(provider, now), judgement, now)
        state.recent.append(judgement)
        self.stats["passed" if judgement.passed else "failed"] += 1
        decision = suspension(state.recent)
        if not decision.suspend or state.suspended:
            return False
        state.suspended, state.suspended_at = decision.reason, now
        self.stats["suspended"] += 1
        self.store.record_event(provider, "suspended", f"{decision.reason} ({source})")
        log.warning("suspended provider %s: %s (%s)", provider[:12], decision.reason, source)
        return True

    async def _confirmed(self, pending: PendingJob, state: ProviderAudits, judgement: Judgement,
                         checker_id: str) -> None:
        if judgement.passed:
            # The second checker disagrees: the appeal succeeds, the suspension is lifted and money does
            # not move; the first checker takes a strike.
            self.store.record_event(pending.provider, "slash_not_confirmed",
                                        f"second checker {checker_id[:12]} passed the audited answer")
            if not state.slashed and not state.slashing:
                self.lift(pending.provider, f"appeal: second checker {checker_id[:12]} passed the re-check")
            await self._overruled(pending.accuser, checker_id)
            return
        if state.slashed or state.slashing:
            return
        state.slashing = True
        # Its latest charges may still be waiting for a batch: settle them first so their
        # earnings are held (and refundable). From `slashed` on, billing charges nothing more
        # for its answers; no await lies between the two, so every refunded request was charged.
        await self.before_slash(pending.provider)
        state.slashed = True
        refunds = dict(state.owed)
        failed = set(state.failed_requests)
        for request_id, client, cost in state.unvouched:
            if request_id not in failed:  # (failed ones are in `owed` already)
                refunds[client] = refunds.get(client, 0) + cost
        try:
            await self._slash(pending.provider, refunds, checker_id, pending.evidence)
        except LedgerError as exc:
            # Less at stake than owed: refund what can be taken, in proportion.
            log.warning("slash of %s for the full refunds failed (%s); refunding what is there",
                        pending.provider[:12], exc)
            refunds = await self._affordable(pending.provider, refunds)
            try:
                await self._slash(pending.provider, refunds, checker_id, pending.evidence)
            except LedgerError as again:
                # E.g. a chain that refuses the evidence (its charge not paid yet): the provider stays
                # suspended, the failure is recorded, and a later confirmed failure may slash.
                self.store.record_event(pending.provider, "slash_failed", f"the ledger refused: {again}")
                log.warning("slash of %s failed: %s", pending.provider[:12], again)
                state.slashed = state.slashing = False
                return
        self.stats["slashed"] += 1
        self.stats["refunded"] += sum(refunds.values())
        self.store.record_event(pending.provider, "slashed",
                                    f"fraud confirmed by a second checker; refunded {sum(refunds.values())} µcr to "
                                    f"{len(refunds)} clients for {len(state.unvouched)} requests since its last "
                                    f"passed audit ({len(state.failed_requests)} failed audits)")

    async def _slash(self, provider: str, refunds: dict[str, int], checker_id: str,
                     evidence: Charge | None) -> None:
        await self.ledger.slash(f"slash:{provider}:{uuid.uuid4().hex[:8]}", provider, refunds, checker_id,
                                BOUNTY_BPS, evidence=evidence)

    async def _overruled(self, accuser: str, second: str) -> None:
        """A checker's failing verdict was contradicted by a second admitted checker: it pays for that.

        Its reputation as a checker drops (MAX_OVERRULED strikes and it gets no more jobs), and
        where it has a stake in the ledger, the stake is slashed with the usual bounty to the
        checker that contradicted it (no client is owed anything: the provider was not charged back)."""
        if not accuser:
            return
        strikes = self.overruled[accuser] = self.overruled.get(accuser, 0) + 1
        self.store.record_event(accuser, "checker_overruled",
                                    f"its failing verdict was passed by checker {second[:12]} "
                                    f"({strikes}/{MAX_OVERRULED} strikes)")
        from gpupool.ledger import postings

        try:
            if await self.ledger.balance(postings.stake(accuser)) > 0:
                await self.ledger.slash(f"slash:{accuser}:{uuid.uuid4().hex[:8]}", accuser, {}, second, BOUNTY_BPS)
                self.store.record_event(accuser, "checker_slashed", "stake slashed for an overruled verdict")
        except LedgerError as exc:  # e.g. a chain that wants evidence: the strike still stands
            log.warning("could not slash checker %s: %s", accuser[:12], exc)

    async def _affordable(self, provider: str, refunds: dict[str, int]) -> dict[str, int]:
        from gpupool.ledger import postings

        pool = (await self.ledger.balance(postings.provider_held(provider))
                + await self.ledger.balance(postings.stake(provider)))
        owed = sum(refunds.values())
        if owed <= pool:
            return refunds
        return {c: a * pool // owed for c, a in refunds.items()}

    # ------------------------------------------------------------ reading

    def reputation_of(self, node_id: str) -> float:
        state = self.providers.get(node_id)
        if state is None or state.reputation is None:
            return 0.5
        return score(state.reputation, time.time())

    def signed_record(self, node_id: str, identity: Identity) -> dict[str, object]:
        """The provider's portable reputation record, signed by this gateway (`verify.to_record`)."""
        # Read-only for ids this gateway never audited: an unauthenticated GET must not create state.
        state = self.providers.get(node_id) or ProviderAudits()
        record = to_record(state.reputation or Reputation.new(node_id, time.time()), time.time())
        record["suspended"] = bool(state.suspended)
        return {"record": record, "gateway": identity.node_id, "public_key": identity.public_key.hex(),
                "signature": identity.sign(record_bytes(record)).hex()}

    def summary(self) -> list[dict[str, object]]:
        now = time.time()
        return [{"node_id": node, "served": s.record.served, "audit_rate": round(audit_rate(s.record, self.sampling), 4),
                 "audits": s.reputation.audits if s.reputation else 0,
                 "audit_failures": s.reputation.audit_failures if s.reputation else 0,
                 "reputation": round(score(s.reputation, now), 4) if s.reputation else 0.5,
                 "suspended": s.suspended, "slashed": s.slashed, "owed_refunds": sum(s.owed.values())}
                for node, s in sorted(self.providers.items())]


async def _nothing(_provider: str) -> None:
    return None


def _drop_through(served: deque[tuple[str, str, int]], request_id: str) -> None:
    """A passed audit vouches for the requests served up to it: drop them (if it is still listed)."""
    if any(r == request_id for r, _, _ in served):
        while served and served.popleft()[0] != request_id:
            pass


def audit_job(prefix: str, model: str, payload: Payload, done: Done, text: str, urgent: bool) -> AuditJob:
    """The job a checker gets for one committed answer (its id under `prefix`: aud-, can-)."""
    return AuditJob(job_id=prefix + uuid.uuid4().hex, model=model, payload=payload, receipt=done.receipt,
                    vectors=done.vectors, dimensions=done.dimensions, text=text, token_ids=done.token_ids,
                    logprobs=done.logprobs, urgent=urgent)


def _fields(job: AuditJob) -> dict[str, object]:
    return {f: getattr(job, f) for f in job.__struct_fields__}
