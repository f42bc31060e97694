"""Who serves what, kept up to date as the pool changes: model -> live provider sessions.

The hub tells the index of every join, leave, offer change and load report, so a
request finds its model's sessions with one lookup and draws a bounded sample from
them (`LiveRouter.serving`), and the figures the fair share needs (slots, reported
places, the models sharing those slots, the largest prompt and completion offered)
are running sums, not a walk over every session on every request. Each change costs
O(models in that offer), whatever the number of sessions.

    index = ModelIndex(slot_cap=64)
    index.add(session)                 # registered
    index.set_load(session, report)    # a LoadReport
    index.reoffer(session, offer)      # a re-sent Offer (unchanged models: no work)
    index.remove(session)              # left
    pool = index.pools.get("llama")    # .sessions, .slots, .places(), .related(), .limits()
    assert not index.mismatches(hub.sessions.values())   # the full-scan check tests use

`slot_cap` is the operator's cap on what one session counts for in the fair share
(`--max-session-slots`): `max_concurrency` and a load report's `capacity` are the
provider's own word, and one inflated offer must not stretch every key's share.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gpupool.gateway.peers.session import ProviderSession
from gpupool.protocol import LoadReport, ModelOffer, Offer


@dataclass(eq=False)
class ModelPool:
    """One model's live sessions (in no order; O(1) add and remove) and running figures."""

    name: str
    sessions: list[ProviderSession] = field(default_factory=list)
    at: dict[str, int] = field(default_factory=dict)  # node id -> position in `sessions`
    slots: int = 0  # sum of the sessions' capped max_concurrency
    reported: int = 0  # sum of the capped capacity of sessions that sent a load report
    unreported: int = 0  # sessions with no load report yet
    # Other model -> how many of these sessions also serve it (they share the same slots).
    also: dict[str, int] = field(default_factory=dict)
    # Offered max_output_tokens / max_input_tokens -> how many sessions offer that value.
    outs: dict[int, int] = field(default_factory=dict)
    ins: dict[int, int] = field(default_factory=dict)
    _limits: tuple[int, int] | None = None  # cache of limits(); reset when a session comes or goes

    def places(self) -> int | None:
        """Slots plus queues as the providers last reported them; None until every one has."""
        return self.reported if self.sessions and not self.unreported else None

    def related(self) -> tuple[str, ...]:
        return tuple(self.also)

    def limits(self) -> tuple[int, int]:
        """(largest max_output_tokens, largest max_input_tokens) any session offers."""
        if self._limits is None:
            self._limits = (max(self.outs, default=0), max(self.ins, default=0))
        return self._limits


def _count(table: dict, key: object, delta: int) -> None:
    n = table.get(key, 0) + delta
    if n:
        table[key] = n
    else:
        table.pop(key, None)


