"""A provider notices a gateway that stops sending, and dials it again (provider/silence.py).

Providers send no WebSocket keep-alives of their own (they were most of an idle big
gateway's frames): the gateway's Pings are their liveness signal. A gateway process that
is stopped (SIGSTOP: its socket stays open, nothing comes) must still be noticed within
the documented bound, `--gateway-silence-s` plus the probe's timeout (here 2 + 2 s), and
the provider must be back and serving once the gateway runs again.
"""

from __future__ import annotations

import os
import signal
import time

from gpupool.devnet import Network
from tests.integration.conftest import client_for, wait_until

SILENCE_S = 2.0
# The bound (silence, then a probe of at most as long) plus room for a loaded test machine.
NOTICED_WITHIN_S = 2 * SILENCE_S + 6.0


def test_a_stopped_gateway_is_noticed_and_the_provider_reconnects(network: Network) -> None:
    network.start_gateway(extra=["--hardware-proof-max-n", "0", "--ping-interval-s", "0.5"])
    provider = network.start_provider(["echo=echo:chat"], extra=["--gateway-silence-s", str(SILENCE_S)])
    network.wait_for_models({"echo": 1}, timeout=60)
    log = provider.log_path
    time.sleep(3 * SILENCE_S)  # the gateway pings every 0.5 s: a live one is never taken for silent
    assert "no answer to a ping" not in log.read_text()
    assert network.gateway is not None
    pid = network.gateway.popen.pid
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_until(lambda: "no answer to a ping" in log.read_text(), "the provider to notice the stopped gateway",
                   timeout=60)
        noticed_s = time.monotonic() - stopped
    finally:
        os.kill(pid, signal.SIGCONT)
    assert noticed_s <= NOTICED_WITHIN_S, f"noticed after {noticed_s:.1f} s"
    wait_until(lambda: log.read_text().count("connected to ") >= 2, "the provider to reconnect", timeout=60)
    network.wait_for_models({"echo": 1}, timeout=60)
    answer = client_for(network).chat.completions.create(model="echo", messages=[{"role": "user", "content": "back"}])
    assert answer.choices[0].message.content == "back"
