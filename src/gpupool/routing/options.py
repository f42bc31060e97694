"""What a client may ask of routing for one request (header or body field `gpupool`, docs/routing.md).

    RouteOptions(region="eu-west", region_policy="require", max_price=5_000)

Parsed at the HTTP edge (`gateway/edge/http.py: route_options`), read by the live
router, the fallback lanes and the money path; a plain value, no behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

REGION_POLICIES = ("prefer", "require")


@dataclass(frozen=True)
class RouteOptions:
    region: str | None = None
    region_policy: str = "prefer"
    max_price: int | None = None  # µcr for the whole request
    require_verified: bool = False  # only models an admitted checker audits (else 503)


DEFAULT_ROUTE = RouteOptions()
