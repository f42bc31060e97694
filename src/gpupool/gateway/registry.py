"""The network's gateways: who this gateway's peers are, for `GET /v1/gateways`.

    registry = Registry(engine, node_id, url="https://gw1.example", region="eu", peers=["https://gw2.example"])
    await registry.start()          # registers itself, heartbeats, reads the others
    registry.listing()              # [{"url", "region", "node_id", "self", "source", "last_seen"}, ...]
    await registry.close()          # leaves the table at once

Gateways that share a database (PostgreSQL, for several machines) find each other in
its `gateways` table: each one writes its own row (URL, region) every `heartbeat_s`,
and rows not refreshed for `ttl_s` are deleted by whichever gateway sees them first,
so a gateway killed without goodbye drops out of the list within `ttl_s`. Gateways
named by `--peer-gateway` are listed as well. Providers read the list and connect to
the nearest few (provider/discovery.py).

The list is read from the database by the heartbeat, never per request: a public
route polled by anyone must not cost a query each time. Rows are written only by
gateways (operators holding the database's password), and the list is bounded anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy import Float, String, delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from gpupool.db import create_tables, session_factory

log = logging.getLogger("gpupool.gateway")

HEARTBEAT_S = 5.0
TTL_S = 20.0  # four heartbeats missed: gone
MAX_LISTED = 1000


class _Base(DeclarativeBase):
    pass


class GatewayRow(_Base):
    __tablename__ = "gateways"
    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(500))
    region: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float, index=True)


class Registry:
    def __init__(self, engine: AsyncEngine, node_id: str, url: str, region: str = "", peers: list[str] | None = None,
                 heartbeat_s: float = HEARTBEAT_S, ttl_s: float = TTL_S):
        self.engine = engine
        self.sessions = session_factory(engine)
        self.node_id, self.url, self.region = node_id, url.rstrip("/"), region
        self.peers = [p.rstrip("/") for p in peers or []]
        self.heartbeat_s, self.ttl_s = heartbeat_s, ttl_s
        self.started_at = time.time()
        self._rows: list[GatewayRow] = []  # the others, as the last heartbeat read them
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            await create_tables(self.engine, _Base.metadata)
        except Exception:  # noqa: BLE001 - two replicas creating the table at once: one loses, it exists now
            await asyncio.sleep(0.5)
            await create_tables(self.engine, _Base.metadata)
        await self.beat()  # listed before the first provider asks
        self._task = asyncio.create_task(self._loop(), name="gateway-registry")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:  # a clean stop leaves the list at once; a crash leaves it after ttl_s
            async with self.sessions.begin() as db:
                await db.execute(delete(GatewayRow).where(GatewayRow.node_id == self.node_id))
        except Exception:  # noqa: BLE001 - the database gone too: the row expires
            log.debug("could not remove this gateway's registry row", exc_info=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.beat()
            except Exception:  # noqa: BLE001 - the database away for a while: keep the last list, try again
                log.warning("gateway registry: heartbeat failed", exc_info=True)

    async def beat(self) -> None:
        """Refresh this gateway's row, expire stale ones, read the others."""
        now = time.time()
        async with self.sessions.begin() as db:
            mine = {"url": self.url, "region": self.region, "last_seen": now}
            result = await db.execute(update(GatewayRow).where(GatewayRow.node_id == self.node_id).values(**mine))
            if result.rowcount == 0:  # type: ignore[attr-defined]
                db.add(GatewayRow(node_id=self.node_id, started_at=self.started_at, **mine))
            await db.execute(delete(GatewayRow).where(GatewayRow.last_seen < now - self.ttl_s))
        async with self.sessions() as db:
            rows = (await db.execute(select(GatewayRow).where(GatewayRow.node_id != self.node_id)
                                     .order_by(GatewayRow.started_at).limit(MAX_LISTED))).scalars().all()
        self._rows = list(rows)

    def listing(self) -> list[dict[str, Any]]:
        """This gateway first, then the ones in the database, then the configured ones not among them."""
        out = [{"url": self.url, "region": self.region, "node_id": self.node_id, "self": True, "source": "self",
                "last_seen": round(time.time(), 3)}]
        seen = {self.url}
        for row in self._rows:
            if row.url not in seen:
                seen.add(row.url)
                out.append({"url": row.url, "region": row.region, "node_id": row.node_id, "self": False,
                            "source": "database", "last_seen": round(row.last_seen, 3)})
        for url in self.peers:
            if url not in seen:
                seen.add(url)
                out.append({"url": url, "region": "", "node_id": "", "self": False, "source": "configured",
                            "last_seen": None})
        return out[:MAX_LISTED]
