"""gpupool sampler v1: counter-based draws, inverse-CDF sampling in vocabulary order,
and the checker's replay test with its numeric tolerance."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from gpupool.verify import check_end, compare_sampled_replay
from gpupool.verify.sampler import (
    DEFAULT_TOLERANCE,
    draw,
    interval,
    nucleus,
    probabilities,
    replay_ok,
    sample,
)

TOL = DEFAULT_TOLERANCE


def random_logits(seed: int, vocab: int = 50, scale: float = 2.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(vocab) * scale


def test_draw_is_the_documented_hash_and_deterministic() -> None:
    digest = hashlib.sha256((7).to_bytes(8, "big") + (3).to_bytes(8, "big")).digest()
    assert draw(7, 3) == int.from_bytes(digest[:8], "big") / 2**64
    assert draw(7, 3) == draw(7, 3) != draw(7, 4) != draw(8, 3)
    # Seeds are masked to 64 bits: -1 and 2**64 - 1 are the same seed.
    assert draw(-1, 0) == draw(2**64 - 1, 0) and draw(2**64 + 5, 1) == draw(5, 1)


def test_draws_are_uniform() -> None:
    u = np.array([draw(123, i) for i in range(20_000)])
    assert u.min() >= 0.0 and u.max() < 1.0
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    # Chi-square with 9 degrees of freedom: 27.9 is the 0.1% critical value.
    assert ((counts - 2000) ** 2 / 2000).sum() < 27.9


def chi_square(tokens: list[int], probs: np.ndarray) -> tuple[float, int]:
    """Pearson's statistic of the sampled tokens against probs (bins with expected < 5 pooled)."""
    counts = np.bincount(tokens, minlength=probs.size).astype(float)
    expected = probs * len(tokens)
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    return float(((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()), int(keep.sum()) - 1


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_sample_follows_the_softmax(temperature: float) -> None:
    logits = random_logits(1, vocab=12)
    probs = probabilities(logits, temperature)
    tokens = [sample(logits, temperature, 1.0, draw(99, i)) for i in range(20_000)]
    stat, df = chi_square(tokens, probs)
    # The 0.1% critical value of chi-square is below 3 * df + 10 for these df (<= 12).
    assert stat < 3 * df + 10, (stat, df)


def test_top_p_keeps_the_smallest_set_reaching_it() -> None:
    probs = np.array([0.15, 0.5, 0.05, 0.3])
    logits = np.log(probs)
    assert set(np.flatnonzero(nucleus(probabilities(logits, 1.0), 0.7))) == {1, 3}
    assert set(np.flatnonzero(nucleus(probabilities(logits, 1.0), 0.85))) == {0, 1, 3}
    assert set(np.flatnonzero(nucleus(probabilities(logits, 1.0), 0.01))) == {1}  # always the top one
    assert nucleus(probabilities(logits, 1.0), 1.0).all()
    tokens = [sample(logits, 1.0, 0.7, draw(5, i)) for i in range(10_000)]
    assert set(tokens) == {1, 3}
    renormalised = np.array([0.0, 0.5, 0.0, 0.3]) / 0.8
    stat, df = chi_square(tokens, renormalised)
    assert df == 1 and stat < 10.8  # 0.1% critical value, 1 df


def test_intervals_are_laid_out_in_vocabulary_order() -> None:
    logits = np.log(np.array([0.1, 0.6, 0.3]))
    # [0, 0.1) -> 0, [0.1, 0.7) -> 1, [0.7, 1) -> 2: by token id, not by probability.
    assert [sample(logits, 1.0, 1.0, u) for u in (0.05, 0.15, 0.65, 0.75, 0.999)] == [0, 1, 1, 2, 2]
    a, b = interval(probabilities(logits, 1.0), np.ones(3, dtype=bool), 1)
    assert a == pytest.approx(0.1) and b == pytest.approx(0.7)
    # With top_p the dropped token owns no interval and the kept ones are renormalised.
    assert [sample(logits, 1.0, 0.8, u) for u in (0.05, 0.6, 0.7)] == [1, 1, 2]
    with pytest.raises(ValueError):
        sample(logits, 0.0, 1.0, 0.5)


def ambiguous_cut(probs: np.ndarray, top_p: float) -> bool:
    """Is the nucleus cut within TOL of changing (a provider may have kept a token more or
    less, or the near-equal border token's neighbour)? Then replay also accepts those nuclei."""
    if top_p >= 1.0:
        return False
    ranked = np.sort(probs)[::-1]
    before = np.cumsum(ranked) - ranked
    n = max(1, int((before < top_p).sum()))
    return bool((n < ranked.size and (before[n] - top_p <= TOL or ranked[n - 1] - ranked[n] <= TOL))
                or (n > 1 and top_p - before[n - 1] <= TOL))


@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.5])
def test_replay_accepts_the_honest_token_and_rejects_any_other(top_p: float) -> None:
    loose = 0  # positions where some other token passes too
    for step in range(300):
        logits = random_logits(step)
        u = draw(42, step)
        token = sample(logits, 0.8, top_p, u)
        assert replay_ok(logits, 0.8, top_p, u, token)
        probs = probabilities(logits, 0.8)
        a, b = interval(probs, nucleus(probs, top_p), token)
        if a + 2 * TOL <= u < b - 2 * TOL:  # not at an interval edge
            others = [t for t in range(logits.size) if t != token and replay_ok(logits, 0.8, top_p, u, t)]
            # Only an ambiguous nucleus cut lets another token through.
            assert others == [] or ambiguous_cut(probs, top_p), (step, token, others)
            loose += bool(others)
    # And rarely: a wrong token passes a position about 1% of the time at most.
    assert loose <= 0.03 * 300
    assert not replay_ok(random_logits(0), 0.8, 1.0, 0.5, -1)
    assert not replay_ok(random_logits(0), 0.8, 1.0, 0.5, 50)


