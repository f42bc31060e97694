"""Sampled generation audited by seed replay, with real processes.

A gateway, an honest provider, a cheating one (the red-team `random-llama` backend of
`tests/redteam.py`:
tiny-llama's shape and tokenizer with other random weights, under the real model's
name) and a checker process holding the reference. Clients send sampled requests
(temperature 0.8) without a seed; the gateway gives each one a seed, the providers
sample with `verify.token_sampler`, and the checker replays every token from one forward
pass. Each provider sits in its own region and the clients require that region, so a
test decides who answers. One network serves the whole module (starting it is most of
the time).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import openai
import pytest

from gpupool.devnet import Network
from gpupool.devnet_setup import prepare_models
from tests.integration.conftest import client_for, wait_checkers, wait_until
from tests.redteam import REDTEAM, child_env

pytest.importorskip("transformers", reason="needs the ml extra")

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def sampled_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    prepare_models()
    net = Network(tmp_path_factory.mktemp("sampled") / "net", env=child_env())
    try:
        net.start_gateway()
        net.start_provider([f"{MODEL}=generate:tiny-llama"], region="honest")
        # --verbose: the checker logs each verdict with its reason, which the tests read.
        net.start_checker([f"{MODEL}=generate:tiny-llama"], name="checker", extra=["--verbose"])
        net.start_provider([f"{MODEL}={REDTEAM}:random-llama:tiny-llama?seed=1"], region="cheat")
        net.wait_for_models({MODEL: 2}, timeout=120)
        wait_checkers(net, 1)
        yield net
    finally:
        net.stop(timeout=10)


def ask(client: openai.OpenAI, region: str, text: str, **kw: object) -> openai.types.chat.ChatCompletion:
    """A sampled chat request that only a provider in `region` may answer."""
    return client.chat.completions.create(  # type: ignore[call-overload]
        **{"model": MODEL, "max_tokens": 12, "temperature": 0.8, **kw},
        messages=[{"role": "user", "content": text}],
        extra_headers={"X-Gpupool-Region": region, "X-Gpupool-Region-Policy": "require"})


def provider_id(net: Network, region: str) -> str:
    proc = next(p for p in net.providers if p.args[:1] == ["provider"] and region in p.args)
    return proc.node_id


def checker_verdicts(net: Network) -> dict[str, str]:
    """request id -> "pass (reason" / "FAIL hard (reason" from the checker's log."""
    log = (net.home / "logs" / "checker.log").read_text(errors="replace")
    return {m[0]: m[1] for m in re.findall(r"request (\S+) ((?:pass|FAIL)(?: hard)? \([^,]*)", log)}


def test_honest_sampled_answers_are_replayed_and_pass(sampled_net: Network) -> None:
    client = client_for(sampled_net, timeout=60)
    answers = [ask(client, "honest", f"tell me about the harbour, part {i}") for i in range(6)]
    assert all(a.system_fingerprint == provider_id(sampled_net, "honest")[:16] for a in answers)
    # Probation: every answer is audited; each one replays token for token.
    wait_until(lambda: all(a.id in checker_verdicts(sampled_net) for a in answers), "verdicts", timeout=20)
    verdicts = checker_verdicts(sampled_net)
    assert [verdicts[a.id] for a in answers] == ["pass (sampled_replayed"] * 6
    # The checker logs a verdict just before sending it: the gateway may count it a moment later.
    honest = provider_id(sampled_net, "honest")
    row = wait_until(lambda: next((r for r in sampled_net.admin("/admin/audits")
                                   if r["node_id"] == honest and r["audits"] >= 6), None), "six audits", 20)
    assert row["audit_failures"] == 0 and not row["suspended"]


def test_a_provider_serving_another_model_fails_replay_and_is_suspended(sampled_net: Network) -> None:
    client = client_for(sampled_net, timeout=60)
    cheater = provider_id(sampled_net, "cheat")
    answered = []
    for i in range(8):  # one hard failure suspends; a few more requests only if verdicts lag
        try:
            answered.append(ask(client, "cheat", f"what grows in the valley, part {i}"))
        except openai.APIStatusError as exc:
            assert exc.status_code == 503  # suspended: nobody left in its region
            break
        time.sleep(0.3)
    assert answered
    detail = wait_until(lambda: next((e["detail"] for e in sampled_net.admin("/admin/events?limit=100")
                                      if e["kind"] == "suspended" and e["peer"] == cheater), None),
                        "the cheater's suspension", timeout=20)
    assert "sampler_mismatch at token" in detail, detail
    assert checker_verdicts(sampled_net)[answered[0].id].startswith("FAIL hard (sampler_mismatch at token")
    with pytest.raises(openai.APIStatusError) as info:
        ask(client, "cheat", "and now?")
    assert info.value.status_code == 503


def test_the_same_client_seed_gives_the_same_text(sampled_net: Network) -> None:
    client = client_for(sampled_net, timeout=60)
    prompt = "Describe the library on the corner"
    first, again = (ask(client, "honest", prompt, seed=1234, max_tokens=16) for _ in range(2))
    assert first.choices[0].message.content == again.choices[0].message.content
    other = ask(client, "honest", prompt, seed=1235, max_tokens=16)
    assert other.choices[0].message.content != first.choices[0].message.content
    # Without a seed the gateway picks a fresh one per request: the answers differ.
    unseeded = [ask(client, "honest", prompt, max_tokens=16).choices[0].message.content for _ in range(2)]
    assert unseeded[0] != unseeded[1]
