"""The checker: holds reference models, judges the audit jobs gateways send, signs verdicts.

    agent = CheckerAgent(identity, backends, settings)
    await agent.run()                            # until agent.stop() (SIGTERM)
    judgement = await judge(backend, job)        # what audit() does per job (verify/judging.py)
    verdict = sign_verdict(identity, job, judgement)

A checker dials out to every gateway exactly like a provider: `CheckerLink` is a
`PeerLink` (provider/peer_link.py: the same handshake, the same reconnect backoff),
but its Offer says `role="checker"` and lists the reference models it holds, and
it neither opens a settlement key nor signs statements (checkers are paid bounties,
not per request). Gateways then send it `AuditJob`s, never client traffic; it
answers each with a signed `protocol.Verdict`, and every Ping with a Pong. How a job
is judged is `gpupool.verify.judging`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import msgspec
from websockets.asyncio.client import ClientConnection

from gpupool import __version__, protocol
from gpupool.config import CheckerSettings
from gpupool.identity import Identity
from gpupool.model_results import BackendError
from gpupool.protocol import AuditJob, Offer
from gpupool.provider.backends import Backend
from gpupool.provider.hardware import probe
from gpupool.provider.peer_link import PeerLink
from gpupool.verify.judging import judge
from gpupool.verify.judgement import Judgement

log = logging.getLogger("gpupool.checker")

# How long a stopping checker waits for the verdicts of jobs it already started.
STOP_GRACE_S = 10.0


def sign_verdict(identity: Identity, job: AuditJob, judgement: Judgement,
                 now: float | None = None) -> protocol.Verdict:
    """The signed wire `Verdict` for `job` (verify with `protocol.verify_claim`)."""
    verdict = protocol.Verdict(
        job_id=job.job_id,
        request_id=job.receipt.request_id,
        provider=job.receipt.node_id,
        checker=identity.node_id,
        passed=judgement.passed,
        hard=judgement.hard,
        reason=judgement.reason,
        score=float(judgement.score),
        issued_at=time.time() if now is None else now,
    )
    return msgspec.structs.replace(verdict, signature=identity.sign(protocol.signed_bytes(verdict)))


class CheckerAgent:
    """Holds reference backends and a link per gateway; judges jobs, bounded by max_concurrency."""

    def __init__(self, identity: Identity, backends: Mapping[str, Backend], settings: CheckerSettings):
        if not backends:
            raise ValueError("a checker must hold at least one reference model (--serve NAME=BACKEND[:SPEC])")
        self.identity = identity
        self.operator: Identity | None = None  # the operator key vouching for this node (--operator-key-file)
        self.backends = dict(backends)
        self.settings = settings
        self.draining = False
        self.slots = asyncio.Semaphore(max(1, settings.max_concurrency))
        self.in_flight = 0
        self.verdicts = 0
        self.judged: dict[str, int] = {}  # verdict (or why none) -> audit jobs (checker/metrics.py)
        self._stop = asyncio.Event()
        self._hardware = probe()

    def make_offer(self) -> Offer:
        offer = Offer(
            node_id=self.identity.node_id,
            models=[b.offer() for b in self.backends.values()],
            hardware=self._hardware,
            region="",
            max_concurrency=self.settings.max_concurrency,
            issued_at=time.time(),
            role="checker",
        )
        return protocol.sign_offer(offer, self.identity, self.operator)

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> None:
        # Gateways admit checkers by node id (never self-declared): the operator needs this one.
        log.warning("checker node id %s: a gateway's operator admits it with --checker %s",
                    self.identity.node_id, self.identity.node_id)
        for backend in self.backends.values():
            log.info("loading reference %s (%s %s)", backend.name, backend.kind, backend.spec or "")
            await backend.start()
        links = [CheckerLink(self, url) for url in self.settings.gateways]
        tasks = [asyncio.create_task(link.run(), name=f"checker-link-{link.url}") for link in links]
        try:
            await self._stop.wait()
            self.draining = True  # new jobs are ignored from now on; the gateway times them out
            deadline = time.monotonic() + STOP_GRACE_S
            while self.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            log.info("checker stopped after %d verdicts", self.verdicts)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for backend in self.backends.values():
                await backend.close()

    def _judged(self, verdict: str) -> None:
        self.judged[verdict] = self.judged.get(verdict, 0) + 1

    async def audit(self, job: AuditJob) -> protocol.Verdict | None:
        """Judge `job` under the concurrency bound; None when it cannot be judged here."""
        backend = self.backends.get(job.model)
        if backend is None:
            log.warning("audit %s: no reference for %r", job.job_id, job.model)
            self._judged("no_reference")
            return None
        self.in_flight += 1
        try:
            async with self.slots:
                judgement = await judge(backend, job)
        except BackendError as exc:
            log.warning("audit %s: the reference cannot run it: %s", job.job_id, exc)
            self._judged("reference_failed")
            return None
        finally:
            self.in_flight -= 1
        verdict = sign_verdict(self.identity, job, judgement)
        self.verdicts += 1
        self._judged("passed" if verdict.passed else "hard_failed" if verdict.hard else "failed")
        log.info("verdict %s: provider %s request %s %s%s (%s, score %.4f)", job.job_id,
                 verdict.provider[:12], verdict.request_id, "pass" if verdict.passed else "FAIL",
                 " hard" if verdict.hard else "", verdict.reason, verdict.score)
        return verdict


class CheckerLink(PeerLink):
    """A gateway link (connect, handshake, backoff, reconnect) that serves audit jobs instead of Runs."""

    def __init__(self, agent: CheckerAgent, url: str):
        super().__init__(agent, url, client=f"gpupool-checker/{__version__}",
                         reconnect_max_s=agent.settings.reconnect_max_s, ca_cert=agent.settings.ca_cert,
                         silence_s=agent.settings.gateway_silence_s)
        self.checker = agent
        self._jobs: set[asyncio.Task[None]] = set()

    async def _session(self, ws: ClientConnection) -> None:
        try:
            async for msg in self._messages(ws):  # Pings are answered there
                if isinstance(msg, AuditJob):
                    if self.checker.draining:
                        continue
                    task = asyncio.create_task(self._answer(msg))
                    self._jobs.add(task)
                    task.add_done_callback(self._jobs.discard)
                # Anything else (Run, Cancel, ...) is not for a checker: ignored.
        finally:
            # Verdicts for this connection's jobs cannot be delivered any more.
            for task in self._jobs:
                task.cancel()

    async def _answer(self, job: AuditJob) -> None:
        try:
            verdict = await self.checker.audit(job)
        except Exception:  # noqa: BLE001 - one broken job must not kill the checker
            log.exception("audit %s failed", job.job_id)
            return
        if verdict is not None:
            await self._send(verdict)


__all__ = ["CheckerAgent", "CheckerLink", "sign_verdict"]
