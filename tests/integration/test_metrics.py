"""Prometheus metrics scraped from a real gateway, provider and checker after real traffic.

The counters must move with the right (bounded) labels: requests by route, model,
status and outcome; latency and time-to-first-token histograms; tokens and µcr;
providers by state; audits and verdicts on both sides; a per-key limit hit; a
failover caused by a raw WebSocket provider that fails everything it is sent. The
exposition is parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from gpupool import protocol
from gpupool.devnet import Network
from gpupool.identity import Identity
from gpupool.protocol import Fail, ModelOffer, Run
from prometheus_client.parser import text_string_to_metric_families
from tests.integration.conftest import client_for, raw, wait_until
from tests.integration.test_bad_peers import handshake

PRICE = "echo=2000000/4000000"  # µcr per 1M tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition at `url`: (name, sorted labels) -> value."""
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum over every series of `name` whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


async def test_gateway_provider_and_checker_metrics_move_with_traffic(network: Network) -> None:
    provider_port, checker_port = free_port(), free_port()
    network.start_gateway(extra=["--no-hedging"])
    provider = network.start_provider(["echo=echo:chat?delay_ms=30", "echo-embed=echo:embeddings"], max_concurrency=1,
                                      extra=["--price", PRICE, "--metrics-port", str(provider_port)])
    network.start_checker(["echo=echo:chat"], name="checker", extra=["--metrics-port", str(checker_port)])
    network.wait_for_models({"echo": 1, "echo-embed": 1}, timeout=60)
    gw = network.gateway_url + "/metrics"
    wait_until(lambda: value(scrape(gw), "gpupool_checkers") == 1, "the checker to connect", 60)
    client = client_for(network, timeout=30)
    key = network.dev_key()

    # A raw provider that fails every run it gets (retryable): those requests move elsewhere.
    failer = Identity.generate()
    ws = await handshake(network, failer, [ModelOffer("echo", "generate", "echo")])
    fails = 0

    async def fail_everything() -> None:
        nonlocal fails
        while True:
            msg = protocol.decode(await ws.recv())
            if isinstance(msg, protocol.Ping):  # look healthy and near
                await ws.send(protocol.encode(protocol.Pong(msg.nonce, msg.sent_at)))
            elif isinstance(msg, Run):
                fails += 1
                await ws.send(protocol.encode(Fail(msg.request_id, "internal_error", "broken on purpose", True)))

    failer_task = asyncio.create_task(fail_everything())
    await asyncio.sleep(0.3)  # a ping: the gateway measures the failer's RTT
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(4) as pool:
        outs = await asyncio.gather(*(loop.run_in_executor(pool, lambda i=i: client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": f"q {i}"}], max_tokens=8)) for i in range(6)))
    assert [o.choices[0].message.content for o in outs] == [f"q {i}" for i in range(6)]
    failer_task.cancel()
    await ws.close()
    wait_until(lambda: value(scrape(gw), "gpupool_providers", state="serving") == 1, "the failer to be gone", 30)

    def work() -> None:
        stream = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "streamed"}],
                                                max_tokens=8, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "streamed"
        client.embeddings.create(model="echo-embed", input=["a", "b", "c"])
        # A stream the client walks away from after its first token (~1.5 s of words at 30 ms each).
        with httpx.stream("POST", network.gateway_url + "/v1/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {key}"},
                          json={"model": "echo", "stream": True, "max_tokens": 200,
                                "messages": [{"role": "user", "content": " ".join(["word"] * 50)}]}) as r:
            assert r.status_code == 200
            next(r.iter_lines())
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}], max_tokens=-1)
        # A key allowed one request a minute: its second request is refused by the rpm limit.
        limited = raw(network, "POST", "/admin/keys", network.admin_token,
                      json={"name": "metrics-rpm", "account": "devnet", "rpm": 1}).json()["key"]
        slow = client_for(network, key=limited)
        slow.chat.completions.create(model="echo", messages=[{"role": "user", "content": "once"}], max_tokens=4)
        with pytest.raises(openai.RateLimitError):
            slow.chat.completions.create(model="echo", messages=[{"role": "user", "content": "twice"}], max_tokens=4)

    await loop.run_in_executor(None, work)

    charges = httpx.get(network.gateway_url + "/v1/account?limit=100", timeout=10,
                        headers={"Authorization": f"Bearer {key}"}).json()["recent_charges"]
    cost = sum(c["cost"] for c in charges)
    assert cost > 0
    # Settlement and audits finish in the background: wait for their counters.
    def settled() -> dict | None:
        s = scrape(gw)
        return s if value(s, "gpupool_settled_microcredits_total") == cost else None

    g = await loop.run_in_executor(None, lambda: wait_until(settled, "charges to settle", 30))
    checker_url = f"http://127.0.0.1:{checker_port}/metrics"
    await loop.run_in_executor(None, lambda: wait_until(
        lambda: value(scrape(checker_url), "gpupool_checker_audits_total", verdict="passed") > 0
        and value(scrape(gw), "gpupool_audit_verdicts_total", verdict="passed")
        == value(scrape(checker_url), "gpupool_checker_audits_total", verdict="passed"),
        "verdicts to reach the gateway", 60))
    g = scrape(gw)

    # Requests by route, model, status and outcome: 6 + 1 (stream) + 1 (limited key) chat requests served.
    assert value(g, "gpupool_requests_total", route="chat", model="echo", status="200", outcome="ok") == 8
    assert value(g, "gpupool_requests_total", route="embeddings", model="echo-embed", status="200", outcome="ok") == 1
    assert value(g, "gpupool_requests_total", route="chat", model="unknown", status="404", outcome="error") == 1
    assert total(g, "gpupool_requests_total", route="chat", status="400", outcome="error") == 1
    assert value(g, "gpupool_requests_total", route="chat", model="echo", status="429", outcome="error") == 1
    assert value(g, "gpupool_limit_hits_total", limit="rpm") == 1
    assert value(g, "gpupool_requests_total", route="chat", model="echo", status="200", outcome="cancelled") == 1
    # Histograms: every chat request for echo timed (8 served, 1 abandoned, 1 refused); two streams started.
    assert value(g, "gpupool_request_duration_seconds_count", route="chat", model="echo") == 10
    assert value(g, "gpupool_request_duration_seconds_sum", route="chat", model="echo") > 8 * 0.03
    assert value(g, "gpupool_time_to_first_token_seconds_count", model="echo") == 2
    assert value(g, "gpupool_tokens_total", model="echo", direction="out") == sum(
        c["completion_tokens"] for c in charges if c["model"] == "echo")
    assert value(g, "gpupool_tokens_total", model="echo-embed", direction="in") == sum(
        c["prompt_tokens"] for c in charges if c["model"] == "echo-embed")
    assert value(g, "gpupool_charged_microcredits_total", model="echo") == cost
    # The failer's runs each moved to the honest provider.
    assert fails >= 1 and value(g, "gpupool_routing_decisions_total", decision="failover") == fails
    assert value(g, "gpupool_routing_decisions_total", decision="hedge") == 0  # --no-hedging
    assert value(g, "gpupool_providers", state="serving") == 1 and value(g, "gpupool_provider_slots") == 1
    assert value(g, "gpupool_audits_requested_total") >= 1
    assert value(g, "gpupool_requests_in_flight") == 1  # this scrape
    # Nothing is labelled with a key or a request id.
    labels = {v for (_, ls) in g for _, v in ls}
    assert not any(key in v or v.startswith(("chatcmpl-", "emb-")) for v in labels)

    # The provider's own view: what it answered, its slots; no GPU series without NVML (no error either).
    p = scrape(f"http://127.0.0.1:{provider_port}/metrics")
    served = [c for c in charges if c["provider"] == provider.node_id and c["model"] == "echo"
              and c["status"] == "ok"]
    assert value(p, "gpupool_provider_requests_total", model="echo", outcome="ok") == len(served) == 8
    assert value(p, "gpupool_provider_requests_total", model="echo-embed", outcome="ok") == 1
    assert value(p, "gpupool_provider_slots") == 1 and value(p, "gpupool_provider_queue_length") == 0
    try:
        import pynvml

        pynvml.nvmlInit()
        has_gpu = pynvml.nvmlDeviceGetCount() > 0
    except Exception:  # noqa: BLE001 - no NVML here
        has_gpu = False
    assert (total(p, "gpupool_gpu_memory_total_bytes") > 0) == has_gpu


