"""Comparators: does a provider's committed output match what the reference model gives?

One function per task, all pure (arrays in, `Judgement` out). The checker does the
model work — embedding the input, or *one* forward pass of the reference model over
prompt + provider output — and hands the resulting arrays here.

* Embeddings: cosine similarity of each provider vector with the reference vector.
  Honest providers differ only by floating-point noise (fp16/bf16 kernels, batch
  composition), so the cosine is ~0.999+; another model gives vectors in an unrelated
  space (cosine near 0). `calibrate_threshold` turns honest-run samples into a
  threshold with a chosen false-positive rate.
* Greedy generation: the reference logits at each position of the provider's output
  (teacher forcing) must have the provider's token as argmax, up to a small logit tie
  margin that absorbs numeric noise between hardware. Reported log-probs, if any, must
  agree within a tolerance. Checking is a prefill, much cheaper than regenerating.
* Sampled generation with a seed: exact replay (`compare_sampled_replay`). Providers
  sample with `verify.token_sampler`, whose uniform number for each token is a hash of seed
  and position, so the reference logits must put every provider token in the interval
  that number falls in. Without a seed, a plausibility check (`check_sampled_plausibility`):
  the reference's mean log-prob of the chosen tokens, standardised against what honest
  sampling from the reference would give (a one-sided z-test).
* Usage: reported token counts against the checker's recount, and the finish reason
  against what the output shows (truncation, inflation).

Hard failures (`Judgement.hard`) are what no honest provider produces: wrong shapes,
non-finite numbers, another model's outputs, gross inflation. They suspend at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from gpupool.verify import token_sampler
from gpupool.verify.judgement import PASS, Judgement, fail

# ------------------------------------------------------------------ embeddings

# Measured (tests/unit/test_verify_comparators.py, docs/verification.md): honest
# all-MiniLM-L6-v2 run in bfloat16 vs the float32 reference has min cosine ≈ 0.9999,
# fp32 reruns with other batching agree to ~1e-6; a random-weight MiniLM-shaped model
# scores at most ~0.1. 0.95 leaves a wide margin for honest low-precision kernels and
# other hardware, and still fails any model whose vectors point elsewhere; a gateway
# with its own honest samples can tighten it with `calibrate_threshold`.
DEFAULT_EMBEDDING_THRESHOLD = 0.95
# Below this the vectors are from another model or noise, never numeric drift.
HARD_EMBEDDING_THRESHOLD = 0.5


def cosine_similarities(provided: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [n, d] arrays, computed in float64.

    float64 so the comparison itself adds no noise at the 1e-6 level honest runs reach.
    A zero vector has similarity 0 with anything (it carries no direction).
    """
    p = np.asarray(provided, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    dot = np.einsum("ij,ij->i", p, r)
    norms = np.linalg.norm(p, axis=1) * np.linalg.norm(r, axis=1)
    out = np.zeros_like(dot)
    nz = norms > 0
    out[nz] = dot[nz] / norms[nz]
    return out


def compare_embeddings(
    provided: np.ndarray,
    reference: np.ndarray,
    threshold: float = DEFAULT_EMBEDDING_THRESHOLD,
    hard_threshold: float = HARD_EMBEDDING_THRESHOLD,
) -> Judgement:
    """Judgement for one embeddings response (one row per input).

    score = the lowest row cosine; position = that row. Fails if any row is below
    `threshold`, hard if below `hard_threshold` (another model) or if the shape or the
    numbers are wrong (garbage).
    """
    p = np.atleast_2d(np.asarray(provided))
    r = np.atleast_2d(np.asarray(reference))
    if p.shape != r.shape:
        return fail(f"shape_mismatch: provided {p.shape}, reference {r.shape}", hard=True)
    if p.size == 0:
        return PASS
    if not np.all(np.isfinite(p)):
        return fail("non_finite_values", hard=True)
    sims = cosine_similarities(p, r)
    worst = int(np.argmin(sims))
    score = float(sims[worst])
    if score >= threshold:
        return Judgement(passed=True, score=score, position=None)
    hard = score < hard_threshold
    return fail("embedding_mismatch", hard=hard, score=score, position=worst)


def calibrate_threshold(
    honest_similarities: Sequence[float] | np.ndarray,
    target_fpr: float = 1e-4,
) -> float:
    """Threshold whose false-positive rate on honest outputs is about `target_fpr`.

    Two estimates, and the *lower* (more lenient) is returned, because a false positive
    costs an honest provider while a cheater's cosine is far below either:

    1. the empirical `target_fpr` quantile of the samples (reliable only when
       n * target_fpr >= 1; otherwise it is just the minimum), and
    2. a log-normal fit of the distances 1 - s, extrapolated to `target_fpr`, which
       reaches rates far below 1/n (honest distances span orders of magnitude, so their
       log is roughly normal).
    """
    s = np.asarray(honest_similarities, dtype=np.float64).ravel()
    if s.size < 2:
        raise ValueError("need at least two honest similarity samples")
    if not 0.0 < target_fpr < 0.5:
        raise ValueError("target_fpr must be in (0, 0.5)")
    empirical = float(np.quantile(s, target_fpr, method="lower"))
    # Clip distances away from 0 so identical reruns (distance 0) do not give log(0).
    d = np.clip(1.0 - s, 1e-12, 2.0)
    logs = np.log(d)
    mu, sigma = float(logs.mean()), float(logs.std(ddof=1))
    z = NormalDist().inv_cdf(1.0 - target_fpr)
    parametric = 1.0 - math.exp(mu + z * max(sigma, 1e-3))
    return min(empirical, parametric)


# ------------------------------------------------------------------ generation

# The greedy tie margin is the sampler's replay margin (why 0.5: token_sampler.DEFAULT_MARGIN).
DEFAULT_TIE_MARGIN = token_sampler.DEFAULT_MARGIN
# Reported log-probs vs the reference's, in nats, per token.
DEFAULT_LOGPROB_TOLERANCE = 0.5
# A mismatch on this fraction of positions or more is another model, not noise.
HARD_MISMATCH_FRACTION = 0.2


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _check_logits(tokens: np.ndarray, logits: np.ndarray) -> Judgement | None:
    """Shape/validity checks shared by the generation comparators."""
    if logits.ndim != 2 or logits.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"reference logits must be [positions={tokens.shape[0]}, vocab], got {logits.shape}")
    if not np.all(np.isfinite(logits)):
        raise ValueError("reference logits are not finite (reference model problem)")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= logits.shape[1]):
        bad = int(np.flatnonzero((tokens < 0) | (tokens >= logits.shape[1]))[0])
        return fail("token_out_of_vocabulary", hard=True, position=bad)
    return None


