"""The gateway's parts, built and wired in one place: the context every route handler is given.

    gw = Gateway.build(settings, store, identity, ledger)
    await gw.start()            # in the app's lifespan
    ...                         # routes: handler(gw, request)
    await gw.close()

Construction follows the rooms from the bottom up: the hub (the registry of peers), trust
(auditor, hardware proofs), dispatch (which owns the live router and reads trust through a
`TrustView`), canaries, money (billing, quotas, metering), fallback lanes, batches, then the
HTTP edge's limits and the metrics. Who listens to the hub's changes is decided here and
nowhere else; no part looks another up through a third.
"""

from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass, field

from gpupool.config import GatewaySettings
from gpupool.gateway.batches.routes import BatchService
from gpupool.gateway.batches.runner import BatchDeps
from gpupool.gateway.dispatch.dispatcher import Dispatcher
from gpupool.gateway.dispatch.provider_record import TrustView
from gpupool.gateway.edge import image_inputs
from gpupool.gateway.fallback.lanes import Fallbacks
from gpupool.gateway.money.anonymous_limits import AddressLimiter, AnonymousLimit, HoldBack
from gpupool.gateway.money.billing import Billing
from gpupool.gateway.money.metering import Metering
from gpupool.gateway.money.quota import Quotas, Ticket
from gpupool.gateway.money.settlement_keys import SettlementKeys
from gpupool.gateway.peers.hub import Hub
from gpupool.gateway.registry import Registry
from gpupool.gateway.store import Retention, Store
from gpupool.gateway.trust.audits import Auditor
from gpupool.gateway.trust.canaries import Canaries
from gpupool.gateway.trust.hardware_checks import HardwareChecker
from gpupool.gateway.web.auth import ClientKeys
from gpupool.gateway.web.listing_cache import ListingCache
from gpupool.gateway.web.metrics import GatewayMetrics
from gpupool.gateway.web.metrics_collector import LiveCollector
from gpupool.identity import Identity
from gpupool.images import ImageLimits
from gpupool.ledger import Ledger, postings
from gpupool.verify import SamplingPolicy

log = logging.getLogger("gpupool.gateway")
# Providers connected before a restart have their first hardware proof after it within this long.
RETURNING_PROOF_SPREAD_S = 300.0


