"""A gateway killed and started again on its port (issue 18: the restart's worst case).

The new gateway listens before the heavy part of its start (`gateway/web/server.py`), so
a client that comes back while it starts waits in the listen backlog and is answered
once it is ready, instead of being refused and backing off past it; its providers,
redialling at least every 0.5 s (`provider/peer_link.py`), queue there too. How many
seconds the restart costs is measured in `bench/failover` (scenario `restart`), not here.

"Before the heavy part" is checked without timing: the moment the new process first
accepts a connection it is stopped (SIGSTOP) and its memory map read: the database
library's and numpy's compiled modules must not be loaded yet (and are, once it is ready).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

from gpupool.devnet import Network
from tests.integration.conftest import client_for

WORDS = " ".join(f"w{i}" for i in range(20))
EXTRA = ["--hardware-proof-max-n", "0"]


def heavy_libraries(pid: int) -> set[str]:
    """The compiled modules of sqlalchemy and numpy mapped into process `pid`."""
    with open(f"/proc/{pid}/maps") as f:
        paths = {line.split()[-1] for line in f if ".so" in line}
    return {p.rsplit("/", 1)[-1] for p in paths if "/sqlalchemy/" in p or "/numpy/" in p}


def test_a_request_made_while_the_gateway_restarts_waits_and_is_answered(network: Network) -> None:
    network.start_gateway(extra=EXTRA)
    port = int(network.gateway_url.rsplit(":", 1)[1])
    network.start_provider(["echo=echo:chat"])
    network.wait_for_models({"echo": 1}, timeout=60)
    client = client_for(network, timeout=60)  # no retries: a refused connection fails the test
    assert client.chat.completions.create(model="echo", messages=[{"role": "user", "content": WORDS}])

    assert network.gateway is not None
    old = network.gateway.popen.pid
    os.killpg(old, signal.SIGKILL)
    network.gateway.popen.wait(10)
    ready = network.home / "gateway.ready.json"
    # start_gateway removes the old ready file before it spawns, and returns once the new one exists.
    starter = threading.Thread(target=network.start_gateway, kwargs={"port": port, "extra": EXTRA}, daemon=True)
    starter.start()
    deadline = time.monotonic() + 60
    while True:  # the first moment the new process accepts a connection
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the restarted gateway never listened"
            time.sleep(0.005)
    pid = network.gateway.popen.pid
    assert pid != old
    os.kill(pid, signal.SIGSTOP)
    try:
        accepted_before_ready = not ready.exists()
        loaded_when_listening = heavy_libraries(pid)
    finally:
        os.kill(pid, signal.SIGCONT)
    answer = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": f"{WORDS} again"}])
    starter.join(60)

    assert heavy_libraries(pid), "the check sees the gateway's libraries once it is ready"
    assert loaded_when_listening == set(), f"listened only after loading {sorted(loaded_when_listening)}"
    assert accepted_before_ready, "the port only listened once the gateway was ready"
    assert answer.choices[0].message.content == f"{WORDS} again"
