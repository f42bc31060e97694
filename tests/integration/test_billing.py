"""Pay per use through real processes: holds before dispatch, charges from signed receipts, 402s.

Every test ends by reading the ledger itself: the journal verifies, balances sum to
deposits minus withdrawals, nothing stays held, and what clients were told they
paid is exactly what left their accounts and reached providers and the gateway.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest

from gpupool import protocol
from gpupool.devnet import Network
from gpupool.identity import Identity
from gpupool.ledger import SqlLedger, fee_of
from gpupool.ledger import postings
from gpupool.market.pricing import Price, cost, hold_bound, input_token_bound
from gpupool.protocol import ModelOffer, Run
from tests.integration.conftest import PG_URL, client_for, pg_available
from tests.integration.test_bad_peers import events, expect_close, handshake

FAST_SETTLE = ["--settle-interval-s", "0.05", "--tab-idle-s", "0.5", "--fee-bps", "1000"]
CHEAP, DEAR = Price(100_000, 400_000), Price(300_000, 900_000)


def ledger_state(url: str) -> tuple[dict[str, int], list[str]]:
    async def go() -> tuple[dict[str, int], list[str]]:
        led = await SqlLedger.open(url)
        try:
            return await led.balances(), await led.verify()
        finally:
            await led.close()

    with cf.ThreadPoolExecutor(1) as pool:  # callers may be inside an event loop
        return pool.submit(asyncio.run, go()).result()


def admin_post(net: Network, path: str, body: dict[str, Any], url: str | None = None) -> httpx.Response:
    return httpx.post((url or net.gateway_url) + path, json=body, timeout=10, verify=net.verify,
                      headers={"Authorization": f"Bearer {net.admin_token}"})


def new_account(net: Network, name: str, deposit: int, url: str | None = None) -> str:
    """A fresh API key whose account `name` holds `deposit` µcr."""
    created = admin_post(net, "/admin/keys", {"name": name, "account": name}, url)
    assert created.status_code == 201, created.text
    if deposit:
        assert admin_post(net, "/admin/deposit", {"account": name, "amount": deposit, "key": f"dep-{name}"},
                          url).status_code == 201
    return created.json()["key"]


def price_args(price: Price) -> list[str]:
    return ["--price", f"echo={price.per_m_in}/{price.per_m_out}"]


def wait_settled(net: Network, key: str, url: str | None = None, timeout: float = 15) -> dict[str, Any]:
    """/v1/account once nothing is held or waiting to be settled for this key's account."""
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get((url or net.gateway_url) + "/v1/account", headers={"Authorization": f"Bearer {key}"},
                         verify=net.verify,  # polled: one SSL context, not a CA bundle load per call
                         timeout=10).json()
        if body["held"] == 0 and body["unsettled_charges"] == 0 and body["in_flight"] == 0:
            return body
        assert time.monotonic() < deadline, f"still held after {timeout}s: {body}"
        time.sleep(0.1)


def assert_books_balance(db: str, deposits: int) -> dict[str, int]:
    balances, problems = ledger_state(db)
    assert problems == []
    assert sum(v for k, v in balances.items() if k != postings.WORLD) == deposits  # no withdrawals in these tests
    assert all(v >= 0 for k, v in balances.items() if k != postings.WORLD)
    assert not [k for k, v in balances.items() if ":hold" in k and v], "a hold leaked"
    return balances


def test_requests_are_charged_from_receipts_at_the_serving_providers_price(network: Network) -> None:
    network.start_gateway(extra=FAST_SETTLE)
    procs = [network.start_provider(["echo=echo:chat"], extra=price_args(p)) for p in (CHEAP, DEAR)]
    network.wait_for_models({"echo": 2}, timeout=60)
    price_of = {proc.node_id: p for proc, p in zip(procs, (CHEAP, DEAR))}
    key = new_account(network, "shopper", 5_000_000)
    client = client_for(network, key)
    charged: list[tuple[str, int]] = []  # (provider, cost) as the client was told
    for i in range(12):
        words = " ".join(["word"] * (i + 1))
        if i % 3 == 2:  # streamed, with the usage chunk
            stream = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": words}],
                                                    stream=True, stream_options={"include_usage": True})
            with stream:
                chunks = list(stream)
            usage = chunks[-1].usage
            provider = stream.response.headers["x-gpupool-provider"]
        else:
            raw = client.chat.completions.with_raw_response.create(
                model="echo", messages=[{"role": "user", "content": words}])
            usage = raw.parse().usage
            provider = raw.headers["x-gpupool-provider"]
            assert int(raw.headers["x-gpupool-cost"]) == usage.cost_ucr
        expected = cost(price_of[provider], usage.prompt_tokens, usage.completion_tokens)
        assert usage.cost_ucr == expected > 0
        charged.append((provider, usage.cost_ucr))
    wait_settled(network, key)  # the tab is closed now...
    raw = client.chat.completions.with_raw_response.create(model="echo", messages=[{"role": "user", "content": "x"}])
    charged.append((raw.headers["x-gpupool-provider"], raw.parse().usage.cost_ucr))  # ...and a new one opened
    account = wait_settled(network, key)
    total = sum(c for _, c in charged)
    assert account["balance"] == 5_000_000 - total
    assert sorted(r["cost"] for r in account["recent_charges"]) == sorted(c for _, c in charged)
    balances = assert_books_balance(network.db, 5_000_000)
    fees = sum(fee_of(c, 1000) for _, c in charged)
    assert balances.get(postings.GATEWAY_FEES, 0) == fees
    for node_id in price_of:
        earned = sum(c - fee_of(c, 1000) for p, c in charged if p == node_id)
        assert balances.get(postings.provider_held(node_id), 0) == earned
        body = httpx.get(f"{network.gateway_url}/v1/providers/{node_id}/earnings", timeout=5).json()
        assert body["held"] == earned and body["withdrawable"] == 0


