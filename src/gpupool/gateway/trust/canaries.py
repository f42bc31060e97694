"""Canaries: requests whose right answer is already known, sent to providers like client traffic.

Answers a checker has passed become canaries (a bounded pool per model); a greedy answer
only if the checker found it the reference's own choice at every token, not one within
the tie margin (a near tie has more than one right answer). Every
`canary_interval_s` (jittered) the gateway picks a live provider and a canary that
provider has never been sent and did not answer itself, and runs it through the
normal dispatch path under a fresh request id shaped like a client's. The provider
cannot tell it from client work, and cannot have cached it. The gateway compares
the answer with the known one itself, with the audits' tolerances (`verify/canary_checks.py`:
embeddings by cosine, image rows with the image thresholds; text read off images by `ocr`
models by edit distance; greedy generation by exact text). A match counts as a passed
audit (`Auditor.apply`). A difference is not taken as a failure at once: the gateway
cannot tell a wrong answer from a near tie, so the answer goes to an admitted checker
(`Auditor.recheck`), which judges it with the audits' own tolerance; its failing verdict
counts like any audit's, and its passing one shows the canary is ambiguous, which is then
dropped. With no checker for the model, a greedy text difference is a soft failure (only
k of them suspend: verify/suspension_rule.py), while a comparison that has a tolerance
(vectors, readings) counts as judged. Without this, a provider could plant a near-tie
prompt, answer the runner-up (which passes audit), and have every honest provider that
answers the favourite fail the resulting canary and be suspended.

A canary is not billed and its answer goes nowhere. Sampled (temperature > 0)
generations are never canaries: their right answer is not unique. Readings of images by
an `ocr` model are, whatever the temperature: the model ignores it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpupool.protocol import AuditJob, EmbedPayload, GeneratePayload, Payload
from gpupool.verify import Judgement, fail
from gpupool.verify.canary_checks import image_count, judge_canary
from gpupool.verify.comparators import NEAR_TIE

if TYPE_CHECKING:
    from gpupool.gateway.dispatch.dispatcher import Dispatcher, Outcome
    from gpupool.gateway.peers.hub import Hub, ProviderSession
    from gpupool.gateway.trust.audits import Auditor

log = logging.getLogger("gpupool.gateway.canaries")
POOL_PER_MODEL = 200
CANARY_TIMEOUT_S = 60.0
MAX_DRAWS = 64  # sessions of a model looked at per pick (`Canaries._pick`)


@dataclass(frozen=True)
class Canary:
    key: str  # identifies the canary: never the same one twice to one provider
    model: str
    payload: Payload
    source: str  # the provider whose (verified) answer it is
    vectors: bytes = b""
    dimensions: int = 0
    text: str = ""
    reads_images: bool = False  # an `ocr` model's reading: compared by edit distance


class Canaries:
    def __init__(self, hub: Hub, dispatcher: Dispatcher, auditor: Auditor, interval_s: float,
                 rng: random.Random | None = None):
        self.hub = hub
        self.dispatcher = dispatcher
        self.auditor = auditor
        self.interval_s = interval_s
        self.rng = rng or random.Random()
        self.pool: dict[str, deque[Canary]] = {}
        self.sent: dict[str, set[str]] = {}  # provider -> canary keys it has been sent
        self.stats = {"sent": 0, "passed": 0, "failed": 0, "rechecked": 0, "lost": 0, "dropped": 0}
        self._task: asyncio.Task[None] | None = None

    def remember(self, job: AuditJob, provider: str, verdict: Judgement) -> None:
        """A checker passed this answer: keep it as a canary (greedy, embeddings or an image reading;
        a greedy one only if no token of it was a near tie)."""
        reads = self._reads_images(job, provider)
        if isinstance(job.payload, GeneratePayload) and not reads and (job.payload.temperature > 0
                                                                         or NEAR_TIE in verdict.reason):
            return
        pool = self.pool.setdefault(job.model, deque(maxlen=POOL_PER_MODEL))
        pool.append(Canary(job.job_id, job.model, job.payload, provider, job.vectors, job.dimensions, job.text,
                           reads))

    def _reads_images(self, job: AuditJob, provider: str) -> bool:
        """The answer is text read off images by an `ocr` model (the source's offer says which backend)."""
        session = self.hub.sessions.get(provider)
        offer = session.models.get(job.model) if session is not None else None
        return offer is not None and offer.backend == "ocr" and image_count(job.payload) > 0

    def drop(self, key: str) -> None:
        """A checker passed an answer that differs from canary `key`: it has no single right answer."""
        for model, pool in self.pool.items():
            kept = deque((c for c in pool if c.key != key), maxlen=POOL_PER_MODEL)
            if len(kept) != len(pool):
                self.pool[model] = kept
                self.stats["dropped"] += 1
                log.info("canary %s of %s dropped: a checker passed a different answer to it", key, model)

    def start(self) -> None:
        if self.interval_s > 0:
            self._task = asyncio.create_task(self._loop(), name="canaries")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s * self.rng.uniform(0.5, 1.5))  # unpredictable timing
            try:
                await self.send_one()
            except Exception:  # noqa: BLE001 - a failed canary must not stop the next ones
                log.exception("canary failed")

    async def send_one(self) -> bool:
        """Probe one provider with one canary; False if there was nothing to do."""
        pick = self._pick()
        if pick is None:
            return False
        session, canary = pick
        self.sent.setdefault(session.node_id, set()).add(canary.key)
        outcome = await self._probe(session, canary)
        if outcome is None:
            self.stats["lost"] += 1  # failed or lost: not evidence of cheating
            return True
        judgement = judge_canary(canary.payload, canary.text, canary.vectors, canary.dimensions, outcome.done,
                                 outcome.text, canary.reads_images)
        if judgement.passed:
            self.stats["passed"] += 1
            self.auditor.apply(session.node_id, judgement, "canary")
        elif self.auditor.recheck(session, canary.model, canary.payload, outcome.done, outcome.text, canary.key):
            self.stats["rechecked"] += 1
        else:
            self.stats["failed"] += 1
            if isinstance(canary.payload, GeneratePayload) and not canary.reads_images:
                # No checker to ask: a soft failure only (k of them among the last m suspend, where a
                # hard one suspended at once), so one planted canary cannot take an honest provider out.
                judgement = fail("canary_mismatch_unchecked")
            self.auditor.apply(session.node_id, judgement, "canary")
        return True

    def _pick(self) -> tuple[ProviderSession, Canary] | None:
        """A live provider and a canary of one of its models that it was never sent and did not answer
        itself, or None. Drawn, not listed: a model that has canaries at random, then at most
        `MAX_DRAWS` of its sessions (the hub's model index), so a pick costs the same with ten
        providers or ten thousand. (Listing every session's every model first took 80,000 steps of
        the event loop at 10,000 sessions of 8 models.) A pool of up to `MAX_DRAWS` is tried whole."""
        models = [m for m, pool in self.pool.items() if pool]
        self.rng.shuffle(models)
        for model in models:
            index = self.hub.index.pools.get(model)
            sessions = index.sessions if index is not None else []
            n = len(sessions)
            order = self.rng.sample(range(n), n) if n <= MAX_DRAWS else \
                (int(self.rng.random() * n) for _ in range(MAX_DRAWS))
            for i in order:
                session = sessions[i]
                if session.closed or session.draining or self.auditor.is_suspended(session.node_id):
                    continue
                seen = self.sent.get(session.node_id, ())
                fresh = [c for c in self.pool[model] if c.source != session.node_id and c.key not in seen]
                if fresh:
                    return session, self.rng.choice(fresh)
        return None

    async def _probe(self, session: ProviderSession, canary: Canary) -> Outcome | None:
        # The id looks like any client request's, so the provider cannot single canaries out.
        prefix = "emb-" if isinstance(canary.payload, EmbedPayload) else "chatcmpl-"
        request_id = prefix + uuid.uuid4().hex
        outcome = await self.dispatcher.run_on(session, request_id, canary.model, canary.payload,
                                               time.monotonic() + CANARY_TIMEOUT_S)
        self.stats["sent"] += 1
        return outcome
