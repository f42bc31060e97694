"""How money reads in the API: `/v1/account`'s movements in words, times in ISO 8601, µcr per credit.

    iso(1700000000.0)               # "2023-11-14T22:13:20.000Z"
    movement(ledger_history_row)    # {"seq", "at", "kind", "delta", "description"}
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

UCR_PER_CREDIT = 1_000_000
# What a ledger entry of each kind means to the client whose account it touched.
MOVEMENTS = {
    "deposit": "deposit",
    "withdraw": "withdrawal",
    "hold": "reserved for requests (moved to a gateway's prepaid tab)",
    "release_hold": "unused prepaid tab returned",
    "slash": "refund from a provider slashed for a wrong answer",
}


def iso(ts: float | None) -> str | None:
    """A Unix time as ISO 8601 (UTC, milliseconds), as the API shows times."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def movement(entry: dict[str, Any]) -> dict[str, Any]:
    """A ledger history row, in words: internal keys (hold:tab:…) stay inside."""
    return {"seq": entry["seq"], "at": iso(entry.get("at")), "kind": entry["kind"], "delta": entry["delta"],
            "description": MOVEMENTS.get(entry["kind"], entry["kind"].replace("_", " "))}


def charge_view(charge: dict[str, Any]) -> dict[str, Any]:
    """One of `store.recent_charges`, with its time in ISO 8601 and its cost unit named."""
    return {**charge, "at": iso(charge.get("at"))}