NEAR_TIE = "greedy_near_tie"


@dataclass(frozen=True)
class GreedyReport:
    """Per-position detail behind a greedy verdict (for evidence and debugging)."""

    verdict: Judgement
    gaps: np.ndarray            # reference max logit - logit of provider token, per position
    mismatches: np.ndarray      # positions where gap > tie margin
    logprob_diffs: np.ndarray | None  # |reported - reference| per position, if reported


def compare_greedy_report(
    output_tokens: Sequence[int] | np.ndarray,
    reference_logits: np.ndarray,
    reported_logprobs: Sequence[float] | np.ndarray | None = None,
    tie_margin: float = DEFAULT_TIE_MARGIN,
    logprob_tolerance: float = DEFAULT_LOGPROB_TOLERANCE,
    hard_fraction: float = HARD_MISMATCH_FRACTION,
) -> GreedyReport:
    """`compare_greedy` with the per-position arrays."""
    tokens = np.asarray(output_tokens, dtype=np.int64).ravel()
    logits = np.asarray(reference_logits)
    bad = _check_logits(tokens, logits)
    empty = np.zeros(0)
    if bad is not None:
        return GreedyReport(bad, empty, empty.astype(np.int64), None)
    if tokens.size == 0:
        return GreedyReport(PASS, empty, empty.astype(np.int64), None)
    logits64 = logits.astype(np.float64)
    chosen = logits64[np.arange(tokens.size), tokens]
    gaps = logits64.max(axis=1) - chosen
    mismatches = np.flatnonzero(gaps > tie_margin)
    frac_ok = 1.0 - mismatches.size / tokens.size
    diffs: np.ndarray | None = None
    if mismatches.size:
        first = int(mismatches[0])
        hard = mismatches.size / tokens.size >= hard_fraction
        verdict = fail("token_mismatch", hard=hard, score=frac_ok, position=first)
        return GreedyReport(verdict, gaps, mismatches, None)
    if reported_logprobs is not None:
        bad, diffs = _check_reported_logprobs(tokens, logits64, reported_logprobs, logprob_tolerance)
        if bad is not None:
            return GreedyReport(bad, gaps, mismatches, diffs)
    # Passed, but some token was not the reference's own first choice (a tie within the margin):
    # right, yet not the only right answer, so the gateway must not make it a canary.
    reason = NEAR_TIE if gaps.size and float(gaps.max()) > 0.0 else ""
    return GreedyReport(Judgement(passed=True, score=1.0, reason=reason), gaps, mismatches, diffs)


