"""gpupool sampler v1: the one way providers sample tokens, so checkers can replay them.

Sampled generation (temperature > 0) is only verifiable if the checker can tell which
token the provider *had* to pick. A framework sampler (`torch.multinomial` and friends)
draws different numbers on a GPU than on a CPU for the same seed, so instead every
provider samples with this module and every checker replays with it:

    u = draw(seed, step)                        # uniform in [0, 1), step = token index
    token = sample(logits, temperature, top_p, u)
    replay_ok(reference_logits, temperature, top_p, u, token)   # the checker's test

`draw` is counter-based (a hash of seed and step), so a checker recomputes the number
for any position without replaying the others, and the same (seed, step) gives the same
number on every machine. `sample` is inverse-CDF sampling over the tokens in vocabulary
order; `replay_ok` accepts a token when u falls in its interval, widened by a small
tolerance for the floating-point differences between the provider's hardware and the
checker's. Pure: numpy arrays in, numbers out.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator

import numpy as np

VERSION = 1
# Below this temperature sampling is indistinguishable from argmax: such requests are
# decoded (and audited) greedily, which also avoids dividing logits by ~0.
GREEDY_BELOW = 1e-5
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
# In units of probability (= of u). Provider and checker compute the same logits along
# different numeric paths (other hardware and kernels, a KV-cache decode against the
# checker's one prefill). Measured on tiny-llama in float32, decode vs prefill: interval
# bounds move by at most 1.1e-6, and 0 of 300 honest completions (9,600 tokens) failed
# replay. 1e-3 leaves a wide margin for that, while a wrong token still has to land in a
# sliver it almost never hits. It does NOT absorb bfloat16 against float32 (bounds move
# by ~1e-2; 35 of 40 honest bf16 completions missed at least one token): provider and
# reference must compute at the same precision.
DEFAULT_TOLERANCE = 1e-3


def draw(seed: int, step: int) -> float:
    """The uniform number in [0, 1) for token `step` (0-based) of a request with `seed`.

    The first 64 bits of SHA-256(seed as 8 bytes big-endian, masked to 64 bits; step as
    8 bytes big-endian), divided by 2**64.
    """
    digest = hashlib.sha256(struct.pack(">QQ", seed & _MASK64, step & _MASK64)).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(logits / temperature) in float64, over the last axis."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 for sampling; greedy decoding takes the argmax")
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


def _bounds(probs: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Upper interval bound of every token: the kept mass up to and including it, in
    vocabulary-id order, normalised by the kept mass. Token t owns [bounds[t-1], bounds[t])."""
    weights = np.where(kept, probs, 0.0)
    return np.cumsum(weights) / weights.sum()


def sample(logits: np.ndarray, temperature: float, top_p: float, u: float) -> int:
    """The token whose interval contains `u` (inverse-CDF sampling).

    Intervals are laid out in vocabulary-id order, not by probability: a tiny numeric
    difference between provider and checker then moves interval bounds by that tiny
    amount, where re-sorting could swap two near-equal tokens and move whole intervals.
    """
    probs = probabilities(logits, temperature)
    kept = nucleus(probs, top_p)
    bounds = _bounds(probs, kept)
    token = int(np.searchsorted(bounds, u, side="right"))
    # Rounding can leave the last bound a hair below 1: u beyond it is the last kept token.
    return token if token < probs.size else int(np.flatnonzero(kept)[-1])


def interval(probs: np.ndarray, kept: np.ndarray, token: int) -> tuple[float, float]:
    """[a, b): the range of u for which `sample` picks `token` (empty when it is not kept)."""
    bounds = _bounds(probs, kept)
    a = float(bounds[token - 1]) if token > 0 else 0.0
    return a, float(bounds[token])


def _candidate_nuclei(probs: np.ndarray, top_p: float, tol: float) -> Iterator[np.ndarray]:
    """The checker's nucleus, then the ones a provider may have computed instead when the
    cut is within `tol` of a boundary: one token more, one fewer, or the border token
    swapped with the next (near-equal probabilities sort either way)."""
    if top_p >= 1.0:
        yield np.ones(probs.size, dtype=bool)
        return
    order = _by_probability(probs, top_p)
    ranked = probs[order]
    n = _kept_count(ranked, top_p)
    sizes = [n]
    mass_before = np.cumsum(ranked) - ranked
    if n < ranked.size and mass_before[n] - top_p <= tol:
        sizes.append(n + 1)
    if n > 1 and top_p - mass_before[n - 1] <= tol:
        sizes.append(n - 1)
    for size in sizes:
        kept = np.zeros(probs.size, dtype=bool)
        kept[order[:size]] = True
        yield kept
    if n < ranked.size and ranked[n - 1] - ranked[n] <= tol:
        swapped = np.zeros(probs.size, dtype=bool)
        swapped[order[:n - 1]] = True
        swapped[order[n]] = True
        yield swapped


def replay_ok(logits: np.ndarray, temperature: float, top_p: float, u: float, token: int,
              tol: float = DEFAULT_TOLERANCE) -> bool:
    """Could an honest provider, sampling with `u`, have picked `token` from these logits?

    True when the token is in the nucleus (or in one a provider may have computed, the
    cut being within `tol`) and u lies in its interval widened by `tol` on each side.
    """
    if not 0 <= token < np.asarray(logits).shape[-1]:
        return False
    probs = probabilities(logits, temperature)
    for kept in _candidate_nuclei(probs, top_p, tol):
        if kept[token]:
            a, b = interval(probs, kept, token)
            if a - tol <= u < b + tol:
                return True
    return False


__all__ = ["DEFAULT_TOLERANCE", "GREEDY_BELOW", "VERSION", "draw", "interval", "nucleus", "probabilities",
           "replay_ok", "sample"]
