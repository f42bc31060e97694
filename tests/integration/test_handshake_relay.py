"""A gateway cannot relay a provider's handshake to another gateway and be that provider there (issue 18, 14).

The relay is a small WebSocket server (a malicious gateway M): a real provider process dials it,
and M opens its own connection to the real gateway B and passes every frame both ways, so the
provider answers B's Challenge. Before, the Proof signed only B's nonce and id, B welcomed the
relayed provider, and M could then speak for it at B (its earnings, its reputation). The Proof
now signs the host the provider dialled: B refuses it, and records why. A relay that also fakes
its Host header (as a TCP-level relay does) is refused by a gateway that names its own hosts
(`--public-hosts`). The same provider, dialling B itself, is welcomed.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from gpupool.devnet import Network
from tests.integration.conftest import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Relay:
    """Gateway M: every connection made to it is passed frame by frame to gateway B at `target_port`.

    `fake_host`: M's connection to B says `Host: <M's own address>` (what the provider dialled and
    signed), as a relay that forwards the provider's bytes unchanged would."""

    def __init__(self, target_port: int, fake_host: bool):
        self.target_port, self.fake_host = target_port, fake_host
        self.port = free_port()
        self.relayed = 0  # connections passed on to B
        self.closed_by_b: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._pass, "127.0.0.1", self.port, max_size=None, compression=None):
            self._ready.set()
            await self._stop.wait()

    async def _pass(self, provider: ServerConnection) -> None:
        host = "127.0.0.1" if self.fake_host else None
        url = (f"ws://127.0.0.1:{self.port}/v1/providers/ws" if self.fake_host
               else f"ws://127.0.0.1:{self.target_port}/v1/providers/ws")
        extra = {"host": host, "port": self.target_port} if self.fake_host else {}
        async with connect(url, max_size=None, compression=None, **extra) as gateway:  # type: ignore[arg-type]
            self.relayed += 1

            async def pump(src: object, dst: object, from_b: bool) -> None:
                try:
                    async for frame in src:  # type: ignore[attr-defined]
                        await dst.send(frame)  # type: ignore[attr-defined]
                except websockets.ConnectionClosed:
                    pass
                finally:
                    if from_b and gateway.close_code is not None:
                        self.closed_by_b.append(gateway.close_code)
                    await dst.close()  # type: ignore[attr-defined]

            await asyncio.gather(pump(provider, gateway, False), pump(gateway, provider, True))

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


@pytest.fixture
def gateway_b(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("relay") / "net")
    port = free_port()
    named = request.param
    try:
        network.start_gateway(port=port, extra=["--public-hosts", f"127.0.0.1:{port},localhost:{port}"] if named
                              else [])
        yield network
    finally:
        network.stop(timeout=10)


@pytest.mark.parametrize(("gateway_b", "fake_host"), [(False, False), (True, True)], indirect=["gateway_b"],
                         ids=["plain-relay", "relay-faking-host-vs-public-hosts"])
def test_a_relayed_handshake_is_refused_and_the_direct_one_welcomed(gateway_b: Network, fake_host: bool) -> None:
    b = gateway_b
    port_b = int(b.gateway_url.rsplit(":", 1)[1])
    relay = Relay(port_b, fake_host)
    try:
        # One provider dials the relay only; another dials both the relay and B.
        relayed_only = b.start_provider(["victim=echo:chat"], gateways=[relay.url])
        both = b.start_provider(["echo=echo:chat"], gateways=[relay.url, b.ws_url])
        b.wait_for_models({"echo": 1}, timeout=60)
        # Both providers' relayed proofs are refused; in whichever order they arrive.
        refused = wait_until(lambda: [e for e in b.admin("/admin/events?limit=1000")
                                      if e["kind"] == "relayed_handshake" and e["peer"] == relayed_only.node_id],
                             "B to refuse the relayed-only provider's proof", 60)
        wait_until(lambda: both.node_id in {e["peer"] for e in b.admin("/admin/events?limit=1000")
                                            if e["kind"] == "relayed_handshake"}, "the second relayed proof", 60)
        assert relay.relayed >= 2 and relay.closed_by_b, (relay.relayed, relay.closed_by_b)
        assert "signed for host" in refused[0]["detail"] and f"127.0.0.1:{relay.port}" in refused[0]["detail"]
        # B serves only the provider that dialled it, on its own connection; the relayed one never joined.
        providers = b.admin("/admin/providers")
        assert [p["node_id"] for p in providers] == [both.node_id]
        assert "victim" not in b.admin("/admin/providers")[0]["models"]
        # ... and that connection stays: no relayed copy replaced it.
        assert not [e for e in b.admin("/admin/events?limit=1000") if "replaced" in e.get("detail", "")]
    finally:
        relay.stop()
