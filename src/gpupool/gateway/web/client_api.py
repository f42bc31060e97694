"""What clients and providers read about the network and their own account.

- `GET /healthz`: up, version, providers connected, models served.
- `GET /v1/gateways`: this gateway and its peers (URL, region), from the shared database and
  `--peer-gateway` (gateway/registry.py); providers connect to the nearest few.
- `GET /v1/models` (key): the models served now (by the pool, or only by a fallback lane), OpenAI's
  list shape plus a `gpupool` object (`fallback`: the lanes that may serve it).
- `GET /v1/market`: per model, prices, providers, regions, speed and load (market/summary.py).
- `GET /v1/account` (key): balance, holds, recent charges (paged like OpenAI's lists).
- `GET /v1/providers/{node_id}/earnings` and `/reputation`: a provider's money and signed record.

Handlers are `handler(gw, request)` over the gateway's context (web/context.py).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from gpupool import __version__, errors
from gpupool.gateway.edge.http import JSON, query_limit
from gpupool.gateway.money.account_view import charge_view
from gpupool.gateway.web.context import Gateway
from gpupool.ledger import postings
from gpupool.market.summary import Listing, accepted, regions_of, summarize


async def gateways(gw: Gateway, _request: Request) -> JSON:
    return JSON({"object": "list", "data": gw.gateways.listing()})


async def healthz(gw: Gateway, _request: Request) -> JSON:
    hub = gw.hub
    return JSON({"status": "ok", "version": __version__, "providers": len(hub.sessions),
                 "models": sorted(hub.live_models())})


async def list_models(gw: Gateway, request: Request) -> JSON:
    """The pool's live models, then those only a fallback lane serves (their requests go to the lane)."""
    await gw.client_key(request)
    return JSON(gw.listings.get("models", gw.hub.changes, lambda: _models(gw)))


def _models(gw: Gateway) -> dict[str, Any]:
    hub, lanes = gw.hub, gw.fallbacks.models()
    data = []
    for name, sessions in sorted(hub.live_models().items()):
        offer = sessions[0].models[name]
        data.append({
            "id": name, "object": "model", "created": int(sessions[0].offer.issued_at),
            "owned_by": "gpupool",
            "gpupool": {"task": offer.task, "description": offer.description,
                        # What a request may carry: "text", and "image" where a provider reads images.
                        "accepts": accepted([tuple(s.models[name].accepts) for s in sessions]),
                        "providers": len(sessions),
                        **regions_of(s.offer.region for s in sessions),
                        # False: no admitted checker holds it, so its answers are never audited.
                        "verified": hub.model_verified(name), "fallback": lanes.get(name, [])},
        })
    listed = {m["id"] for m in data}
    for name in sorted(set(lanes) - listed):
        known = hub.known_models.get(name)
        data.append({"id": name, "object": "model", "created": gw.fallbacks.started, "owned_by": "gpupool",
                     # Served by the operator's upstream: no pool provider, and no audits.
                     "gpupool": {"task": known.task if known else None, "description": "", "providers": 0,
                                 "regions": [], "verified": False, "fallback": lanes[name]}})
    return {"object": "list", "data": data}


async def market(gw: Gateway, _request: Request) -> JSON:
    return JSON(gw.listings.get("market", gw.hub.changes, lambda: _market(gw)))


def _market(gw: Gateway) -> dict[str, Any]:
    hub, records = gw.hub, gw.dispatcher.router.records
    listings = []
    for session in list(hub.sessions.values()):
        rec = records.get(session.node_id)
        for name, offer in session.models.items():
            sp = rec.speed.get(name) if rec else None
            speed = None
            if sp is not None and sp.samples:
                speed = sp.items_per_s if offer.task == "embeddings" else sp.decode_tps
            listings.append(Listing(name, offer.task, session.node_id, session.offer.region, offer.price_in,
                                    offer.price_out, session.offer.max_concurrency, len(session.channels),
                                    session.draining or session.closed, speed, tuple(offer.accepts or ("text",)),
                                    offer.price_image))
    data = [{**row, "verified": hub.model_verified(str(row["model"]))} for row in summarize(listings)]
    return {"object": "list", "fee_bps": gw.settings.fee_bps, "unit": "µcr per 1M tokens",
            "image_unit": "µcr per image", "data": data}


async def account(gw: Gateway, request: Request) -> JSON:
    key = await gw.client_key(request)
    limit, after = query_limit(request, 20, most=100), request.query_params.get("after") or None
    try:
        charges = await gw.store.recent_charges(key.account, limit + 1, after)
    except KeyError:
        raise errors.InvalidRequest("after must be a request id from this account's charges", param="after") from None
    body = await gw.billing.account(key.account)
    # Paged like OpenAI's lists: pass the last id as `after` while has_more is true.
    body["recent_charges"], body["has_more"] = [charge_view(c) for c in charges[:limit]], len(charges) > limit
    body["last_id"] = charges[:limit][-1]["request_id"] if charges[:limit] else None
    return JSON(body)


async def earnings(gw: Gateway, request: Request) -> JSON:
    node_id = request.path_params["node_id"]
    if ":" in node_id:
        raise errors.InvalidRequest("not a node id", param="node_id")
    ledger = gw.ledger
    return JSON({"object": "gpupool.earnings", "provider": node_id,
                 "held": await ledger.balance(postings.provider_held(node_id)),
                 "withdrawable": await ledger.balance(postings.provider_free(node_id)),
                 "staked": await ledger.balance(postings.stake(node_id)),
                 "audit_window_s": gw.settings.audit_window_s})


async def reputation(gw: Gateway, request: Request) -> JSON:
    node_id = request.path_params["node_id"]
    # Only nodes this gateway knows get a record: an unknown id must not create (and make
    # the gateway sign) state for it, or anyone could grow the gateway's memory at will.
    known = (node_id in gw.hub.sessions or node_id in gw.auditor.providers
             or await gw.store.provider_known(node_id))
    if not known:
        raise errors.ModelNotFound(f"no provider {node_id[:80]!r} is known to this gateway", param="node_id",
                                   code="provider_not_found")
    return JSON(gw.auditor.signed_record(node_id, gw.identity))
