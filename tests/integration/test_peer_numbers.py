"""Numbers and strings a provider sends are bounded at the wire (issue 18, items 3, 7, 8, 13).

Raw protocol peers send what decoding must refuse: a NaN or infinite latitude, a huge
`max_concurrency`, 60 KB offer strings, a LoadReport with a billion slots, a receipt
claiming 2**64-1 prompt tokens, a token id or log-prob that `struct.pack` cannot hash.
(A msgspec Struct is not validated when built, so the attacker's own encoder lets them
through.) Each is disconnected and recorded (`garbage_frame`), and the honest echo
provider beside them keeps serving; `/v1/providers` and `/v1/account` keep answering.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import connect

from gpupool import protocol
from gpupool.protocol_handshake import answer
from gpupool.devnet import Network
from gpupool.identity import Identity
from gpupool.protocol import GpuInfo, Hardware, Hello, Offer, Run
from tests.integration.conftest import raw
from tests.integration.test_hostile_peers import (bystander_served, closed_with, echo, joined, liar_serving,
                                                  net, thrown_out_for, wait_events)

__all__ = ["net"]  # the module's gateway with one honest echo provider, shared with test_hostile_peers
LONG = "x" * 60_000


def bad_offer(ident: Identity, **fields: Any) -> Offer:
    hardware = Hardware("test", 1, 1024, [GpuInfo(fields.pop("gpu_name"), 1)] if "gpu_name" in fields else [])
    model = echo("numbers", **{k: fields.pop(k) for k in ("description", "claimed_decode_tps") if k in fields})
    if "cpu" in fields:
        hardware = msgspec.structs.replace(hardware, cpu=fields.pop("cpu"))
    offer = Offer(node_id=ident.node_id, models=[model], hardware=hardware, region="test", max_concurrency=4,
                  issued_at=time.time())
    return protocol.sign_offer(msgspec.structs.replace(offer, **fields), ident)


@pytest.mark.parametrize("fields", [
    {"latitude": float("nan")}, {"longitude": float("inf")}, {"latitude": 1e308}, {"max_concurrency": 10**9},
    {"region": LONG}, {"description": LONG}, {"cpu": LONG}, {"gpu_name": LONG},
    {"claimed_decode_tps": float("inf")}, {"issued_at": float("nan")},
], ids=lambda f: next(iter(f)))
async def test_offers_with_unbounded_numbers_or_strings_are_refused(net: Network, fields: dict[str, Any]) -> None:
    ident = Identity.generate()
    ws = await connect(net.ws_url + "/v1/providers/ws", max_size=None)
    await ws.send(protocol.encode(Hello(protocol.PROTOCOL_VERSION, ident.public_key)))
    challenge = protocol.decode(await ws.recv())
    await ws.send(protocol.encode(answer(ident, challenge, ws.request.headers["Host"])))
    await ws.send(protocol.encode(bad_offer(ident, **fields)))
    await closed_with(ws, protocol.CLOSE_PROTOCOL_ERROR)
    await wait_events(net, "garbage_frame")
    # Nothing of it was kept: every page of providers still answers, the bystander still serves.
    listed = await asyncio.to_thread(raw, net, "GET", "/v1/providers")
    assert listed.status_code == 200, listed.text
    assert ident.node_id not in listed.text
    await bystander_served(net)


async def test_a_load_report_with_a_billion_slots_disconnects_its_provider(net: Network) -> None:
    ident = Identity.generate()
    ws = await joined(net, ident, [echo("inflated")])
    await ws.send(protocol.encode(protocol.LoadReport(0, 0, 10**9)))
    await closed_with(ws, protocol.CLOSE_PROTOCOL_ERROR)
    assert await wait_events(net, "garbage_frame", ident.node_id)
    await bystander_served(net)


def answer_with(usage: tuple[int, int] = (1, 1), token_ids: list[int] | None = None,
                logprobs: list[float] | None = None) -> Any:
    """A provider's answer whose receipt or token lists carry values the protocol's types refuse."""
    def frames(run: Run) -> list[protocol.Message]:
        receipt = protocol.Receipt(run.request_id, "", run.model, protocol.payload_hash(run.payload),
                                   protocol.output_hash("spam"), protocol.Usage(*usage), "stop")
        return [protocol.Chunk(run.request_id, 0, "spam"),
                protocol.Done(run.request_id, receipt, text="spam", token_ids=token_ids or [],
                              logprobs=logprobs or [])]
    return frames


@pytest.mark.parametrize("model, frames", [
    ("huge-usage", answer_with((2**64 - 1, 1))),
    ("over-int32-usage", answer_with((2**31, 1))),
    ("huge-token-id", answer_with(token_ids=[2**31], logprobs=[-0.5])),
    ("huge-logprob", answer_with(token_ids=[7], logprobs=[1e39])),
    ("nan-logprob", answer_with(token_ids=[7], logprobs=[float("nan")])),
])
async def test_answers_with_unbounded_numbers_disconnect_their_provider(net: Network, model: str, frames: Any) -> None:
    ident, serving = await liar_serving(net, model, frames)
    await thrown_out_for(net, ident, model, "garbage_frame", serving)
    # The account page (which sums every receipt's usage) still answers.
    account = await asyncio.to_thread(raw, net, "GET", "/v1/account", key=net.dev_key())
    assert account.status_code == 200, account.text
