"""Logs, errors a person can act on, help, and the money views, against real processes.

One gateway (`-v --log-format json`) with one provider serving a healthy echo model, an
echo embeddings model, and an `upstream` model whose engine is not running; the provider
is given the gateway's http:// URL. Other tests run `gpupool` as a subprocess and read
what a person would: its exit status, its one-line error, its help.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from gpupool.devnet import Network

from .conftest import client_for, raw, wait_until

ECHO_PRICE = "echo=1000000/1000000"  # 1 µcr per token: a request costs a few µcr
VEC_PRICE = "vec=100000000"  # dear embeddings: a key without credits cannot afford one


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpupool(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpupool", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "80", **(env or {})}, stdin=subprocess.DEVNULL)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """The command failed with status 1 and said why in one or two lines, without a traceback."""
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr
    assert len(errors[0]) < 400, errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("cli") / "net")
    try:
        # Tabs stay open for the whole module (default 5 s): the account test reads one on a busy machine.
        network.start_gateway(extra=["-v", "--log-format", "json", "--tab-idle-s", "300"])
        dead_engine = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
        network.start_provider(["echo=echo:chat", "vec=echo:embeddings", f"big=upstream:{dead_engine}"],
                               gateways=[network.gateway_url],  # http://, not ws://
                               extra=["--price", ECHO_PRICE, "--price", VEC_PRICE])
        network.wait_for_models({"echo": 1, "vec": 1}, timeout=90)
        yield network
    finally:
        network.stop(timeout=10)


def test_a_provider_keeps_serving_its_healthy_models_when_one_engine_is_down(net: Network) -> None:
    provider = net.providers[0]
    log = wait_until(lambda: "not serving big" in provider.log_path.read_text() and provider.log_path.read_text(),
                     "the provider to say which model it left out")
    assert "unreachable" in log and "Traceback" not in log
    models = {m["id"] for m in client_for(net).models.list().model_dump()["data"]}
    assert models == {"echo", "vec"}
    # Third-party noise stays out: no httpx line per call, no progress bars.
    assert "HTTP Request:" not in log and "it/s]" not in log


def test_a_gateway_that_stays_down_is_one_warning_not_one_per_retry(net: Network) -> None:
    dead = f"ws://127.0.0.1:{free_port()}"
    proc = net.start_provider(["echo=echo:chat"], gateways=[dead], extra=["-vv", "--reconnect-max-s", "0.1"])
    try:
        wait_until(lambda: proc.log_path.read_text().count("DEBUG gpupool.provider: cannot reach gateway") >= 3,
                   "a few retries", timeout=60)
        assert proc.log_path.read_text().count("WARNING gpupool.provider: cannot reach gateway") == 1
    finally:
        net.kill_provider(proc)


def test_request_lines_in_json_with_v(net: Network) -> None:
    out = client_for(net).chat.completions.create(model="echo", messages=[{"role": "user", "content": "log me"}])
    gateway_log = net.gateway.log_path  # type: ignore[union-attr]

    def line() -> dict | None:
        rows = [json.loads(x) for x in gateway_log.read_text().splitlines() if x.strip()]  # every line is JSON
        return next((r for r in rows if r.get("request_id") == out.id), None)

    row = wait_until(line, "the request's log line", timeout=30)
    assert row["logger"] == "gpupool.requests" and row["level"] == "info"
    assert row["key"] == "devnet" and row["model"] == "echo" and row["status"] == "ok"
    assert row["cost_ucr"] == out.usage.model_extra["cost_ucr"] > 0  # type: ignore[union-attr]
    assert row["provider"] == net.providers[0].node_id[:14] and row["latency_ms"] >= 0
    datetime.fromisoformat(row["ts"])
    # Lifecycle events are there at INFO: listening, and the provider joining.
    text = gateway_log.read_text()
    assert "listening on http://" in text and "connected from" in text
    admin = {"Authorization": f"Bearer {net.admin_token}"}
    httpx.post(net.gateway_url + "/admin/keys", json={"name": "logged"}, headers=admin, timeout=10).raise_for_status()
    wait_until(lambda: "API key 'logged' created" in gateway_log.read_text(), "the key's lifecycle line")


def test_account_explains_holds_in_plain_words(net: Network) -> None:
    admin = {"Authorization": f"Bearer {net.admin_token}"}
    key = httpx.post(net.gateway_url + "/admin/keys", json={"name": "five"}, headers=admin, timeout=10).json()["key"]
    httpx.post(net.gateway_url + "/admin/deposit", headers=admin, timeout=10,
               json={"account": "five", "amount": 5_000_000, "key": "five-credits"}).raise_for_status()
    out = client_for(net, key).chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    cost = out.usage.model_extra["cost_ucr"]  # type: ignore[union-attr]

    def settled() -> dict | None:
        body = raw(net, "GET", "/v1/account", key=key).json()
        # The request log's row is written in the store's next batch: wait for it too.
        done = body["unsettled_charges"] == 0 and body["in_flight"] == 0 and body["recent_charges"]
        return body if done else None

    body = wait_until(settled, "the charge to settle", timeout=30)
    # The tab: 1 credit reserved in one ledger write, the request's cost drawn from it.
    assert body["balance"] == 4_000_000 and body["held"] == 1_000_000 - cost
    assert body["total"] == body["balance"] + body["held"] == 5_000_000 - cost
    (hold,) = body["holds"]
    assert hold["amount_ucr"] == body["held"] and "prepaid tab" in hold["reason"] and "returns" in hold["reason"]
    assert "hold:tab" not in json.dumps(body)  # internal ledger keys stay inside
    assert [m["description"] for m in body["recent"]][-1] == "deposit"
    for item in body["recent"] + body["recent_charges"]:
        assert isinstance(item["at"], str) and datetime.fromisoformat(item["at"])
    assert body["recent_charges"][0]["request_id"] == out.id and body["recent_charges"][0]["cost"] == cost

    # The CLI view of the same account (a ws:// gateway URL is accepted and converted).
    shown = gpupool("account", "--gateway", net.ws_url, "--api-key", key, env={"COLUMNS": "160"})
    assert shown.returncode == 0, shown.stderr
    assert "4.000000 cr (4,000,000 µcr)" in shown.stdout and "prepaid tab" in shown.stdout
    assert out.id[:20] in shown.stdout


def test_small_api_errors_name_the_fix_and_the_param(net: Network) -> None:
    admin = {"Authorization": f"Bearer {net.admin_token}"}
    poor = httpx.post(net.gateway_url + "/admin/keys", json={"name": "poor"}, headers=admin, timeout=10).json()["key"]
    r = raw(net, "POST", "/v1/embeddings", key=poor, json={"model": "vec", "input": "x" * 2000})
    assert r.status_code == 402
    message = r.json()["error"]["message"]
    assert "fewer or shorter inputs" in message and "max_tokens" not in message

    def refused_line() -> bool:  # with -v, refused requests are logged too
        rows = [json.loads(x) for x in net.gateway.log_path.read_text().splitlines() if x.strip()]  # type: ignore[union-attr]
        return any(r.get("path") == "/v1/embeddings" and r.get("status") == 402 for r in rows)

    wait_until(refused_line, "the 402's log line", timeout=30)
    chat = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    r = raw(net, "POST", "/v1/chat/completions", key=net.dev_key(), json={**chat, "n": 2})
    assert r.status_code == 400 and "Value error" not in r.json()["error"]["message"]
    r = raw(net, "POST", "/v1/chat/completions", key=net.dev_key(), json={**chat, "max_tokens": 10**9})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_providers_and_status_views(net: Network) -> None:
    status = gpupool("status", "--gateway", net.gateway_url, env={"COLUMNS": "160"})
    assert status.returncode == 0, status.stderr
    assert "providers connected: 1" in status.stdout and "echo" in status.stdout and "vec" in status.stdout
    listed = gpupool("providers", "--gateway", net.gateway_url, env={"COLUMNS": "160"})
    if "no /v1/providers" in listed.stderr:  # an older gateway: a clear message, not a traceback
        one_line_error(listed)
        return
    assert listed.returncode == 0, listed.stderr
    assert net.providers[0].node_id[:14] in listed.stdout and "echo (1,000,000/1,000,000)" in listed.stdout


def test_ordinary_mistakes_end_in_one_line(tmp_path: Path) -> None:
    env = {"GPUPOOL_HOME": str(tmp_path / "home")}
    # A port in use: named, with the flag that fixes it.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line_error(gpupool("gateway", "--port", str(port), "--db",
                                      f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", env=env))
    assert f"port {port}" in line and "--port" in line
    # Database URL mistakes.
    assert "database URL" in one_line_error(gpupool("keys", "list", "--db", "nonsense", env=env))
    line = one_line_error(gpupool("keys", "list", "--db", f"postgresql+asyncpg://me:secret@127.0.0.1:{free_port()}/x",
                                  env=env))
    assert "cannot open the database postgresql+asyncpg://me:***@" in line and "secret" not in line
    assert "driver 'MySQLdb' is not installed" in one_line_error(gpupool("keys", "list", "--db", "mysql://h/x",
                                                                          env=env))
    # An EVM ledger whose node is not running.
    chain = f"evm+http://127.0.0.1:{free_port()}?contract=0x{'0' * 39}1"
    assert "cannot connect" in one_line_error(gpupool("ledger", "balance", "devnet", "--ledger", chain, env=env))
    # Reading a database that does not exist neither creates it nor shows an empty list.
    missing = tmp_path / "nowhere.db"
    assert "no database at" in one_line_error(gpupool("keys", "list", "--db", f"sqlite+aiosqlite:///{missing}",
                                                      env=env))
    assert not missing.exists()
    # A provider none of whose models can load: which one and why, then exit 1.
    dead = f"http://127.0.0.1:{free_port()}/v1"
    line = one_line_error(gpupool("provider", "--serve", f"m=generate:{tmp_path / 'no-such-model'}",
                                  "--serve", f"u=upstream:{dead}", "--gateway", "http://127.0.0.1:9",
                                  "--key-file", str(tmp_path / "p.key"), env=env))
    assert "no-such-model is not a Hugging Face model directory" in line and "unreachable" in line
    # A gateway URL that is not one.
    bad = gpupool("provider", "--serve", "e=echo:chat", "--gateway", "ftp://x", "--key-file",
                  str(tmp_path / "p.key"), env=env)
    assert bad.returncode == 2 and "http://, https://, ws:// or wss://" in bad.stderr and "Traceback" not in bad.stderr


def test_help_shows_whole_flag_names_and_hides_test_backends() -> None:
    gateway = gpupool("gateway", "--help")
    assert gateway.returncode == 0
    assert "--stream-continuation / --no-stream-continuation" in gateway.stdout
    assert "<bool>" not in gateway.stdout and "…" not in gateway.stdout
    for flag in ("--verbose", "--quiet", "--log-format", "--log-requests"):
        assert flag in gateway.stdout
    bad = gpupool("provider", "--serve", "m=teleport", "--key-file", "/nonexistent/p.key")
    assert bad.returncode == 2 and "upstream" in bad.stderr and "redteam" not in bad.stderr
    # A backend plug-in that cannot be used: which one and why, in one line, exit 2.
    for serve, why in [("m=plugin:no_such_pkg.backends:Mine", "'no_such_pkg.backends' not found"),
                       ("m=plugin:gpupool.errors:Nope", "has no attribute 'Nope'"),
                       ("m=plugin:os:path", "is not a subclass of gpupool.provider.backends.base.Backend")]:
        bad = gpupool("provider", "--serve", serve, "--key-file", "/nonexistent/p.key")
        assert bad.returncode == 2 and why in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@pytest.mark.ml
def test_model_libraries_do_not_fill_the_provider_log(net: Network) -> None:
    """sentence-transformers and transformers print progress bars and INFO lines while loading
    (visible with -vv); by default a provider's log has only gpupool's own lines."""
    dead = f"ws://127.0.0.1:{free_port()}"
    proc = net.start_provider(["minilm=embeddings:minilm", "t=generate:tiny-llama"], gateways=[dead])
    try:
        log = wait_until(lambda: "loaded minilm, t" in (text := proc.log_path.read_text()) and text,
                         "the models to load", timeout=180)
        lines = [x for x in log.splitlines() if x.strip()]
        assert all(" gpupool." in x for x in lines), lines  # every line is ours: no bars, no warnings
        assert "it/s" not in log and "Warning" not in log
    finally:
        net.kill_provider(proc)