def _check_reported_logprobs(tokens: np.ndarray, logits64: np.ndarray, reported: Sequence[float] | np.ndarray,
                             tolerance: float) -> tuple[Judgement | None, np.ndarray | None]:
    """The log-probabilities a provider committed, against the reference's for the same
    tokens (temperature-free log-softmax). Returns (failure or None, |differences|)."""
    rep = np.asarray(reported, dtype=np.float64).ravel()
    if rep.shape != tokens.shape or not np.all(np.isfinite(rep)):
        return fail("logprobs_malformed", hard=True), None
    ref = log_softmax(logits64)[np.arange(tokens.size), tokens]
    diffs = np.abs(rep - ref)
    off = np.flatnonzero(diffs > tolerance)
    if not off.size:
        return None, diffs
    # The tokens themselves check out, so this is misreporting or a different numeric
    # path, not a different model: soft, unless most positions are off.
    hard = off.size / tokens.size >= 0.5
    return fail("logprob_mismatch", hard=hard, score=1.0 - off.size / tokens.size, position=int(off[0])), diffs


def compare_greedy(
    output_tokens: Sequence[int] | np.ndarray,
    reference_logits: np.ndarray,
    reported_logprobs: Sequence[float] | np.ndarray | None = None,
    tie_margin: float = DEFAULT_TIE_MARGIN,
    logprob_tolerance: float = DEFAULT_LOGPROB_TOLERANCE,
    hard_fraction: float = HARD_MISMATCH_FRACTION,
) -> Judgement:
    """Judgement for a greedy (temperature 0) completion.

    `reference_logits[i]` are the reference model's logits for the position that
    produced `output_tokens[i]` — i.e. rows prompt_len-1 .. prompt_len+len(output)-2 of
    one forward pass over prompt + output. Each provider token must be within
    `tie_margin` of the reference maximum. score = fraction of matching positions;
    position = first mismatch. Mismatch on >= `hard_fraction` of positions is hard.
    """
    return compare_greedy_report(output_tokens, reference_logits, reported_logprobs,
                                 tie_margin, logprob_tolerance, hard_fraction).verdict


# Honest sampling gives z ≈ N(0, 1); -4 is a 3e-5 one-sided false-positive rate under
# that approximation.
DEFAULT_PLAUSIBILITY_Z = -4.0


def check_sampled_plausibility(
    output_tokens: Sequence[int] | np.ndarray,
    reference_logits: np.ndarray,
    temperature: float = 1.0,
    min_z: float = DEFAULT_PLAUSIBILITY_Z,
) -> Judgement:
    """Is a *sampled* completion plausible under the reference model?

    Statistic: the sum over positions of log p(chosen) minus its expectation under
    honest sampling (-entropy), divided by its standard deviation (sqrt of the summed
    per-position variances of log p). Honest sampling from the reference at
    `temperature` gives z ≈ N(0, 1); tokens from another model have much lower
    log-probs, so z is very negative. One-sided: lower temperature or top-p/top-k
    honest sampling only raises z, so they pass. score = exp(mean log-prob) (the
    per-token geometric-mean probability), for reporting.
    """
    tokens = np.asarray(output_tokens, dtype=np.int64).ravel()
    logits = np.asarray(reference_logits)
    bad = _check_logits(tokens, logits)
    if bad is not None:
        return bad
    if tokens.size == 0:
        return PASS
    if temperature <= 0:
        raise ValueError("temperature must be > 0; use compare_greedy for greedy decoding")
    logp = log_softmax(logits.astype(np.float64) / temperature)
    p = np.exp(logp)
    chosen = logp[np.arange(tokens.size), tokens]
    expected = (p * logp).sum(axis=1)                      # -entropy per position
    var = (p * logp**2).sum(axis=1) - expected**2
    sd = math.sqrt(max(float(var.sum()), 1e-12))
    z = float((chosen.sum() - expected.sum()) / sd)
    score = float(math.exp(chosen.mean()))
    if z >= min_z:
        return Judgement(passed=True, score=score)
    # Far below: another model or noise; near the threshold: could be bad luck.
    return fail(f"implausible_sample: z={z:.1f}", hard=z < 4 * min_z, score=score)


