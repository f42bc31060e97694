"""Poisoned canaries do not suspend honest providers, and a suspension has a way back (issue 18, item 12).

Real gateway and echo providers; the attacker is a raw provider, the checkers raw checker
peers whose verdicts each test sets (a real checker passes a near-tie answer the same way:
within the audits' logit margin; tests/unit/test_verify_comparators.py covers that, and that
such a pass is marked as a near tie so it never becomes a canary).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import httpx
import openai

from gpupool import protocol
from gpupool.devnet import Network
from gpupool.identity import Identity
from gpupool.protocol import AuditJob, ModelOffer
from tests.integration.conftest import audits_body, client_for, wait_until_async
from tests.integration.raw_peers import judge_jobs, judging_checker, raw_checker
from tests.integration.test_bad_peers import events, handshake
from tests.integration.test_billing import FAST_SETTLE, answer_one_run

PLANTED = "Paris is the capital"  # the runner-up answer the attacker commits to


def chat(client: openai.OpenAI, text: str, **kw: Any) -> Any:
    return client.chat.completions.create(model="echo", temperature=0, messages=[{"role": "user", "content": text}],
                                          **kw)


async def test_a_planted_near_tie_canary_does_not_suspend_an_honest_provider(network: Network) -> None:
    """The attack from the issue: a provider with a client key sends a prompt routed to itself
    (region `require`), answers the runner-up, the checker passes it (a near tie), and it becomes
    a canary. An honest provider answering the favourite used to fail it at once (a different
    first character: a hard failure) and be suspended; now the difference goes to the checker,
    which passes the honest answer, and the ambiguous canary is dropped."""
    network.start_gateway(extra=[*FAST_SETTLE, "--canary-interval-s", "0.2"])
    honest = network.start_provider(["echo=echo:chat"])
    network.wait_for_models({"echo": 1}, timeout=60)
    _checker, cws, jobs, judging = await judging_checker(network, ["echo"], True)
    attacker = Identity.generate()
    aws = await handshake(network, attacker, [ModelOffer("echo", "generate", "echo")])  # region "test"
    client = client_for(network)
    asked = asyncio.create_task(asyncio.to_thread(
        chat, client, "The capital of France?", extra_body={"gpupool": {"region": "test", "region_policy": "require"}}))
    await answer_one_run(aws, attacker.node_id, PLANTED, protocol.Usage(5, 4), signer=attacker)
    assert (await asked).choices[0].message.content == PLANTED
    # The checker passed it; it is a canary now, and the honest provider is probed with it.
    await wait_until_async(lambda: any(j.job_id.startswith("can-") for j in jobs), "the canary's difference to "
                           "reach the checker", 30)
    await wait_until_async(lambda: audits_body(network)["canaries"]["dropped"] >= 1, "the ambiguous canary to be dropped",
                           15)
    recheck = next(j for j in jobs if j.job_id.startswith("can-"))
    assert recheck.text == "The capital of France?" and recheck.receipt.node_id == honest.node_id
    assert not [e for e in events(network, "suspended") if e["peer"] == honest.node_id]
    row = next(r for r in audits_body(network)["data"] if r["node_id"] == honest.node_id)
    assert not row["suspended"] and row["audit_failures"] == 0, row
    # The honest provider keeps serving.
    assert (await asyncio.to_thread(chat, client, "still served")).choices[0].message.content == "still served"
    judging.cancel()
    await cws.close()
    await aws.close()


async def _suspended(network: Network, node_id: str, after: int = 0) -> None:
    await wait_until_async(lambda: len([e for e in events(network, "suspended") if e["peer"] == node_id]) > after,
                           "the provider to be suspended", 30)


def _lifted(network: Network, node_id: str) -> list[dict[str, Any]]:
    return [e for e in events(network, "suspension_lifted") if e["peer"] == node_id]


async def test_the_operator_lifts_a_suspension_and_suspensions_expire(network: Network) -> None:
    network.start_gateway(extra=[*FAST_SETTLE, "--suspension-expiry-s", "3"])
    provider = network.start_provider(["echo=echo:chat"])
    network.wait_for_models({"echo": 1}, timeout=60)
    _checker, cws, _jobs, judging = await judging_checker(network, ["echo"], False)  # a checker in error
    client = client_for(network)
    await asyncio.to_thread(chat, client, "first answer")
    await _suspended(network, provider.node_id)
    try:
        await asyncio.to_thread(chat, client, "while suspended")
        raise AssertionError("a suspended provider was sent work")
    except openai.APIStatusError as exc:
        assert exc.status_code == 503
    # The operator's command lifts it at once, and the provider serves again.
    out = subprocess.run([sys.executable, "-m", "gpupool", "provider", "unsuspend", provider.node_id,
                          "--gateway", network.gateway_url, "--admin-token", network.admin_token],
                         capture_output=True, text=True, timeout=60, env=network.env)
    assert out.returncode == 0 and "lifted" in out.stdout, out.stderr
    assert "operator" in _lifted(network, provider.node_id)[0]["detail"]
    assert (await asyncio.to_thread(chat, client, "served again")).choices[0].message.content == "served again"
    # The same checker fails that answer too: suspended again; this time it runs out by itself.
    await _suspended(network, provider.node_id, after=1)
    judging.cancel()
    await cws.close()
    await wait_until_async(lambda: len(_lifted(network, provider.node_id)) >= 2 or _poke(client),
                           "the suspension to expire", 20)
    assert "expired" in _lifted(network, provider.node_id)[0]["detail"]
    assert (await asyncio.to_thread(chat, client, "after expiry")).choices[0].message.content == "after expiry"
    # An operator lift of a provider that is not suspended is a 404, and needs the admin token.
    r = httpx.post(f"{network.gateway_url}/admin/providers/{provider.node_id}/unsuspend",
                   headers={"Authorization": f"Bearer {network.admin_token}"}, timeout=5)
    assert r.status_code == 404
    r = httpx.post(f"{network.gateway_url}/admin/providers/{provider.node_id}/unsuspend", timeout=5)
    assert r.status_code == 401


def _poke(client: openai.OpenAI) -> bool:
    """Expiry is noticed when the router next asks about the provider: ask."""
    try:
        chat(client, "poke")
    except openai.APIStatusError:
        pass
    return False


async def test_a_second_checker_passing_the_recheck_lifts_the_suspension(network: Network) -> None:
    """The appeal: the first checker fails the answer (hard: suspended at once), the second passes the
    same answer on re-check; the suspension is lifted and the first checker takes a strike."""
    network.start_gateway(extra=FAST_SETTLE)
    provider = network.start_provider(["echo=echo:chat"])
    network.wait_for_models({"echo": 1}, timeout=60)
    tasks, sockets = [], []
    jobs: list[AuditJob] = []
    for name in ("checker-0", "checker-1"):
        ident = network.checker_identity(name)
        ws = await raw_checker(network, ident, ["echo"])
        sockets.append(ws)
        # Whichever gets the first job fails it; the re-check (conf-) passes.
        tasks.append(asyncio.create_task(judge_jobs(ws, ident, lambda job: job.job_id.startswith("conf-"), jobs)))
    client = client_for(network)
    await asyncio.to_thread(chat, client, "appeal me")
    await _suspended(network, provider.node_id)
    await wait_until_async(lambda: bool(_lifted(network, provider.node_id)), "the appeal to lift it", 30)
    assert "appeal" in _lifted(network, provider.node_id)[0]["detail"]
    assert events(network, "checker_overruled")
    row = next(r for r in audits_body(network)["data"] if r["node_id"] == provider.node_id)
    assert not row["suspended"] and not row["slashed"]
    for t in tasks:
        t.cancel()
    for ws in sockets:
        await ws.close()
