"""gpupool sampler v2: counter-based Gumbel noise, Gumbel-max sampling over the top_p
nucleus, and the checker's replay test with its logit margin."""

from __future__ import annotations

import numpy as np
import pytest

from gpupool.verify import check_end, compare_sampled_replay
from gpupool.verify.token_sampler import (
    DEFAULT_MARGIN,
    noise,
    nucleus,
    probabilities,
    replay_ok,
    sample,
    scores,
)

PINNED_BITS = [8893702929424106994, 13357943582879616415]  # Philox-4x64-10, key (7, 3)


def random_logits(seed: int, vocab: int = 50, scale: float = 2.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(vocab) * scale


def test_noise_is_the_documented_philox_stream_and_deterministic() -> None:
    # Pinned values: a provider and a checker on other machines (or numpy versions) must
    # compute the same noise, so a change in the generator has to fail here.
    key = np.array([7, 3], dtype=np.uint64)
    bits = np.random.Philox(key=key).random_raw(4)
    words = bits.astype("<u8").view("<u4")  # low word first
    u = np.maximum((words >> 8).astype(np.float32) * np.float32(2.0**-24), np.float32(2.0**-25))
    assert np.array_equal(noise(7, 3, 8), -np.log(-np.log(u)))
    assert [int(b) for b in bits[:2]] == PINNED_BITS
    assert np.array_equal(noise(7, 3, 50), noise(7, 3, 50))
    assert not np.array_equal(noise(7, 3, 50), noise(7, 4, 50))
    assert not np.array_equal(noise(7, 3, 50), noise(8, 3, 50))
    # Neighbouring steps are independent streams, not the same stream shifted.
    assert len(set(noise(7, 3, 50)) & set(noise(7, 4, 50))) == 0
    # A longer vocabulary extends the same stream: the first ids get the same noise.
    assert np.array_equal(noise(7, 3, 100)[:50], noise(7, 3, 50))
    # Seeds are masked to 64 bits: -1 and 2**64 - 1 are the same seed.
    assert np.array_equal(noise(-1, 0, 8), noise(2**64 - 1, 0, 8))


def test_noise_is_gumbel() -> None:
    g = noise(123, 0, 200_000)
    # Gumbel(0, 1): mean = Euler's gamma, variance = pi^2 / 6.
    assert abs(g.mean() - 0.5772) < 0.01 and abs(g.var() - np.pi**2 / 6) < 0.03
    u = np.exp(-np.exp(-g))  # back to uniform
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    # Chi-square with 9 degrees of freedom: 27.9 is the 0.1% critical value.
    assert ((counts - 20_000) ** 2 / 20_000).sum() < 27.9


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
    tokens = [sample(logits, temperature, 1.0, 99, i) for i in range(20_000)]
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
    tokens = [sample(logits, 1.0, 0.7, 5, i) for i in range(10_000)]
    assert set(tokens) == {1, 3}
    renormalised = np.array([0.0, 0.5, 0.0, 0.3]) / 0.8
    stat, df = chi_square(tokens, renormalised)
    assert df == 1 and stat < 10.8  # 0.1% critical value, 1 df


def test_sample_is_the_best_score_in_the_nucleus() -> None:
    logits = np.log(np.array([0.1, 0.6, 0.3]))
    for step in range(50):
        score = scores(logits, 1.0, 4, step)
        assert sample(logits, 1.0, 1.0, 4, step) == int(np.argmax(score))
        # top_p = 0.8 keeps {1, 2}: token 0 is never picked, whatever its noise.
        assert sample(logits, 1.0, 0.8, 4, step) == 1 + int(np.argmax(score[1:]))
    with pytest.raises(ValueError):
        sample(logits, 0.0, 1.0, 4, 0)


@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.5])
def test_replay_accepts_the_honest_token_and_others_only_within_the_margin(top_p: float) -> None:
    loose = 0  # positions where some other token passes too
    for step in range(300):
        logits = random_logits(step)
        token = sample(logits, 0.8, top_p, 42, step)
        assert replay_ok(logits, 0.8, top_p, 42, step, token)
        score = scores(logits, 0.8, 42, step)
        others = [t for t in range(logits.size) if t != token and replay_ok(logits, 0.8, top_p, 42, step, t)]
        if top_p == 1.0:  # without a cut: exactly the tokens within the margin of the winner
            assert others == [t for t in range(logits.size)
                              if t != token and score[t] >= score[token] - DEFAULT_MARGIN]
        loose += bool(others)
    # What one position can tell: with these flat logits the runner-up is within the margin
    # at ~40% of positions (the top two scores' gap is about exponential with mean T), and
    # with a cut, tokens near it count as maybe kept (measured 37% / 57% / 51% for top_p
    # 1 / 0.9 / 0.5). So one position says little; a wrong model is caught by the share of
    # its positions that miss (compare_sampled_replay), not by one.
    assert loose <= (0.45 if top_p == 1.0 else 0.65) * 300, loose
    assert not replay_ok(random_logits(0), 0.8, 1.0, 1, 0, -1)
    assert not replay_ok(random_logits(0), 0.8, 1.0, 1, 0, 50)


