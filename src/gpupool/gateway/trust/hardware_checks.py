"""Hardware proof at the gateway: challenge providers to show the hardware they claim.

When a provider connects, and then at jittered random intervals, the gateway sends a
`HardwareChallenge` built by `verify.hardware.make_challenge`: a seed and a size n
(sized to the claimed memory, capped by `hardware_proof_max_n`). The exchange:

    gateway                                   provider
      HardwareChallenge(id, seed, n, R) ───────▶  derive A, B; C = A·B
                       ◀─────── HardwareAnswer(id, row digests of C)
      (rows picked now, after the commitment)
      HardwareChallenge(id, ..., open_rows) ───▶
                       ◀─────── HardwareAnswer(id, rows)
      check: digests match, Freivalds on the opened rows (O(n²), in a thread)

The speed is timed by the gateway (challenge sent -> commitment received), never taken
from the provider, so the verified GFLOP/s is a lower bound: it includes deriving A and
B, hashing C and the network round trip, which dominate for the small default n.

A pass stores the measured GFLOP/s as the provider's verified hardware speed
(`verified_gflops`, shown in /admin/providers). A wrong answer, a malformed one or no
answer in time records a `hardware_proof_failed` peer event and disconnects the
provider with that reason: it claimed hardware it could not show, or computed wrongly.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gpupool.gateway.peers.session import ProviderSession
from gpupool.protocol import HardwareAnswer, HardwareChallenge, Offer
from gpupool.verify import hardware

log = logging.getLogger("gpupool.gateway.hardware")

# Each phase (commitment, then opened rows) may take this long at n = _TIMEOUT_N;
# bigger challenges get proportionally more, since deriving A and B and hashing C are O(n²)
# on the provider's CPU and the product O(n³) on its GPU.
_BASE_TIMEOUT_S = 30.0
_TIMEOUT_N = 4096
# Checks at once: each derives all of B from the seed (n² random draws), so bound the CPU.
_CONCURRENT_CHECKS = 2
# Proofs up to this side are checked on the event loop (1-2 ms at 128-192 measured, a quiet core), bigger
# ones in a thread.
INLINE_CHECK_N = 192
# Hardware records kept; beyond it, those of nodes not connected go (one record per key ever seen).
MAX_RECORDS = 20_000


@dataclass
class HardwareRecord:
    """The last hardware proof result of one provider (kept across reconnects)."""

    verified_gflops: float | None = None  # from the last passed proof; None until one passes
    n: int = 0
    passes: int = 0
    failures: int = 0
    last_checked: float = 0.0  # wall clock
    last_reason: str = ""
    device: str = ""  # what the provider said it used (informational only)


def claimed_memory_mb(offer: Offer) -> int:
    """Memory a challenge is sized to: the largest GPU's (one product runs on one GPU), else host RAM."""
    gpus = [g.memory_mb for g in offer.hardware.gpus if g.memory_mb > 0]
    return max(gpus) if gpus else max(1, offer.hardware.memory_mb)


