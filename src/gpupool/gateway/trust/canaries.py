"""Canaries: requests whose right answer is already known, sent to providers like client traffic.

Answers a checker has passed become canaries (a bounded pool per model). Every
`canary_interval_s` (jittered) the gateway picks a live provider and a canary that
provider has never been sent and did not answer itself, and runs it through the
normal dispatch path under a fresh request id shaped like a client's. The provider
cannot tell it from client work, and cannot have cached it. The gateway compares
the answer with the known one itself, with no checker in the loop and the audits'
tolerances (`verify/canary_checks.py`: embeddings by cosine, image rows with the image
thresholds; text read off images by `ocr` models by edit distance; greedy generation by
exact text), and the result counts like an audit verdict (`Auditor.apply`):
reputation, suspension.

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
from gpupool.verify import Judgement
from gpupool.verify.canary_checks import image_count, judge_canary

if TYPE_CHECKING:
    from gpupool.gateway.trust.audits import Auditor
    from gpupool.gateway.dispatch.dispatcher import Dispatcher
    from gpupool.gateway.peers.hub import Hub, ProviderSession

log = logging.getLogger("gpupool.gateway.canaries")
POOL_PER_MODEL = 200
CANARY_TIMEOUT_S = 60.0


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
        self.stats = {"sent": 0, "passed": 0, "failed": 0, "lost": 0}
        self._task: asyncio.Task[None] | None = None

    def remember(self, job: AuditJob, provider: str) -> None:
        """A checker passed this answer: keep it as a canary (greedy, embeddings or an image reading)."""
        reads = self._reads_images(job, provider)
        if isinstance(job.payload, GeneratePayload) and job.payload.temperature > 0 and not reads:
            return
        pool = self.pool.setdefault(job.model, deque(maxlen=POOL_PER_MODEL))
        pool.append(Canary(job.job_id, job.model, job.payload, provider, job.vectors, job.dimensions, job.text,
                           reads))

    def _reads_images(self, job: AuditJob, provider: str) -> bool:
        """The answer is text read off images by an `ocr` model (the source's offer says which backend)."""
        session = self.hub.sessions.get(provider)
        offer = session.models.get(job.model) if session is not None else None
        return offer is not None and offer.backend == "ocr" and image_count(job.payload) > 0

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
        choices = self._pairs()
        if not choices:
            return False
        session, canary = self.rng.choice(choices)
        self.sent.setdefault(session.node_id, set()).add(canary.key)
        judgement = await self._probe(session, canary)
        if judgement is None:
            self.stats["lost"] += 1
            return True
        self.stats["passed" if judgement.passed else "failed"] += 1
        self.auditor.apply(session.node_id, judgement, "canary")
        return True

    def _pairs(self) -> list[tuple[ProviderSession, Canary]]:
        pairs = []
        for session in self.hub.sessions.values():
            if session.closed or session.draining or self.auditor.is_suspended(session.node_id):
                continue
            seen = self.sent.get(session.node_id, set())
            for model in session.models:
                pairs += [(session, c) for c in self.pool.get(model, ())
                          if c.source != session.node_id and c.key not in seen]
        return pairs

    async def _probe(self, session: ProviderSession, canary: Canary) -> Judgement | None:
        # The id looks like any client request's, so the provider cannot single canaries out.
        prefix = "emb-" if isinstance(canary.payload, EmbedPayload) else "chatcmpl-"
        request_id = prefix + uuid.uuid4().hex
        outcome = await self.dispatcher.run_on(session, request_id, canary.model, canary.payload,
                                               time.monotonic() + CANARY_TIMEOUT_S)
        self.stats["sent"] += 1
        if outcome is None:
            return None  # failed or lost: not evidence of cheating
        return judge_canary(canary.payload, canary.text, canary.vectors, canary.dimensions, outcome.done,
                            outcome.text, canary.reads_images)
