"""Pay per use settled on chain: a real Anvil node, the contract deployed with the CLI, a gateway
settling through `--ledger evm+http://…`, and a provider that signs its costs with a settlement key."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import re
import subprocess
import sys
from pathlib import Path

from gpupool.devnet import Network
from gpupool.ledger import fee_of
from gpupool.ledger import postings
from gpupool.ledger.settlement_key import SettlementKey
from tests.integration.conftest import client_for
from tests.integration.test_billing import (
    CHEAP,
    FAST_SETTLE,
    new_account,
    price_args,
    wait_settled,
)
from tests.unit.ledger_backends import anvil_url  # noqa: F401 - the Anvil fixture


def gpupool(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "gpupool", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_requests_settle_on_chain_in_batches_signed_by_the_provider(network: Network, anvil_url: str,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    deployed = gpupool("ledger", "deploy", "--rpc", anvil_url)
    ledger_url = re.search(r"--ledger '([^']+)'", deployed).group(1)  # type: ignore[union-attr]
    # Settling every 0.5 s (the last flag wins), so on a slow machine too the 12 receipts share batches.
    network.start_gateway(extra=[*FAST_SETTLE, "--settle-interval-s", "0.5", "--ledger", ledger_url])
    settlement_key = tmp_path / "settlement.key"
    proc = network.start_provider(["echo=echo:chat"], extra=[*price_args(CHEAP),
                                                             "--settlement-key-file", str(settlement_key)])
    network.wait_for_models({"echo": 1}, timeout=60)
    provider = proc.node_id
    key = new_account(network, "onchain", 2_000_000)  # deposited into the contract's escrow
    client = client_for(network, key)
    with cf.ThreadPoolExecutor(6) as pool:  # concurrent, so several land in one settlement batch
        costs = list(pool.map(lambda i: client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": f"hi {i} " * i}]).usage.cost_ucr, range(1, 13)))
    assert all(c > 0 for c in costs)
    account = wait_settled(network, key)
    assert account["balance"] == 2_000_000 - sum(costs)

    async def read() -> tuple[dict[str, int], list[str], str | None, int]:
        from gpupool.ledger.evm import EvmLedger

        led = await EvmLedger.open(ledger_url)
        try:
            names = [postings.client("onchain"), postings.provider_held(provider), postings.GATEWAY_FEES]
            balances = {n: await led.balance(n) for n in names}
            batches = await led.contract.events.Batch().get_logs(from_block=0)
            return balances, await led.verify(), await led.settlement_address(provider), len(batches)
        finally:
            await led.close()

    balances, problems, registered, batches = asyncio.run(read())
    assert problems == []
    assert registered == SettlementKey.load_or_create(settlement_key).address  # registered with its consent
    assert balances[postings.client("onchain")] == 2_000_000 - sum(costs)
    fees = sum(fee_of(c, 1000) for c in costs)
    assert balances[postings.GATEWAY_FEES] == fees and balances[postings.provider_held(provider)] == sum(costs) - fees
    assert 1 <= batches < len(costs)  # receipts settled together, one transaction per batch
    assert "verified" in gpupool("ledger", "verify", "--ledger", ledger_url)


async def test_confirmed_fraud_slashes_on_chain_with_the_providers_signed_receipt(  # noqa: F811
        network: Network, anvil_url: str, tmp_path: Path) -> None:
    """Two checkers fail the provider's answer: the gateway slashes through the contract, which
    takes it only with evidence (the receipt the provider signed and the contract paid)."""
    from gpupool.protocol import AuditJob
    from tests.integration.raw_peers import judge_jobs, raw_checker
    from tests.integration.test_audits import ask
    from tests.integration.test_bad_peers import events

    deployed = gpupool("ledger", "deploy", "--rpc", anvil_url, "--min-delay", "0")
    ledger_url = re.search(r"--ledger '([^']+)'", deployed).group(1)  # type: ignore[union-attr]
    network.start_gateway(extra=[*FAST_SETTLE, "--ledger", ledger_url])
    proc = network.start_provider(["echo=echo:chat"], extra=["--price", "echo=1000000/1000000",
                                                             "--settlement-key-file", str(tmp_path / "s.key")])
    network.wait_for_models({"echo": 1}, timeout=60)
    key = new_account(network, "victim", 1_000_000)
    client = client_for(network, key)
    first, second = network.checker_identity("checker-0"), network.checker_identity("checker-1")
    sockets = [await raw_checker(network, first, ["echo"]), await raw_checker(network, second, ["echo"])]
    jobs: list[AuditJob] = []
    tasks = [asyncio.create_task(judge_jobs(ws, ident, False, jobs, 0.5))
             for ws, ident in zip(sockets, (first, second))]
    paid = (await asyncio.to_thread(ask, client, "one two three")).usage.cost_ucr
    assert paid > 0
    deadline = asyncio.get_running_loop().time() + 60
    while not events(network, "slashed"):
        assert asyncio.get_running_loop().time() < deadline, events(network, "slash_pending")
        await asyncio.sleep(0.2)
    for t in tasks:
        t.cancel()

    from gpupool.ledger.evm import EvmLedger

    led = await EvmLedger.open(ledger_url)
    try:
        slashed = await led.contract.events.Slashed().get_logs(from_block=0)
        held = await led.balance(postings.provider_held(proc.node_id))
        victim = await led.balance(postings.client("victim"))
        problems = await led.verify()
    finally:
        await led.close()
    assert len(slashed) == 1 and slashed[0]["args"]["held"] == paid - fee_of(paid, 1000)
    assert held == 0  # its held earnings went back to the client
    assert victim == 1_000_000 - fee_of(paid, 1000) and problems == []


async def test_settlement_key_announcements_register_once_and_never_crowd_out_settlement(  # noqa: F811
        network: Network, anvil_url: str) -> None:
    """A raw provider announces its settlement key 50 times, then another key: one RPC read and one
    transaction are spent on it (registered once, the rest ignored), and a client's request
    served meanwhile by an honest provider settles as usual (issue 18, item 9)."""
    import httpx

    from gpupool import protocol
    from gpupool.identity import Identity
    from gpupool.protocol import SettlementAddress, Welcome
    from tests.integration.conftest import wait_until_async
    from tests.integration.test_hostile_peers import echo, start_handshake

    deployed = gpupool("ledger", "deploy", "--rpc", anvil_url)
    ledger_url = re.search(r"--ledger '([^']+)'", deployed).group(1)  # type: ignore[union-attr]
    network.start_gateway(extra=[*FAST_SETTLE, "--ledger", ledger_url])
    network.start_provider(["echo=echo:chat"], extra=[*price_args(CHEAP), "--settlement-key-file",
                                                        str(network.home / "honest-settlement.key")])
    network.wait_for_models({"echo": 1}, timeout=60)
    ident, key, other = Identity.generate(), SettlementKey.generate(), SettlementKey.generate()
    ws = await start_handshake(network, ident, [echo("spammy")])
    welcome = protocol.decode(await ws.recv())
    assert isinstance(welcome, Welcome) and welcome.contract
    announce = SettlementAddress(key.address, key.sign_registration(welcome.contract, welcome.chain_id,
                                                                    ident.node_id))
    for _ in range(50):
        await ws.send(protocol.encode(announce))
    await ws.send(protocol.encode(SettlementAddress(
        other.address, other.sign_registration(welcome.contract, welcome.chain_id, ident.node_id))))

    def announcements() -> dict[str, float]:
        text = httpx.get(network.gateway_url + "/metrics", timeout=10).text
        return {line.split('"')[1]: float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("gpupool_settlement_key_announcements_total{")}

    counts = await wait_until_async(lambda: (c := announcements()).get("ignored", 0) >= 50 and c, "announcements")
    # The honest provider's own announcement registered it too: two registrations, 50 ignored.
    await wait_until_async(lambda: announcements().get("registered") == 2, "two registrations")
    counts = announcements()
    assert counts["ignored"] == 50 and counts["failed"] == 0 and counts["mismatch"] == 0, counts
    key_client = new_account(network, "bystander", 1_000_000)
    cost = (await asyncio.to_thread(client_for(network, key_client).chat.completions.create, model="echo",
                                    messages=[{"role": "user", "content": "hi"}])).usage.cost_ucr
    account = await asyncio.to_thread(wait_settled, network, key_client)
    assert account["balance"] == 1_000_000 - cost

    from gpupool.ledger.evm import EvmLedger

    led = await EvmLedger.open(ledger_url)
    try:
        assert (await led.settlement_address(ident.node_id) or "").lower() == key.address.lower()
    finally:
        await led.close()
    await ws.close()
