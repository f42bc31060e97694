"""gpupool sampler v2: the one way providers sample tokens, so checkers can replay them.

Sampled generation (temperature > 0) is only verifiable if the checker can tell which
token the provider *had* to pick. A framework sampler (`torch.multinomial` and friends)
draws different numbers on a GPU than on a CPU for the same seed, so instead every
provider samples with this module and every checker replays with it:

    token = sample(logits, temperature, top_p, seed, step)       # step = token index
    replay_ok(reference_logits, temperature, top_p, seed, step, token)   # the checker's test

`sample` is Gumbel-max sampling: token = argmax over the top_p nucleus of
logit[j] + temperature * g[j], where g = `noise(seed, step, vocab)` is Gumbel noise from a
counter-based generator keyed by (seed, step). That picks token j with probability
softmax(logits / temperature)[j], exactly as inverse-CDF sampling would, and the same
(seed, step) gives the same noise on every machine; a checker computes it for any
position without replaying the others.

Why Gumbel-max and not inverse-CDF (v1): the checker's logits differ from the
provider's (other hardware, bfloat16 against float32, a KV-cache decode against one
prefill). Under inverse-CDF sampling every token's interval bound is a sum over the
whole vocabulary before it, so those differences pile up: a bfloat16 provider moved
bounds by ~1e-2 and 35 of 40 honest completions failed replay. Here each token's score
carries only its own logit's error, so `replay_ok` accepts the provider's token when its
score is within `DEFAULT_MARGIN` logits of the best, the same tie margin greedy audits use
(greedy is the temperature -> 0 limit). Pure: numpy arrays in, numbers out.
"""

from __future__ import annotations

import numpy as np

VERSION = 2
# Below this temperature sampling is indistinguishable from argmax: such requests are
# decoded (and audited) greedily, which also avoids dividing logits by ~0.
GREEDY_BELOW = 1e-5
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
# In logits (= log-prob differences), for replay and for greedy audits alike
# (comparators.DEFAULT_TIE_MARGIN): the allowed gap between the reference's best score and
# the provider's token. A bf16 provider scored by an fp32 reference shows gaps up to ~0.25
# on the test model (measured), so 0.5 leaves 2x headroom.
DEFAULT_MARGIN = 0.5


def noise(seed: int, step: int, vocab: int) -> np.ndarray:
    """Gumbel(0, 1) noise (float32) for token ids 0..vocab-1 at position `step` of a request
    with `seed`.

    Philox-4x64-10 keyed by the two words (seed, step), both masked to 64 bits; its 64-bit
    outputs split into 32-bit words, low word first; word w gives u = (w >> 8) / 2**24,
    raised to 2**-25 where that is 0 (this is numpy's
    `Generator(Philox(key=...)).random(vocab, dtype=float32)`); then g = -log(-log(u)).
    float32 keeps it cheap (~1 ms for a 128k vocabulary); its rounding is far inside the
    replay margin.
    """
    key = np.array([seed & _MASK64, step & _MASK64], dtype=np.uint64)
    u = np.random.Generator(np.random.Philox(key=key)).random(vocab, dtype=np.float32)
    u = np.maximum(u, np.float32(2.0**-25))
    return -np.log(-np.log(u))


def _require_sampling(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError("temperature must be > 0 for sampling; greedy decoding takes the argmax")


def probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature) in float64, over the last axis."""
    _require_sampling(temperature)
    x = np.asarray(logits, dtype=np.float64) / temperature
    e = np.exp(x - x.max())
    return e / e.sum()


def _by_probability(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Token ids by falling probability, equal ones by id (a stable sort, the same on every
    machine), at least up to the first token the top_p nucleus drops.

    Sorting a 128k vocabulary costs ~10 ms a token, so only the k most likely tokens (and
    any tied with the k-th) are sorted, k growing until they reach past the cut.
    """
    k = 256
    while k < probs.size:
        kth = np.partition(probs, probs.size - k)[probs.size - k]
        top = np.flatnonzero(probs >= kth)  # ascending ids: the stable sort breaks ties by id
        order = top[np.argsort(-probs[top], kind="stable")]
        ranked = probs[order]
        if np.cumsum(ranked)[-1] - ranked[-1] >= top_p:  # the mass before the last: it is dropped
            return order
        k *= 8
    return np.argsort(-probs, kind="stable")