@dataclass
class Gateway:
    settings: GatewaySettings
    identity: Identity
    store: Store
    ledger: Ledger
    hub: Hub
    dispatcher: Dispatcher
    auditor: Auditor
    hardware_checks: HardwareChecker
    canaries: Canaries
    billing: Billing
    quotas: Quotas  # per-key limits and fair shares (money/limits.py)
    client_key: ClientKeys  # await gw.client_key(request): the caller's API key, or a 401
    metering: Metering  # the money path, shared with batches
    fallbacks: Fallbacks
    batches: BatchService
    holdback: HoldBack  # refused answers held back from clients that flood or ignore Retry-After
    anonymous: AnonymousLimit  # keyless requests and failed keys: a rate per client address
    metrics: GatewayMetrics  # Prometheus (/metrics) and /v1/stats
    gateways: Registry  # this gateway and its peers in the network (GET /v1/gateways)
    settlement_keys: SettlementKeys | None = None  # EVM ledger: registers providers' keys, after settlement
    listings: ListingCache = field(default_factory=ListingCache)  # /v1/models and /v1/market bodies

    @classmethod
    def build(cls, settings: GatewaySettings, store: Store, identity: Identity, ledger: Ledger) -> Gateway:
        evm = isinstance(getattr(ledger, "address", None), str)  # an EVM ledger: providers sign costs for the chain

        async def stake_of(node_id: str) -> int:  # checker admission by stake (checker_min_stake)
            return await ledger.balance(postings.stake(node_id))

        hub = Hub(settings, identity, store, stake_of=stake_of,
                  settlement=(ledger.address, ledger.chain_id) if evm else None)  # type: ignore[attr-defined]

        def bad_receipt(node_id: str, why: str) -> None:
            session = hub.sessions.get(node_id)
            if session is not None:
                hub.disconnect(session, "bad_receipt", why)
            else:
                store.record_event(node_id, "bad_receipt", why)

        billing = Billing(ledger, holder=identity.node_id, fee_bps=settings.fee_bps, tab_size=settings.tab_size,
                          flush_interval_s=settings.settle_interval_s, tab_idle_s=settings.tab_idle_s,
                          audit_window_s=settings.audit_window_s, statement_wait_s=settings.statement_wait_s,
                          on_bad_receipt=bad_receipt,
                          # Several statements' worth per provider: a provider's own charges are
                          # matched within a flush interval, so more are digests nobody will charge.
                          signed_per_node=4 * settings.max_statement_digests)
        auditor = Auditor(hub, store, ledger, sampling=SamplingPolicy(probation_requests=settings.audit_probation_requests),
                          expiry_s=settings.suspension_expiry_s)
        hardware_checks = HardwareChecker(hub.disconnect, interval_s=settings.hardware_proof_interval_s,
                                          max_n=settings.hardware_proof_max_n)
        proofs = settings.hardware_proof_max_n > 0
        trust = TrustView(is_suspended=auditor.is_suspended, is_held_back=auditor.is_held_back,
                          reputation_of=auditor.reputation_of,
                          **({"hardware_verified": lambda node_id: hardware_checks.verified_gflops(node_id) is not None,
                              "hardware_gflops": hardware_checks.verified_gflops} if proofs else {}))
        dispatcher = Dispatcher(hub, store, settings, trust)
        canaries = Canaries(hub, dispatcher, auditor, settings.canary_interval_s)
        auditor.on_passed = canaries.remember
        auditor.on_ambiguous_canary = canaries.drop
        auditor.before_slash = billing.settle_provider
        billing.unpaid = auditor.is_slashed

        listeners = hub.listeners
        listeners.statement.append(billing.statement)
        listeners.verdict.append(auditor.on_verdict)
        listeners.joined.append(hardware_checks.on_connect)
        listeners.left.append(hardware_checks.on_leave)
        listeners.hardware_answer.append(hardware_checks.on_answer)
        settlement_keys = SettlementKeys(ledger, store, lambda: billing.settling) if evm else None
        if settlement_keys is not None:
            listeners.settlement_address.append(settlement_keys.announced)

        quotas, metering = Quotas(settings), Metering(billing, auditor)

        async def admit_shard(key_id: int, model: str, tokens: int) -> Ticket | None:
            """A batch shard under its key's limits (None: not now; a revoked key's batch waits)."""
            key = await store.key_by_id(key_id)
            return None if key is None else quotas.try_admit(key, model, tokens, dispatcher.router.serving(model))

        client_key = ClientKeys(store, quotas)
        holdback = HoldBack()

        async def known_key(token: str) -> bool:  # a client key or the admin token skips the keyless rate
            admin = settings.admin_token
            return bool(admin and hmac.compare_digest(token.encode(), admin.encode())) or (
                await store.authenticate(token) is not None)

        gw = cls(settings, identity, store, ledger, hub, dispatcher, auditor, hardware_checks, canaries, billing,
                 quotas, client_key, metering, Fallbacks(settings, billing, store),
                 BatchService(settings, BatchDeps(hub, dispatcher, metering, store, ledger, admit_shard),
                              client_key.counted), holdback,
                 AnonymousLimit(AddressLimiter(settings.anonymous_rate, settings.rate_burst_s), holdback, known_key),
                 GatewayMetrics(hub.known_models),
                 Registry(store.engine, identity.node_id, settings.public_url, settings.region, settings.peer_gateways),
                 settlement_keys)
        gw.metrics.registry.register(LiveCollector(gw.metrics, gw))
        return gw

    def image_limits(self) -> ImageLimits:
        """What one image in a request may be: the operator's byte and pixel limits."""
        return image_inputs.limits_of(self.settings.image_max_bytes, self.settings.image_max_pixels)

    async def start(self) -> None:
        s, hub = self.settings, self.hub
        self.store.start_writer(Retention(keep_s=s.retention_days * 86400, max_providers=s.max_provider_rows,
                                          max_events=s.max_peer_events, connected=lambda: list(hub.sessions)))
        await hub.start()  # what was served before this start (restart grace)
        if s.hardware_proof_max_n > 0:  # who was connected before: re-proven soon after they are back, not at once
            self.hardware_checks.welcome_back(await hub.returning(), RETURNING_PROOF_SPREAD_S)
        await self.billing.start([k["account"] for k in await self.store.list_keys()])
        self.canaries.start()
        self.dispatcher.start()  # the watch for providers gone silent with work in flight
        await self.batches.start()
        await self.gateways.start()

    async def close(self) -> None:
        await self.gateways.close()  # leaves the list first: providers stop choosing it
        if self.settlement_keys is not None:
            await self.settlement_keys.close()
        await self.batches.close()  # before billing closes: its last charges settle with the rest
        await self.canaries.close()
        await self.dispatcher.close()
        try:
            await self.billing.close()  # providers are still connected to sign the last receipts
        except Exception:  # noqa: BLE001 - the ledger unreachable: a restart returns the reserves
            log.exception("billing could not settle and close its tabs at shutdown")
        await self.hub.close_all()
        await self.hardware_checks.close()
        await self.fallbacks.close()
        await self.quotas.close()
        await self.store.close()
        await self.ledger.close()
