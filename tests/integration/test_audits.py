"""Audits through a real gateway: jobs go to checkers, signed verdicts suspend, confirmed fraud is slashed.

The checkers here are raw WebSocket peers speaking the checker role, so each test
controls the verdicts exactly; the checker process itself (which re-runs models) is
tested in the red-team suite.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest

from gpupool import protocol
from gpupool.devnet import Network
from gpupool.identity import Identity
from gpupool.ledger import fee_of
from gpupool.ledger import postings
from gpupool.protocol import AuditJob, ModelOffer
from tests.integration.conftest import client_for, wait_until_async
from tests.integration.raw_peers import judge_jobs, judging_checker, lie_until_suspended, raw_checker
from tests.integration.test_bad_peers import events, handshake
from tests.integration.test_billing import FAST_SETTLE, ledger_state, new_account, wait_settled


def ask(client: openai.OpenAI, text: str) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model="echo", messages=[{"role": "user", "content": text}])


async def echo_and_passing_checker(network: Network, gateway_extra: list[str], provider_extra: list[str]
                                   ) -> tuple[Identity, Any, list[AuditJob], asyncio.Task[None]]:
    """A gateway, an echo provider, and a raw checker that passes every job it gets (recorded in the list)."""
    network.start_gateway(extra=gateway_extra)
    network.start_provider(["echo=echo:chat"], extra=provider_extra)
    network.wait_for_models({"echo": 1}, timeout=60)
    return await judging_checker(network, ["echo"], True)


async def test_honest_audits_pass_and_checkers_never_get_client_traffic(network: Network) -> None:
    checker, ws, jobs, judging = await echo_and_passing_checker(network, FAST_SETTLE,
                                                                ["--price", "echo=100000/400000"])
    client = client_for(network)
    answers = [await asyncio.to_thread(ask, client, f"question {i}") for i in range(10)]
    assert [a.choices[0].message.content for a in answers] == [f"question {i}" for i in range(10)]
    await wait_until_async(
        lambda: len(jobs) >= 10 and any(r["audits"] >= 10 for r in network.admin("/admin/audits")), "ten verdicts")
    # Probation: every request of a new provider is audited, with the provider's committed output.
    assert sorted(j.text for j in jobs) == sorted(f"question {i}" for i in range(10))
    assert all(j.receipt.output_hash == protocol.output_hash(j.text) for j in jobs)
    assert all(a.system_fingerprint != checker.node_id[:16] for a in answers)  # never routed to the checker
    (row,) = network.admin("/admin/audits")
    assert row["audits"] == 10 and row["audit_failures"] == 0 and not row["suspended"]
    assert row["reputation"] > 0.5
    # A portable record of it, signed by the gateway, that the provider can show elsewhere.
    import httpx

    body = httpx.get(f"{network.gateway_url}/v1/providers/{row['node_id']}/reputation", timeout=5).json()
    assert body["record"]["audits"] == 10 and body["record"]["audit_failures"] == 0
    from gpupool.identity import verify_signature
    from gpupool.verify import record_bytes

    assert verify_signature(bytes.fromhex(body["public_key"]), bytes.fromhex(body["signature"]),
                            record_bytes(body["record"]))
    judging.cancel()
    await ws.close()


async def test_failed_audits_suspend_and_a_second_checker_confirms_the_slash(network: Network) -> None:
    network.start_gateway(extra=FAST_SETTLE)
    network.start_provider(["echo=echo:chat"], extra=["--price", "echo=1000000/1000000"])
    network.wait_for_models({"echo": 1}, timeout=60)
    key = new_account(network, "victim", 1_000_000)
    client = client_for(network, key)
    first, second = network.checker_identity("checker-0"), network.checker_identity("checker-1")
    ws1, ws2 = await raw_checker(network, first, ["echo"]), await raw_checker(network, second, ["echo"])
    jobs1: list[AuditJob] = []
    jobs2: list[AuditJob] = []
    # Both checkers find the answers wrong (a hard failure); each takes 0.5 s to decide.
    tasks = [asyncio.create_task(judge_jobs(ws1, first, False, jobs1, 0.5)),
             asyncio.create_task(judge_jobs(ws2, second, False, jobs2, 0.5))]
    paid = (await asyncio.to_thread(ask, client, "one two three")).usage.cost_ucr
    assert paid > 0
    deadline = time.monotonic() + 15
    while not any(e["kind"] == "slashed" for e in network.admin("/admin/events?limit=100")):
        assert time.monotonic() < deadline, network.admin("/admin/events?limit=100")
        await asyncio.sleep(0.1)
    # Suspended: no more traffic for this provider, with an explanation.
    with pytest.raises(openai.APIStatusError) as info:
        await asyncio.to_thread(ask, client, "again")
    assert info.value.status_code == 503
    # The bad answer was refunded from what the provider had earned (it had no stake, so the refund is
    # what it was paid: the cost less the gateway's fee); nothing was left for a bounty.
    account = await asyncio.to_thread(wait_settled, network, key)
    balances, problems = ledger_state(network.db)
    assert problems == []
    assert account["balance"] == 1_000_000 - fee_of(paid, 1000) == balances[postings.client("victim")]
    provider = (jobs1 or jobs2)[0].receipt.node_id
    assert events(network, "suspended")[0]["peer"] == provider
    assert balances.get(postings.provider_held(provider), 0) == 0
    assert balances.get(postings.GATEWAY_FEES, 0) == fee_of(paid, 1000)
    for t in tasks:
        t.cancel()


async def test_canaries_catch_a_provider_without_any_checker_judging_it(network: Network) -> None:
    """Answers a checker passed become canaries; a provider answering them wrongly is suspended."""
    _checker, ws, jobs, judging = await echo_and_passing_checker(
        network, [*FAST_SETTLE, "--canary-interval-s", "0.2"], [])
    client = client_for(network)
    for i in range(5):  # greedy: a unique right answer, so these can become canaries
        await asyncio.to_thread(client.chat.completions.create, model="echo", temperature=0,
                                messages=[{"role": "user", "content": f"known answer {i}"}])
    deadline = time.monotonic() + 10
    while len(jobs) < 5:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    judging.cancel()
    await ws.close()  # from here on, no checker at all
    # A provider that answers everything with the same wrong text, and gets no client traffic.
    liar = Identity.generate()
    lws = await handshake(network, liar, [ModelOffer("echo", "generate", "echo")])
    detail, runs = await lie_until_suspended(network, lws, liar, "nonsense", protocol.Usage(1, 1), 20)
    assert "(canary)" in detail
    # Its canaries looked like client requests and it never saw the same one twice.
    assert runs and all(r.startswith("chatcmpl-") for r in runs) and len(set(runs)) == len(runs)
    await lws.close()


async def test_confirmed_fraud_refunds_every_request_since_the_last_passed_audit(network: Network) -> None:
    """Bad answers the audits never sampled are refunded too: all requests after the last vouched one."""
    _passing, ws, jobs, judging = await echo_and_passing_checker(
        network, FAST_SETTLE, ["--price", "echo=1000000/1000000"])
    key = new_account(network, "client", 1_000_000)
    client = client_for(network, key)
    c1 = (await asyncio.to_thread(ask, client, "one two three")).usage.cost_ucr  # audited, passed
    # Its passed verdict must be in before the checker leaves: it vouches for c1.
    await wait_until_async(lambda: any(r["audits"] >= 1 for r in network.admin("/admin/audits")), "the first verdict")
    judging.cancel()
    await ws.close()  # no checker now: the next answer is served unaudited
    c2 = (await asyncio.to_thread(ask, client, "four five six")).usage.cost_ucr
    first, second = network.checker_identity("checker-0"), network.checker_identity("checker-1")
    failing = [await raw_checker(network, first, ["echo"]), await raw_checker(network, second, ["echo"])]
    tasks = [asyncio.create_task(judge_jobs(w, i, False, [])) for w, i in zip(failing, (first, second))]
    c3 = (await asyncio.to_thread(ask, client, "seven eight nine")).usage.cost_ucr  # audited, fails: fraud
    deadline = time.monotonic() + 15
    while not events(network, "slashed"):
        assert time.monotonic() < deadline, network.admin("/admin/events?limit=50")
        await asyncio.sleep(0.1)
    assert f"refunded {c2 + c3} µcr" in events(network, "slashed")[0]["detail"]
    account = await asyncio.to_thread(wait_settled, network, key)
    assert account["balance"] == 1_000_000 - c1  # the unaudited answer and the failed one came back in full
    for t in tasks:
        t.cancel()
