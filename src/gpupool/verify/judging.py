"""Judging one audit job: re-run it on a reference model and compare (numpy).

    judgement = await judge(reference, job)     # reference: a started model backend

The checker process (checker/agent.py) calls `judge` for every AuditJob a gateway
sends it and signs the result. The reference is anything shaped like `Reference`
(the provider's model backends are), so verify never imports the provider.

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
  - Sampled (`verify.compare_sampled_replay`): providers sample with `verify.token_sampler`,
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
* Images (verify/image_checks.py): a reference that reads images (`TextReader`, the `ocr`
  backend) answers the same request; the plain texts are compared by normalised edit
  distance, and the usage (one unit per image, one per word delivered) recounted. Image
  embeddings (a payload with `images`) are compared by cosine with the image thresholds.
* Sampled generation otherwise (no seed or no committed tokens, e.g. an `upstream`
  engine whose sampler we cannot replay): only the commitment, the exact prompt count
  (a one-token greedy reference run) and a bound on completion tokens are checked; the
  verdict passes with reason `sampled_usage_only`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from gpupool import protocol
from gpupool.model_results import BackendError, EmbedResult, GenDone, TextDelta
from gpupool.protocol import AuditJob, EmbedPayload, GeneratePayload
from gpupool.verify.comparators import (
    Usage,
    check_end,
    check_usage,
    compare_embeddings,
    compare_greedy,
    compare_sampled_replay,
)
from gpupool.verify.image_checks import check_ocr_usage, compare_image_embeddings, compare_ocr, ocr_text
from gpupool.verify.token_sampler import GREEDY_BELOW
from gpupool.verify.judgement import Judgement, combine, fail

# Greedy texts diverging before this fraction of the reference text: another model,
# noise or another prompt's answer, not a numeric near-tie (mirrors the comparators'
# HARD_MISMATCH_FRACTION for teacher-forced tokens).
HARD_DIVERGENCE_FRACTION = 0.2


class Reference(Protocol):
    """What judging calls on a reference model (a started provider backend)."""

    async def embed(self, payload: EmbedPayload, urgent: bool = True) -> EmbedResult: ...

    def generate(self, payload: GeneratePayload) -> AsyncIterator[TextDelta | GenDone]: ...


@runtime_checkable
class TokenScorer(Protocol):
    """A reference that scores given tokens in one forward pass (the `generate` backend).

    It may also offer `end_token_ids() -> list[int]`, to check a natural end."""

    async def score(self, payload: GeneratePayload, token_ids: list[int]) -> Any: ...

    async def prompt_tokens(self, payload: GeneratePayload) -> int: ...

    async def detokenize(self, token_ids: list[int]) -> str: ...


@runtime_checkable
class TextReader(Protocol):
    """A reference whose answer is the text read off the request's images (the `ocr` backend)."""

    async def read(self, payload: GeneratePayload) -> Any: ...


async def judge(backend: Reference, job: AuditJob) -> Judgement:
    """Judge one audit job with the reference `backend` (already started).

    Returns the `gpupool.verify.Judgement` (passed, hard, reason, score, position); the
    checker's `sign_verdict` turns it into the signed wire message. Raises `BackendError` when the
    reference itself cannot run the request (then there is nothing to judge).
    """
    payload = job.payload
    sent: bytes | str = job.vectors if isinstance(payload, EmbedPayload) else job.text
    commitment = _check_commitment(job, sent)
    if commitment is not None:
        return commitment
    if isinstance(payload, EmbedPayload):
        return await _judge_embeddings(backend, job, payload)
    if isinstance(backend, TextReader):
        return await _judge_reading(backend, job, payload)
    return await _judge_generation(backend, job, payload)


def _check_commitment(job: AuditJob, sent: bytes | str) -> Judgement | None:
    receipt = job.receipt
    if receipt.output_hash != protocol.output_hash(sent):
        return fail("output_hash_mismatch: the receipt commits to another output", hard=True)
    if receipt.input_hash != protocol.payload_hash(job.payload):
        return fail("input_hash_mismatch: the receipt commits to another request", hard=True)
    if receipt.model != job.model:
        return fail(f"model_mismatch: receipt names {receipt.model!r}", hard=True)
    return None