def compare_sampled_replay(
    output_tokens: Sequence[int] | np.ndarray,
    reference_logits: np.ndarray,
    temperature: float,
    top_p: float,
    seed: int,
    margin: float = DEFAULT_TIE_MARGIN,
    hard_fraction: float = HARD_MISMATCH_FRACTION,
    reported_logprobs: Sequence[float] | np.ndarray | None = None,
    logprob_tolerance: float = DEFAULT_LOGPROB_TOLERANCE,
) -> Judgement:
    """Judgement for a seeded sampled completion, replayed with `verify.token_sampler`.

    `reference_logits` as for `compare_greedy`. Position i must pass
    `token_sampler.replay_ok` for (seed, i). score = fraction of positions that replay; position =
    the first that does not. Failing >= `hard_fraction` of the positions is another model
    (or sampler, or seed): hard. An honest position fails only when the provider's logits
    are off by more than `margin`, so even a single miss fails.
    """
    tokens = np.asarray(output_tokens, dtype=np.int64).ravel()
    logits = np.asarray(reference_logits)
    bad = _check_logits(tokens, logits)
    if bad is not None:
        return bad
    misses = [i for i, token in enumerate(tokens.tolist())
              if not token_sampler.replay_ok(logits[i], temperature, top_p, seed, i, token, margin)]
    if not misses:
        if reported_logprobs is not None and tokens.size:
            bad, _ = _check_reported_logprobs(tokens, logits.astype(np.float64), reported_logprobs,
                                              logprob_tolerance)
            if bad is not None:
                return bad
        return PASS
    frac_ok = 1.0 - len(misses) / tokens.size
    return fail(f"sampler_mismatch at token {misses[0]}: {len(misses)} of {tokens.size} tokens do not replay",
                hard=len(misses) / tokens.size >= hard_fraction, score=frac_ok, position=misses[0])


def check_end(
    end_logits: np.ndarray,
    end_ids: Sequence[int],
    position: int,
    temperature: float,
    top_p: float = 1.0,
    seed: int | None = None,
    tie_margin: float = DEFAULT_TIE_MARGIN,
) -> Judgement:
    """Did the model really end here? For an answer reported as finished by the model
    ("stop" with no stop string): `end_logits` is the reference's logit row right after
    the last committed token, at index `position` of the completion.

    Greedy: an end-of-sequence token must be the argmax within the tie margin. Sampled:
    one must replay from the seeded noise for that position. Without this, a provider can
    cut an answer short, call it a natural stop and bill honestly for what it sent: every
    token it did send still checks out.
    """
    row = np.asarray(end_logits, dtype=np.float64).ravel()
    ids = [i for i in end_ids if 0 <= i < row.size]
    if not ids:
        return PASS  # the reference names no end token: nothing to check against
    if temperature < token_sampler.GREEDY_BELOW:
        ok = float(row.max() - row[ids].max()) <= tie_margin
    else:
        if seed is None:
            return PASS
        ok = any(token_sampler.replay_ok(row, temperature, top_p, seed, position, i, tie_margin) for i in ids)
    if ok:
        return PASS
    return fail(f"early_stop: reported a natural end after {position} tokens where the reference does not end",
                position=position)


# ------------------------------------------------------------------ usage

# Over-reporting tokens by more than this fraction (and at least `HARD_INFLATION_MIN`
# tokens) is deliberate billing fraud, not an off-by-one in a chat template.
HARD_INFLATION_FRACTION = 0.10
HARD_INFLATION_MIN = 8


@dataclass(frozen=True)
class Usage:
    """Token counts for one response (as reported, or as recounted by the checker)."""

    prompt_tokens: int
    completion_tokens: int


def check_usage(
    reported: Usage,
    recount: Usage,
    finish_reason: str,
    max_tokens: int | None,
    stopped: bool,
    tolerance: int = 0,
) -> Judgement:
    """Reported usage and finish reason against the checker's recount.

    `stopped`: the checker saw the output end at an end-of-sequence token or a stop
    sequence. Rules:

    * reported > recount + tolerance (prompt or completion): usage inflation;
      hard when by > 10% and >= 8 tokens. Under-reporting only costs the provider: ok.
    * finish "length" with fewer than max_tokens completion tokens (recounted): the
      output was cut short — truncated.
    * finish "stop" without a stop token/sequence at the end and with fewer than
      max_tokens tokens: also truncated (a cut answer dressed up as complete).
    """
    for name, rep, real in (
        ("prompt", reported.prompt_tokens, recount.prompt_tokens),
        ("completion", reported.completion_tokens, recount.completion_tokens),
    ):
        if rep > real + tolerance:
            excess = rep - real
            hard = excess >= HARD_INFLATION_MIN and excess > HARD_INFLATION_FRACTION * max(real, 1)
            return fail(f"usage_inflated: {name} reported {rep}, recounted {real}",
                        hard=hard, score=real / rep)
    n = recount.completion_tokens
    if finish_reason == "length":
        if max_tokens is not None and n < max_tokens and not stopped:
            return fail(f"truncated: finish=length after {n} of max_tokens={max_tokens}",
                        score=n / max_tokens)
        if max_tokens is not None and n < max_tokens and stopped:
            return fail("finish_reason_mismatch: stopped but reported length",
                        score=n / max_tokens)
    elif finish_reason == "stop":
        if not stopped and (max_tokens is None or n < max_tokens):
            score = n / max_tokens if max_tokens else 0.0
            return fail(f"truncated: finish=stop without a stop token after {n} tokens",
                        score=score)
    return PASS