def test_public_providers_list_pages_and_stats_refuse_bad_parameters(echo_net: Network) -> None:
    """/v1/providers and /v1/stats need no key, page like OpenAI lists, show nothing private and
    refuse parameters they cannot honour with a 400 naming them."""
    net = echo_net
    client = client_for(net)
    for i in range(2):
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=4)
    connected = sorted(p["node_id"] for p in net.admin("/admin/providers"))

    first = raw(net, "GET", "/v1/providers?limit=1").json()
    assert first["object"] == "list" and len(first["data"]) == 1 and first["has_more"] is True
    assert first["first_id"] == first["last_id"] == first["data"][0]["id"]
    second = raw(net, "GET", f"/v1/providers?limit=1&after={first['last_id']}").json()
    assert len(second["data"]) == 1 and second["has_more"] is False
    assert [first["data"][0]["id"], second["data"][0]["id"]] == connected
    entry = first["data"][0]
    assert set(entry) == {"id", "object", "region", "location", "models", "load", "state", "rtt_ms",
                          "verified_gflops", "gpus", "reputation", "audits"}
    assert entry["state"] == "serving" and entry["load"]["max_concurrency"] == 4
    assert raw(net, "GET", f"/v1/providers/{entry['id']}").json() == entry
    everything = raw(net, "GET", "/v1/providers?limit=100").text
    assert "127.0.0.1" not in everything and net.dev_key() not in everything

    def refused(path: str, param: str, status: int = 400) -> None:
        r = raw(net, "GET", path)
        assert r.status_code == status and r.json()["error"]["param"] == param, (path, r.text)

    refused("/v1/providers?limit=many", "limit")
    refused("/v1/providers?after=" + "x" * 300, "after")
    refused("/v1/providers/gp-not-connected", "node_id", 404)
    refused("/v1/stats?window_s=5", "window_s")
    refused("/v1/stats?window_s=ten", "window_s")

    stats = raw(net, "GET", "/v1/stats?window_s=60").json()
    assert stats["totals"]["requests"] == 2 and stats["totals"]["errors"] == 0
    assert [m["model"] for m in stats["models"]] == ["echo"] and stats["providers"]["serving"] == 2
    assert sum(b["requests"] for b in stats["series"]) == 2 and stats["totals"]["p95_latency_ms"] > 0

    # The dashboard's files, and nothing outside its folder.
    home = raw(net, "GET", "/")
    assert home.status_code == 200 and home.headers["content-type"].startswith("text/html")
    assert raw(net, "GET", "/dashboard/vendor/land-110m.json").json()["type"] == "Topology"
    for path in ("/dashboard/../app.py", "/dashboard/%2e%2e/__init__.py", "/dashboard/__init__.py"):
        assert raw(net, "GET", path).status_code == 404, path
