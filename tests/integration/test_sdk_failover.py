"""Clients that list several gateways keep working when one gateway dies or has no provider."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gpupool.devnet import Network
from gpupool.sdk import connect


def test_sdk_and_cli_fail_over_between_gateways(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"  # both gateways accept the same keys
    with Network(tmp_path / "a", db=db) as a, Network(tmp_path / "b", db=db) as b, \
            Network(tmp_path / "empty", db=db) as empty:
        a.start_gateway()
        b.start_gateway()
        empty.start_gateway()  # up, but no provider: answers 503
        # Two links at most: the two it is told. All three gateways share one database, so the
        # provider would otherwise learn "empty" from /v1/gateways and serve there too.
        a.start_provider(["echo=echo:chat"], gateways=[a.ws_url, b.ws_url], extra=["--gateways-max", "2"])
        a.wait_for_models({"echo": 1}, timeout=60)
        b.wait_for_models({"echo": 1}, timeout=60)
        key = a.dev_key()
        client = connect([empty.gateway_url, a.gateway_url, b.gateway_url], key, max_retries=0)

        def ask(text: str):
            return client.chat.completions.with_raw_response.create(
                model="echo", messages=[{"role": "user", "content": text}])

        first = ask("one")
        assert first.parse().choices[0].message.content == "one"
        assert first.http_response.url.port == int(a.gateway_url.rsplit(":", 1)[1])

        a.gateway.popen.kill()  # gateway A dies
        a.gateway.popen.wait(10)
        second = ask("two")
        assert second.parse().choices[0].message.content == "two"
        assert second.http_response.url.port == int(b.gateway_url.rsplit(":", 1)[1])

        out = subprocess.run(
            [sys.executable, "-m", "gpupool", "ask", "--model", "echo", "--api-key", key,
             "--gateway", a.gateway_url, "--gateway", b.gateway_url, "streamed via the cli"],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "streamed via the cli"
