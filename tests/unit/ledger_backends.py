"""Ledger backends for the shared behavioural suite: SQLite, PostgreSQL, EVM in-process, EVM on Anvil.

`backend` yields a `Backend`: the ledger plus the two things that differ by design
between backends: how a charge is signed (the EVM contract checks each provider's
secp256k1 signature; SQL trusts the gateway's check) and what a slash carries
(the contract needs the provider-signed receipt as evidence).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gpupool.ledger import SqlLedger
from gpupool.ledger.interface import Charge

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REPO = Path(__file__).resolve().parents[2]
ANVIL_PACKAGE_BIN = REPO / ".venv" / "anvil" / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
BACKENDS = ["sqlite", "postgresql", "evm-tester", "evm-anvil"]


async def pg_database() -> str | None:
    """A fresh PostgreSQL database for one test, or None if PostgreSQL is not reachable."""
    try:
        import asyncpg

        conn = await asyncpg.connect(PG_ADMIN, timeout=3)
    except Exception:  # noqa: BLE001 - not reachable: the PostgreSQL case is skipped
        return None
    name = f"gpupool_ledger_{uuid.uuid4().hex[:10]}"
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return name


async def drop_pg_database(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN, timeout=3)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


def anvil_binary() -> str | None:
    """Anvil from `make anvil` (npm @foundry-rs/anvil, which ships the binary), $GPUPOOL_ANVIL or PATH."""
    for candidate in (os.environ.get("GPUPOOL_ANVIL"), str(ANVIL_PACKAGE_BIN), shutil.which("anvil")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def anvil_url() -> Iterator[str]:
    """A real Anvil node on a free loopback port, for the whole session."""
    binary = anvil_binary()
    if binary is None:
        pytest.skip("anvil not installed: run `make anvil` (npm install of @foundry-rs/anvil into .venv/anvil)")
    port = _free_port()
    proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(port), "--silent"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"anvil did not start on port {port}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@dataclass
class Backend:
    name: str
    ledger: Any
    keys: dict[str, Any] = field(default_factory=dict)  # provider -> SettlementKey (EVM)

    @property
    def is_evm(self) -> bool:
        return self.name.startswith("evm")

    def needs(self, method: str) -> None:
        """xfail where the SQL backend does not have a newer interface method yet."""
        if not hasattr(self.ledger, method):
            pytest.xfail(f"{type(self.ledger).__name__}.{method} not implemented yet")

    async def charge(self, request_id: str, client: str, provider: str, cost: int) -> Charge:
        """A charge as the gateway would pass it: signed by the provider's settlement key on EVM."""
        if not self.is_evm:
            return Charge(request_id, client, provider, cost)
        from gpupool.ledger.settlement_key import SettlementKey, signed_charge

        key = self.keys.get(provider)
        if key is None:
            key = self.keys[provider] = SettlementKey.generate()
            await self.ledger.register_provider(
                provider, key.address, key.sign_registration(self.ledger.address, self.ledger.chain_id, provider))
        return signed_charge(key, self.ledger.address, self.ledger.chain_id, request_id, client, provider, cost)

    async def slash_evidence(self, request_id: str, client: str, provider: str, cost: int) -> dict[str, Any]:
        """Keyword arguments a slash needs on this backend: the paid receipt's signature on EVM."""
        if not self.is_evm:
            return {}
        return {"evidence": await self.charge(request_id, client, provider, cost)}


async def open_backend(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if name == "sqlite":
        led = await SqlLedger.open(f"sqlite+aiosqlite:///{tmp_path / f'{uuid.uuid4().hex}.db'}")
        yield Backend(name, led)
        await led.close()
    elif name == "postgresql":
        db = await pg_database()
        if db is None:
            pytest.skip("PostgreSQL not reachable at 127.0.0.1:5432")
        led = await SqlLedger.open(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}")
        try:
            yield Backend(name, led)
        finally:
            await led.close()
            await drop_pg_database(db)
    else:
        from gpupool.ledger.evm import EvmLedger, deploy

        if name == "evm-tester":
            led = await EvmLedger.open("evm+tester://")
        else:
            rpc = request.getfixturevalue("anvil_url")
            address = await deploy(rpc, min_delay=0)  # a fresh contract per test: tests never see each other's state
            led = await EvmLedger.open(f"evm+{rpc}?contract={address}")
        yield Backend(name, led)
        await led.close()


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async for b in open_backend(request.param, tmp_path, request):
        yield b
