"""Hardware proof: a seeded matrix product that needs the claimed memory and speed.

Protocol (the I/O is the caller's; everything here is pure given its arguments):

1. The verifier picks a fresh seed and calls `make_challenge(seed, claimed_memory_mb,
   rng)`: n is sized so A, B and C (n×n float32 each) fill about half the claimed
   memory, capped at `max_n` (small in tests).
2. The prover derives A and B from the seed (`matrices`) and computes C = A·B
   (`solve`, numpy or torch — CUDA when available), then commits to C with one
   SHA-256 digest per row (`commit`). Shipping C itself would be n² floats; the digests
   are 32 bytes a row.
3. The verifier then asks for a few random rows (`pick_rows`) — chosen *after* the
   commitment, so a prover that computed only a fraction f of the rows survives s
   requested rows with probability f^s — and the prover opens them (`open_rows`).
4. `check` verifies the opened rows against their digests and against A and B with
   Freivalds' algorithm: for a random integer vector x, C_S·x must equal A_S·(B·x).
   That is O(n²) work (one pass over B) instead of the prover's O(n³). When the whole
   of C is available (in-process, tests) `check` runs Freivalds on all of it.

Number format — the choice: entries of A and B are small integers in [-R, R] stored
as float32, with n·R² < 2^24. Every product and partial sum is then an integer below
2^24, which float32 (and TF32/bf16 tensor cores with fp32 accumulation) represents
exactly, so C is *exact* on any honest hardware and the check needs no tolerance —
while the prover still runs an ordinary fast float32 GEMM, which is what we want to
time. The verifier works in int64. (Integers mod a prime would also be exact, but GPUs
have no fast int64 GEMM, so the measured speed would not be the speed that matters.)
A prover that cuts corners in fp16 accumulation gets rounding errors and fails.

Speed: measured_gflops = 2n³ / elapsed / 1e9. The prover's own timing is untrusted;
the gateway should pass its own measured time (challenge sent → commitment received)
as `elapsed_s`, an upper bound on compute time, so the verified speed is a lower bound.
Memory is proven only softly: a prover without the memory must tile through host
memory, which shows up as lower measured speed.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# Rows per RNG block: each block of rows comes from its own generator keyed by
# (seed, matrix, block), so either side can derive any rows without the whole matrix.
_BLOCK = 64
# Float32 integers are exact below 2^24.
_EXACT = 1 << 24
# Freivalds vector entries are drawn from [0, 2^20): a wrong row passes one round with
# probability <= 2^-20 (Schwartz–Zippel), and int64 never overflows for n <= 2^18.
_X_RANGE = 1 << 20


@dataclass(frozen=True)
class Challenge:
    """A hardware challenge. `value_range` is R: entries are integers in [-R, R]."""

    seed: int
    n: int
    value_range: int
    claimed_memory_mb: int
    spot_rows: int = 16
    claimed_gflops: float | None = None
    min_speed_fraction: float = 0.5   # measured below this fraction of the claim fails

    @property
    def flops(self) -> float:
        return 2.0 * self.n**3


def make_challenge(seed: int, claimed_memory_mb: int, rng: random.Random | None = None, *,
                   max_n: int = 16384, memory_fraction: float = 0.5, spot_rows: int = 16,
                   claimed_gflops: float | None = None) -> Challenge:
    """A challenge sized to the claimed memory: 3·n²·4 bytes ≈ memory_fraction · claim.

    n is rounded down to a multiple of 64 (whole RNG blocks; friendly to GEMM
    kernels), at least 64 and at most `max_n`. `rng` (optional) jitters n down by up to
    one block so a prover cannot precompute for a fixed size.
    """
    if claimed_memory_mb <= 0:
        raise ValueError("claimed_memory_mb must be positive")
    n = int(math.sqrt(memory_fraction * claimed_memory_mb * 2**20 / 12))
    n = max(_BLOCK, min(n, max_n))
    n -= n % _BLOCK
    if rng is not None and n > _BLOCK:
        n -= rng.randrange(0, 2) * _BLOCK
    # Largest R with n·R² < 2^24, so every partial sum is an exact float32 integer.
    r = max(1, min(127, int(math.isqrt((_EXACT - 1) // n))))
    while n * r * r >= _EXACT:
        r -= 1
    if r < 1:
        raise ValueError(f"n={n} is too large for exact float32 products")
    return Challenge(seed=seed, n=n, value_range=r, claimed_memory_mb=claimed_memory_mb,
                     spot_rows=spot_rows, claimed_gflops=claimed_gflops)


def _block(ch: Challenge, which: int, b: int) -> np.ndarray:
    """One block of rows as int64 in [-R, R]: a byte of the stream per entry, scaled.

    Byte·(2R+1) >> 8 (R <= 127, so 2R+1 <= 255) is a few vector passes; numpy's bounded
    `integers` took twice as long and was most of a small proof on both sides (bench/scale's
    mass join). The scaling's slight unevenness does not matter: the check's soundness comes
    from the verifier's random vectors, and exactness only from the [-R, R] bound.
    """
    rows = min(_BLOCK, ch.n - b * _BLOCK)
    size = rows * ch.n
    words = np.random.PCG64([ch.seed, which, b]).random_raw((size + 7) // 8)
    # Little-endian bytes whatever the host, so every machine derives the same matrices.
    out = words.astype("<u8", copy=False).view(np.uint8)[:size].astype(np.int64)
    out *= 2 * ch.value_range + 1
    out >>= 8
    out -= ch.value_range
    return out.reshape(rows, ch.n)


def matrix_rows(ch: Challenge, which: int, rows: Sequence[int]) -> np.ndarray:
    """Rows of A (which=0) or B (which=1) as int64, derived from the seed."""
    out = np.empty((len(rows), ch.n), dtype=np.int64)
    cache: dict[int, np.ndarray] = {}
    for i, row in enumerate(rows):
        b = row // _BLOCK
        if b not in cache:
            cache[b] = _block(ch, which, b)
        out[i] = cache[b][row % _BLOCK]
    return out


def matrices(ch: Challenge) -> tuple[np.ndarray, np.ndarray]:
    """A and B in full, float32 (the prover's input)."""
    nb = (ch.n + _BLOCK - 1) // _BLOCK
    a = np.concatenate([_block(ch, 0, b) for b in range(nb)]).astype(np.float32)
    b_ = np.concatenate([_block(ch, 1, b) for b in range(nb)]).astype(np.float32)
    return a, b_


@dataclass(frozen=True)
class Solution:
    """The prover's result: C and how long the product took (prover-measured)."""

    product: np.ndarray
    elapsed_s: float
    backend: str
    device: str


def solve(ch: Challenge, backend: str = "numpy") -> Solution:
    """Compute C = A·B. backend "torch" uses CUDA when available, else CPU."""
    a, b = matrices(ch)
    if backend == "numpy":
        t0 = time.perf_counter()
        c = a @ b
        return Solution(c, time.perf_counter() - t0, "numpy", "cpu")
    if backend == "torch":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        ta = torch.from_numpy(a).to(device)
        tb = torch.from_numpy(b).to(device)
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        tc = ta @ tb
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        return Solution(tc.cpu().numpy(), elapsed, "torch", device)
    raise ValueError(f"unknown backend {backend!r} (numpy or torch)")


def row_digest(row: np.ndarray) -> bytes:
    """SHA-256 of a row as little-endian int64 (canonical whatever the prover's dtype)."""
    return hashlib.sha256(np.ascontiguousarray(row, dtype="<i8").tobytes()).digest()


@dataclass(frozen=True)
class Commitment:
    """Sent first: one digest per row of C, and the prover's timing claim."""

    row_digests: tuple[bytes, ...]
    elapsed_s: float


def commit(solution: Solution) -> Commitment:
    # Non-finite entries (a broken prover) still get a digest; `check` rejects them.
    c = np.rint(np.nan_to_num(solution.product, nan=0.0, posinf=0.0, neginf=0.0)).astype(np.int64)
    return Commitment(tuple(row_digest(r) for r in c), solution.elapsed_s)


def pick_rows(ch: Challenge, rng: random.Random) -> list[int]:
    """Rows the verifier asks to open, chosen after the commitment arrived."""
    return sorted(rng.sample(range(ch.n), min(ch.spot_rows, ch.n)))


def open_rows(solution: Solution, rows: Sequence[int]) -> dict[int, np.ndarray]:
    return {i: np.asarray(solution.product[i]) for i in rows}


@dataclass(frozen=True)
class HardwareAnswer:
    """What `check` examines: the commitment, the opened rows (by index) and, when
    available in-process, the full product."""

    commitment: Commitment
    rows: Mapping[int, np.ndarray] = field(default_factory=dict)
    product: np.ndarray | None = None


def answer_from(solution: Solution, rows: Sequence[int] = (), full: bool = False) -> HardwareAnswer:
    """Convenience for the prover side: commit, open `rows`, optionally attach all of C."""
    return HardwareAnswer(commit(solution), open_rows(solution, rows),
                          solution.product if full else None)


@dataclass(frozen=True)
class HardwareVerdict:
    passed: bool
    measured_gflops: float
    reason: str


def _as_int_rows(x: np.ndarray) -> np.ndarray | None:
    """Exact integers as int64, or None if any entry is not an integer (wrong product)."""
    arr = np.asarray(x)
    if arr.dtype.kind in "iu":  # opened rows arrive as int64 bytes: nothing to round
        return arr.astype(np.int64, copy=False)
    if not np.all(np.isfinite(arr)):
        return None
    as_int = np.rint(arr).astype(np.int64)
    if not np.array_equal(as_int.astype(arr.dtype), arr):
        return None
    return as_int


def _freivalds(ch: Challenge, c_rows: np.ndarray, row_idx: Sequence[int],
               rng: random.Random, rounds: int) -> int | None:
    """First row (index into row_idx) where C_S·x != A_S·(B·x), or None if all agree."""
    if rounds < 1:
        return None
    bx_gen = np.random.Generator(np.random.PCG64(rng.getrandbits(64)))
    a_rows = matrix_rows(ch, 0, row_idx)
    nb = (ch.n + _BLOCK - 1) // _BLOCK
    # Every round's vector at once (one column each): B is derived from the seed once, not
    # once per round (deriving it was most of a small proof's check, profiled at join).
    x = bx_gen.integers(0, _X_RANGE, size=(ch.n, rounds), dtype=np.int64)
    # B·x block by block: O(n²) per round and never all of B in memory at once.
    bx = np.concatenate([_block(ch, 1, b) @ x for b in range(nb)])
    bad = np.flatnonzero(np.any(c_rows @ x != a_rows @ bx, axis=1))
    return int(bad[0]) if bad.size else None


def check(ch: Challenge, answer: HardwareAnswer, rng: random.Random,
          requested_rows: Sequence[int] | None = None, elapsed_s: float | None = None,
          rounds: int = 2) -> HardwareVerdict:
    """Verify a hardware answer and turn its timing into verified GFLOP/s.

    * `requested_rows`: the rows the verifier asked to open (from `pick_rows`); each
      must be present, match its committed digest, and pass Freivalds.
    * With `answer.product` (all of C): every digest must match, Freivalds runs on all
      rows, and `ch.spot_rows` rows drawn from `rng` are recomputed directly.
    * `elapsed_s`: the verifier's own timing; defaults to the prover's claim.
    A result below `min_speed_fraction` of `claimed_gflops` fails as "too slow".
    """
    com = answer.commitment
    elapsed = com.elapsed_s if elapsed_s is None else elapsed_s
    gflops = ch.flops / elapsed / 1e9 if elapsed > 0 else 0.0
    if len(com.row_digests) != ch.n:
        return HardwareVerdict(False, 0.0, f"commitment has {len(com.row_digests)} rows, want {ch.n}")
    if elapsed <= 0:
        return HardwareVerdict(False, 0.0, "no positive elapsed time")
    if answer.product is not None:
        c = _as_int_rows(answer.product)
        if c is None or c.shape != (ch.n, ch.n):
            return HardwareVerdict(False, 0.0, "product is not an n×n integer matrix")
        for i in range(ch.n):
            if row_digest(c[i]) != com.row_digests[i]:
                return HardwareVerdict(False, 0.0, f"row {i} does not match its commitment")
        bad = _freivalds(ch, c, range(ch.n), rng, rounds)
        if bad is not None:
            return HardwareVerdict(False, 0.0, f"Freivalds check failed (row {bad})")
        spot = pick_rows(ch, rng)
        direct = matrix_rows(ch, 0, spot) @ np.concatenate(
            [_block(ch, 1, b) for b in range((ch.n + _BLOCK - 1) // _BLOCK)])
        wrong = np.flatnonzero(np.any(direct != c[spot], axis=1))
        if wrong.size:
            return HardwareVerdict(False, 0.0, f"spot check failed (row {spot[int(wrong[0])]})")
    if requested_rows is not None:
        rows = list(requested_rows)
        missing = [i for i in rows if i not in answer.rows]
        if missing:
            return HardwareVerdict(False, 0.0, f"rows not opened: {missing[:5]}")
        opened = []
        for i in rows:
            r = _as_int_rows(answer.rows[i])
            if r is None or r.shape != (ch.n,):
                return HardwareVerdict(False, 0.0, f"row {i} is not an integer row of length n")
            if row_digest(r) != com.row_digests[i]:
                return HardwareVerdict(False, 0.0, f"row {i} does not match its commitment")
            opened.append(r)
        if rows:
            bad = _freivalds(ch, np.stack(opened), rows, rng, rounds)
            if bad is not None:
                return HardwareVerdict(False, 0.0, f"Freivalds check failed (row {rows[bad]})")
    if answer.product is None and not requested_rows:
        return HardwareVerdict(False, 0.0, "nothing to verify: no product and no opened rows")
    if ch.claimed_gflops is not None and gflops < ch.min_speed_fraction * ch.claimed_gflops:
        return HardwareVerdict(False, gflops,
                               f"too slow: {gflops:.1f} GFLOP/s vs claimed {ch.claimed_gflops:.1f}")
    return HardwareVerdict(True, gflops, "ok")