def _kept_count(sorted_probs: np.ndarray, top_p: float) -> int:
    """How many of the most likely tokens the nucleus keeps: those with less than top_p
    mass before them, and always at least the top one."""
    mass_before = np.cumsum(sorted_probs) - sorted_probs
    return max(1, int(np.count_nonzero(mass_before < top_p)))


def nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Boolean mask [vocab] of the tokens nucleus (top-p) sampling keeps."""
    if top_p >= 1.0:
        return np.ones(probs.size, dtype=bool)  # no sort needed: a vocab-sized sort per token costs
    order = _by_probability(probs, top_p)
    kept = np.zeros(probs.size, dtype=bool)
    kept[order[:_kept_count(probs[order], top_p)]] = True
    return kept


def scores(logits: np.ndarray, temperature: float, seed: int, step: int) -> np.ndarray:
    """logit + temperature * Gumbel noise for every token, in logits (float64)."""
    _require_sampling(temperature)
    x = np.asarray(logits, dtype=np.float64).ravel()
    return x + temperature * noise(seed, step, x.size)


def sample(logits: np.ndarray, temperature: float, top_p: float, seed: int, step: int) -> int:
    """The token Gumbel-max sampling picks: the best score among the nucleus's tokens."""
    score = scores(logits, temperature, seed, step)
    if top_p >= 1.0:
        return int(np.argmax(score))
    kept = nucleus(probabilities(logits, temperature), top_p)
    return int(np.argmax(np.where(kept, score, -np.inf)))


def _mass_above(probs: np.ndarray, p: float) -> float:
    return float(probs[probs > p].sum())


def _sure_tokens(probs: np.ndarray, top_p: float, factor: float) -> np.ndarray:
    """The likeliest tokens that are in the nucleus of any provider whose probabilities are
    within `factor` of these: token j is when even with every token that could rank above
    it counted, and that mass inflated by `factor`, it stays under top_p. The likeliest
    token always is. A prefix of the checker's own nucleus, so a binary search."""
    order = _by_probability(probs, top_p)
    ranked = probs[order]
    lo, hi = 1, _kept_count(ranked, top_p)

    def sure(r: int) -> bool:
        return (_mass_above(probs, ranked[r] / factor) - ranked[r]) * factor < top_p

    while lo < hi:
        mid = (lo + hi) // 2
        if sure(mid):
            lo = mid + 1
        else:
            hi = mid
    return order[:lo]


def replay_ok(logits: np.ndarray, temperature: float, top_p: float, seed: int, step: int, token: int,
              margin: float = DEFAULT_MARGIN) -> bool:
    """Could an honest provider, sampling position `step` with `seed`, have picked `token`?

    The provider's logits may differ from these by up to margin / 2 each (so any two
    scores by up to `margin`, and probabilities by a factor f = exp(margin / 2 / T)).
    Then its nucleus holds every token that is in it whatever those errors ("sure") and
    nothing that is out whatever they are. The token passes when it could be in the
    nucleus and its score is within `margin` of the best sure token's: the provider's
    pick beat all of those on its own logits.
    """
    x = np.asarray(logits)
    if not 0 <= token < x.shape[-1]:
        return False
    score = scores(x, temperature, seed, step)
    if top_p >= 1.0:
        return bool(score[token] >= score.max() - margin)
    probs = probabilities(x, temperature)
    factor = float(np.exp(margin / 2 / temperature))
    if _mass_above(probs, probs[token] * factor) >= top_p * factor:
        return False  # out of any such provider's nucleus
    return bool(score[token] >= score[_sure_tokens(probs, top_p, factor)].max() - margin)


__all__ = ["DEFAULT_MARGIN", "GREEDY_BELOW", "VERSION", "noise", "nucleus", "probabilities",
           "replay_ok", "sample", "scores"]
