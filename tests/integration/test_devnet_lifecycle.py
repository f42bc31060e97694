"""`gpupool devnet` leaves nothing behind (issue 18, "Running it"), and batch commands find it.

Real processes in a temporary GPUPOOL_HOME: the terminal closing (SIGHUP) or a SIGKILL of
the devnet takes its gateway, providers and checkers with it and frees its port; a devnet
that finds processes a dead devnet left running (from devnet.json) says so and stops them,
and never touches a process that is not that devnet's. `gpupool batch submit` uses the
running devnet's key and URL, as `status` and `account` do.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpupool.devnet import Network


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    """Free for a server (which binds with SO_REUSEADDR, as the gateway does: TIME_WAIT is no obstacle)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def wait_for(probe, what: str, timeout: float = 40) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class Devnet:
    """A `gpupool devnet --echo-only` subprocess and the lines it printed."""

    def __init__(self, home: Path, port: int):
        self.env = {k: v for k, v in os.environ.items() if k not in ("GPUPOOL_API_KEY", "GPUPOOL_BASE_URL")}
        self.env["GPUPOOL_HOME"] = str(home)
        self.home, self.port, self.lines = home, port, []  # type: list[str]
        self.proc = subprocess.Popen([sys.executable, "-m", "gpupool", "devnet", "--echo-only", "--port", str(port),
                                      "--providers", "1", "--checkers", "1"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=self.env, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),  # type: ignore[union-attr]
                         daemon=True).start()

    def wait_up(self) -> list[int]:
        wait_for(lambda: any("Press Ctrl-C" in x for x in self.lines) or self.proc.poll() is not None, "the banner", 150)
        assert self.proc.poll() is None, "".join(self.lines)
        children = json.loads((self.home / "devnet.json").read_text())["children"]
        assert len(children) == 3 and all(alive(p) for p in children)  # gateway, provider, checker
        return children

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gpupool", *args], capture_output=True, text=True, timeout=120,
                              env=self.env, stdin=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)


@pytest.fixture
def devnets(tmp_path: Path) -> Iterator[list[Devnet]]:
    started: list[Devnet] = []
    yield started
    for d in started:
        d.kill()


def test_closing_the_terminal_stops_everything_and_batch_finds_the_key(tmp_path: Path, devnets: list[Devnet]) -> None:
    port = free_port()
    net = Devnet(tmp_path / "home", port)
    devnets.append(net)
    children = net.wait_up()
    # Batch commands find the running devnet's key and URL, as `status` does (no --api-key).
    requests = tmp_path / "req.jsonl"
    requests.write_text("".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                                            "body": {"model": "echo", "messages": [{"role": "user", "content": f"hi {i}"}]}})
                                + "\n" for i in range(3)))
    submitted = net.run("batch", "submit", str(requests), "--wait")
    assert submitted.returncode == 0 and submitted.stdout.strip().startswith("batch_"), submitted.stderr
    assert "completed" in net.run("batch", "status", submitted.stdout.strip()).stdout
    assert net.run("batch", "list").returncode == 0

    os.kill(net.proc.pid, signal.SIGHUP)  # what closing the terminal sends
    assert net.proc.wait(60) == 0, "".join(net.lines[-20:])
    assert "stopped." in "".join(net.lines)
    assert not any(alive(p) for p in children)
    assert port_free(port)
    assert not (tmp_path / "home" / "devnet.json").exists()


def test_children_die_with_a_killed_devnet(tmp_path: Path, devnets: list[Devnet]) -> None:
    port = free_port()
    net = Devnet(tmp_path / "home", port)
    devnets.append(net)
    children = net.wait_up()
    os.kill(net.proc.pid, signal.SIGKILL)  # no handler runs: only the children's lifeline can help
    net.proc.wait(10)
    wait_for(lambda: not any(alive(p) for p in children), "the children to leave", 30)
    wait_for(lambda: port_free(port), f"port {port} to be free", 10)
    # The next devnet on the same port starts (its pointer is stale; nothing of it is running).
    again = Devnet(tmp_path / "home", port)
    devnets.append(again)
    again.wait_up()
    assert "left" not in "".join(again.lines)


def test_a_devnet_stops_what_a_dead_one_left_running_and_nothing_else(tmp_path: Path,
                                                                       devnets: list[Devnet]) -> None:
    home = tmp_path / "home"
    port = free_port()
    # What an older devnet (without lifelines) left when it was killed: its gateway and provider
    # still running, port taken, and a pointer naming them and a pid that is gone.
    left = Network(home / "devnet")
    left.start_gateway(port=port)
    left.start_provider(["echo=echo:chat"])
    bystander = subprocess.Popen(["sleep", "300"])  # a reused pid: not a gpupool process of that devnet
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        (home / "devnet.json").write_text(json.dumps({"pid": dead.pid, "home": str(home / "devnet"),
                                                      "children": [*left.pids(), bystander.pid]}))
        assert not port_free(port)
        net = Devnet(home, port)
        devnets.append(net)
        net.wait_up()
        said = [x for x in net.lines if "left" in x]
        assert len(said) == 1 and "2 processes running" in said[0] and "stopping them" in said[0], said
        assert not any(p.alive() for p in [left.gateway, *left.providers])  # type: ignore[union-attr]
        assert bystander.poll() is None
    finally:
        bystander.kill()
        left.stop(timeout=5)
