"""A stream sends at most one event every `--stream-event-interval-ms` (10 ms by default): the
words that arrive in between leave together, so a provider producing a token a millisecond
costs the gateway a socket write every 10 ms, not one a token (bench/hostile `stream_flood`:
one key's open streams took the CPU the other clients are served with). A slower stream
is never held back: each of its words leaves as it comes. Real gateway, an echo provider at
1 ms and at 40 ms a word, SSE read raw."""

from __future__ import annotations

import json

import httpx

from gpupool.devnet import Network

WORDS = 200


def stream_events(network: Network, model: str, words: int) -> list[str]:
    """The content of each SSE event of one streamed chat answer."""
    body = {"model": model, "messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(words))}],
            "max_tokens": words + 10, "stream": True}
    pieces = []
    with httpx.stream("POST", network.gateway_url + "/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {network.dev_key()}"}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"]
            if delta and delta[0]["delta"].get("content"):
                pieces.append(delta[0]["delta"]["content"])
    return pieces


def test_a_fast_stream_is_sent_in_fewer_events_and_a_slow_one_word_by_word(network: Network) -> None:
    network.start_gateway()
    network.start_provider(["fast=echo:chat?delay_ms=1", "slow=echo:chat?delay_ms=40"])
    network.wait_for_models({"fast": 1, "slow": 1}, timeout=60)

    pieces = stream_events(network, "fast", WORDS)
    assert "".join(pieces).split() == [f"w{i}" for i in range(WORDS)]  # every word, in order
    # ~1.1 ms a word: about 10 words an event (25 seen). With the interval off, one event per
    # word or per loop turn's worth: 195 seen.
    assert len(pieces) <= WORDS // 3, f"{len(pieces)} events for {WORDS} words"

    pieces = stream_events(network, "slow", 20)
    # Not held back: each word as it came (a loaded machine may still join the odd two).
    assert pieces[0].split() == ["w0"] and len(pieces) >= 15, pieces