async def _judge_embeddings(backend: Reference, job: AuditJob, payload: EmbedPayload) -> Judgement:
    n, dims = len(payload.inputs), job.dimensions
    if dims <= 0 or len(job.vectors) != 4 * n * dims:
        return fail(f"malformed_vectors: {len(job.vectors)} bytes for {n} rows of {dims}", hard=True)
    reference = await backend.embed(payload, urgent=job.urgent)  # routine audits may wait to share a batch
    provided = np.frombuffer(job.vectors, dtype="<f4").reshape(n, dims)
    expected = np.frombuffer(reference.vectors, dtype="<f4").reshape(n, reference.dimensions)
    reported = job.receipt.usage
    return combine(
        compare_image_embeddings(provided, expected, [i.at for i in payload.images]) if payload.images
        else compare_embeddings(provided, expected),
        # finish_reason "" and no max_tokens: only inflation applies to embeddings.
        check_usage(Usage(reported.prompt_tokens, reported.completion_tokens),
                    Usage(reference.prompt_tokens, 0), "", None, False),
    )


async def _judge_reading(backend: Reference, job: AuditJob, payload: GeneratePayload) -> Judgement:
    json_form = payload.response_format == "json_object"
    try:
        text = ocr_text(job.text, json_form)
    except ValueError as exc:
        return fail(f"malformed_answer: {exc}", hard=True)
    ref_answer, _ = await _run_reference(backend, payload)
    reported = job.receipt.usage
    images = sum(len(m.images) for m in payload.messages)
    return combine(check_ocr_usage(reported.prompt_tokens, reported.completion_tokens, images, text),
                   compare_ocr(text, ocr_text(ref_answer, json_form)))


async def _run_reference(backend: Reference, payload: GeneratePayload) -> tuple[str, GenDone]:
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


async def _judge_generation(backend: Reference, job: AuditJob, payload: GeneratePayload) -> Judgement:
    text, reported, finish = job.text, job.receipt.usage, job.receipt.finish_reason
    greedy = payload.temperature < GREEDY_BELOW
    replayable = greedy or payload.seed is not None
    if replayable and job.token_ids and isinstance(backend, TokenScorer):
        scored = await _score_committed_tokens(backend, job, payload, greedy)
        if scored is not None:
            return scored if greedy or not scored.passed else Judgement(True, reason="sampled_replayed")
    # A sampled request is replayed greedily with one token: that gives the exact prompt count.
    probe_payload = payload if greedy else _one_token(payload)
    ref_text, ref = await _run_reference(backend, probe_payload)
    reported_usage = Usage(reported.prompt_tokens, reported.completion_tokens)

    if not greedy:
        most = Usage(ref.prompt_tokens, _most_tokens(text, payload.max_tokens))
        verdict = check_usage(reported_usage, most, "", None, False)
        return verdict if not verdict.passed else Judgement(True, reason="sampled_usage_only")

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


async def _score_committed_tokens(backend: TokenScorer, job: AuditJob, payload: GeneratePayload,
                                  greedy: bool) -> Judgement | None:
    """Judge output from the provider's committed tokens with one forward pass (a prefill),
    instead of generating the answer again: greedy tokens against the argmax, sampled ones by
    replaying the seeded sampler. None when the tokens do not spell the delivered text (e.g. a
    stream continued by another provider, or a provider cutting its text): then the caller
    regenerates (greedy) or checks usage only (sampled)."""
    if protocol.tokens_hash(job.token_ids, job.logprobs) != job.receipt.tokens_hash:
        return fail("tokens_hash_mismatch: the receipt commits to other tokens", hard=True)
    spelled = await backend.detokenize(job.token_ids)
    if spelled != job.text and not (payload.stop and spelled.startswith(job.text)
                                    and any(spelled[len(job.text):].startswith(s) for s in payload.stop if s)):
        return None
    reported = job.receipt.usage
    eos = 1 if job.receipt.finish_reason == "stop" and not payload.stop else 0
    if reported.completion_tokens > len(job.token_ids) + 1 or reported.completion_tokens < len(job.token_ids):
        return fail(f"usage_inflated: completion reported {reported.completion_tokens}, committed "
                    f"{len(job.token_ids)} tokens (+{eos} end)", hard=True)
    prompt = await backend.prompt_tokens(payload)
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
    logits = await backend.score(payload, scored_ids)
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
