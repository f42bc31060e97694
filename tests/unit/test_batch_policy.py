"""The batch runner's pure choices (gpupool.batch.policy) and input-file validation."""

from __future__ import annotations

import json
import random

import pytest

from gpupool import errors
from gpupool.batch import policy
from gpupool.batch.policy import Slot
from gpupool.gateway.batches.validate import parse_file

MODELS = {"minilm": "embeddings", "llm": "generate"}


def test_split_cost_adds_up_exactly_and_follows_the_weights() -> None:
    rng = random.Random(7)
    for _ in range(500):
        weights = [rng.randint(0, 50) for _ in range(rng.randint(1, 20))]
        total = rng.randint(0, 10**9)
        parts = policy.split_cost(total, weights)
        assert sum(parts) == total and all(p >= 0 for p in parts)
        if sum(weights):
            for p, w in zip(parts, weights):
                assert abs(p - total * w / sum(weights)) < 1
    assert policy.split_cost(5, [0, 0]) == [3, 2]


def test_batch_slots_leave_the_reserve_to_interactive_work() -> None:
    assert policy.batch_slots(4, busy=0, reserve=1) == 3
    assert policy.batch_slots(4, busy=3, reserve=1) == 0  # interactive work took the rest
    assert policy.batch_slots(1, busy=0, reserve=1) == 1  # a one-slot provider works when idle
    assert policy.batch_slots(1, busy=1, reserve=1) == 0


def test_pick_provider_spreads_and_never_passes_the_privacy_cap() -> None:
    rng = random.Random(1)
    seen = {"a": 0, "b": 0, "c": 0}
    total, share = 100, 0.3
    cap = policy.share_cap(total, share)
    assert cap == 30
    left = total
    while left:
        slots = [Slot(p, free=2, seen=n) for p, n in seen.items()]
        slot = policy.pick_provider(slots, total, share, set(), rng)
        if slot is None:
            break
        n = policy.shard_items("embeddings", 1, policy.cap_room(slot, cap), left, slots=6, pack_inputs=8)
        seen[slot.provider] += n
        left -= n
    assert all(n <= cap for n in seen.values())
    assert left == 100 - 90  # three providers at 30% see 90 items; the rest waits for a fourth
    assert policy.pick_provider([Slot("a", 2, 0)], 10, None, {"a"}, rng) is None
    assert policy.pick_provider([Slot("a", 0, 0), Slot("b", 1, 5)], 10, None, set(), rng).provider == "b"


def test_shards_pack_embeddings_and_shrink_near_the_end() -> None:
    assert policy.shard_items("embeddings", max_weight=1, room=10**9, remaining=10**6, slots=4) == 256
    assert policy.shard_items("embeddings", max_weight=16, room=10**9, remaining=10**6, slots=4) == 16
    assert policy.shard_items("embeddings", 1, 10**9, remaining=100, slots=4) == 13  # spread over every slot
    assert policy.shard_items("embeddings", 1, room=5, remaining=100, slots=1) == 5
    assert policy.shard_items("generate", 1, 10**9, remaining=100, slots=4) == 1


def test_stragglers_are_copied_only_at_the_end_once_and_when_late() -> None:
    assert policy.straggler(running_s=7.0, typical_s=2.0, duplicated=False, pending=0)
    assert not policy.straggler(7.0, 2.0, duplicated=True, pending=0)
    assert not policy.straggler(7.0, 2.0, duplicated=False, pending=3)
    assert not policy.straggler(5.0, 2.0, duplicated=False, pending=0)
    assert not policy.straggler(1.5, 0.1, duplicated=False, pending=0)  # never sooner than 2 s
    assert policy.straggler(11.0, None, duplicated=False, pending=0)


def line(i: int, **kw: object) -> dict[str, object]:
    base = {"custom_id": f"x{i}", "method": "POST", "url": "/v1/embeddings", "body": {"model": "minilm", "input": "a"}}
    return {**base, **kw}


def jsonl(lines: list[dict[str, object]]) -> bytes:
    return b"\n".join(json.dumps(x).encode() for x in lines) + b"\n"


def test_validation_names_the_first_bad_line() -> None:
    items = parse_file(jsonl([line(0), line(1, body={"model": "minilm", "input": ["a", "bb"]})]), MODELS)
    assert [i.weight for i in items] == [1, 2] and items[1].text_bytes == 3
    cases = [
        (jsonl([line(0), line(0)]), "line 2: duplicate custom_id"),
        (jsonl([line(0), line(1, method="GET")]), "line 2: method"),
        (jsonl([line(0, url="/v1/chat/completions")]), "line 1: messages: Field required"),
        (jsonl([line(0, url="/v1/chat/completions", body={"model": "minilm",
                                                          "messages": [{"role": "user", "content": "h"}]})]),
         "line 1: the model 'minilm' serves embeddings"),
        (jsonl([line(0, body={"model": "llm", "input": "a"})]), "line 1: the model 'llm' serves generate"),
        (jsonl([line(0, extra=1)]), "line 1: unknown field 'extra'"),
        (jsonl([line(0, body={"model": "minilm", "input": ""})]), "line 1: inputs must be non-empty"),
        (jsonl([line(0, url="/v1/chat/completions", body={"model": "llm", "stream": True,
                                                          "messages": [{"role": "user", "content": "h"}]})]),
         "line 1: stream"),
        (b"[1, 2]\n", "line 1: expected a JSON object"),
    ]
    for raw, message in cases:
        with pytest.raises(errors.InvalidRequest) as info:
            parse_file(raw, MODELS)
        assert message in info.value.message, (message, info.value.message)
    with pytest.raises(errors.InvalidRequest, match="at most 2 requests"):
        parse_file(jsonl([line(i) for i in range(3)]), MODELS, max_items=2)


def test_pack_units_keep_a_packed_request_within_the_wire_bounds_on_images() -> None:
    from gpupool.batch.policy import EMBED_PACK_INPUTS, pack_units
    from gpupool.images import MAX_REQUEST_IMAGE_BYTES, MAX_REQUEST_IMAGES

    assert pack_units(3, []) == 3  # texts: one unit each, as before
    small = pack_units(0, [500])
    assert EMBED_PACK_INPUTS // small == MAX_REQUEST_IMAGES  # tiny images: the count bound
    big = 3 * 1024 * 1024
    per_request = EMBED_PACK_INPUTS // pack_units(0, [big])
    assert 1 <= per_request and per_request * big <= MAX_REQUEST_IMAGE_BYTES  # large ones: the byte bound
    assert pack_units(2, [500, big]) == 2 + small + pack_units(0, [big])
