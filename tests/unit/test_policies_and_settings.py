"""Routing policy, admission, settings precedence, CLI flags, and a thin client install."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from gpupool import config, errors
from gpupool.provider.admission import Admission, OverCapacity
from gpupool.provider.backends import ServeSpec
from gpupool.routing import Candidate, pick


def test_pick_prefers_least_loaded_and_skips_draining_and_excluded() -> None:
    rng = random.Random(1)
    cands = [Candidate("a", 3, 4), Candidate("b", 1, 4), Candidate("c", 0, 4, draining=True)]
    assert pick(cands, 0.0, rng).provider_id == "b"  # type: ignore[union-attr]
    assert pick(cands, 0.0, rng, exclude={"b"}).provider_id == "a"  # type: ignore[union-attr]
    assert pick(cands, 0.0, rng, exclude={"a", "b"}) is None
    assert pick([], 0.0, rng) is None


def test_pick_spreads_ties_evenly_and_is_deterministic_given_the_rng() -> None:
    cands = [Candidate(x, 0, 4) for x in "abcd"]
    counts = Counter(pick(cands, 0.0, random.Random(i)).provider_id for i in range(4000))  # type: ignore[union-attr]
    assert all(900 < n < 1100 for n in counts.values()), counts
    seq = lambda seed: [pick(cands, 0.0, r).provider_id for r in [random.Random(seed)] for _ in range(20)]  # type: ignore[union-attr]  # noqa: E731
    assert seq(7) == seq(7)


async def test_admission_bounds_running_and_queued_work() -> None:
    adm = Admission(max_concurrency=1, max_queue=1)
    release = asyncio.Event()

    async def job() -> None:
        async with adm.slot():
            await release.wait()

    first = asyncio.create_task(job())
    second = asyncio.create_task(job())
    await asyncio.sleep(0.01)
    assert (adm.in_flight, adm.queued) == (1, 1)
    with pytest.raises(OverCapacity):
        async with adm.slot():
            pass
    release.set()
    await asyncio.gather(first, second)
    assert (adm.in_flight, adm.queued) == (0, 0)


def test_settings_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    f = tmp_path / "gp.toml"
    f.write_text('[gateway]\nport = 9001\nmax-attempts = 5\n[provider]\nserve = ["a=echo"]\n')
    assert config.load(config.GatewaySettings).port == 8000
    assert config.load(config.GatewaySettings, f).port == 9001
    env = {"GPUPOOL_GATEWAY_PORT": "9002"}
    s = config.load(config.GatewaySettings, f, environ=env)
    assert (s.port, s.max_attempts) == (9002, 5)
    assert config.load(config.GatewaySettings, f, {"port": 9003}, environ=env).port == 9003
    p = config.load(config.ProviderSettings, f, environ={"GPUPOOL_PROVIDER_GATEWAYS": "ws://a,ws://b"})
    assert p.serve == ["a=echo"] and p.gateways == ["ws://a", "ws://b"]
    f.write_text("[gateway]\nbogus = 1\n")
    with pytest.raises(ValueError, match="bogus"):
        config.load(config.GatewaySettings, f)


@pytest.mark.parametrize("command,cls,renamed", [
    ("gateway", config.GatewaySettings, {"admitted_checkers": "checker", "peer_gateways": "peer_gateway"}),
    ("provider", config.ProviderSettings, {"gateways": "gateway", "prices": "price"}),
    ("checker", config.CheckerSettings, {"gateways": "gateway"}),
])
def test_cli_flags_cover_every_setting(command: str, cls: type, renamed: dict[str, str]) -> None:
    from typer.testing import CliRunner

    from gpupool.cli import app

    out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
    for f in dataclasses.fields(cls):
        flag = "--" + renamed.get(f.name, f.name).replace("_", "-")
        assert flag in out, f"{command} lacks {flag}"


def test_serve_spec_parsing() -> None:
    assert ServeSpec.parse("m=upstream:http://h:1/v1?model=x") == ServeSpec("m", "upstream", "http://h:1/v1?model=x")
    assert ServeSpec.parse("e=echo") == ServeSpec("e", "echo", "")
    for bad in ("noequals", "=echo", "m=", "m=teleport:x"):
        with pytest.raises(ValueError):
            ServeSpec.parse(bad)


def test_errors_map_to_openai_bodies() -> None:
    for exc, status in [(errors.InvalidRequest("x", param="p"), 400), (errors.AuthenticationFailed("x"), 401),
                        (errors.ModelNotFound("x"), 404), (errors.BodyTooLarge("x"), 413),
                        (errors.NoCapacity("x"), 429), (errors.NoProvider("x"), 503), (errors.Timeout("x"), 504)]:
        assert exc.status == status
        body = exc.body()["error"]
        assert set(body) == {"message", "type", "param", "code"} and body["message"] == "x"


def test_gateway_cli_and_sdk_import_without_torch() -> None:
    code = ("import sys, gpupool.cli, gpupool.gateway.web.app, gpupool.provider.agent, gpupool.devnet;"
            "import gpupool.provider.backends.echo, gpupool.provider.backends.upstream;"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_keys_cli_creates_lists_and_revokes(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'k.db'}"
    run = lambda *a: subprocess.run([sys.executable, "-m", "gpupool", "keys", *a, "--db", db],  # noqa: E731
                                    capture_output=True, text=True, check=True).stdout
    key = run("create", "--name", "shop", "--quiet").strip()
    assert key.startswith("gp-") and len(key) > 30
    listed = run("list")
    assert "shop" in listed and key not in listed  # only a hint is shown; the key is stored hashed
    assert "revoked" in run("revoke", "1")
    assert "revoked" in run("list")


def test_ledger_cli_deposits_withdraws_and_verifies(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'l.db'}"

    def run(*a: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([sys.executable, "-m", "gpupool", "ledger", *a, "--ledger", db],
                             capture_output=True, text=True)
        assert (out.returncode == 0) == ok, out.stderr
        return out

    out = run("deposit", "My Shop", "5000000", "--key", "pay-1").stdout
    assert "(5,000,000 µcr)" in out
    acct = out.split("'")[1]  # "My Shop" is not an account id: it gets a hash suffix (postings.account_for)
    assert "(5,000,000 µcr)" in run("deposit", "My Shop", "5000000", "--key", "pay-1").stdout  # replay: once
    assert "3.000000 cr (3,000,000 µcr) left" in run("withdraw", f"client:{acct}", "2000000").stdout
    assert "insufficient" in run("withdraw", f"client:{acct}", "9000000", ok=False).stderr.lower()
    assert run("balance", "My Shop").stdout.strip() == f"client:{acct}: 3.000000 cr (3,000,000 µcr)"
    assert run("balance", "My Shop", "--ucr").stdout.strip() == "3000000"
    assert "no such account" in run("balance", "nobody", ok=False).stderr
    assert "verified" in run("verify").stdout
