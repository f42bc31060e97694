"""A provider finds the network's other gateways and connects to the nearest few.

    finder = Discovery(agent)          # the agent's links are its --gateway URLs
    await finder.run()                 # every --gateway-discovery-s, until the agent drains

A provider is told one gateway (or a few); behind a load balancer the network may have
many. Each round reads `GET /v1/gateways` from the gateways it is connected to, measures
the round-trip time to each gateway listed that it is not connected to (the best of a
few `GET /healthz`), and connects to the nearest until it holds `--gateways-max` links
(`choose`, a pure policy). While nothing changes, rounds grow further apart (up to an
hour), so a large, stable network is not polled every minute by every provider.
Gateways it was told (`--gateway`) are always kept; a learned one that is no longer
listed anywhere and has lost its connection is dropped, which makes room for another.
Unreachable gateways are never chosen.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Iterable
from typing import Any, Protocol

import httpx

from gpupool.config import ProviderSettings
from gpupool.provider.peer_link import PeerLink
from gpupool.tls import client_context
from gpupool.urls import http_url, ws_url

log = logging.getLogger("gpupool.provider")

RTT_PROBES = 3
PROBE_TIMEOUT_S = 2.0
MAX_CANDIDATES = 32  # gateways probed per round, whatever a list says
FIRST_ROUND_S = 1.0  # the first round soon after start: the first links need a moment to connect
QUIET_MAX_S = 3600.0  # the longest wait between rounds while nothing changes


class LinkingNode(Protocol):
    settings: ProviderSettings
    draining: bool

    @property
    def links(self) -> list[PeerLink]: ...

    def add_link(self, url: str) -> None: ...

    def drop_link(self, link: PeerLink) -> None: ...


def base_url(url: str) -> str:
    """A gateway's address as links and lists compare it: ws(s)://host:port, no path."""
    return ws_url(url).removesuffix("/v1/providers/ws").rstrip("/")


def choose(rtts: dict[str, float | None], room: int) -> list[str]:
    """The `room` nearest reachable gateways (RTT in seconds; None: unreachable), nearest first."""
    reachable = sorted((rtt, url) for url, rtt in rtts.items() if rtt is not None)
    return [url for _, url in reachable[:max(0, room)]]


class Discovery:
    def __init__(self, node: LinkingNode):
        self.node = node
        self.settings = node.settings
        self.told = {base_url(u) for u in self.settings.gateways}
        ca = self.settings.ca_cert
        self._verify: ssl.SSLContext | bool = client_context(ca) if ca else True
        self._last_listed: set[str] = set()

    async def run(self) -> None:
        await asyncio.sleep(FIRST_ROUND_S * random.uniform(1.0, 2.0))
        wait = self.settings.gateway_discovery_s
        while not self.node.draining:
            try:
                changed = await self.round()
            except Exception:  # noqa: BLE001 - a bad list or a network blip: the links stay, try later
                log.warning("gateway discovery failed; trying again later", exc_info=True)
                changed = False
            # A network that stays the same is read less and less often (10,000 providers
            # asking every minute would be a steady load on the gateways); a change starts over.
            wait = self.settings.gateway_discovery_s if changed else min(wait * 2, QUIET_MAX_S)
            await asyncio.sleep(wait * random.uniform(0.75, 1.25))

    async def round(self) -> bool:
        """One look at the lists; True when this provider's gateways or the lists changed."""
        links = self.node.links
        have = {base_url(link.url): link for link in links}
        known_ids = {link.gateway_id for link in links if link.gateway_id}
        async with httpx.AsyncClient(verify=self._verify, timeout=PROBE_TIMEOUT_S) as client:
            listed = await self._listed(client, [u for u, link in have.items() if link.connected])
            changed, self._last_listed = set(listed) != self._last_listed, set(listed)
            # Learned links whose gateway left every list and whose connection is gone make room.
            for url, link in have.items():
                if url not in self.told and url not in listed and not link.connected:
                    log.info("gateway %s is no longer listed: leaving it", url)
                    self.node.drop_link(link)
                    del have[url]
                    changed = True
                    break  # `have` changed: the rest next round
            room = self.settings.gateways_max - len(have)
            if room <= 0:
                return changed
            candidates = [u for u, node_id in listed.items() if u not in have and node_id not in known_ids]
            rtts = dict(zip(candidates, await asyncio.gather(*(self._rtt(client, u) for u in
                                                               candidates[:MAX_CANDIDATES]))))
        chosen = choose(rtts, room)
        for url in chosen:
            log.info("connecting to gateway %s too (listed by a peer; RTT %.1f ms)", url, 1000 * (rtts[url] or 0))
            self.node.add_link(url)
        return changed or bool(chosen)

    async def _listed(self, client: httpx.AsyncClient, urls: Iterable[str]) -> dict[str, str]:
        """Every gateway the connected ones list: base URL -> node id ("" when not known)."""
        found: dict[str, str] = {}
        for answer in await asyncio.gather(*(self._list(client, u) for u in urls)):
            for entry in answer[:MAX_CANDIDATES * 4]:
                try:
                    found.setdefault(base_url(str(entry["url"])), str(entry.get("node_id") or ""))
                except (KeyError, TypeError, ValueError):
                    continue  # one bad entry does not spoil the list
        return found

    async def _list(self, client: httpx.AsyncClient, url: str) -> list[Any]:
        try:
            response = await client.get(http_url(url) + "/v1/gateways")
            data = response.json().get("data", []) if response.status_code == 200 else []
            return data if isinstance(data, list) else []
        except (httpx.HTTPError, ValueError, AttributeError):
            return []  # an older gateway without the route, or one not answering: nothing learned from it

    async def _rtt(self, client: httpx.AsyncClient, url: str) -> float | None:
        """The best of a few round trips to the gateway's /healthz; None when it does not answer."""
        best: float | None = None
        for _ in range(RTT_PROBES):
            started = time.perf_counter()
            try:
                response = await client.get(http_url(url) + "/healthz")
            except httpx.HTTPError:
                return None
            if response.status_code != 200:
                return None
            took = time.perf_counter() - started
            best = took if best is None else min(best, took)
        return best
