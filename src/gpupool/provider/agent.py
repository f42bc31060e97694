"""The provider agent: dials out to gateways, announces a signed offer, serves work.

    agent = ProviderAgent(identity, backends, settings)
    await agent.run()          # until agent.request_drain() (SIGTERM) finishes

One `GatewayLink` (provider/gateway_link.py) per gateway URL keeps a WebSocket
open with exponential backoff and jitter between attempts; more gateways, learned from
the ones it was told, are added up to `--gateways-max` (provider/discovery.py). All
links share one `Admission`, so the provider's concurrency limit holds across gateways. On drain the provider tells every
gateway, refuses new work (retryable, so gateways move it elsewhere), finishes
what is in flight, then leaves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

import msgspec

from gpupool import protocol
from gpupool.config import ProviderSettings
from gpupool.errors import StartupError
from gpupool.identity import Identity
from gpupool.market.pricing import Price
from gpupool.protocol import LoadReport, ModelOffer, Offer
from gpupool.provider.admission import Admission
from gpupool.provider.backends import Backend
from gpupool.provider.discovery import Discovery
from gpupool.provider.gateway_link import GatewayLink
from gpupool.provider.hardware import probe

log = logging.getLogger("gpupool.provider")


class ProviderAgent:
    def __init__(self, identity: Identity, backends: Mapping[str, Backend], settings: ProviderSettings,
                 prices: Mapping[str, Price] | None = None):
        if not backends:
            raise ValueError("a provider must serve at least one model (--serve NAME=BACKEND[:SPEC])")
        self.identity = identity
        self.operator: Identity | None = None  # the operator key vouching for this node (--operator-key-file)
        self.prices = dict(prices or {})
        self.backends = dict(backends)
        self.settings = settings
        self.admission = Admission(settings.max_concurrency, settings.max_queue)
        self.draining = False
        self.answers: dict[tuple[str, str], int] = {}  # (model, outcome) -> answers sent (provider/metrics.py)
        self._drain_requested = asyncio.Event()
        self._links: list[GatewayLink] = []
        self._link_tasks: dict[GatewayLink, asyncio.Task[None]] = {}
        self._hardware = probe()
        try:  # refused here in one line, rather than by every gateway as a garbage frame
            protocol.decode(protocol.encode(self.make_offer(models=[])))  # backends may not be loaded yet
        except protocol.ProtocolError as exc:
            raise ValueError(f"this provider's offer is outside the protocol's bounds "
                             f"(docs/security.md, peer limits): {str(exc).removeprefix('undecodable frame: ')}") from None

    def _priced(self, offer: ModelOffer) -> ModelOffer:
        price = self.prices.get(offer.name)
        if price is None:
            return offer
        return msgspec.structs.replace(offer, price_in=price.per_m_in, price_out=price.per_m_out,
                                       price_image=price.per_image)

    def make_offer(self, models: list[ModelOffer] | None = None) -> Offer:
        offer = Offer(
            node_id=self.identity.node_id,
            models=[self._priced(b.offer()) for b in self.backends.values()] if models is None else models,
            hardware=self._hardware,
            region=self.settings.region,
            latitude=self.settings.latitude,
            longitude=self.settings.longitude,
            max_concurrency=self.settings.max_concurrency,
            issued_at=time.time(),
        )
        return protocol.sign_offer(offer, self.identity, self.operator)

    async def report_load(self) -> None:
        """Send the current load to every connected gateway."""
        report = self.load_report()
        await asyncio.gather(*(link.send_load(report) for link in self._links), return_exceptions=True)

    def load_report(self) -> LoadReport:
        return LoadReport(
            in_flight=self.admission.in_flight,
            queued=self.admission.queued,
            capacity=self.admission.capacity,
        )

    async def start_backends(self) -> None:
        """Load every model; one that fails (engine down, no such directory) is left out, with a
        line saying why, and the others are served. StartupError when none could be loaded."""
        failed: dict[str, str] = {}
        for backend in list(self.backends.values()):
            log.info("loading %s (%s%s)", backend.name, backend.kind, f" {backend.spec}" if backend.spec else "")
            try:
                await backend.start()
            except Exception as exc:  # noqa: BLE001 - any load failure is this model's, not the provider's
                failed[backend.name] = str(exc) or type(exc).__name__
                del self.backends[backend.name]
                await _close_quietly(backend)
                log.error("not serving %s: %s", backend.name, failed[backend.name])
        if failed and not self.backends:
            raise StartupError("no model could be loaded: " + "; ".join(f"{n}: {why}" for n, why in failed.items()))
        if failed:
            log.warning("serving %s; left out %s (fix it and restart the provider)",
                        ", ".join(self.backends), ", ".join(failed))
        else:
            log.info("loaded %s", ", ".join(self.backends))

    def request_drain(self) -> None:
        self._drain_requested.set()

    @property
    def links(self) -> list[GatewayLink]:
        return list(self._links)

    def add_link(self, url: str) -> None:
        """Connect to one more gateway (and keep reconnecting until the drain)."""
        link = GatewayLink(self, url)
        self._links.append(link)
        self._link_tasks[link] = asyncio.create_task(link.run(), name=f"link-{link.url}")

    def drop_link(self, link: GatewayLink) -> None:
        self._links.remove(link)
        task = self._link_tasks.pop(link, None)
        if task is not None:
            task.cancel()

    async def run(self) -> None:
        await self.start_backends()
        for url in self.settings.gateways:
            self.add_link(url)
        finder = (asyncio.create_task(Discovery(self).run(), name="gateway-discovery")
                  if self.settings.gateways_max > len(self._links) else None)
        try:
            await self._drain_requested.wait()
            await self._drain()
        finally:
            tasks = [*self._link_tasks.values(), *([finder] if finder else [])]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for backend in self.backends.values():
                await backend.close()

    async def _drain(self) -> None:
        self.draining = True
        log.info("draining: refusing new work, finishing %d in flight", self.admission.in_flight)
        await asyncio.gather(*(link.send_drain() for link in self._links), return_exceptions=True)
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self.admission.in_flight + self.admission.queued > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.gather(*(link.flushed() for link in self._links), return_exceptions=True)
        left = self.admission.in_flight + self.admission.queued
        if left:
            log.warning("drain timeout: leaving with %d requests unfinished", left)
        else:
            log.info("drained")


async def _close_quietly(backend: Backend) -> None:
    try:
        await backend.close()
    except Exception:  # noqa: BLE001 - it never started: whatever it holds goes with the process
        pass