def test_tolerance_absorbs_numeric_noise_and_no_more() -> None:
    # An honest provider on other hardware: its logits differ from the reference's by ~1e-5.
    rng = np.random.default_rng(3)
    for step in range(500):
        reference = random_logits(1000 + step, vocab=200)
        provider = reference + rng.standard_normal(reference.size) * 1e-5
        u = draw(7, step)
        assert replay_ok(reference, 0.9, 0.95, u, sample(provider, 0.9, 0.95, u))
    # u just outside the token's interval: inside the tolerance passes, beyond it fails.
    logits = np.log(np.array([0.25, 0.25, 0.5]))
    assert replay_ok(logits, 1.0, 1.0, 0.25 + TOL / 2, 0)  # bound 0.25, token 0 owns [0, 0.25)
    assert not replay_ok(logits, 1.0, 1.0, 0.25 + 2 * TOL, 0)
    assert replay_ok(logits, 1.0, 1.0, 0.25 + TOL / 2, 0, tol=TOL)
    assert not replay_ok(logits, 1.0, 1.0, 0.25 + TOL / 2, 0, tol=TOL / 4)


def test_tolerance_at_the_nucleus_cut() -> None:
    # Mass before token 2 is 0.6 + 0.2 = 0.8, a hair above top_p = 0.7999: the checker keeps
    # {0, 1}; a provider whose sums came out a hair lower kept token 2 as well.
    probs = np.array([0.6, 0.2, 0.15, 0.05])
    logits = np.log(probs)
    top_p = 0.8 - TOL / 10
    assert set(np.flatnonzero(nucleus(probabilities(logits, 1.0), top_p))) == {0, 1}
    wider = np.ones(4, dtype=bool)
    wider[3] = False
    a, b = interval(probabilities(logits, 1.0), wider, 2)
    u = (a + b) / 2
    assert replay_ok(logits, 1.0, top_p, u, 2)
    # Far from any cut, a token outside the nucleus never passes, even where it would at top_p = 1.
    assert not replay_ok(logits, 1.0, 0.5, u, 2)
    assert replay_ok(logits, 1.0, 1.0, 0.9, 2) and not replay_ok(logits, 1.0, 0.7, 0.9, 2)


