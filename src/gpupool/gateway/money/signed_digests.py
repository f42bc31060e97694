"""Receipt digests that providers' verified Statements listed, waiting for their charge.

A provider signs its receipts in bulk (one Statement every ~50 ms); billing pays a queued
charge once its digest is here. The digests are the provider's to choose, so the map is
bounded per provider (`per_node`: its oldest go first) and entries expire after `ttl_s`
whether or not anything is ever charged (`prune`, on billing's timer): a provider stating
made-up digests costs the gateway a bounded amount of memory, given back within `ttl_s`.

    signed = SignedDigests(per_node=16_384, ttl_s=60)
    signed.add("node", [digest], now)
    signed.take("node", digest)   # True once: the charge is covered
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice


class SignedDigests:
    def __init__(self, per_node: int, ttl_s: float):
        self.per_node = max(1, per_node)
        self.ttl_s = ttl_s
        # node -> digest -> when stated; dicts keep insertion order, so the oldest come first.
        self._by_node: dict[str, dict[bytes, float]] = {}

    def __len__(self) -> int:
        return sum(len(m) for m in self._by_node.values())

    def add(self, node: str, digests: Iterable[bytes], now: float) -> None:
        held = self._by_node.setdefault(node, {})
        for d in digests:
            held.pop(d, None)  # re-stated: it moves to the young end
            held[d] = now
        over = len(held) - self.per_node
        if over > 0:  # far more than its charges in flight: the oldest were never going to be charged
            for d in list(islice(held, over)):
                del held[d]

    def take(self, node: str, digest: bytes) -> bool:
        """Whether `node` stated `digest` (each statement covers one charge: it is used up)."""
        held = self._by_node.get(node)
        if held is None or held.pop(digest, None) is None:
            return False
        if not held:
            del self._by_node[node]
        return True

    def prune(self, now: float) -> None:
        """Forget digests stated before `now - ttl_s` (receipts of requests never charged here)."""
        stale = now - self.ttl_s
        for node, held in list(self._by_node.items()):
            old = []
            for d, at in held.items():  # oldest first: stop at the first one still fresh
                if at >= stale:
                    break
                old.append(d)
            for d in old:
                del held[d]
            if not held:
                del self._by_node[node]
