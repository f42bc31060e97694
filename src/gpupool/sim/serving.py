"""A request's serving set as the gateway's router draws it, for the simulator's views.

    cands = draw(day, view, k)    # a few random providers online now, as `LiveRouter.serving` takes them
    d = routing_policy.pick_with_reasons(cands, now, rng, ...)

The live gateway does not score every provider of a model: where more than `route_sample`
(default 6) serve it, each request looks at a random sample of that many that are open and
not suspended (held-back ones only if no other was drawn; gateway/dispatch/router.py
`_draw`), and the best of those gets it. In a pool of 7-16 providers `routing.policy`
would otherwise scan them all (`scan_below`), so a simulated router that skips this step
sends everything to the best provider where the gateway spreads work over whoever was
drawn. (tests/integration/sim_live.py; `Policies.route_sample`.)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from gpupool.routing.candidate import Candidate
from gpupool.sim.trust import Trust


class _Pool(Protocol):
    """What `draw` reads of a `sim.day.Day` (not imported: the day imports this module)."""

    online_ids: Sequence[int]
    leave_now: Sequence[float]
    now: float
    rng: random.Random
    trust: Trust


class _Lazy(Protocol):
    """What `draw` needs of a view (`sim.view.View`): the online providers, and one by its index."""

    def __len__(self) -> int: ...
    def __getitem__(self, k: int) -> Candidate: ...
    def at(self, i: int, draining: bool) -> Candidate: ...


def draw(day: _Pool, view: _Lazy, k: int) -> Sequence[Candidate]:
    """Up to `k` of `view`'s candidates (the providers online now) drawn as the gateway does: at most
    4k random draws, repeats skipped, gone or suspended ones left out; the whole view if none is left
    (the gateway then takes every eligible session)."""
    ids, n, rand = day.online_ids, len(day.online_ids), day.rng.random
    suspended, held_back, leave = day.trust.suspended, day.trust.held_back, day.leave_now
    ready: list[int] = []
    held: list[int] = []
    seen: set[int] = set()
    for _ in range(4 * k):
        j = int(rand() * n)
        if j in seen:
            continue
        seen.add(j)
        i = ids[j]
        if suspended[i] or day.now >= leave[i]:
            continue
        (held if held_back[i] else ready).append(i)
        if len(ready) >= k:
            break
    # What `view[j]` would build, without reading again what was just checked: a drawn provider is
    # online, not suspended and not leaving, so it is draining exactly when it is held back.
    if ready:
        at = view.at
        return [at(i, False) for i in ready]
    if held:
        at = view.at
        return [at(i, True) for i in held]
    return view  # type: ignore[return-value]