def test_unaffordable_requests_get_402_and_no_ending_leaks_a_hold(network: Network) -> None:
    network.start_gateway(extra=FAST_SETTLE)
    network.start_provider(["echo=echo:chat?delay_ms=30"], extra=price_args(Price(1_000_000, 1_000_000)))
    network.wait_for_models({"echo": 1}, timeout=60)
    key = new_account(network, "thrifty", 3_000)  # 3,000 µcr: 1 µcr per token in and out
    client = client_for(network, key, timeout=30)
    msgs = [{"role": "user", "content": "one two three four five six"}]
    with pytest.raises(openai.APIStatusError) as info:
        # The most the model offers (2,048) on a long prompt: more than the balance could pay.
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "word " * 250}],
                                       max_tokens=2_048)
    assert info.value.status_code == 402
    assert info.value.body["code"] == "insufficient_quota" and "3,000 µcr available" in info.value.body["message"]
    paid = client.chat.completions.create(model="echo", messages=msgs, max_tokens=100).usage.cost_ucr
    assert paid > 0
    # Ends without a receipt: deadline, client hanging up mid-stream, a price cap nobody meets.
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="echo", messages=msgs, max_tokens=100, timeout=0.05)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="echo", messages=msgs, max_tokens=100,
                                       extra_headers={"X-Gpupool-Timeout": "0.05"})
    assert info.value.status_code == 504
    stream = client.chat.completions.create(model="echo", messages=msgs, max_tokens=100, stream=True)
    next(iter(stream))
    stream.close()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="echo", messages=msgs, extra_headers={"X-Gpupool-Max-Price": "3"})
    assert info.value.status_code == 503 and "excluded by max_price" in info.value.message
    time.sleep(0.5)  # the abandoned calls finish on the provider side
    account = wait_settled(network, key)
    balances = assert_books_balance(network.db, 3_000)
    provider = network.providers[0].node_id
    charged = balances.get(postings.provider_held(provider), 0) + balances.get(postings.GATEWAY_FEES, 0)
    assert account["balance"] == 3_000 - charged
    assert charged >= paid  # the requests abandoned after the provider answered may be charged too
    # Still served after all that.
    assert client.chat.completions.create(model="echo", messages=msgs, max_tokens=5).choices[0].message.content


async def answer_one_run(ws: Any, node_id: str, text: str, usage: protocol.Usage,
                         signer: Identity | None = None) -> protocol.Receipt:
    """Play a raw provider: answer the next Run with `text` and a receipt with right hashes.

    The receipt is signed by `signer` when given (by anyone: tests forge), else left
    for a Statement. Pings are answered meanwhile so the gateway keeps routing here.
    """
    while True:
        msg = protocol.decode(await ws.recv())
        if isinstance(msg, protocol.Ping):
            await ws.send(protocol.encode(protocol.Pong(msg.nonce, msg.sent_at)))
        if isinstance(msg, Run):
            receipt = protocol.Receipt(
                request_id=msg.request_id, node_id=node_id, model=msg.model,
                input_hash=protocol.payload_hash(msg.payload), output_hash=protocol.output_hash(text),
                usage=usage, finish_reason="stop", issued_at=time.time())
            if signer is not None:
                receipt = msgspec.structs.replace(receipt, signature=signer.sign(protocol.signed_bytes(receipt)))
            await ws.send(protocol.encode(protocol.Done(msg.request_id, receipt, text=text)))
            return receipt


