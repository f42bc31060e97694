"""The gateway's money and trust services, built and wired to the hub in one place.

`Services.wire` creates billing (tabs, statements, batched settlement), the auditor
(audit jobs, verdicts, reputation, suspension, slashing), canaries and hardware
proofs, and connects each to the hub's callbacks; `start` and `close` run them in
the right order. The routes in `app.py` use the pieces; nothing here is HTTP.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gpupool.config import GatewaySettings
from gpupool.gateway.audits import Auditor
from gpupool.gateway.billing import Billing
from gpupool.gateway.canaries import Canaries
from gpupool.gateway.dispatch import Dispatcher
from gpupool.gateway.hardware_checks import HardwareChecker
from gpupool.gateway.http import spawn
from gpupool.gateway.hub import Hub
from gpupool.gateway.store import Store
from gpupool.identity import Identity
from gpupool.ledger import Ledger
from gpupool.protocol import SettlementAddress
from gpupool.verify import SamplingPolicy

log = logging.getLogger("gpupool.gateway")


@dataclass
class Services:
    hub: Hub
    store: Store
    ledger: Ledger
    billing: Billing
    auditor: Auditor
    canaries: Canaries
    hardware_checks: HardwareChecker

    @classmethod
    def wire(cls, settings: GatewaySettings, hub: Hub, store: Store, identity: Identity, ledger: Ledger,
             dispatcher: Dispatcher) -> Services:
        def bad_receipt(node_id: str, why: str) -> None:
            session = hub.sessions.get(node_id)
            if session is not None:
                hub.disconnect(session, "bad_receipt", why)
            else:
                store.record_event(node_id, "bad_receipt", why)

        billing = Billing(ledger, holder=identity.node_id, fee_bps=settings.fee_bps, tab_size=settings.tab_size,
                          flush_interval_s=settings.settle_interval_s, tab_idle_s=settings.tab_idle_s,
                          audit_window_s=settings.audit_window_s, statement_wait_s=settings.statement_wait_s,
                          on_bad_receipt=bad_receipt)
        hub.on_statement = billing.statement

        auditor = Auditor(hub, ledger, sampling=SamplingPolicy(probation_requests=settings.audit_probation_requests))
        canaries = Canaries(hub, dispatcher, auditor, settings.canary_interval_s)
        auditor.on_passed = canaries.remember
        auditor.before_slash = billing.settle_provider
        billing.unpaid = auditor.is_slashed
        hub.on_verdict = auditor.on_verdict
        hub.is_suspended = auditor.is_suspended
        hub.is_held_back = auditor.is_held_back
        hub.reputation_of = auditor.reputation_of

        async def stake_of(node_id: str) -> int:  # checker admission by stake (checker_min_stake)
            from gpupool.ledger import postings

            return await ledger.balance(postings.stake(node_id))

        hub.stake_of = stake_of

        hardware_checks = HardwareChecker(hub.disconnect, interval_s=settings.hardware_proof_interval_s,
                                          max_n=settings.hardware_proof_max_n)
        hub.on_provider_connected = hardware_checks.on_connect
        hub.on_hardware_answer = hardware_checks.on_answer
        if settings.hardware_proof_max_n > 0:
            hub.hardware_verified = lambda node_id: hardware_checks.verified_gflops(node_id) is not None
            hub.hardware_gflops = hardware_checks.verified_gflops

        services = cls(hub, store, ledger, billing, auditor, canaries, hardware_checks)
        if isinstance(getattr(ledger, "address", None), str):  # an EVM ledger: providers sign costs for the chain
            hub.settlement = (ledger.address, ledger.chain_id)  # type: ignore[attr-defined]
            hub.on_settlement_address = lambda node_id, msg: spawn(services.register_settlement_key(node_id, msg))
        return services

    async def start(self, accounts: list[str]) -> None:
        await self.billing.start(accounts)
        self.canaries.start()

    async def close(self) -> None:
        await self.canaries.close()
        try:
            await self.billing.close()  # first: providers are still connected to sign the last receipts
        except Exception:  # noqa: BLE001 - the ledger unreachable: a restart returns the reserves
            log.exception("billing could not settle and close its tabs at shutdown")
        await self.hub.close_all()
        await self.hardware_checks.close()

    async def register_settlement_key(self, node_id: str, msg: SettlementAddress) -> None:
        ledger = self.ledger
        registered = await ledger.settlement_address(node_id)  # type: ignore[attr-defined]
        if registered is None:
            await ledger.register_provider(node_id, msg.address, msg.registration)  # type: ignore[attr-defined]
            log.info("registered settlement key %s for provider %s", msg.address, node_id[:12])
        elif registered.lower() != msg.address.lower():
            # Registration is set once: receipts signed with another key would never be paid.
            self.store.record_event(node_id, "settlement_key_mismatch",
                                    f"announced {msg.address}, contract has {registered}: "
                                    "its receipts will not be paid")
