"""The operator's admin API: keys, deposits and what the gateway knows, behind the admin token.

    routes = admin_routes(gw)   # added to the app's route list (gw: web/context.py)

- `POST /admin/keys`: create a client key (optionally with limits); `POST /admin/deposit`:
  credit an account, once per idempotency key.
- `GET /admin/providers`, `/admin/events`, `/admin/audits`, `/admin/billing`,
  `/admin/requests`, `/admin/fallback`: connected providers, peer events, audit state,
  billing queues, the request log, the fallback lanes.
- `POST /admin/providers/{node_id}/unsuspend`: lift a provider's suspension (the operator's
  way back for an honest provider; appeals and expiry are the automatic ones, trust/audits.py).

Every route needs `Authorization: Bearer <--admin-token>` (compared in constant time);
without a configured token the admin API is off (401).
"""

from __future__ import annotations

import hmac
import logging
from functools import partial

import msgspec
from starlette.requests import Request
from starlette.routing import Route

from gpupool import errors
from gpupool.config import GatewaySettings
from gpupool.gateway.edge.http import JSON, json_object, query_limit
from gpupool.gateway.web.context import Gateway
from gpupool.ledger import LedgerError, postings
from gpupool.ledger.postings import account_for


log = logging.getLogger("gpupool.gateway")


def require_admin(settings: GatewaySettings, request: Request) -> None:
    """Raises 401 unless the request carries the admin token (and one is configured)."""
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    if not settings.admin_token or not hmac.compare_digest(token.encode(), settings.admin_token.encode()):
        raise errors.AuthenticationFailed("admin token required (set GPUPOOL_GATEWAY_ADMIN_TOKEN)")


def admin_routes(gw: Gateway) -> list[Route]:
    return [
        Route("/admin/keys", partial(create_key, gw), methods=["POST"]),
        Route("/admin/deposit", partial(deposit, gw), methods=["POST"]),
        Route("/admin/providers", partial(providers, gw)),
        Route("/admin/events", partial(events_log, gw)),
        Route("/admin/audits", partial(audits, gw)),
        Route("/admin/billing", partial(billing_state, gw)),
        Route("/admin/requests", partial(requests_log, gw)),
        Route("/admin/fallback", partial(fallback_state, gw)),
        Route("/admin/providers/{node_id}/unsuspend", partial(unsuspend, gw), methods=["POST"]),
    ]


async def deposit(gw: Gateway, request: Request) -> JSON:
    require_admin(gw.settings, request)
    expected = '{"account": NAME, "amount": µcr, "key": IDEMPOTENCY_KEY}'
    body = await json_object(request, expected)
    try:
        acct, amount = account_for(str(body["account"])), int(body["amount"])
    except (KeyError, TypeError, ValueError):
        raise errors.InvalidRequest(f"expected {expected}") from None
    # A deposit is credited once per key: a retry (lost answer, proxy resend) with the same
    # key changes nothing. Without one a retry would credit twice, so one is required.
    header_key = request.headers.get("idempotency-key")
    key = str(body.get("key") or (f"deposit:{header_key}" if header_key else ""))
    if not key:
        raise errors.InvalidRequest("a deposit needs an idempotency key: a \"key\" field or an "
                                    "Idempotency-Key header, unique per deposit", param="key")
    try:
        await gw.ledger.deposit(key, acct, amount)
    except LedgerError as exc:
        raise errors.InvalidRequest(str(exc)) from None
    return JSON({"account": acct, "balance": await gw.ledger.balance(postings.client(acct))}, status_code=201)


async def create_key(gw: Gateway, request: Request) -> JSON:
    require_admin(gw.settings, request)
    body = await json_object(request, '{"name": ..., "account": optional, "rpm", "tpm", "concurrency": '
                                      "optional limits}")
    name = str(body.get("name", "unnamed"))
    acct = account_for(str(body.get("account") or name))
    try:
        limits = {k: int(body.get(k) or 0) for k in ("rpm", "tpm", "concurrency")}
        created = await gw.store.create_key(name, account=acct, **limits)
    except (TypeError, ValueError) as exc:
        raise errors.InvalidRequest(f"key limits must be non-negative integers ({exc})") from None
    log.info("API key %r created for account %s (admin API)", name[:64], acct)
    return JSON({"name": name, "account": acct, "key": created, **limits}, status_code=201)


async def providers(gw: Gateway, request: Request) -> JSON:
    require_admin(gw.settings, request)
    return JSON({"data": [
        {"node_id": s.node_id, "region": s.offer.region, "models": sorted(s.models),
         "in_flight": len(s.channels), "max_concurrency": s.offer.max_concurrency,
         "rtt_ms": None if s.rtt_s is None else round(s.rtt_s * 1000, 3), "draining": s.draining,
         "hardware": msgspec.to_builtins(s.offer.hardware),
         "verified_gflops": gw.hardware_checks.verified_gflops(s.node_id)}
        for s in gw.hub.sessions.values()]})


async def audits(gw: Gateway, request: Request) -> JSON:
    require_admin(gw.settings, request)
    return JSON({"stats": gw.auditor.stats, "canaries": gw.canaries.stats, "checkers": sorted(gw.hub.checkers),
                 "data": gw.auditor.summary()})


async def billing_state(gw: Gateway, request: Request) -> JSON:
    require_admin(gw.settings, request)
    billing = gw.billing
    return JSON({"stats": billing.stats, "open_tabs": len(billing.tabs), "queued_charges": len(billing.queue)})


async def events_log(gw: Gateway, request: Request) -> JSON:
    require_admin(gw.settings, request)
    peer = request.query_params.get("peer")
    return JSON({"data": await gw.store.peer_events(peer, query_limit(request))})


async def requests_log(gw: Gateway, request: Request) -> JSON:
    require_admin(gw.settings, request)
    return JSON({"data": await gw.store.recent_requests(query_limit(request))})


async def fallback_state(gw: Gateway, request: Request) -> JSON:
    require_admin(gw.settings, request)
    return JSON(gw.fallbacks.describe())


async def unsuspend(gw: Gateway, request: Request) -> JSON:
    require_admin(gw.settings, request)
    node_id = request.path_params["node_id"]
    if not gw.auditor.is_suspended(node_id):
        raise errors.NotFound(f"provider {node_id[:80]!r} is not suspended on this gateway", param="node_id")
    gw.auditor.lift(node_id, "lifted by the operator (admin API)")
    log.info("suspension of provider %s lifted by the operator", node_id[:12])
    return JSON({"node_id": node_id, "suspended": False})
