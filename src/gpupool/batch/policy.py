"""Pure choices for running a batch: which provider takes the next shard, how big, and when to
duplicate a straggler. No sockets, no database, no clock: snapshots in, decisions out.

    slots = [Slot("gp1", free=2, seen=40), Slot("gp2", free=1, seen=10)]
    choice = pick_provider(slots, total=100, max_share=0.5, exclude=set(), rng=random.Random(1))
    n = shard_items(task="embeddings", want=pack_inputs(...), weight=1, room=cap_room(...))

Batch traffic only uses capacity interactive requests leave free: a provider offers
`max_concurrency` slots, a batch may hold all but `reserve` of them, and only those
not already busy (with anyone's work, on this gateway or another).

Images (data URLs in embeddings inputs or chat parts) are user data like text: the
privacy cap counts the items that carry them, as any other. Packing counts an image as
several inputs (`pack_units`), so a packed request stays within the wire's bound on one
request's images (`images.MAX_REQUEST_IMAGES`, `images.MAX_REQUEST_IMAGE_BYTES`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from gpupool.images import MAX_REQUEST_IMAGE_BYTES, MAX_REQUEST_IMAGES

EMBED_PACK_INPUTS = 256  # inputs per embeddings request: big enough to fill a forward pass, small to retry
GENERATE_PACK = 1  # a generation request carries one prompt
# When a packed request's cost is split over its items, an image weighs as this many bytes of text
# (about 64 tokens: between tiny-clip's 17 positions and a real CLIP's 257).
IMAGE_COST_BYTES = 256


def pack_units(texts: int, image_sizes: list[int], pack_inputs: int = EMBED_PACK_INPUTS) -> int:
    """How much of a packed embeddings request one item takes: a unit per text input and, per
    image, its share of the wire's image bounds in units (count and bytes), so that items
    packed up to `pack_inputs` units never carry more images than one request may."""
    per_image = -(-pack_inputs // MAX_REQUEST_IMAGES)
    return texts + sum(max(per_image, -(-size * pack_inputs // MAX_REQUEST_IMAGE_BYTES)) for size in image_sizes)


@dataclass(frozen=True)
class Slot:
    """One provider of the batch's model, as the runner sees it now."""

    provider: str
    free: int  # slots the batch may use now (after the interactive reserve and everyone's work)
    seen: int  # items of this batch it has been sent so far
    items_per_s: float = 0.0  # measured speed, 0 if unknown


def batch_slots(max_concurrency: int, busy: int, reserve: int) -> int:
    """Slots free for batch work on a provider with `busy` requests in flight (anyone's)."""
    usable = max(1, max_concurrency - reserve)  # a one-slot provider still takes batch work when idle
    return max(0, usable - busy)


def share_cap(total: int, max_share: float | None) -> int | None:
    """The most items one provider may see, or None without a cap (at least one item)."""
    if max_share is None:
        return None
    return max(1, math.floor(total * max_share + 1e-9))


def cap_room(slot: Slot, cap: int | None) -> int:
    return 1 << 30 if cap is None else max(0, cap - slot.seen)


def pick_provider(slots: list[Slot], total: int, max_share: float | None, exclude: set[str],
                  rng: random.Random) -> Slot | None:
    """The provider with the most free batch slots that may still see items of this batch.

    Ties go to the one that has seen fewer items (spreads the batch, and its privacy
    exposure), then at random."""
    cap = share_cap(total, max_share)
    ok = [s for s in slots if s.free > 0 and s.provider not in exclude and cap_room(s, cap) > 0]
    if not ok:
        return None
    rng.shuffle(ok)
    return max(ok, key=lambda s: (s.free, -s.seen))


def shard_items(task: str, max_weight: int, room: int, remaining: int, slots: int,
                pack_inputs: int = EMBED_PACK_INPUTS) -> int:
    """How many items the next shard takes.

    Embeddings pack `pack_inputs` inputs per request (`max_weight`: the most inputs one
    item of the batch has); generation sends one item per request. Never more than the
    provider's room under the privacy cap, and near the end (or for a small batch)
    smaller, so the last items spread over every free slot (`slots`, over all
    providers) instead of queueing behind one."""
    if task != "embeddings":
        n = GENERATE_PACK
    else:
        n = max(1, pack_inputs // max(1, max_weight))
        if slots > 1 and remaining < n * slots * 2:
            n = max(1, math.ceil(remaining / (slots * 2)))
    return max(0, min(n, room, remaining))


def straggler(running_s: float, typical_s: float | None, duplicated: bool, pending: int) -> bool:
    """Whether to send a copy of a shard still running to a second provider.

    Only at the end of a batch (nothing left to claim), once, and only for a shard that
    has run well past what shards usually take (3×, at least 2 s) — or with no measure
    yet, past 10 s."""
    if duplicated or pending > 0:
        return False
    limit = 10.0 if typical_s is None else max(2.0, 3.0 * typical_s)
    return running_s > limit


def split_cost(total: int, weights: list[int]) -> list[int]:
    """Split an integer `total` over items in proportion to `weights` (largest remainder: sums exactly)."""
    if not weights:
        return []
    w = sum(weights)
    if w <= 0:
        base = [total // len(weights)] * len(weights)
        for i in range(total - sum(base)):
            base[i] += 1
        return base
    exact = [total * x / w for x in weights]
    base = [int(math.floor(e)) for e in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - base[i], reverse=True)
    for i in order[:total - sum(base)]:
        base[i] += 1
    return base


def require_verified(metadata: dict[str, str]) -> bool:
    """Whether a batch runs only while an admitted checker audits its model (its metadata's
    `gpupool_require_verified`, validated when the batch was created)."""
    return metadata.get("gpupool_require_verified") == "true"
