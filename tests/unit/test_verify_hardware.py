"""Hardware proof: honest products pass (numpy and torch), wrong or partial ones fail,
commitments bind, speed claims are checked."""

from __future__ import annotations

import random

import numpy as np
import pytest

from gpupool.verify import (
    Challenge,
    HardwareAnswer,
    answer_from,
    check,
    commit,
    make_challenge,
    open_rows,
    pick_rows,
    solve,
)
from gpupool.verify.hardware import Solution, matrices, matrix_rows


@pytest.fixture(scope="module")
def challenge() -> Challenge:
    return make_challenge(seed=42, claimed_memory_mb=12, rng=random.Random(1), max_n=512)


@pytest.fixture(scope="module")
def honest(challenge: Challenge) -> Solution:
    return solve(challenge, "numpy")


def test_sizing_and_exactness_bound() -> None:
    small = make_challenge(1, 1, max_n=512)
    big = make_challenge(1, 80_000, max_n=512)
    # 1 MB: sqrt(0.5 · 2^20 / 12) = 209 → 192 (whole 64-row blocks); 80 GB: capped.
    assert small.n == 192 and big.n == 512
    # The rng jitters n down by at most one block, so sizes are not predictable.
    sizes = {make_challenge(1, 80_000, random.Random(i), max_n=512).n for i in range(20)}
    assert sizes == {448, 512}
    huge = make_challenge(1, 80_000, max_n=60_000)
    assert huge.n % 64 == 0 and huge.n * huge.value_range**2 < 2**24
    # Half of 80 GB in three float32 matrices.
    assert 0.9 < 3 * 4 * huge.n**2 / (0.5 * 80_000 * 2**20) <= 1.0


def test_both_sides_derive_the_same_matrices(challenge: Challenge) -> None:
    a, b = matrices(challenge)
    rows = [0, 63, 64, 200, challenge.n - 1]
    assert np.array_equal(matrix_rows(challenge, 0, rows), a[rows].astype(np.int64))
    assert np.array_equal(matrix_rows(challenge, 1, rows), b[rows].astype(np.int64))
    other = make_challenge(seed=43, claimed_memory_mb=12, rng=random.Random(1), max_n=512)
    assert not np.array_equal(matrices(other)[0], a)
    # Entries fill [-R, R] evenly, and no further (the bound is what makes every product exact).
    r = challenge.value_range
    for m in (a, b):
        assert m.min() == -r and m.max() == r
        assert abs(float(m.mean())) < 2 and len(np.unique(m)) == 2 * r + 1


def test_honest_numpy_passes_full_and_spot(challenge: Challenge, honest: Solution) -> None:
    v = check(challenge, answer_from(honest, full=True), random.Random(5))
    assert v.passed, v.reason
    assert v.measured_gflops == pytest.approx(challenge.flops / honest.elapsed_s / 1e9)
    rng = random.Random(6)
    rows = pick_rows(challenge, rng)
    assert len(rows) == 16
    v = check(challenge, answer_from(honest, rows), rng, requested_rows=rows, elapsed_s=2.0)
    assert v.passed, v.reason
    assert v.measured_gflops == pytest.approx(challenge.flops / 2.0 / 1e9)


def test_torch_backend_agrees_exactly(challenge: Challenge, honest: Solution) -> None:
    pytest.importorskip("torch")
    t = solve(challenge, "torch")
    assert np.array_equal(t.product, honest.product)
    assert check(challenge, answer_from(t, full=True), random.Random(7)).passed


def test_single_wrong_entry_fails(challenge: Challenge, honest: Solution) -> None:
    c = honest.product.copy()
    c[123, 45] += 1.0
    liar = Solution(c, honest.elapsed_s, "numpy", "cpu")
    v = check(challenge, answer_from(liar, full=True), random.Random(8))
    assert not v.passed and "row 123" in v.reason
    # Opening that row against an honest commitment breaks the commitment.
    ans = HardwareAnswer(commit(honest), {123: c[123]})
    v = check(challenge, ans, random.Random(9), requested_rows=[123])
    assert not v.passed and "commitment" in v.reason


def test_low_precision_shortcut_fails(challenge: Challenge) -> None:
    # fp16 products/accumulation round sums above 2048: the kind of corner a prover
    # might cut to look faster.
    a, b = matrices(challenge)
    with np.errstate(over="ignore"):
        c16 = (a.astype(np.float16) @ b.astype(np.float16)).astype(np.float32)
    cheat = Solution(c16, 0.001, "fp16", "cpu")
    assert not check(challenge, answer_from(cheat, full=True), random.Random(10)).passed


def test_partial_work_caught_by_spot_rows(challenge: Challenge, honest: Solution) -> None:
    # Computes only the first half of the rows, commits garbage for the rest.
    c = honest.product.copy()
    c[challenge.n // 2:] = np.random.default_rng(0).integers(-5, 5, c[challenge.n // 2:].shape)
    lazy = Solution(c, honest.elapsed_s / 2, "numpy", "cpu")
    caught = 0
    for t in range(20):
        rng = random.Random(100 + t)
        rows = pick_rows(challenge, rng)
        v = check(challenge, answer_from(lazy, rows), rng, requested_rows=rows)
        caught += not v.passed
    # P(16 rows all in the honest half) = 2^-16 per trial.
    assert caught == 20


def test_missing_rows_and_empty_answers_fail(challenge: Challenge, honest: Solution) -> None:
    com = commit(honest)
    assert not check(challenge, HardwareAnswer(com), random.Random(1)).passed
    v = check(challenge, HardwareAnswer(com, open_rows(honest, [1])), random.Random(1),
              requested_rows=[1, 2])
    assert not v.passed and "not opened" in v.reason
    short = HardwareAnswer(type(com)(com.row_digests[:-1], com.elapsed_s), {}, honest.product)
    assert not check(challenge, short, random.Random(1)).passed


def test_speed_claim_checked(honest: Solution) -> None:
    ch = make_challenge(seed=42, claimed_memory_mb=12, rng=random.Random(1), max_n=512,
                        claimed_gflops=1e6)
    v = check(ch, answer_from(honest, full=True), random.Random(2))
    assert not v.passed and v.reason.startswith("too slow") and v.measured_gflops > 0
    ch_ok = make_challenge(seed=42, claimed_memory_mb=12, rng=random.Random(1), max_n=512,
                           claimed_gflops=0.01)
    assert check(ch_ok, answer_from(honest, full=True), random.Random(2)).passed