class ModelIndex:
    def __init__(self, slot_cap: int):
        self.slot_cap = max(1, slot_cap)
        self.pools: dict[str, ModelPool] = {}

    def capped(self, n: int) -> int:
        return min(n, self.slot_cap)

    def add(self, session: ProviderSession) -> None:
        self._apply(session, session.models, session.offer.max_concurrency, session.load, +1)

    def remove(self, session: ProviderSession) -> None:
        self._apply(session, session.models, session.offer.max_concurrency, session.load, -1)

    def reoffer(self, session: ProviderSession, offer: Offer) -> bool:
        """Apply a re-sent Offer to `session` (and the index); False if nothing routing reads changed."""
        models = {m.name: m for m in offer.models}
        same = models == session.models and offer.max_concurrency == session.offer.max_concurrency
        if same:
            session.offer = offer  # e.g. a newer issued_at: nothing indexed moves
            return False
        self.remove(session)
        # A new dict (never mutated in place): requests in flight keep the offer they were
        # dispatched under (`dispatch_offers`), so their price does not change.
        session.offer, session.models = offer, models
        self.add(session)
        return True

    def set_load(self, session: ProviderSession, report: LoadReport) -> None:
        """A load report: only a changed capacity moves the figures (most reports only move in_flight)."""
        old = session.load
        session.load = report
        if old is not None and self.capped(old.capacity) == self.capped(report.capacity):
            return
        for name in session.models:
            pool = self.pools.get(name)
            if pool is None or pool.at.get(session.node_id) is None:
                continue
            if old is None:
                pool.unreported -= 1
            else:
                pool.reported -= self.capped(old.capacity)
            pool.reported += self.capped(report.capacity)

    def _apply(self, session: ProviderSession, models: dict[str, ModelOffer], concurrency: int,
               load: LoadReport | None, sign: int) -> None:
        node = session.node_id
        slots = self.capped(concurrency)
        for name, offer in models.items():
            pool = self.pools.get(name)
            if sign > 0:
                if pool is None:
                    pool = self.pools[name] = ModelPool(name)
                if node in pool.at:
                    continue  # already indexed (never counted twice)
                pool.at[node] = len(pool.sessions)
                pool.sessions.append(session)
            else:
                if pool is None or pool.at.get(node) is None or pool.sessions[pool.at[node]] is not session:
                    continue
                i = pool.at.pop(node)
                last = pool.sessions.pop()
                if last is not session:  # swap the last one into the hole
                    pool.sessions[i] = last
                    pool.at[last.node_id] = i
            pool.slots += sign * slots
            if load is None:
                pool.unreported += sign
            else:
                pool.reported += sign * self.capped(load.capacity)
            for other in models:
                if other != name:
                    _count(pool.also, other, sign)
            _count(pool.outs, offer.max_output_tokens, sign)
            _count(pool.ins, offer.max_input_tokens, sign)
            pool._limits = None
            if not pool.sessions:
                del self.pools[name]

    # ------------------------------------------------------------ the full-scan check

    def mismatches(self, sessions: Iterable[ProviderSession]) -> list[str]:
        """Where the index differs from a full scan of `sessions` (empty: consistent)."""
        fresh = ModelIndex(self.slot_cap)
        for s in sessions:
            if not s.closed:
                fresh.add(s)
        out = []
        for name in sorted(set(fresh.pools) | set(self.pools)):
            a, b = self.pools.get(name), fresh.pools.get(name)
            if a is None or b is None:
                out.append(f"{name}: {'missing' if a is None else 'stale'} in the index")
                continue
            mine = (sorted(a.at), a.slots, a.places(), sorted(a.also.items()), a.limits())
            scan = (sorted(b.at), b.slots, b.places(), sorted(b.also.items()), b.limits())
            if sorted(s.node_id for s in a.sessions) != mine[0] or any(a.sessions[i].node_id != n
                                                                      for n, i in a.at.items()):
                out.append(f"{name}: positions disagree with the session list")
            for what, x, y in zip(("sessions", "slots", "places", "related", "limits"), mine, scan):
                if x != y:
                    out.append(f"{name}: {what} {str(x)[:200]} in the index, {str(y)[:200]} by a scan")
        return out


class Serving(list):  # type: ignore[type-arg]
    """A request's serving set: the sessions it may go to (a bounded sample of a big pool, see
    `LiveRouter.serving`), with its model's `pool` (the whole pool's figures, or None)."""

    __slots__ = ("model", "pool")

    def __init__(self, sessions: Iterable[ProviderSession] = (), model: str = "", pool: ModelPool | None = None):
        super().__init__(sessions)
        self.model = model
        self.pool = pool

    def price_cap(self) -> tuple[int, int] | None:
        """The highest input and output price among these sessions' offers of the model (what a
        hold over them covers); None if there are none."""
        offers = [o for s in self if (o := s.models.get(self.model)) is not None]
        if not offers:
            return None
        return max(o.price_in for o in offers), max(o.price_out for o in offers)


def share_figures(serving: Iterable[ProviderSession], model: str,
                  slot_cap: int) -> tuple[int, int | None, tuple[str, ...]]:
    """(slots, places or None, related models) of `model` for the fair share: the whole pool's running
    figures where `serving` carries them, else counted over `serving` (each session capped)."""
    pool = getattr(serving, "pool", None)
    if pool is not None:
        return pool.slots, pool.places(), pool.related()
    sessions = list(serving)
    slots = sum(min(slot_cap, s.offer.max_concurrency) for s in sessions)
    places = (sum(min(slot_cap, s.load.capacity) for s in sessions)  # type: ignore[union-attr]
              if sessions and all(s.load is not None for s in sessions) else None)
    related = tuple({m for s in sessions for m in s.models} - {model})
    return slots, places, related