async def test_a_receipt_with_a_bad_signature_is_never_paid(network: Network) -> None:
    """Inline checks are sampled (rate 0 here); the settlement check is not, so a forged receipt costs nothing."""
    network.start_gateway(extra=[*FAST_SETTLE, "--receipt-verify-rate", "0"])
    key = new_account(network, "victim", 1_000_000)
    client = client_for(network, key, timeout=30)
    forger, stranger = Identity.generate(), Identity.generate()
    ws = await handshake(network, forger, [ModelOffer("echo", "generate", "echo", price_in=10**6, price_out=10**6)])

    # Hashes right, signature by someone else: only a signature check catches it.
    task = asyncio.create_task(answer_one_run(ws, forger.node_id, "an answer", protocol.Usage(100, 200), stranger))
    out = await asyncio.to_thread(client.chat.completions.create, model="echo",
                                  messages=[{"role": "user", "content": "hi"}], max_tokens=300)
    assert out.usage.cost_ucr == 300  # what the gateway meant to charge...
    await asyncio.wait_for(task, 10)
    account = await asyncio.to_thread(wait_settled, network, key)
    assert account["balance"] == 1_000_000  # ...but the receipt did not verify, so nothing was
    bad = events(network, "bad_receipt")
    assert bad and bad[0]["peer"] == forger.node_id and "signature" in bad[0]["detail"]
    billing = httpx.get(network.gateway_url + "/admin/billing", timeout=5,
                        headers={"Authorization": f"Bearer {network.admin_token}"}).json()
    assert billing["stats"]["bad_receipts"] == 1 and billing["stats"]["charged"] == 0
    balances = assert_books_balance(network.db, 1_000_000)
    assert balances.get(postings.provider_held(forger.node_id), 0) == 0
    await ws.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(clients: list[openai.OpenAI], seconds: float, errors: list[str], costs: list[int]) -> None:
    """Requests from 6 threads for `seconds`; records costs the clients were told, and errors."""
    stop = time.monotonic() + seconds

    def worker(w: int) -> None:
        i = 0
        while time.monotonic() < stop:
            client = clients[(w + i) % len(clients)]
            i += 1
            try:
                out = client.chat.completions.create(model="echo", max_tokens=20,
                                                     messages=[{"role": "user", "content": f"w{w} r{i} a b c"}])
                costs.append(out.usage.cost_ucr)
            except openai.APIConnectionError:
                errors.append("connection")  # the gateway being killed: expected in that test
            except openai.APIStatusError as exc:
                errors.append(f"{exc.status_code} {exc.message}")

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def test_gateway_sigkilled_under_load_loses_and_creates_no_money(network: Network) -> None:
    port = _free_port()
    network.start_gateway(port=port, extra=FAST_SETTLE)
    for _ in range(2):
        network.start_provider(["echo=echo:chat?delay_ms=5"], max_concurrency=8,
                               extra=[*price_args(CHEAP), "--reconnect-max-s", "0.5"])
    network.wait_for_models({"echo": 2}, timeout=60)
    key = new_account(network, "busy", 10_000_000)
    client = client_for(network, key, timeout=10)
    errors: list[str] = []
    costs: list[int] = []
    loader = threading.Thread(target=_load, args=([client], 3.0, errors, costs))
    loader.start()
    time.sleep(1.5)
    assert network.gateway is not None
    network.kill_provider(network.gateway, signal.SIGKILL)  # mid-load: reserves and unflushed charges in flight
    network.gateway.popen.wait(10)
    loader.join()
    served_before = len(costs)
    assert served_before > 20
    balances, problems = ledger_state(network.db)
    assert problems == []
    assert sum(v for k, v in balances.items() if k != postings.WORLD) == 10_000_000
    assert any(":hold-" in k and v for k, v in balances.items()), "the dead gateway's reserve is still held"
    # Restart on the same port and key: the old reserve is returned, service resumes, books balance.
    network.start_gateway(port=port, extra=FAST_SETTLE)
    network.wait_for_models({"echo": 2}, timeout=30)
    after = client.chat.completions.create(model="echo", max_tokens=20, messages=[{"role": "user", "content": "x"}])
    assert after.usage.cost_ucr > 0
    wait_settled(network, key)
    balances = assert_books_balance(network.db, 10_000_000)
    spent = 10_000_000 - balances[postings.client("busy")]
    # Charges settled every 50 ms landed; those still queued in the killed gateway are lost to the
    # providers, never billed twice. A request settled just before the kill but never delivered may be
    # charged: at most one per client thread, each at most its hold.
    most_per_request = hold_bound([CHEAP], input_token_bound(32, 1), 20, None)
    told = sum(costs) + after.usage.cost_ucr
    assert 0.5 * told <= spent <= told + 6 * most_per_request