def test_margin_absorbs_low_precision_logits_and_no_more() -> None:
    # An honest provider computing in bfloat16: its logits are the reference's rounded to
    # 8 bits of mantissa (errors up to ~0.03 here, ~0.25 measured on a real model).
    rng = np.random.default_rng(3)
    for step in range(500):
        reference = random_logits(1000 + step, vocab=200, scale=4.0)
        provider = reference + rng.uniform(-0.2, 0.2, reference.size)
        assert replay_ok(reference, 0.9, 0.95, 7, step, sample(provider, 0.9, 0.95, 7, step))
    # The runner-up: accepted exactly when its score is within the margin of the best.
    logits = np.zeros(4)
    for step in range(40):
        score = scores(logits, 1.0, 9, step)
        order = np.argsort(-score)
        gap = score[order[0]] - score[order[1]]
        assert replay_ok(logits, 1.0, 1.0, 9, step, int(order[1])) == (gap <= DEFAULT_MARGIN)
        assert replay_ok(logits, 1.0, 1.0, 9, step, int(order[1]), margin=gap + 1e-9)
        assert not replay_ok(logits, 1.0, 1.0, 9, step, int(order[1]), margin=gap - 1e-9)


def test_the_nucleus_cut_is_judged_with_the_precision_margin() -> None:
    probs = np.array([0.6, 0.2, 0.15, 0.05])
    logits = np.log(probs)
    top_p = 0.79  # the checker keeps {0, 1}: the mass before token 2 is 0.8
    assert set(np.flatnonzero(nucleus(probabilities(logits, 1.0), top_p))) == {0, 1}
    # A step where token 2 has the best score of {0, 1, 2} by more than the margin.
    step = next(i for i in range(10_000) if (s := scores(logits, 1.0, 1, i))[2] > max(s[0], s[1]) + 1.0)
    # A provider whose probabilities were off by less than the margin allows may have kept
    # token 2 (0.01 of mass from the cut), and then picked it: accepted.
    assert replay_ok(logits, 1.0, top_p, 1, step, 2)
    # With no margin for numeric differences, only the exact nucleus counts.
    assert not replay_ok(logits, 1.0, top_p, 1, step, 2, margin=0.0)
    # Far from any cut (top_p = 0.5 keeps only token 0, with room to spare) it never passes.
    assert not replay_ok(logits, 1.0, 0.5, 1, step, 2)
    # A token every such provider kept bounds the others: here token 0 at top_p = 0.5;
    # a token scoring more than the margin below it fails even inside the nucleus.
    step = next(i for i in range(10_000) if (s := scores(logits, 1.0, 1, i))[0] > s[1] + 1.0)
    assert replay_ok(logits, 1.0, 0.9, 1, step, 0) and not replay_ok(logits, 1.0, 0.9, 1, step, 1)


def test_compare_sampled_replay() -> None:
    rng = np.random.default_rng(11)
    logits = rng.standard_normal((40, 30)) * 2
    honest = [sample(row, 0.8, 0.9, 5, i) for i, row in enumerate(logits)]
    assert compare_sampled_replay(honest, logits, 0.8, 0.9, seed=5).passed
    # The same model with another seed (or sampler): most positions miss, hard.
    other = [sample(row, 0.8, 0.9, 6, i) for i, row in enumerate(logits)]
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
    # Sampled: the end token passes when the seeded noise for that position picks it
    # (within the margin).
    seed, pos = 1234, 7
    picked = sample(row, 1.0, 1.0, seed, pos)
    assert check_end(row, [picked], pos, temperature=1.0, seed=seed).passed
    score = scores(row, 1.0, seed, pos)
    far = [i for i in range(4) if score[i] < score[picked] - DEFAULT_MARGIN]
    assert far and not any(check_end(row, [i], pos, temperature=1.0, seed=seed).passed for i in far)


def test_sampled_replay_also_checks_the_reported_logprobs() -> None:
    seed = 99
    logits = np.stack([random_logits(i) for i in range(12)])
    tokens = [sample(logits[i], 0.9, 1.0, seed, i) for i in range(12)]
    shifted = logits - logits.max(axis=1, keepdims=True)
    honest = [float(shifted[i, t] - np.log(np.exp(shifted[i]).sum())) for i, t in enumerate(tokens)]
    assert compare_sampled_replay(tokens, logits, 0.9, 1.0, seed, reported_logprobs=honest).passed
    inflated = [lp + 2.0 for lp in honest]  # claims each token was far more likely than it was
    verdict = compare_sampled_replay(tokens, logits, 0.9, 1.0, seed, reported_logprobs=inflated)
    assert not verdict.passed and verdict.reason == "logprob_mismatch" and verdict.hard
