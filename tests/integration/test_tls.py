"""The whole path over TLS: a gateway serving https:// and wss:// with a certificate made here
(trustme: a throwaway CA and a certificate for 127.0.0.1 and localhost), a provider and a checker
that verify it against that CA (--ca-cert), and the official `openai` client trusting the CA.

A provider that does not trust the CA never connects, and says why in one line.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import trustme

from gpupool.devnet import Network
from tests.integration.conftest import wait_until


def gpupool(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    return subprocess.run([sys.executable, "-m", "gpupool", *args], capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})})


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(paths[0]))  # key + chain: the cert file reads the chain
    cert.private_key_pem.write_to_path(str(paths[1]))
    ca.cert_pem.write_to_path(str(paths[2]))
    return paths


@pytest.fixture
def tls_net(tmp_path: Path, tls_files: tuple[Path, Path, Path]) -> Iterator[Network]:
    net = Network(tmp_path / "net", tls=tls_files)
    try:
        yield net
    finally:
        net.stop(timeout=10)


def test_https_and_wss_end_to_end_with_a_private_ca(tls_net: Network, tls_files: tuple[Path, Path, Path]) -> None:
    url = tls_net.start_gateway()
    assert url.startswith("https://127.0.0.1:") and tls_net.ws_url.startswith("wss://")
    tls_net.start_provider(["echo=echo:chat", "echo-embed=echo:embeddings"])  # --ca-cert from the network
    tls_net.start_checker(["echo=echo:chat"])
    tls_net.wait_for_models({"echo": 1, "echo-embed": 1}, timeout=60)
    wait_until(lambda: httpx.get(url + "/admin/audits", verify=tls_net.verify, timeout=5, headers={
        "Authorization": f"Bearer {tls_net.admin_token}"}).json()["checkers"], "the checker over wss://", 60)

    ca = str(tls_files[2])
    with httpx.Client(verify=ssl.create_default_context(cafile=ca), timeout=30) as http:
        client = openai.OpenAI(base_url=url + "/v1", api_key=tls_net.dev_key(), max_retries=0, http_client=http)
        vectors = client.embeddings.create(model="echo-embed", input=["over tls", "twice"])
        assert len(vectors.data) == 2 and vectors.data[0].embedding
        chunks = list(client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "one two three"}], stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three"
        # The checker audits over wss:// too: its verdict comes back through the same TLS link.
        wait_until(lambda: any(r["audits"] >= 1 for r in tls_net.admin("/admin/audits")), "a verdict", 60)

    # The CLI (httpx) trusts a private CA through SSL_CERT_FILE, and without it says why in one line.
    earnings = ["provider", "earnings", "--gateway", url, "--key-file", str(tls_net.home / "provider-1.key")]
    trusted = gpupool(*earnings, "--json", env={"SSL_CERT_FILE": ca})
    assert trusted.returncode == 0 and '"held"' in trusted.stdout, trusted.stderr
    untrusted = gpupool(*earnings)
    assert untrusted.returncode != 0 and "Traceback" not in untrusted.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr and len(untrusted.stderr.strip().splitlines()) <= 2

    # Without the CA, clients refuse the gateway (the certificate is the test's own), and
    # plain http:// on the TLS port gets no answer.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(url + "/healthz", timeout=10)
    with pytest.raises(httpx.HTTPError):
        httpx.get(url.replace("https://", "http://") + "/healthz", timeout=10)


def test_a_provider_without_the_ca_says_why_in_one_line(tls_net: Network) -> None:
    tls_net.start_gateway()
    # A provider that trusts only the system's CAs (no --ca-cert), as an operator might forget.
    proc = tls_net._spawn("provider-untrusting", [
        "provider", "--gateway", tls_net.ws_url, "--serve", "echo=echo:chat",
        "--key-file", str(tls_net.home / "untrusting.key")])
    tls_net.providers.append(proc)  # stopped with the network
    wait_until(lambda: "certificate not trusted" in proc.log_path.read_text(errors="replace"),
               "the provider's certificate error", 60)
    time.sleep(1.0)  # a retry storm would show up as more lines
    log = proc.log_path.read_text(errors="replace")
    lines = [line for line in log.splitlines() if "certificate not trusted" in line]
    assert len(lines) == 1, log  # it backs off: retrying a certificate problem fast cannot help
    assert "wss://127.0.0.1" in lines[0] and "--ca-cert" in lines[0]
    assert "Traceback" not in log
    assert proc.alive() and tls_net.admin("/admin/providers") == []
