"""The checker: re-runs audited requests on reference models and signs verdicts.

    judgement = await judge(backend, job)        # pure-ish: reference run + comparators
    verdict = sign_verdict(identity, job, judgement)
    agent = CheckerAgent(identity, backends, settings)
    await agent.run()                            # until agent.stop() (SIGTERM)

A checker dials out to every gateway exactly like a provider (same handshake, same
reconnect backoff: `CheckerLink` is a `GatewayLink`), but its Offer says
`role="checker"` and lists the reference models it holds. Gateways then send it
`AuditJob`s, never client traffic; it answers each with a signed `protocol.Verdict`,
and every Ping with a Pong.

`judge` decides with the pure comparators of `gpupool.verify`:

* Both tasks: the receipt must commit to this job's input, model and exactly the
  output that was sent (else hard: the provider signed something else).
* Embeddings: the reference embeds the same inputs; cosine of each row against the
  reference (`compare_embeddings`: below 0.95 fails, below 0.5 is another model: hard);
  reported prompt tokens against the reference's count.
* Generation whose receipt commits to token ids and log-probs (the `generate` backend
  sends them), greedy (temperature 0) or sampled with a seed (the gateway gives every
  sampled request one): the tokens must spell the delivered text and the usage must
  match their count and the prompt's; then one forward pass of the reference over
  prompt + tokens scores every token. A prefill instead of a full decode: audits cost a
  fraction of serving.
  - Greedy (`verify.compare_greedy`): each token must be the reference's argmax within
    a tie margin, and the reported log-probs must agree.
  - Sampled (`verify.compare_sampled_replay`): providers sample with `verify.sampler`,
    whose uniform number for token i is a hash of (seed, i), so the checker replays
    every position: the token must be the one that number picks from the reference's
    distribution (temperature, top-p), within a small numeric tolerance. Passes with
    reason `sampled_replayed`; fails with `sampler_mismatch at token i` (hard when
    >= 20% of the tokens miss: another model, sampler or seed).
* Greedy generation otherwise (no tokens, e.g. an `upstream` engine, or tokens that do
  not spell the text): the reference regenerates with the same payload and the texts
  must agree. Same text: usage and finish reason are checked against the reference's
  exact counts. Provider text a strict prefix of the reference: truncated (with the
  delivered tokens estimated from the reference's count, so full usage reported for
  half a text is inflation). Divergence: a token mismatch, hard when it starts in the
  first 20% of the reference text (another model, noise, an answer to another
  prompt), soft later.
* Sampled generation otherwise (no seed or no committed tokens, e.g. an `upstream`
  engine whose sampler we cannot replay): only the commitment, the exact prompt count
  (a one-token greedy reference run) and a bound on completion tokens are checked; the
  verdict passes with reason `sampled_usage_only`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np
from websockets.asyncio.client import ClientConnection

from gpupool import __version__, protocol
from gpupool.config import CheckerSettings
from gpupool.identity import Identity
from gpupool.protocol import (
    AuditJob,
    Challenge,
    EmbedPayload,
    GeneratePayload,
    Hello,
    Offer,
    Ping,
    Pong,
    Proof,
    Welcome,
)
from gpupool.provider.agent import GatewayLink
from gpupool.provider.backends import Backend, BackendError
from gpupool.provider.backends.base import GenDone, TextDelta
from gpupool.provider.hardware import probe
from gpupool.verify import Verdict, combine, fail
from gpupool.verify.comparators import (
    Usage,
    check_end,
    check_usage,
    compare_embeddings,
    compare_greedy,
    compare_sampled_replay,
)
from gpupool.verify.sampler import GREEDY_BELOW

log = logging.getLogger("gpupool.checker")

# Greedy texts diverging before this fraction of the reference text: another model,
# noise or another prompt's answer, not a numeric near-tie (mirrors the comparators'
# HARD_MISMATCH_FRACTION for teacher-forced tokens).
HARD_DIVERGENCE_FRACTION = 0.2
# How long a stopping checker waits for the verdicts of jobs it already started.
STOP_GRACE_S = 10.0


# ------------------------------------------------------------------ judging


async def judge(backend: Backend, job: AuditJob) -> Verdict:
    """Judge one audit job with the reference `backend` (already started).

    Returns the `gpupool.verify.Verdict` (passed, hard, reason, score, position);
    `sign_verdict` turns it into the signed wire message. Raises `BackendError` when the
    reference itself cannot run the request (then there is nothing to judge).
    """
    payload = job.payload
    sent: bytes | str = job.vectors if isinstance(payload, EmbedPayload) else job.text
    commitment = _check_commitment(job, sent)
    if commitment is not None:
        return commitment
    if isinstance(payload, EmbedPayload):
        return await _judge_embeddings(backend, job, payload)
    return await _judge_generation(backend, job, payload)


def _check_commitment(job: AuditJob, sent: bytes | str) -> Verdict | None:
    receipt = job.receipt
    if receipt.output_hash != protocol.output_hash(sent):
        return fail("output_hash_mismatch: the receipt commits to another output", hard=True)
    if receipt.input_hash != protocol.payload_hash(job.payload):
        return fail("input_hash_mismatch: the receipt commits to another request", hard=True)
    if receipt.model != job.model:
        return fail(f"model_mismatch: receipt names {receipt.model!r}", hard=True)
    return None


async def _judge_embeddings(backend: Backend, job: AuditJob, payload: EmbedPayload) -> Verdict:
    n, dims = len(payload.inputs), job.dimensions
    if dims <= 0 or len(job.vectors) != 4 * n * dims:
        return fail(f"malformed_vectors: {len(job.vectors)} bytes for {n} rows of {dims}", hard=True)
    reference = await backend.embed(payload, urgent=job.urgent)  # routine audits may wait to share a batch
    provided = np.frombuffer(job.vectors, dtype="<f4").reshape(n, dims)
    expected = np.frombuffer(reference.vectors, dtype="<f4").reshape(n, reference.dimensions)
    reported = job.receipt.usage
    return combine(
        compare_embeddings(provided, expected),
        # finish_reason "" and no max_tokens: only inflation applies to embeddings.
        check_usage(Usage(reported.prompt_tokens, reported.completion_tokens),
                    Usage(reference.prompt_tokens, 0), "", None, False),
    )


async def _run_reference(backend: Backend, payload: GeneratePayload) -> tuple[str, GenDone]:
    parts: list[str] = []
    async for event in backend.generate(payload):
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, GenDone):
            return "".join(parts), event
    raise BackendError("internal_error", "reference ended without a result", retryable=True)


def _most_tokens(text: str, max_tokens: int) -> int:
    """The most completion tokens that can have produced `text`: a byte-level tokenizer's
    token decodes to at least one byte, plus one end-of-sequence token, and never more
    than max_tokens. Loose, but no honest provider exceeds it (re-tokenising the text
    instead can count fewer tokens than the sampler drew)."""
    return min(max_tokens, len(text.encode()) + 1)


async def _judge_generation(backend: Backend, job: AuditJob, payload: GeneratePayload) -> Verdict:
    text, reported, finish = job.text, job.receipt.usage, job.receipt.finish_reason
    greedy = payload.temperature < GREEDY_BELOW
    replayable = greedy or payload.seed is not None
    if replayable and job.token_ids and hasattr(backend, "score"):
        scored = await _score_committed_tokens(backend, job, payload, greedy)
        if scored is not None:
            return scored if greedy or not scored.passed else Verdict(True, reason="sampled_replayed")
    # A sampled request is replayed greedily with one token: that gives the exact prompt count.
    probe_payload = payload if greedy else _one_token(payload)
    ref_text, ref = await _run_reference(backend, probe_payload)
    reported_usage = Usage(reported.prompt_tokens, reported.completion_tokens)

    if not greedy:
        most = Usage(ref.prompt_tokens, _most_tokens(text, payload.max_tokens))
        verdict = check_usage(reported_usage, most, "", None, False)
        return verdict if not verdict.passed else Verdict(True, reason="sampled_usage_only")

    stopped = ref.finish_reason == "stop"
    if text == ref_text:
        usage = check_usage(reported_usage, Usage(ref.prompt_tokens, ref.completion_tokens),
                            finish, payload.max_tokens, stopped)
        if usage.passed and finish != ref.finish_reason:
            return fail(f"finish_reason_mismatch: reported {finish!r}, reference {ref.finish_reason!r}")
        return usage
    if ref_text.startswith(text):
        # Cut short, though the reference did not stop there. What was delivered is
        # estimated in proportion to the reference's exact count (re-tokenising a model's
        # output can split it quite differently from how it was generated).
        n = round(ref.completion_tokens * len(text) / max(len(ref_text), 1))
        usage = check_usage(reported_usage, Usage(ref.prompt_tokens, n), finish,
                            payload.max_tokens, stopped=False)
        cut = fail(f"truncated: {len(text)} of {len(ref_text)} characters",
                   score=len(text) / max(len(ref_text), 1), position=len(text))
        return combine(usage, cut)
    agree = _common_prefix(text, ref_text)
    score = agree / max(len(ref_text), len(text), 1)
    return fail(f"text_mismatch at character {agree}", score=score, position=agree,
                hard=agree < HARD_DIVERGENCE_FRACTION * len(ref_text))


async def _score_committed_tokens(backend: Backend, job: AuditJob, payload: GeneratePayload,
                                  greedy: bool) -> Verdict | None:
    """Judge output from the provider's committed tokens with one forward pass (a prefill),
    instead of generating the answer again: greedy tokens against the argmax, sampled ones by
    replaying the seeded sampler. None when the tokens do not spell the delivered text (e.g. a
    stream continued by another provider, or a provider cutting its text): then the caller
    regenerates (greedy) or checks usage only (sampled)."""
    if protocol.tokens_hash(job.token_ids, job.logprobs) != job.receipt.tokens_hash:
        return fail("tokens_hash_mismatch: the receipt commits to other tokens", hard=True)
    spelled = await backend.detokenize(job.token_ids)  # type: ignore[attr-defined]
    if spelled != job.text and not (payload.stop and spelled.startswith(job.text)
                                    and any(spelled[len(job.text):].startswith(s) for s in payload.stop if s)):
        return None
    reported = job.receipt.usage
    eos = 1 if job.receipt.finish_reason == "stop" and not payload.stop else 0
    if reported.completion_tokens > len(job.token_ids) + 1 or reported.completion_tokens < len(job.token_ids):
        return fail(f"usage_inflated: completion reported {reported.completion_tokens}, committed "
                    f"{len(job.token_ids)} tokens (+{eos} end)", hard=True)
    prompt = await backend.prompt_tokens(payload)  # type: ignore[attr-defined]
    # Completion tokens were checked above; this adds the prompt count's inflation rule.
    counts = Usage(reported.prompt_tokens, reported.completion_tokens)
    usage = check_usage(counts, Usage(prompt, reported.completion_tokens), "", None, False)
    if not usage.passed:
        return usage
    # A natural end ("stop" without stop strings, before max_tokens) is checked too: one more
    # row of the same pass says whether the model ends right after the last committed token.
    n = len(job.token_ids)
    end_ids = getattr(backend, "end_token_ids", None)
    ends: list[int] = end_ids() if end_ids is not None else []
    check_stop = bool(eos and ends and n < payload.max_tokens)
    scored_ids = job.token_ids + ends[:1] if check_stop else job.token_ids
    logits = await backend.score(payload, scored_ids)  # type: ignore[attr-defined]
    ended = check_end(logits[n], ends, n, payload.temperature, payload.top_p, payload.seed) if check_stop else None
    logits = logits[:n]
    reported_logprobs = np.asarray(job.logprobs, dtype=np.float64) if job.logprobs else None
    if not greedy:
        assert payload.seed is not None  # the caller replays seeded requests only
        verdict = compare_sampled_replay(job.token_ids, logits, payload.temperature, payload.top_p, payload.seed,
                                         reported_logprobs=reported_logprobs)
    else:
        verdict = compare_greedy(np.asarray(job.token_ids), logits, reported_logprobs=reported_logprobs)
    return combine(verdict, ended) if ended is not None else verdict


def _one_token(payload: GeneratePayload) -> GeneratePayload:
    return GeneratePayload(messages=payload.messages, prompt=payload.prompt, max_tokens=1,
                           temperature=0.0, continue_text=payload.continue_text)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def sign_verdict(identity: Identity, job: AuditJob, judgement: Verdict,
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


# ------------------------------------------------------------------ the process


@dataclass
class _LinkSettings:
    """The part of ProviderSettings a GatewayLink reads."""

    reconnect_max_s: float
    ca_cert: Path | None = None  # wss:// gateways: the CA that signed their certificate (else the system's)


class CheckerAgent:
    """Holds reference backends and a link per gateway; judges jobs, bounded by max_concurrency."""

    def __init__(self, identity: Identity, backends: Mapping[str, Backend], settings: CheckerSettings):
        if not backends:
            raise ValueError("a checker must hold at least one reference model (--serve NAME=BACKEND[:SPEC])")
        self.identity = identity
        self.operator: Identity | None = None  # the operator key vouching for this node (--operator-key-file)
        self.backends = dict(backends)
        self.checker_settings = settings
        self.settings = _LinkSettings(settings.reconnect_max_s, settings.ca_cert)  # what GatewayLink reads
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
            max_concurrency=self.checker_settings.max_concurrency,
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
        links = [CheckerLink(self, url) for url in self.checker_settings.gateways]
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


class CheckerLink(GatewayLink):
    """A provider's gateway link (connect, backoff, reconnect) that serves audit jobs instead of Runs."""

    def __init__(self, agent: CheckerAgent, url: str):
        # GatewayLink reads only identity, settings.reconnect_max_s and .ca_cert, draining and make_offer.
        super().__init__(agent, url)  # type: ignore[arg-type]
        self.checker = agent
        self._jobs: set[asyncio.Task[None]] = set()

    async def _handshake(self, ws: ClientConnection) -> None:
        # The provider's handshake minus settlement: checkers are paid bounties, not per
        # request, so they must not open (or create) a settlement key when the gateway's
        # Welcome names a contract, as GatewayLink._handshake does.
        ident = self.checker.identity
        hello = Hello(protocol.PROTOCOL_VERSION, ident.public_key, f"gpupool-checker/{__version__}")
        await ws.send(protocol.encode(hello))
        msg = protocol.decode(await asyncio.wait_for(ws.recv(), 15))
        if not isinstance(msg, Challenge):
            raise protocol.ProtocolError(f"expected challenge, got {type(msg).__name__}")
        proof = Proof(ident.sign(protocol.challenge_bytes(msg.nonce, msg.gateway_id)))
        await ws.send(protocol.encode(proof))
        await ws.send(protocol.encode(self.checker.make_offer()))
        msg = protocol.decode(await asyncio.wait_for(ws.recv(), 15))
        if not isinstance(msg, Welcome):
            raise protocol.ProtocolError(f"expected welcome, got {type(msg).__name__}")

    async def _serve(self, ws: ClientConnection) -> None:
        try:
            async for frame in ws:
                msg = protocol.decode(frame)
                if isinstance(msg, AuditJob):
                    if self.checker.draining:
                        continue
                    task = asyncio.create_task(self._answer(msg))
                    self._jobs.add(task)
                    task.add_done_callback(self._jobs.discard)
                elif isinstance(msg, Ping):
                    await self._send(Pong(msg.nonce, msg.sent_at))
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


__all__ = ["CheckerAgent", "CheckerLink", "judge", "sign_verdict", "HARD_DIVERGENCE_FRACTION"]
