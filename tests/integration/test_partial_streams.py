"""A stream the client breaks off is charged for what it was sent (issue 18, item 5).

Before, a client that closed its stream (or set a short `X-Gpupool-Timeout`) before the
provider's Done got everything it had read for free, and the provider was never paid. Now
it pays for the tokens delivered, at the price the run was dispatched under: the provider
is paid (held for its audit window), the gateway takes its fee, the rest of the hold goes
back, and the request log shows what it cost. Real gateway, real echo provider (one word a
token, 100 ms apart), the official `openai` client.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from gpupool.devnet import Network
from gpupool.ledger import postings
from gpupool.market.pricing import Price, cost
from tests.integration.conftest import client_for
from tests.integration.test_billing import CHEAP, FAST_SETTLE, ledger_state, new_account, price_args, wait_settled

DEPOSIT = 5_000_000
WORDS = " ".join(f"w{i}" for i in range(40))  # the echo answers with these 40 words, one token each


def start(network: Network) -> str:
    network.start_gateway(extra=FAST_SETTLE)
    proc = network.start_provider(["echo=echo:chat?delay_ms=100"], extra=price_args(CHEAP))
    network.wait_for_models({"echo": 1}, timeout=60)
    return proc.node_id


def paid_for(network: Network, key: str, provider: str, rid: str) -> int:
    """What the client paid, once settled; checks the provider and the fee got exactly that."""
    account = wait_settled(network, key)
    paid = DEPOSIT - account["balance"]
    balances, problems = ledger_state(network.db)
    assert problems == []
    assert balances.get(postings.provider_held(provider), 0) + balances.get(postings.GATEWAY_FEES, 0) == paid
    (row,) = [c for c in account["recent_charges"] if c["request_id"] == rid]
    assert row["cost"] == paid and row["status"] in ("cancelled", "error"), row
    return paid


def full_answer(price: Price) -> int:
    return cost(price, len(WORDS) // 4 + 1, 40)


def test_a_client_breaking_off_a_stream_pays_for_what_it_read(network: Network) -> None:
    provider = start(network)
    key = new_account(network, "quitter", DEPOSIT)
    client = client_for(network, key)
    stream = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": WORDS}],
                                            max_tokens=50, stream=True)
    rid = stream.response.headers["x-request-id"]
    read = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            read.append(chunk.choices[0].delta.content)
        if len(read) >= 5:
            break
    stream.close()  # the client leaves, ~35 tokens early
    time.sleep(0.5)
    paid = paid_for(network, key, provider, rid)
    delivered_floor = cost(CHEAP, 0, 5)  # at least the 5 tokens it read
    assert delivered_floor <= paid < full_answer(CHEAP), (paid, full_answer(CHEAP))


def test_a_stream_past_the_clients_timeout_pays_for_what_was_sent(network: Network) -> None:
    provider = start(network)
    key = new_account(network, "hasty", DEPOSIT)
    client = client_for(network, key)
    stream = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": WORDS}],
                                            max_tokens=50, stream=True, extra_headers={"X-Gpupool-Timeout": "1.5"})
    rid = stream.response.headers["x-request-id"]
    with pytest.raises(openai.APIError):  # the deadline arrives as an error event mid-stream
        for _ in stream:
            pass
    paid = paid_for(network, key, provider, rid)
    assert cost(CHEAP, 0, 5) <= paid < full_answer(CHEAP), paid
    # The provider's earnings say so too.
    earned = httpx.get(f"{network.gateway_url}/v1/providers/{provider}/earnings", timeout=10).json()
    assert earned["held"] > 0