class HardwareChecker:
    """Sends hardware challenges to provider sessions and records what they prove.

    `disconnect(session, kind, reason)` is called on a failed proof (the hub's
    `disconnect`: records the peer event and closes the link). `interval_s` is the mean
    time between proofs after the admission one (0: admission only); `max_n` caps the
    matrix side (0: no proofs at all).
    """

    def __init__(self, disconnect: Callable[[ProviderSession, str, str], None], *, interval_s: float,
                 max_n: int, timeout_s: float = _BASE_TIMEOUT_S, rng: random.Random | None = None):
        self.disconnect = disconnect
        self.interval_s = interval_s
        self.max_n = max_n
        self.timeout_s = timeout_s
        # Seeds and opened rows must be unpredictable to the provider: OS randomness by default.
        self.rng = rng or random.SystemRandom()
        self.records: dict[str, HardwareRecord] = {}
        self.max_records = MAX_RECORDS
        self.stats = {"passed": 0, "failed": 0, "timed_out": 0}
        self._pending: dict[tuple[str, str], asyncio.Future[HardwareAnswer]] = {}
        # Node id -> its proof in progress (a task) or its next one (a timer): a task lives only
        # while a proof runs, so 10,000 idle sessions hold 10,000 timers, not sleeping coroutines.
        # Its timer is cancelled when the session leaves (`on_leave`), not kept until it fires.
        self._next: dict[str, tuple[ProviderSession, asyncio.Task[None] | asyncio.TimerHandle]] = {}
        self._checks = asyncio.Semaphore(_CONCURRENT_CHECKS)
        # Providers this gateway served before its restart, not yet back (`welcome_back`).
        self._returning: set[str] = set()
        self._returning_until = 0.0
        self._returning_spread_s = 0.0

    # ------------------------------------------------------------ hub callbacks

    def welcome_back(self, node_ids: set[str], spread_s: float) -> None:
        """After a restart: these providers were connected before it (the store's record). Each one's
        first proof when it is back comes at a random moment within `spread_s`, not at once: all of
        them reconnect within a minute, and proving each during that storm cost a third of the
        gateway's CPU per handshake (bench/scale, 10,000 sessions). New keys are proven at once."""
        self._returning = set(node_ids)
        self._returning_spread_s = spread_s
        self._returning_until = time.monotonic() + spread_s

    def on_connect(self, session: ProviderSession) -> None:
        """A provider session was registered: prove now, then at random intervals while connected."""
        if self.max_n <= 0:
            return
        self._stop(session.node_id)  # the provider reconnected: the old link's schedule ends with it
        if self._returning and time.monotonic() >= self._returning_until:
            self._returning.clear()  # the window after the restart is over
        if session.node_id in self._returning:
            self._returning.discard(session.node_id)
            # Unproven meanwhile: its claimed speed counts for nothing in routing until it passes.
            delay = self.rng.uniform(0.0, self._returning_spread_s)
            timer = asyncio.get_running_loop().call_later(delay, self._start, session)
            self._next[session.node_id] = (session, timer)
            return
        self._start(session)

    def on_leave(self, session: ProviderSession) -> None:
        """A provider session left: its proof in progress or its next one goes with it."""
        entry = self._next.get(session.node_id)
        if entry is not None and entry[0] is session:
            self._stop(session.node_id)

    def _stop(self, node: str) -> None:
        entry = self._next.pop(node, None)
        if entry is not None:
            entry[1].cancel()

    def on_answer(self, session: ProviderSession, msg: HardwareAnswer) -> None:
        fut = self._pending.get((session.node_id, msg.challenge_id))
        if fut is not None and not fut.done():
            fut.set_result(msg)
        # else: unsolicited or late (after a timeout): ignored, the proof already failed.

    # ------------------------------------------------------------ queries

    def verified_gflops(self, node_id: str) -> float | None:
        rec = self.records.get(node_id)
        return None if rec is None or rec.verified_gflops is None else round(rec.verified_gflops, 3)

    def summary(self) -> dict[str, dict[str, object]]:
        return {node: {"verified_gflops": self.verified_gflops(node), "n": r.n, "passes": r.passes,
                       "failures": r.failures, "last_checked": r.last_checked, "last_reason": r.last_reason,
                       "device": r.device}
                for node, r in self.records.items()}

    def _forget_absent(self) -> None:
        """Past the bound, the records of nodes no longer connected go (keys cost nothing: one record
        per fresh key would otherwise grow for ever); the oldest-checked first, down to three quarters."""
        absent = sorted((r.last_checked, n) for n, r in self.records.items() if n not in self._next)
        for _, node in absent[:max(0, len(self.records) - self.max_records * 3 // 4)]:
            del self.records[node]

    async def close(self) -> None:
        for _, pending in list(self._next.values()):
            pending.cancel()
        self._next.clear()

    # ------------------------------------------------------------ the proof

    def next_delay(self) -> float:
        """Jittered ±50% around the mean, so a provider cannot tell when the next proof comes."""
        return self.interval_s * self.rng.uniform(0.5, 1.5)

    def _start(self, session: ProviderSession) -> None:
        """Prove `session` now (a task for the length of the proof); the next proof is a timer."""
        node = session.node_id
        if session.closed:
            if self._next.get(node, (None, None))[0] is session:
                del self._next[node]
            return
        task = asyncio.create_task(self._prove_once(session))
        self._next[node] = (session, task)
        task.add_done_callback(lambda t: self._next.pop(node, None) if self._next.get(node, (0, 0))[1] is t
                               else None)

    async def _prove_once(self, session: ProviderSession) -> None:
        try:
            verdict = await self.prove(session)
        except ConnectionError:
            return  # the provider left mid-proof; nothing to judge
        except Exception:  # noqa: BLE001 - a gateway-side bug must not throw honest providers out
            log.exception("hardware proof of %s could not run", session.node_id[:12])
            verdict = hardware.HardwareVerdict(True, 0.0, "not checked")
        if session.closed:
            return
        if not verdict.passed:
            self.disconnect(session, "hardware_proof_failed", f"hardware proof failed: {verdict.reason}")
            return
        if self.interval_s > 0:
            # Replaces this task in `_next` (its done-callback then leaves the timer alone).
            timer = asyncio.get_running_loop().call_later(self.next_delay(), self._start, session)
            self._next[session.node_id] = (session, timer)

    async def prove(self, session: ProviderSession) -> hardware.HardwareVerdict:
        """Run one challenge against `session` and record the outcome (the caller acts on a failure)."""
        node = session.node_id
        ch = hardware.make_challenge(self.rng.getrandbits(63), claimed_memory_mb(session.offer), self.rng,
                                     max_n=self.max_n)
        cid = secrets.token_hex(8)
        timeout = self.timeout_s * max(1.0, (ch.n / _TIMEOUT_N) ** 2)
        rec = self.records.setdefault(node, HardwareRecord())
        if len(self.records) > self.max_records:
            self._forget_absent()
        try:
            t0 = time.monotonic()
            first = await self._ask(session, cid, HardwareChallenge(cid, ch.seed, ch.n, ch.value_range), timeout)
            # The gateway's own clock: an upper bound on the provider's compute time.
            elapsed = time.monotonic() - t0
            # Only now, after the commitment is in hand. One draw of OS randomness seeds this
            # proof's picks and Freivalds vectors: drawing each from SystemRandom was a system
            # call per random number (~5% of the gateway's CPU in a mass join, bench/scale).
            picks = random.Random(self.rng.getrandbits(128))
            rows = hardware.pick_rows(ch, picks)
            opened = await self._ask(session, cid, HardwareChallenge(cid, ch.seed, ch.n, ch.value_range, rows),
                                     timeout)
        except TimeoutError:
            if session.closed:
                raise ConnectionError("provider left during its hardware proof") from None
            self.stats["timed_out"] += 1
            verdict = hardware.HardwareVerdict(False, 0.0, f"no answer within {timeout:.0f}s (n={ch.n})")
        else:
            answer = _decode(ch, first, rows, opened)
            if isinstance(answer, str):
                verdict = hardware.HardwareVerdict(False, 0.0, answer)
            elif ch.n <= INLINE_CHECK_N:
                # A millisecond or two, mostly holding the GIL: a thread would not run it beside the
                # loop, only add a hand-off each way.
                verdict = hardware.check(ch, answer, picks, requested_rows=rows, elapsed_s=elapsed)
            else:
                async with self._checks:
                    # O(n²) numpy work (all of B is re-derived from the seed): off the event loop.
                    verdict = await asyncio.to_thread(hardware.check, ch, answer, picks,
                                                      requested_rows=rows, elapsed_s=elapsed)
            rec.device = first.device[:32]
        rec.last_checked, rec.last_reason, rec.n = time.time(), verdict.reason, ch.n
        if verdict.passed:
            rec.passes += 1
            rec.verified_gflops = verdict.measured_gflops
            self.stats["passed"] += 1
            # Debug: the ordinary case, one line per provider per proof (10,000 at a mass join);
            # failures stay warnings, and the counts are in /metrics and /admin.
            log.debug("provider %s passed a hardware proof: n=%d, %.1f GFLOP/s", node[:12], ch.n,
                     verdict.measured_gflops)
        else:
            rec.failures += 1
            self.stats["failed"] += 1
            log.warning("provider %s failed a hardware proof (n=%d): %s", node[:12], ch.n, verdict.reason)
        return verdict

    async def _ask(self, session: ProviderSession, cid: str, msg: HardwareChallenge,
                   timeout: float) -> HardwareAnswer:
        key = (session.node_id, cid)
        fut: asyncio.Future[HardwareAnswer] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            await session.send(msg)
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(key, None)


def _decode(ch: hardware.Challenge, first: HardwareAnswer, rows: list[int],
            opened: HardwareAnswer) -> hardware.HardwareAnswer | str:
    """The two wire answers as one `verify.hardware.HardwareAnswer`, or why they are malformed."""
    if len(first.row_digests) != ch.n or any(len(d) != 32 for d in first.row_digests):
        return f"commitment has {len(first.row_digests)} row digests, want {ch.n} of 32 bytes"
    if len(opened.rows) != len(rows) or any(len(r) != 8 * ch.n for r in opened.rows):
        return f"opened {len(opened.rows)} rows, want {len(rows)} of {ch.n} int64 entries"
    commitment = hardware.Commitment(tuple(first.row_digests), first.elapsed_s)
    return hardware.HardwareAnswer(commitment, {i: np.frombuffer(r, dtype="<i8") for i, r in zip(rows, opened.rows)})
