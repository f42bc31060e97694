"""`gpupool devnet` as a newcomer runs it: the whole system up, what to open printed, commands that find it.

The devnet runs as a subprocess (echo models: the network, not the models, is under
test) with its own GPUPOOL_HOME, on a free port; the test reads its banner, talks to
what it started, runs the CLI commands the banner suggests without any flags, then
stops it with Ctrl-C (SIGINT) and checks that everything went away.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from openai import OpenAI


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpupool", *args], capture_output=True, text=True, timeout=90,
                          env=env, stdin=subprocess.DEVNULL)


def test_devnet_shows_the_whole_system_and_its_commands_find_it(tmp_path: Path) -> None:
    env = {**os.environ, "GPUPOOL_HOME": str(tmp_path / "home"), "COLUMNS": "160"}
    proc = subprocess.Popen([sys.executable, "-m", "gpupool", "devnet", "--echo-only", "--port", "0",
                             "--providers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 150
        while not any("Press Ctrl-C" in x for x in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "devnet not up:\n" + "".join(lines)
            time.sleep(0.2)
        banner = "".join(lines)
        assert "1 gateway, 2 providers, 2 checkers" in banner
        url = re.search(r"dashboard\s+: (http://127\.0\.0\.1:\d+)/", banner).group(1)  # type: ignore[union-attr]
        key = re.search(r"API key\s+: (\S+)", banner).group(1)  # type: ignore[union-attr]
        token = re.search(r"admin token : (\S+)", banner).group(1)  # type: ignore[union-attr]
        assert "echo providers" in banner and "loading models" not in banner

        # The printed admin token opens /admin/*, where both checkers are connected (and admitted).
        audits = httpx.get(url + "/admin/audits", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert audits.status_code == 200 and len(audits.json()["checkers"]) == 2

        # A priced request, then the commands the banner suggests, without flags.
        out = OpenAI(base_url=url + "/v1", api_key=key, max_retries=0).chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "hello devnet"}])
        assert out.usage.model_extra["cost_ucr"] > 0  # type: ignore[union-attr]
        balance = run("ledger", "balance", "devnet", env=env)
        assert balance.returncode == 0, balance.stderr
        assert re.match(r"client:devnet: [\d,]+\.\d{6} cr \([\d,]+ µcr\)", balance.stdout), balance.stdout
        assert "running devnet" in balance.stderr and "devnet/gateway.db" in balance.stderr
        keys = run("keys", "list", env=env)
        assert keys.returncode == 0 and keys.stdout.splitlines()[0].split()[:3] == ["id", "key", "name"]
        assert "devnet" in keys.stdout
        status = run("status", env=env)
        assert status.returncode == 0 and url in status.stdout and "checkers connected : 2" in status.stdout
        account = run("account", env=env)
        assert account.returncode == 0 and out.id[:20] in account.stdout

        # Without -v the gateway logs lifecycle events but no line per request.
        gateway_log = (tmp_path / "home" / "devnet" / "logs" / "gateway.log").read_text()
        assert "listening on" in gateway_log and "checker" in gateway_log and out.id not in gateway_log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(60)
        reader.join(5)
    assert code == 0, "".join(lines[-20:])
    assert "stopped." in "".join(lines)
    assert not (tmp_path / "home" / "devnet.json").exists()  # commands no longer find a devnet
    gone = run("ledger", "balance", "devnet", env=env)
    assert "running devnet" not in gone.stderr
