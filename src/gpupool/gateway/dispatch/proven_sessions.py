"""Providers that have answered us, and trials of those that have not.

`ProvenSessions`: per model, the connected sessions of providers that have answered us,
where a new provider's companion is drawn from.

A request whose first copy goes to a provider that never answered the gateway is raced
beside a proven one (`LiveRouter.needs_companion`). Just after a large pool joined nearly
every draw is new, so nearly every request looks for a proven provider; walking the
model's whole pool for one cost ~4 ms a request at 10,000 sessions (bench/scale). This
keeps them apart as the pool changes, so a request draws from them in O(sample).

    proven = ProvenSessions()
    proven.add(session)          # its provider answered (first time), or it joined already proven
    proven.update(session)       # its offer changed (models come and go)
    proven.remove(session)       # it left
    proven.of("llama")           # the model's proven sessions (in no order)

Each change costs O(models in the session's offer), whatever the size of the pool.

`Trials`: the trials running (one at a time per new provider) and the rate new ones may
start at (`trials_per_s`).
"""

from __future__ import annotations

import time

from gpupool.gateway.peers.session import ProviderSession
from gpupool.token_bucket import Bucket

_NONE: list[ProviderSession] = []
# Trials that may start at once after a quiet spell, by the per-request bound (`Trials`).
TRIAL_BURST = 10.0


class ProvenSessions:
    def __init__(self) -> None:
        self._by_model: dict[str, list[ProviderSession]] = {}
        self._at: dict[str, dict[str, int]] = {}  # model -> node id -> position in its list
        self._models: dict[str, tuple[ProviderSession, tuple[str, ...]]] = {}  # node id -> (session, models)

    def of(self, model: str) -> list[ProviderSession]:
        return self._by_model.get(model, _NONE)

    def __contains__(self, session: ProviderSession) -> bool:
        entry = self._models.get(session.node_id)
        return entry is not None and entry[0] is session

    def add(self, session: ProviderSession) -> None:
        if session.closed or session in self:
            return
        self.remove_node(session.node_id)  # a replaced session of the same provider
        models = tuple(session.models)
        self._models[session.node_id] = (session, models)
        for model in models:
            sessions = self._by_model.setdefault(model, [])
            self._at.setdefault(model, {})[session.node_id] = len(sessions)
            sessions.append(session)

    def update(self, session: ProviderSession) -> None:
        """Its offer changed: index it under the models it serves now."""
        if session in self:
            self.remove_node(session.node_id)
            self.add(session)

    def remove(self, session: ProviderSession) -> None:
        if session in self:
            self.remove_node(session.node_id)

    def remove_node(self, node_id: str) -> None:
        entry = self._models.pop(node_id, None)
        if entry is None:
            return
        for model in entry[1]:
            sessions, at = self._by_model[model], self._at[model]
            i = at.pop(node_id)
            last = sessions.pop()
            if i < len(sessions):  # swap the last one into the hole
                sessions[i] = last
                at[last.node_id] = i
            if not sessions:
                del self._by_model[model], self._at[model]

    def mismatches(self, expected: dict[str, set[str]]) -> list[str]:
        """Where this differs from `expected` (model -> proven node ids, by a full scan); empty: none."""
        mine = {m: {s.node_id for s in ss} for m, ss in self._by_model.items()}
        out = [f"{m}: {sorted(mine.get(m, set()) ^ expected.get(m, set()))[:5]} differ"
               for m in sorted(set(mine) | set(expected)) if mine.get(m, set()) != expected.get(m, set())]
        out += [f"{m}: positions disagree" for m, ss in self._by_model.items()
                if any(self._at[m][s.node_id] != i for i, s in enumerate(ss))]
        return out


class Trials:
    """Node id -> its trials still running, and what bounds starting new ones: each trial costs a
    second run, so a flood of fresh sessions meets a bounded number of them and the work of every
    other request stays the same. A token bucket of `per_s` a second (a second's worth deep; 0:
    unlimited) bounds them in time; a credit that each request adds `share` to (`TRIAL_BURST` deep;
    1: unlimited) bounds them per request: at a sequential client's ~150 requests a second, 50
    trials a second were a third of all requests, each doing twice the work at the gateway
    (bench/scale at 10,000 new keys)."""

    def __init__(self, per_s: float, share: float = 1.0):
        if not 0 < share <= 1:
            raise ValueError(f"--trial-share must be above 0 and at most 1 (1: no bound), not {share:g}")
        self.running: dict[str, int] = {}
        self._bucket = Bucket.full(per_s * 60, 1.0, time.monotonic()) if per_s > 0 else None
        self._share = share if share < 1.0 else None
        self._credit = TRIAL_BURST

    def __contains__(self, node_id: str) -> bool:
        return node_id in self.running

    def __bool__(self) -> bool:
        return bool(self.running)

    def requested(self) -> None:
        """A request started (its first pick): it adds `share` to the trials' credit."""
        if self._share is not None:
            self._credit = min(TRIAL_BURST, self._credit + self._share)

    def could_start(self) -> bool:
        """Whether a trial may start now (takes nothing: `may_start` does)."""
        return ((self._share is None or self._credit >= 1.0)
                and (self._bucket is None or self._bucket.wait_for(1.0, time.monotonic()) <= 0))

    def may_start(self) -> bool:
        if not self.could_start():
            return False
        if self._bucket is not None:
            self._bucket.take(1.0)
        if self._share is not None:
            self._credit -= 1.0
        return True

    def begin(self, node_id: str) -> None:
        self.running[node_id] = self.running.get(node_id, 0) + 1

    def end(self, node_id: str) -> None:
        left = self.running.get(node_id, 0) - 1
        if left > 0:
            self.running[node_id] = left
        else:
            self.running.pop(node_id, None)
