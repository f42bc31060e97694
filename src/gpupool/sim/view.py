"""The providers online now as one regional gateway's router sees them, for one task (chat or embeddings).

    view = View(day, g, embed)    # one per gateway and task; `bind()` once the day's lists exist
    c = view[k]                   # the k-th online provider's `routing.Candidate`, built when drawn
    c = view.at(i, draining)      # provider i's (`serving.draw`, which has checked `draining` itself)

`routing.pick_with_reasons` takes it as its sequence of candidates and builds only the few it
draws. Besides the day's shared per-provider lists, each view keeps what its gateway learned:
speeds (`routing.speed.observe`) and breakers (`routing.breaker`).
"""

from __future__ import annotations

import random
from collections.abc import MutableSequence, Sequence
from typing import Protocol

from gpupool import frozen_records as records
from gpupool.routing import breaker as brk
from gpupool.routing.candidate import Candidate
from gpupool.routing.speed import SpeedEstimate
from gpupool.sim.trust import Trust

# (index, id, concurrency, region, price in, price out, claim) of one provider, for one task.
Fixed = tuple[int, str, int, str, int, int, SpeedEstimate | None]
_CandTwin = records.twin(Candidate)
assert len(Candidate.__slots__) == 15, "a new Candidate field must be set in View.at too"


class _Day(Protocol):
    """What a view reads of a `sim.day.Day` (not imported: the day imports this module)."""

    n: int
    now: float
    rng: random.Random
    gateways: tuple[str, ...]
    online_ids: Sequence[int]
    leave_now: Sequence[float]
    trust: Trust
    own: list[list[int]]
    backlog: list[MutableSequence[float]]
    total: list[int]
    rtt: list[Sequence[float]]  # per gateway
    # Per task (chat, embeddings), per provider (`Fixed`); and the same of the providers online now.
    fixed: tuple[list[Fixed], list[Fixed]]
    online_fixed: tuple[list[Fixed], list[Fixed]]


class View(Sequence[Candidate]):
    """The providers online now, as one gateway sees them for one task; built lazily when drawn."""

    def __init__(self, day: _Day, g: int, embed: bool) -> None:
        self.day, self.g, self.embed = day, g, embed
        self.speed: list[SpeedEstimate | None] = [None] * day.n
        self.breakers = [brk.CLOSED] * day.n
        self.region = day.gateways[g]
        self.rows: list[Fixed] = []
        self.leave: Sequence[float] = []

    def __len__(self) -> int:
        return len(self.day.online_ids)

    def __getitem__(self, k: int) -> Candidate:  # type: ignore[override]
        # The k-th online provider's fixed fields straight from this step's list (`step`), not
        # through its index and then the day-long list: one random memory read less per draw.
        row = self.rows[k]
        i = row[0]
        # Held back (verdicts awaited) as the router's `serving` does, less its "unless nobody else".
        return self._build(row, True if self.suspended[i] or self.held_back[i] else self.day.now >= self.leave[i])

    def step(self) -> None:
        """A new churn step (`Day._step`): this step's online providers and departure times."""
        self.rows = self.day.online_fixed[self.embed]
        self.leave = self.day.leave_now

    def at(self, i: int, draining: bool) -> Candidate:
        """Provider i's candidate (`serving.draw` knows `draining` already from its own checks)."""
        return self._build(self.fixed[i], draining)

    def _build(self, row: Fixed, draining: bool) -> Candidate:
        # A real `Candidate` with every field set, built as its writable twin and then given its
        # class (gpupool/frozen_records.py): the frozen dataclass's generated __init__ costs ~4x as much, and
        # this runs ~6 times per request. The fields that never change sit in one tuple per
        # provider, so a random provider's read touches a few places in memory, not fifteen
        # lists. tests/unit/test_sim_internet.py checks the result equals the constructor's.
        i, pid, conc, region, price_in, price_out, claim = row
        own = self.own[i]
        c = _CandTwin()
        c.provider_id = pid
        c.in_flight = own
        c.max_concurrency = conc
        c.draining = draining
        c.region = region
        c.rtt_s = self.rtt[i]
        c.queued = self.total[i] - own
        c.backlog_s = self.backlog[i] if own else None
        c.price_in = price_in
        c.price_out = price_out
        c.reputation = self.score[i]
        c.speed = self.speed[i]
        c.claimed_speed = claim
        c.breaker = self.breakers[i]
        c.models = None
        c.__class__ = Candidate
        return c

    def bind(self) -> None:
        """Keep references to the day's per-provider lists (mutated in place, never replaced)."""
        d, g = self.day, self.g
        self.own, self.suspended = d.own[g], d.trust.suspended
        self.held_back = d.trust.held_back
        self.backlog = d.backlog[g]
        self.total, self.score = d.total, d.trust.score
        self.rtt = d.rtt[g]
        # One tuple per provider of what never changes during the day, shared by the views of a task
        # (the RTT, the one field that depends on the gateway, comes from its packed array): 2 lists
        # of tuples, not 16, so more of them stay in the cache. (Tried: fresh copies of the id, RTT
        # and prices next to each tuple, for fewer cache lines per draw: no faster, +30% RSS.)
        self.fixed = d.fixed[self.embed]
