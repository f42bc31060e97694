"""A whole local network of real processes: one gateway, N providers and checkers.

Used by `gpupool devnet`, `gpupool demo`, the integration tests and the benchmarks,
so they all exercise the same processes a real deployment runs.

    with Network(home=Path("/tmp/net")) as net:
        gw = net.start_gateway()
        net.start_provider(["minilm=embeddings"], region="eu-west")
        net.wait_for_models({"minilm": 1})
        key = net.dev_key()
        ...                                  # processes stop on exit

Every child runs in its own session, so Ctrl-C reaches only this process, which
then drains providers (SIGTERM) before stopping the gateway. With `die_with_parent`
(`gpupool devnet`) the children also leave if this process dies without stopping them
(lifeline.py), and `stale_processes` finds those a killed devnet left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gpupool.identity import Identity
from gpupool.lifeline import PARENT_ENV, preexec
from gpupool.tls import client_context

DEV_KEY_FILE = "dev-api-key"

# Regions for devnet providers: name, latitude, longitude.
REGIONS = [("eu-west", 53.3, -6.3), ("us-east", 39.0, -77.5), ("ap-south", 19.1, 72.9),
           ("eu-central", 50.1, 8.7), ("us-west", 45.6, -121.2), ("ap-east", 22.3, 114.2)]


class NetworkError(RuntimeError):
    pass


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    args: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def node_id(self) -> str:
        """The node id of the key this provider or checker runs with."""
        return Identity.load_or_create(Path(self.args[self.args.index("--key-file") + 1])).node_id

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Network:
    def __init__(self, home: Path, *, db: str | None = None, env: dict[str, str] | None = None,
                 tls: tuple[Path, Path, Path] | None = None, die_with_parent: bool = False,
                 early_dial: bool = False):
        """`tls`: (certificate, key, CA) to serve https:// and wss://; providers and checkers trust the CA.
        `die_with_parent`: children leave when this process dies, even by SIGKILL (lifeline.py).
        `early_dial`: `start_gateway` returns as soon as the gateway's port listens, so the providers
        and checkers started next load while it does (see `start_gateway`)."""
        self.home = Path(home).expanduser()
        self.die_with_parent = die_with_parent
        self.tls = tls
        # This object's own httpx calls trust the same CA. Made once: httpx would load the whole CA
        # bundle again for every call given no context (~25 ms of CPU each; the waits below poll).
        self.verify: ssl.SSLContext = client_context(tls[2] if tls else None)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "logs").mkdir(exist_ok=True)
        self._db = db or f"sqlite+aiosqlite:///{self.home / 'gateway.db'}"
        # Two gateways creating the tables of one database at once could collide: a gateway on a
        # database given here (others may share it) is waited for even with early_dial.
        self.early_dial = early_dial and db is None
        # Models (e.g. tiny-llama) live under the user's GPUPOOL_HOME, shared by every network.
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.gateway: Proc | None = None
        self._url = ""  # the gateway's address, known once its port listens
        self._starting: tuple[Path, float, float] | None = None  # (ready file, deadline, timeout) until ready
        self.providers: list[Proc] = []
        self.checkers: list[Proc] = []
        self._registered: set[str] = set()
        self.admin_token = "devnet-admin-" + os.urandom(8).hex()
        # Gateways admit checkers by node id (--checker): these names' keys are made before the
        # gateway starts and admitted by it; `start_checker` runs under one of them.
        self.checker_names: list[str] = ["checker", "checker-gen", *(f"checker-{i}" for i in range(4))]

    # ------------------------------------------------------------ processes

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
               prefix: list[str] | None = None) -> Proc:
        log_path = self.home / "logs" / f"{name}.log"
        log = open(log_path, "ab")
        lifeline = {PARENT_ENV: str(os.getpid())} if self.die_with_parent else {}
        popen = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "gpupool", *args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**self.env, **(env or {}), **lifeline}, start_new_session=True,
            preexec_fn=preexec(os.getpid()) if self.die_with_parent else None,
        )
        log.close()
        return Proc(name, popen, log_path, args)

    def start_gateway(self, port: int = 0, host: str = "127.0.0.1", extra: list[str] | None = None,
                      timeout: float = 60) -> str:
        """Start the gateway and return its URL once it is ready (within `timeout` s).

        With `early_dial`, return as soon as its port listens, before the slow part of its start:
        providers and checkers started now dial it at once and wait in its listen backlog, loading
        while it loads. Whatever reaches the gateway from this object (`gateway_url`, `ws_url`,
        `db`, `health`, `admin`, `dev_key`, the waits) first waits until it is ready."""
        ready, listening = self.home / "gateway.ready.json", self.home / "gateway.listening.json"
        ready.unlink(missing_ok=True)
        listening.unlink(missing_ok=True)
        Identity.load_or_create(self.home / "gateway.key")  # made here: `gateway.node_id` never races the gateway
        args = ["gateway", "--host", host, "--port", str(port), "--db", self._db,
                "--key-file", str(self.home / "gateway.key"), "--ready-file", str(ready),
                "--listening-file", str(listening), *(extra or [])]
        if self.tls:
            args += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        for name in self.checker_names:
            args += ["--checker", Identity.load_or_create(self.home / f"{name}.key").node_id]
        self.gateway = self._spawn("gateway", args, {"GPUPOOL_GATEWAY_ADMIN_TOKEN": self.admin_token})
        self._starting = (ready, time.monotonic() + timeout, timeout)
        self._url = self._address(listening)
        return self._url if self.early_dial else self.gateway_url

    def _address(self, path: Path) -> str:
        """The URL the gateway wrote to `path`, once it has (NetworkError if it exits or times out first)."""
        assert self.gateway is not None and self._starting is not None
        _, deadline, timeout = self._starting
        while not path.exists():
            if not self.gateway.alive():
                raise NetworkError(f"gateway exited at start:\n{self.gateway.log_tail()}")
            if time.monotonic() > deadline:
                raise NetworkError(f"gateway not ready after {timeout}s:\n{self.gateway.log_tail()}")
            time.sleep(0.05)
        return str(json.loads(path.read_text())["url"]).replace("//0.0.0.0:", "//127.0.0.1:")

    def wait_ready(self) -> None:
        """Return once the gateway last started is ready (at once if it was seen ready before)."""
        if self._starting is not None:
            self._url = self._address(self._starting[0])
            self._starting = None

    @property
    def gateway_url(self) -> str:
        """The gateway's http(s):// URL, once it is ready."""
        self.wait_ready()
        return self._url

    @property
    def ws_url(self) -> str:
        return _ws(self.gateway_url)

    @property
    def db(self) -> str:
        """The gateway's database URL (for the caller's own reads and writes: once the gateway made its tables)."""
        self.wait_ready()
        return self._db

    def start_provider(self, serve: list[str], *, region: str | None = None, max_concurrency: int = 4,
                       gateways: list[str] | None = None, extra: list[str] | None = None,
                       env: dict[str, str] | None = None, prefix: list[str] | None = None) -> Proc:
        """Start a provider process; `prefix` wraps the command (e.g. `ip netns exec NS`)."""
        index = len(self.providers)
        name, lat, lon = REGIONS[index % len(REGIONS)]
        args = ["provider", "--region", region or name, "--latitude", str(lat), "--longitude", str(lon),
                "--max-concurrency", str(max_concurrency),
                "--key-file", str(self.home / f"provider-{index + 1}.key")]
        for url in gateways or [_ws(self._url)]:  # the port listens: no need to wait until ready
            args += ["--gateway", url]
        for s in serve:
            args += ["--serve", s]
        proc = self._spawn(f"provider-{index + 1}", args + self._trust() + (extra or []), env, prefix)
        self.providers.append(proc)
        return proc

    def _trust(self) -> list[str]:
        return ["--ca-cert", str(self.tls[2])] if self.tls else []

    def checker_identity(self, name: str) -> Identity:
        """The key of an admitted checker name, e.g. for a test's own checker peer."""
        if name not in self.checker_names:
            raise NetworkError(f"checker {name!r} is not admitted (Network.checker_names)")
        return Identity.load_or_create(self.home / f"{name}.key")

    def start_checker(self, serve: list[str], *, name: str = "", extra: list[str] | None = None) -> Proc:
        """Start a checker process holding the `serve` reference models (stopped with the network)."""
        name = name or f"checker-{len(self.checkers)}"
        if name not in self.checker_names:
            raise NetworkError(f"checker {name!r} would not be admitted: add it to Network.checker_names "
                               "before start_gateway")
        args = ["checker", "--gateway", _ws(self._url), "--key-file", str(self.home / f"{name}.key")]
        for s in serve:
            args += ["--serve", s]
        proc = self._spawn(name, args + self._trust() + (extra or []))
        self.checkers.append(proc)
        return proc

    # ------------------------------------------------------------ readiness and keys

    def health(self) -> dict[str, Any]:
        return httpx.get(self.gateway_url + "/healthz", timeout=5, verify=self.verify).json()

    def admin(self, path: str) -> Any:
        r = httpx.get(self.gateway_url + path, headers={"Authorization": f"Bearer {self.admin_token}"}, timeout=5,
                      verify=self.verify)
        r.raise_for_status()
        return r.json()["data"]

    def wait_for_models(self, wanted: dict[str, int], timeout: float = 180, progress: bool = False) -> None:
        """Wait until each model is served by at least the given number of providers."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            counts: dict[str, int] = {}
            for p in self.admin("/admin/providers"):
                for m in p["models"]:
                    counts[m] = counts.get(m, 0) + 1
            if all(counts.get(m, 0) >= n for m, n in wanted.items()):
                return
            dead = [p for p in self.providers if not p.alive()]
            if dead:
                raise NetworkError(f"{dead[0].name} exited at start:\n{dead[0].log_tail()}")
            status = ", ".join(f"{m}: {counts.get(m, 0)}/{n}" for m, n in wanted.items())
            if progress and status != last:
                print(f"  waiting for providers ({status})", flush=True)
                last = status
            if time.monotonic() > deadline:
                raise NetworkError(f"providers not ready after {timeout}s ({status})")
            time.sleep(0.05)  # a provider joins in well under a second: poll finely (every test waits here)

    def wait_for_checkers(self, count: int, timeout: float = 180, progress: bool = False) -> None:
        """Wait until `count` checkers are connected (and admitted) to the gateway."""
        deadline = time.monotonic() + timeout
        last = -1
        while True:
            r = httpx.get(self.gateway_url + "/admin/audits", timeout=5, verify=self.verify,
                          headers={"Authorization": f"Bearer {self.admin_token}"})
            r.raise_for_status()
            joined = len(r.json().get("checkers", []))
            if joined >= count:
                return
            dead = [c for c in self.checkers if not c.alive()]
            if dead:
                raise NetworkError(f"{dead[0].name} exited at start:\n{dead[0].log_tail()}")
            if progress and joined != last:
                print(f"  waiting for checkers ({joined}/{count})", flush=True)
                last = joined
            if time.monotonic() > deadline:
                raise NetworkError(f"checkers not connected after {timeout}s ({joined}/{count}); "
                                   f"see {self.home / 'logs'}")
            time.sleep(0.05)

    @property
    def key_file(self) -> Path:
        return self.home / DEV_KEY_FILE

    def dev_key(self) -> str:
        """The development API key, created once per network home and reused."""
        path = self.home / DEV_KEY_FILE
        key = path.read_text().strip() if path.exists() else "gp-dev-" + os.urandom(16).hex()
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key)
        if key not in self._registered:
            db = self.db  # once the gateway made its tables
            # A thread of its own: callers may already be inside an event loop (async tests).
            with ThreadPoolExecutor(1) as pool:
                pool.submit(lambda: asyncio.run(_register_key(db, key))).result()
            self._registered.add(key)
        return key

    # ------------------------------------------------------------ shutdown

    def kill_provider(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        if proc.alive():
            os.killpg(proc.popen.pid, sig)

    def stop(self, timeout: float = 15) -> None:
        """Drain providers and checkers (SIGTERM), then stop the gateway; SIGKILL whatever lingers."""
        procs = [p for p in self.providers + self.checkers if p.alive()]
        for p in procs:
            _signal(p, signal.SIGTERM)
        _wait_all(procs, timeout)
        if self.gateway and self.gateway.alive():
            _signal(self.gateway, signal.SIGTERM)
            _wait_all([self.gateway], timeout)

    def pids(self) -> list[int]:
        """The processes this network started (for the devnet pointer: `stale_processes`)."""
        return [p.popen.pid for p in [self.gateway, *self.providers, *self.checkers] if p is not None]

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        pass
    try:  # no /proc (macOS): ask ps
        return subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True,
                              timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def stale_processes(pointer: dict[str, Any]) -> list[int]:
    """Processes a devnet that is gone left running: the pids its pointer lists that are still
    gpupool processes of that devnet (their command line names its home), so a reused pid
    of some other program is never touched."""
    home = str(pointer.get("home") or "")
    pids = [p for p in pointer.get("children") or [] if isinstance(p, int) and p > 1]
    return [p for p in pids if home and "gpupool" in (cmd := _command_line(p)) and home in cmd]


def stop_stale(pids: list[int], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after `timeout`, each stale process (and its own process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.killpg(pid, sig) if os.getpgid(pid) == pid else os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if _command_line(p).strip()]
            time.sleep(0.1)
        if not pids:
            return


def _ws(url: str) -> str:
    return url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)


def _signal(proc: Proc, sig: int) -> None:
    try:
        os.killpg(proc.popen.pid, sig)
    except ProcessLookupError:
        pass


def _wait_all(procs: list[Proc], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(p, signal.SIGKILL)
            p.popen.wait()


async def _register_key(db: str, key: str) -> None:
    """Register the development key and give its account a starting balance (once: the deposit has a fixed key)."""
    from gpupool.devnet_setup import DEV_STARTING_BALANCE
    from gpupool.gateway.store import Store
    from gpupool.ledger import SqlLedger

    store = await Store.open(db)
    try:
        await store.create_key("devnet", key)
    finally:
        await store.close()
    ledger = await SqlLedger.open(db)
    try:
        await ledger.deposit("devnet-starting-balance", "devnet", DEV_STARTING_BALANCE)
    finally:
        await ledger.close()