@pytest.mark.skipif(not pg_available(), reason="PostgreSQL not reachable at 127.0.0.1:5432")
def test_two_gateways_settling_into_one_postgres_ledger_keep_the_books(tmp_path: Path) -> None:
    import asyncpg  # noqa: F401 - the driver the URL names

    db_name = f"gpupool_billing_{int(time.time() * 1000) % 10**9}"
    admin_url = PG_URL.replace("postgresql+asyncpg", "postgresql").rsplit("/", 1)[0] + "/postgres"

    async def create(sql: str) -> None:
        import asyncpg as pg

        conn = await pg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(create(f'CREATE DATABASE "{db_name}"'))
    ledger_url = PG_URL.rsplit("/", 1)[0] + "/" + db_name
    nets = [Network(tmp_path / f"gw{i}") for i in range(2)]
    try:
        urls = [n.start_gateway(extra=[*FAST_SETTLE, "--ledger", ledger_url]) for n in nets]
        for _ in range(2):
            nets[0].start_provider(["echo=echo:chat?delay_ms=5"], max_concurrency=8, extra=price_args(CHEAP),
                                   gateways=[u.replace("http://", "ws://") for u in urls])
        for n in nets:
            n.wait_for_models({"echo": 2}, timeout=60)
        keys = [new_account(n, "shared", 0, u) for n, u in zip(nets, urls)]
        assert admin_post(nets[0], "/admin/deposit", {"account": "shared", "amount": 20_000_000, "key": "dep-shared"}).status_code == 201
        clients = [client_for(n, k, timeout=30) for n, k in zip(nets, keys)]
        errors: list[str] = []
        costs: list[int] = []
        _load(clients, 4.0, errors, costs)
        assert not errors, errors[:3]
        assert len(costs) > 50
        for n, u, k in zip(nets, urls, keys):
            wait_settled(n, k, u)
        balances = assert_books_balance(ledger_url, 20_000_000)
        # Every charge a client was told about landed exactly once, whichever gateway settled it.
        assert balances[postings.client("shared")] == 20_000_000 - sum(costs)
        earned = sum(v for k, v in balances.items() if k.startswith("provider:"))
        assert earned + balances.get(postings.GATEWAY_FEES, 0) == sum(costs)
    finally:
        for n in nets:
            n.stop(timeout=10)
        asyncio.run(create(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))


async def test_receipts_are_paid_only_once_a_valid_statement_signs_them(network: Network) -> None:
    """Unsigned receipts wait for the provider's Statement; a forged statement gets the provider thrown out."""
    network.start_gateway(extra=[*FAST_SETTLE, "--statement-wait-s", "1"])
    key = new_account(network, "careful", 1_000_000)
    client = client_for(network, key, timeout=30)
    ident, stranger = Identity.generate(), Identity.generate()
    ws = await handshake(network, ident, [ModelOffer("echo", "generate", "echo", price_in=10**6, price_out=10**6)])
    digests: list[bytes] = []

    async def serve() -> None:
        digests.append(protocol.receipt_digest(await answer_one_run(ws, ident.node_id, "ok", protocol.Usage(10, 20))))

    def ask() -> int:
        return client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=50).usage.cost_ucr

    # 1. Signed by a statement: paid.
    task = asyncio.create_task(serve())
    assert await asyncio.to_thread(ask) == 30
    await task
    signed = protocol.Statement(1, digests[:1], ident.sign(protocol.statement_bytes(1, digests[:1])))
    await ws.send(protocol.encode(signed))
    assert (await asyncio.to_thread(wait_settled, network, key))["balance"] == 1_000_000 - 30
    # 2. A statement signed with someone else's key: disconnected as a bad signature...
    task = asyncio.create_task(serve())
    assert await asyncio.to_thread(ask) == 30
    await task
    forged = protocol.Statement(2, digests[1:], stranger.sign(protocol.statement_bytes(2, digests[1:])))
    await ws.send(protocol.encode(forged))
    assert "statement" in await expect_close(ws, protocol.CLOSE_BAD_SIGNATURE)
    # ...and that receipt, never validly signed, is dropped unpaid after statement_wait_s, and recorded.
    assert (await asyncio.to_thread(wait_settled, network, key))["balance"] == 1_000_000 - 30
    assert any("never signed" in e["detail"] for e in events(network, "bad_receipt"))
    balances = assert_books_balance(network.db, 1_000_000)
    assert balances[postings.provider_held(ident.node_id)] + balances.get(postings.GATEWAY_FEES, 0) == 30
