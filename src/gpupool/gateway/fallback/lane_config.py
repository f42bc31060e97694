"""Fallback lanes from the gateway's settings: TOML tables or one-line flags, keys from the environment.

    lanes, keys = parse_lanes(settings.fallback)        # ValueError: one line naming the lane

TOML (`[[gateway.fallback]]`):

    name = "cloud"; base_url = "https://api.example/v1"; api_key_env = "CLOUD_KEY"
    region = "eu-west"; timeout_s = 120
    [gateway.fallback.models.llama]  upstream = "meta/llama-3"; price = "100000/400000"

Flag (`--fallback`, repeatable; space-separated):

    cloud=https://api.example/v1 key_env=CLOUD_KEY region=eu-west model=llama=meta/llama-3@100000/400000

Keys never enter a `Lane` (whose repr may be logged); they come back apart, by lane name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from gpupool.market.pricing import Price, parse_price
from gpupool.routing.fallback import Lane, LaneModel

LANE_FIELDS = {"name", "base_url", "api_key_env", "models", "region", "timeout_s"}



def parse_lanes(raw: list[Any], environ: Mapping[str, str] | None = None) -> tuple[list[Lane], dict[str, str]]:
    """Lanes from settings (TOML tables or flag strings) and their API keys from `environ`.

    Raises ValueError with one line naming the lane and what is wrong.
    """
    environ = os.environ if environ is None else environ
    lanes: list[Lane] = []
    keys: dict[str, str] = {}
    for i, item in enumerate(raw):
        lane = _lane_from_table(item) if isinstance(item, dict) else _lane_from_flag(str(item))
        where = f"fallback lane {lane.name!r}"
        if not lane.name or any(c in lane.name for c in ": /"):
            raise ValueError(f"fallback lane #{i + 1}: name must be non-empty, without ':', '/' or spaces")
        if lane.name in keys:
            raise ValueError(f"{where} is configured twice")
        if not lane.base_url.startswith(("http://", "https://")):
            raise ValueError(f"{where}: base_url must be http(s)://HOST[:PORT]/PATH (got {lane.base_url!r})")
        if not lane.models:
            raise ValueError(f"{where}: no models (map at least one: model=OURS[=UPSTREAM]@IN/OUT)")
        if lane.timeout_s <= 0:
            raise ValueError(f"{where}: timeout_s must be positive")
        key = ""
        if lane.api_key_env:
            if lane.api_key_env not in environ:
                raise ValueError(f"{where}: environment variable {lane.api_key_env} (its API key) is not set")
            key = environ[lane.api_key_env]
        keys[lane.name] = key
        lanes.append(lane)
    return lanes, keys


def _lane_from_table(t: dict[str, Any]) -> Lane:
    name = str(t.get("name", ""))
    unknown = set(t) - LANE_FIELDS
    if unknown:
        raise ValueError(f"fallback lane {name!r}: unknown setting {sorted(unknown)[0]!r} "
                         f"(expected {', '.join(sorted(LANE_FIELDS))})")
    models: dict[str, LaneModel] = {}
    raw_models = t.get("models", {})
    if not isinstance(raw_models, dict):
        raise ValueError(f"fallback lane {name!r}: models must be a table of OURS = {{upstream, price}}")
    for ours, spec in raw_models.items():
        if isinstance(spec, str):
            models[ours] = _model_spec(name, f"{ours}={spec}" if not spec.startswith("@") else ours + spec)[1]
            continue
        if not isinstance(spec, dict) or set(spec) - {"upstream", "price"}:
            raise ValueError(f"fallback lane {name!r}: model {ours!r} must be {{upstream = NAME, price = 'IN/OUT'}}")
        models[ours] = LaneModel(str(spec.get("upstream") or ours), _price(name, ours, str(spec.get("price", "0"))))
    try:
        timeout = float(t.get("timeout_s", 120.0))
    except (TypeError, ValueError):
        raise ValueError(f"fallback lane {name!r}: timeout_s must be a number of seconds") from None
    return Lane(name, str(t.get("base_url", "")).rstrip("/"), models, str(t["region"]) if t.get("region") else None,
                str(t.get("api_key_env", "")), timeout)


def _lane_from_flag(text: str) -> Lane:
    """`NAME=BASE_URL key_env=VAR region=R timeout_s=S model=OURS[=UPSTREAM]@IN/OUT ...` (space-separated)."""
    head, *rest = text.split() or [""]
    name, _, base_url = head.partition("=")
    fields: dict[str, Any] = {"name": name, "base_url": base_url, "models": {}}
    for token in rest:
        k, sep, v = token.partition("=")
        if not sep:
            raise ValueError(f"fallback lane {name!r}: expected KEY=VALUE, got {token!r}")
        if k == "model":
            ours, lm = _model_spec(name, v)
            fields["models"][ours] = {"upstream": lm.upstream, "price": f"{lm.price.per_m_in}/{lm.price.per_m_out}"}
        elif k in ("key_env", "api_key_env"):
            fields["api_key_env"] = v
        elif k in ("region", "timeout_s"):
            fields[k] = v
        else:
            raise ValueError(f"fallback lane {name!r}: unknown setting {k!r} (key_env, region, timeout_s, model)")
    return _lane_from_table(fields)


def _model_spec(lane: str, spec: str) -> tuple[str, LaneModel]:
    names, _, price = spec.partition("@")
    ours, _, upstream = names.partition("=")
    if not ours:
        raise ValueError(f"fallback lane {lane!r}: model {spec!r}: expected OURS[=UPSTREAM]@IN/OUT")
    return ours, LaneModel(upstream or ours, _price(lane, ours, price or "0"))


def _price(lane: str, model: str, text: str) -> Price:
    try:
        return parse_price(text)
    except ValueError as exc:
        raise ValueError(f"fallback lane {lane!r}, model {model!r}: {exc}") from None
