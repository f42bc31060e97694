"""The market view: per model, who serves it, at what prices, with how much capacity and speed.

Pure: the gateway turns its live sessions into `Listing`s and `summarize` builds
what `GET /v1/market` and `gpupool market` show.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

# Regions listed per model: each provider names its own, so a view listing every one grows
# with the number of sessions (strangers' keys cost nothing). The most served are listed.
MAX_LISTED_REGIONS = 32


@dataclass(frozen=True)
class Listing:
    model: str
    task: str
    provider: str
    region: str
    price_in: int  # µcr per 1M input tokens
    price_out: int  # µcr per 1M output tokens
    slots: int  # requests it runs at once
    in_flight: int
    draining: bool
    measured_speed: float | None  # decode tokens/s (generation) or items/s (embeddings); None until measured
    accepts: tuple[str, ...] = ("text",)  # inputs the model reads (the offer's; empty there means text)
    price_image: int = 0  # µcr per image (models that read images)


def accepted(kinds: list[tuple[str, ...]]) -> list[str]:
    """The inputs any of these offers reads, text first: what a client may send the model."""
    found = {kind for ks in kinds for kind in (ks or ("text",))}
    return sorted(found, key=lambda k: (k != "text", k))


def summarize(listings: list[Listing]) -> list[dict[str, object]]:
    by_model: dict[str, list[Listing]] = {}
    for item in listings:
        by_model.setdefault(item.model, []).append(item)
    out: list[dict[str, object]] = []
    for model, items in sorted(by_model.items()):
        live = [i for i in items if not i.draining]
        speeds = [i.measured_speed for i in live if i.measured_speed]
        out.append({
            "model": model,
            "task": items[0].task,
            "providers": len(live),
            **regions_of(i.region for i in live),
            "price_in": _range([i.price_in for i in live]),
            "price_out": _range([i.price_out for i in live]) if items[0].task != "embeddings" else None,
            "accepts": accepted([i.accepts for i in live] or [("text",)]),
            "price_image": _range([i.price_image for i in live if "image" in i.accepts]),
            "capacity": {"slots": sum(i.slots for i in live), "in_flight": sum(i.in_flight for i in live)},
            "measured_speed": None if not speeds else {
                "unit": "items/s" if items[0].task == "embeddings" else "tokens/s",
                "median": round(statistics.median(speeds), 2), "max": round(max(speeds), 2),
                "providers_measured": len(speeds)},
        })
    return out


def regions_of(regions: Iterable[str], most: int = MAX_LISTED_REGIONS) -> dict[str, object]:
    """`regions`: each region once, the `most` with the most providers (sorted by name);
    `regions_unlisted`: how many more there are."""
    counts = Counter(regions)
    listed = [r for r, _ in sorted(counts.items(), key=lambda rc: (-rc[1], rc[0]))[:most]]
    return {"regions": sorted(listed), "regions_unlisted": len(counts) - len(listed)}


def _range(values: list[int]) -> dict[str, int] | None:
    return {"min": min(values), "max": max(values)} if values else None
