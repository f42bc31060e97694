"""The batch runner: a task in each gateway that claims shards of items and runs them on the pool.

Every `poll_s` (or sooner, when a shard ends) the runner looks at the active batches:
it moves new ones to `in_progress`, claims shards for providers with free batch slots
(`policy.pick_provider`, `policy.shard_items`), runs each shard through the normal
dispatcher (receipts, reputation, audits apply) and the gateway's money path
(`Metering`: hold, then charge from the receipt) under its key's limits (`BatchDeps.admit`:
a shard is one request; refused, it waits for a later tick), retries a failed shard on another
provider, sends a copy of a straggler to a second provider near the end, and
finalizes a batch when every item is done.

Exactly once: a run's results are written (state `charging`) before its charge is
queued, keyed by the run id; the runner then waits until the ledger has that charge
and marks the items done. A gateway that dies leaves leases that run out and
`charging` runs: those the ledger paid are done, the rest run again under a new id.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gpupool import errors
from gpupool.batch import policy
from gpupool.gateway.batches.shard import Shard, error_line, item_id
from gpupool.gateway.batches.store import BatchStore, Finished
from gpupool.gateway.batches.tables import BatchRow, FileRow, ItemRow
from gpupool.gateway.dispatch.dispatcher import Dispatcher, Outcome
from gpupool.gateway.edge.http import spawn
from gpupool.gateway.peers.hub import Hub, ProviderSession
from gpupool.gateway.money.metering import Metering
from gpupool.gateway.money.quota import Ticket
from gpupool.gateway.store import Store
from gpupool.ledger import Ledger

log = logging.getLogger("gpupool.batch")

MAX_ITEM_ATTEMPTS = 3  # runs an item may take part in before it is written to the error file
MAX_PROVIDERS_PER_RUN = 3  # providers one run tries (first plus retries elsewhere)
SHARD_TIMEOUT_S = 600.0


@dataclass
class Running:
    """One shard in flight on this gateway."""

    batch_id: str
    run_id: str
    started: float
    tried: set[str]
    n_items: int
    duplicated: bool = False
    extra: asyncio.Queue[ProviderSession] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    ticket: Ticket | None = None  # its place under the key's limits, given back when it ends
    used_tokens: int | None = 0  # what its receipt counted (0: nothing served, all tokens given back)


@dataclass(frozen=True)
class BatchDeps:
    """What batches need of the gateway (the same for `BatchService` and the `Runner`)."""

    hub: Hub
    dispatcher: Dispatcher
    metering: Metering
    store: Store
    ledger: Ledger
    admit: Callable[[int, str, int], Awaitable[Ticket | None]]


# With no batch active here, the runner looks again this often rather than every `poll_s`: a batch
# created on this gateway wakes it at once (`wake`), one created on another replica is seen within
# this. Its ten looks a second at rest were ~10% of an idle gateway's py-spy samples, plus most of
# its database thread's (bench/scale).
IDLE_POLL_S = 1.0


class Runner:
    def __init__(self, bs: BatchStore, deps: BatchDeps, node_id: str, reserve_slots: int = 1, lease_s: float = 10.0,
                 poll_s: float = 0.1, confirm_wait_s: float = 15.0, rng: random.Random | None = None):
        self.bs = bs
        self.hub, self.dispatcher, self.metering = deps.hub, deps.dispatcher, deps.metering
        self.store, self.ledger, self.admit = deps.store, deps.ledger, deps.admit
        self.prefix = f"{node_id[:24]}:"
        self.owner = self.prefix + uuid.uuid4().hex[:8]  # leases of this process, not of an earlier one
        self.reserve_slots = reserve_slots
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.confirm_wait_s = confirm_wait_s
        self.rng = rng or random.Random()
        self.running: dict[str, Running] = {}
        self.to_confirm: dict[str, tuple[str, float]] = {}  # run id -> (batch id, when charged)
        self.typical_s: dict[str, float] = {}  # batch id -> smoothed shard time
        self.shard_limit: dict[str, int] = {}  # batch id -> most items per shard that fit its cost cap
        self._wake = asyncio.Event()
        # Held from reading a batch's exposure to counting what is sent: the dispatch loop and the
        # shards' retries (tasks of their own) would otherwise both see room under the privacy cap.
        self._exposing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._renewed = 0.0
        self._recovered = 0.0
        self._idle = False  # the last tick found nothing to do: poll at IDLE_POLL_S until woken

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="batch-runner")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        tasks = [r.task for r in self.running.values() if r.task]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        await self.bs.forget_owner(self.prefix, self.owner)
        while True:
            try:
                await self.tick(time.time())
            except Exception:  # noqa: BLE001 - the database may be briefly busy; the next tick retries
                log.exception("batch runner tick failed")
                await asyncio.sleep(1.0)
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S if self._idle else self.poll_s)
            except TimeoutError:
                pass
            self._wake.clear()

    async def tick(self, now: float) -> None:
        await self._confirm(now)
        if now - self._renewed > self.lease_s / 4:
            self._renewed = now
            await self.bs.renew([*self.running, *self.to_confirm], self.owner, now + self.lease_s)
        active = await self.bs.active()
        self._idle = not active and not self.running and not self.to_confirm
        for b in active:
            await self._advance(b, now)

    # ------------------------------------------------------------ one batch

    async def _advance(self, b: BatchRow, now: float) -> None:
        if b.status == "validating":
            await self.bs.set_status(b.id, ("validating",), "in_progress", now)
            return
        counts = await self.bs.counts(b.id, now)
        if b.status == "cancelling":
            for r in self.running.values():
                if r.batch_id == b.id and r.task:
                    r.task.cancel()
            if counts["leased_live"] == 0 and counts["charging"] == 0:
                if "expiring_at" in json.loads(b.stamps or "{}"):
                    await self._finish(b, "expired", now, "batch_expired", "the batch expired before this request ran")
                else:
                    await self._finish(b, "cancelled", now, "batch_cancelled", "the batch was cancelled before "
                                       "this request ran")
            return
        if b.status == "in_progress" and now > b.expires_at:
            # Stop like a cancel (running shards end first), then close as expired.
            await self.bs.set_status(b.id, ("in_progress",), "cancelling", now, mark="expiring_at")
            return
        if b.status == "finalizing" or (counts["claimable"] == 0 and counts["leased"] == 0
                                        and counts["charging"] == 0):
            if b.status == "finalizing" or await self.bs.set_status(b.id, ("in_progress",), "finalizing", now):
                await self._finish(b, "completed", now)
            return
        if counts["claimable"] > 0:
            await self._dispatch(b, counts, now)
        else:
            self._stragglers(b, now)

    async def _finish(self, b: BatchRow, status: str, now: float, code: str = "", message: str = "") -> None:
        if code:
            await self.bs.close_rest(b.id, lambda row: error_line(b.id, row.idx, row.custom_id, code, message), now)
        files = [FileRow(id="file-" + uuid.uuid4().hex[:24], account=b.account, filename=f"{b.id}_{kind}.jsonl",
                         purpose="batch_output", bytes=0, created_at=int(now), content=None, batch_id=b.id, kind=kind)
                 for kind in ("output", "error")]
        if await self.bs.finalize(b.id, status, files, now):
            log.info("batch %s %s", b.id, status)
        self.typical_s.pop(b.id, None)
        self.shard_limit.pop(b.id, None)

    def _slots(self, b: BatchRow, exposure: dict[str, int]) -> tuple[list[policy.Slot], dict[str, ProviderSession]]:
        sessions = {s.node_id: s for s in self.dispatcher.router.serving_all(b.model) if not s.draining}
        slots = []
        for s in sessions.values():
            load = s.load
            elsewhere = max(0, load.in_flight + load.queued - len(s.channels)) if load else 0
            free = policy.batch_slots(s.offer.max_concurrency, len(s.channels) + elsewhere, self.reserve_slots)
            slots.append(policy.Slot(s.node_id, free, exposure.get(s.node_id, 0)))
        return slots, sessions

    async def _dispatch(self, b: BatchRow, counts: dict[str, int], now: float) -> None:
        if policy.require_verified(json.loads(b.meta or "{}")) and not self.hub.model_verified(b.model):
            return  # its items wait (until the batch expires) for an admitted checker of the model
        async with self._exposing:
            await self._dispatch_shards(b, counts, now)

    async def _dispatch_shards(self, b: BatchRow, counts: dict[str, int], now: float) -> None:
        exposure = await self.bs.exposure(b.id)
        slots, sessions = self._slots(b, exposure)
        task = "embeddings" if b.endpoint == "/v1/embeddings" else "generate"
        cap = policy.share_cap(b.total, b.max_share)
        claimable = counts["claimable"]
        while claimable > 0:
            slot = policy.pick_provider(slots, b.total, b.max_share, set(), self.rng)
            if slot is None:
                return
            n = policy.shard_items(task, b.max_weight, policy.cap_room(slot, cap), claimable,
                                   sum(s.free for s in slots))
            n = min(n, self.shard_limit.get(b.id, n))
            if n <= 0:
                return
            run_id = "bat-" + uuid.uuid4().hex
            items = await self.bs.claim(b.id, self.owner, run_id, n, self.lease_s, now, MAX_ITEM_ATTEMPTS)
            if not items:  # what is left was tried everywhere it could be
                await self._close_exhausted(b)
                return
            claimable -= len(items)
            shard = await asyncio.to_thread(Shard.build, b, run_id, items)
            ticket = await self.admit(b.key_id, b.model, shard.tokens_in + shard.max_out)
            if ticket is None:  # over the key's limits: the items wait for a later tick
                await self.bs.release(b.id, run_id, tried=False)
                return
            bound = self.metering.bound(self.dispatcher.router.serving_all(b.model), b.model, shard.tokens_in,
                                        shard.max_out, images=shard.images)
            if not await self.bs.reserve_run(b.id, run_id, -(-bound // len(items)), b.max_cost, now):
                ticket.release(0)
                await self.bs.release(b.id, run_id, tried=False)
                if len(items) > 1:  # a smaller shard may still fit under the cost cap
                    self.shard_limit[b.id] = len(items) // 2
                    claimable += len(items)
                    continue
                await self._cost_cap_reached(b, now)
                return
            await self.bs.expose(b.id, slot.provider, len(items))
            slots = [policy.Slot(s.provider, s.free - 1, s.seen + len(items)) if s is slot else s for s in slots]
            running = Running(b.id, run_id, time.monotonic(), {slot.provider}, len(items), ticket=ticket)
            self.running[run_id] = running
            running.task = asyncio.create_task(self._run(b, shard, sessions[slot.provider], running))

    async def _close_exhausted(self, b: BatchRow) -> None:
        await self.bs.close_rest(b.id, lambda row: error_line(
            b.id, row.idx, row.custom_id, "provider_error",
            f"no provider could serve this request in {MAX_ITEM_ATTEMPTS} tries", 502), time.time(),
            min_attempts=MAX_ITEM_ATTEMPTS)

    async def _cost_cap_reached(self, b: BatchRow, now: float) -> None:
        """No more shards fit under the batch's cost cap: once nothing of it is running, the rest fails."""
        counts = await self.bs.counts(b.id, now)
        if counts["leased_live"] == 0 and counts["charging"] == 0:
            await self.bs.close_rest(b.id, lambda row: error_line(
                b.id, row.idx, row.custom_id, "cost_cap_reached",
                f"not run: the batch's cost cap of {b.max_cost:,} µcr would be exceeded"), now)

    def _stragglers(self, b: BatchRow, now: float) -> None:
        for r in list(self.running.values()):
            if r.batch_id != b.id or not policy.straggler(time.monotonic() - r.started, self.typical_s.get(b.id),
                                                           r.duplicated, 0):
                continue
            r.duplicated = True  # decided once per shard, whether or not a second provider is free
            self._spawn_copy(b, r)

    def _spawn_copy(self, b: BatchRow, r: Running) -> None:
        async def go() -> None:
            session = await self._another(b, r, r.n_items)
            if session is not None:
                r.extra.put_nowait(session)

        spawn(go())

    async def _another(self, b: BatchRow, r: Running, count: int) -> ProviderSession | None:
        """A provider this run has not tried, with a free slot and room under the privacy cap."""
        async with self._exposing:
            exposure = await self.bs.exposure(b.id)
            slots, sessions = self._slots(b, exposure)
            cap = policy.share_cap(b.total, b.max_share)
            slots = [s for s in slots if policy.cap_room(s, cap) >= count]
            slot = policy.pick_provider(slots, b.total, b.max_share, r.tried, self.rng)
            if slot is None:
                return None
            r.tried.add(slot.provider)
            await self.bs.expose(b.id, slot.provider, count)
            return sessions[slot.provider]

    # ------------------------------------------------------------ one shard

    async def _run(self, b: BatchRow, shard: Shard, first: ProviderSession, r: Running) -> None:
        try:
            await self._run_inner(b, shard, first, r)
        except asyncio.CancelledError:
            await asyncio.shield(self.bs.release(b.id, shard.run_id))
            raise
        except Exception:  # noqa: BLE001 - one shard's trouble must not stop the batch
            log.exception("batch %s: shard %s failed", b.id, shard.run_id)
            await self.bs.release(b.id, shard.run_id)
        finally:
            self.running.pop(shard.run_id, None)
            if r.ticket is not None:
                r.ticket.release(r.used_tokens)
            self.wake()

    async def _run_inner(self, b: BatchRow, shard: Shard, first: ProviderSession, r: Running) -> None:
        try:
            hold = await self.metering.reserve(b.account, self.dispatcher.router.serving_all(b.model), b.model,
                                               shard.tokens_in, shard.max_out, images=shard.images)
        except errors.PaymentRequired as exc:
            await self.bs.finish(b.id, shard.run_id, [
                Finished(c.idx, False, error_line(b.id, c.idx, c.custom_id, "insufficient_quota", exc.message, 402))
                for c in shard.items], charging=False)
            return
        async with hold:
            started = time.monotonic()
            outcome = await self._race(b, shard, first, r)
            if outcome is None:
                await self.bs.release(b.id, shard.run_id)
                await self._close_exhausted(b)
                return
            elapsed = time.monotonic() - started
            prev = self.typical_s.get(b.id)
            self.typical_s[b.id] = elapsed if prev is None else 0.8 * prev + 0.2 * elapsed
            cost = self.metering.cost(hold, b.model, outcome.session, outcome.done, shard.images)
            results = shard.results(b, outcome, cost)
            if not await self.bs.finish(b.id, shard.run_id, results, charging=cost > 0):
                return  # our lease went to another gateway meanwhile: its run counts, not ours
            charged = self.metering.charge(hold, shard.run_id, b.model, outcome.session, outcome.done, b.account,
                                           shard.payload, outcome.text)
            if charged > 0:
                self.to_confirm[shard.run_id] = (b.id, time.monotonic())
            u = outcome.done.receipt.usage
            r.used_tokens = u.prompt_tokens + u.completion_tokens
            self.store.record_request(request_id=shard.run_id, at=time.time(), key_id=b.key_id, account=b.account,
                                      model=b.model, provider=outcome.provider, status="ok",
                                      attempts=outcome.attempts, prompt_tokens=u.prompt_tokens,
                                      completion_tokens=u.completion_tokens, latency_ms=elapsed * 1000,
                                      cost=charged)

    async def _race(self, b: BatchRow, shard: Shard, first: ProviderSession, r: Running) -> Outcome | None:
        """Run the shard on `first`; on failure on another provider; a straggler copy may join."""
        deadline = time.monotonic() + SHARD_TIMEOUT_S
        running: dict[asyncio.Task[Outcome | None], ProviderSession] = {}

        def start(session: ProviderSession) -> None:
            running[asyncio.create_task(self.dispatcher.run_on(session, shard.run_id, b.model, shard.payload,
                                                               deadline))] = session

        start(first)
        attempts = 1
        try:
            while running:
                extra = asyncio.create_task(r.extra.get())
                done, _ = await asyncio.wait([*running, extra], return_when=asyncio.FIRST_COMPLETED)
                if extra in done:
                    start(extra.result())
                    attempts += 1
                else:
                    extra.cancel()
                for task in done:
                    if task is extra:
                        continue
                    running.pop(task)
                    outcome = task.result()
                    if outcome is not None:
                        outcome.attempts = attempts
                        return outcome
                    if not running and attempts < MAX_PROVIDERS_PER_RUN:
                        session = await self._another(b, r, len(shard.items))
                        if session is not None:
                            start(session)
                            attempts += 1
            return None
        finally:
            for task in running:
                task.cancel()

    # ------------------------------------------------------------ charges

    async def _confirm(self, now: float) -> None:
        """Mark runs done once the ledger has their charge; rerun those whose charge never arrives."""
        mono = time.monotonic()
        if self.to_confirm:
            paid = await self._paid(list(self.to_confirm))
            for run_id, (batch_id, at) in list(self.to_confirm.items()):
                if run_id in paid:
                    await self.bs.confirm(batch_id, run_id, True)
                elif mono - at > self.confirm_wait_s:
                    log.warning("batch %s: charge for %s never settled; running its items again", batch_id, run_id)
                    await self.bs.confirm(batch_id, run_id, False)
                else:
                    continue
                del self.to_confirm[run_id]
        if now - self._recovered > 2.0:  # runs left `charging` by a gateway that died
            self._recovered = now
            orphans = [o for o in await self.bs.orphans(now) if o[1] not in self.to_confirm]
            if orphans:
                paid = await self._paid([r for _, r, _ in orphans])
                for batch_id, run_id, until in orphans:
                    if run_id in paid:
                        await self.bs.confirm(batch_id, run_id, True)
                    elif until < now - self.confirm_wait_s:
                        # Its gateway has been gone longer than any charge can take to settle
                        # (a receipt unsigned by then is never paid): run the items again.
                        await self.bs.confirm(batch_id, run_id, False)

    async def _paid(self, run_ids: list[str]) -> set[str]:
        """Which of these runs the ledger has charged (each request id is paid at most once)."""
        return await self.ledger.paid(run_ids)


__all__ = ["Runner", "error_line", "item_id", "ItemRow"]