def test_compare_sampled_replay() -> None:
    rng = np.random.default_rng(11)
    logits = rng.standard_normal((40, 30)) * 2
    honest = [sample(row, 0.8, 0.9, draw(5, i)) for i, row in enumerate(logits)]
    assert compare_sampled_replay(honest, logits, 0.8, 0.9, seed=5).passed
    # The same model with another seed (or sampler): most positions miss, hard.
    other = [sample(row, 0.8, 0.9, draw(6, i)) for i, row in enumerate(logits)]
    verdict = compare_sampled_replay(other, logits, 0.8, 0.9, seed=5)
    assert not verdict.passed and verdict.hard and verdict.reason.startswith("sampler_mismatch")
    # One token changed: soft, at that position.
    bad = list(honest)
    probs = probabilities(logits[17], 0.8)
    bad[17] = int(np.argsort(probs)[0])  # the least likely token, outside the nucleus
    verdict = compare_sampled_replay(bad, logits, 0.8, 0.9, seed=5)
    assert not verdict.passed and not verdict.hard and verdict.position == 17
    assert verdict.reason.startswith("sampler_mismatch at token 17")
    assert verdict.score == pytest.approx(39 / 40)
    out_of_vocabulary = compare_sampled_replay([*honest[:-1], 30], logits, 0.8, 0.9, seed=5)
    assert not out_of_vocabulary.passed and out_of_vocabulary.hard


@pytest.mark.parametrize("scale", [0.3, 3.0, 8.0])
def test_nucleus_of_a_large_vocabulary_matches_a_full_stable_sort(scale: float) -> None:
    """The partial sort (only the likeliest tokens) keeps exactly what a full sort keeps,
    ties at the cut included."""
    rng = np.random.default_rng(int(scale * 10))
    for trial in range(20):
        logits = rng.standard_normal(20_000) * scale
        logits[rng.choice(20_000, 500)] = logits.max() - 1.0  # many exact ties
        probs = probabilities(logits, 0.9)
        for top_p in (0.3, 0.9, 0.99):
            order = np.argsort(-probs, kind="stable")
            before = np.cumsum(probs[order]) - probs[order]
            expected = np.zeros(probs.size, dtype=bool)
            expected[order[:max(1, int((before < top_p).sum()))]] = True
            assert np.array_equal(nucleus(probs, top_p), expected), (scale, trial, top_p)


def test_check_end_greedy_and_sampled() -> None:
    row = np.array([0.0, 5.0, 1.0, 4.8])  # token 1 is the argmax; 3 is the end token
    assert check_end(row, [3], 7, temperature=0.0).passed  # within the 0.5 tie margin
    assert not check_end(row, [2], 7, temperature=0.0).passed
    assert check_end(row, [], 7, temperature=0.0).passed  # no end token known: nothing to check
    # Sampled: the end token passes exactly when the seeded draw for that position picks it.
    seed, pos = 1234, 7
    picked = sample(row, 1.0, 1.0, draw(seed, pos))
    assert check_end(row, [picked], pos, temperature=1.0, seed=seed).passed
    other = next(i for i in range(4) if i != picked)
    assert not check_end(row, [other], pos, temperature=1.0, seed=seed).passed


def test_sampled_replay_also_checks_the_reported_logprobs() -> None:
    seed = 99
    logits = np.stack([random_logits(i) for i in range(12)])
    tokens = [sample(logits[i], 0.9, 1.0, draw(seed, i)) for i in range(12)]
    shifted = logits - logits.max(axis=1, keepdims=True)
    honest = [float(shifted[i, t] - np.log(np.exp(shifted[i]).sum())) for i, t in enumerate(tokens)]
    assert compare_sampled_replay(tokens, logits, 0.9, 1.0, seed, reported_logprobs=honest).passed
    inflated = [lp + 2.0 for lp in honest]  # claims each token was far more likely than it was
    verdict = compare_sampled_replay(tokens, logits, 0.9, 1.0, seed, reported_logprobs=inflated)
    assert not verdict.passed and verdict.reason == "logprob_mismatch" and verdict.hard
