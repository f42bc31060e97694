"""Providers that stay connected but go silent: find them fast and move their work.

A provider whose process is stopped (SIGSTOP, a frozen VM) keeps its socket open, so
nothing fails: its streams stop, its non-streaming requests never answer, and the
hub drops it only after `liveness_timeout_s` (20 s). This watch looks every
`TICK_S` at the sessions that have work in flight; one from which not even a Pong
came for a ping interval plus the stall limit (`routing.stall.session_silent`),
counted from its last frame or from when it got work if that is later, is given up
on (one quiet for a ping interval is pinged at once: in a big pool the schedule pings
each session far less often, `peers/pacing.py`): routing skips it until it speaks
again, and each of its open requests gets a `ProviderLost`, so a non-streaming
request retries elsewhere and a stream continues on another provider
(`dispatch/stream.py`), exactly as if the connection had dropped. A stream also
gives up on its own provider after k times its measured gap between tokens
(`Stream`), which catches an engine that stalls while the provider process still
answers pings.

    watch = SilenceWatch(hub, router, settings, cancel=dispatcher.cancel)
    watch.start() ... await watch.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from gpupool import errors
from gpupool.config import GatewaySettings
from gpupool.gateway.dispatch.router import LiveRouter
from gpupool.gateway.peers.hub import Hub
from gpupool.gateway.peers.session import ProviderLost, ProviderSession
from gpupool.routing.stall import session_silent

log = logging.getLogger("gpupool.gateway.stalls")

TICK_S = 0.25
# A tick this late means our own event loop was blocked: frames may be waiting unread, so
# silence measured now says nothing about the providers.
LATE_TICK_S = 0.5


class PoolStalled(errors.Timeout):
    """The pool gave no answer (a stream no first token, a request nothing) within the fallback
    budget while no other provider could take it: a fallback lane takes over. Reaches a client
    only if no lane could serve either."""


def give_up_on(router: LiveRouter, session: ProviderSession, reason: str,
               cancel: Callable[[ProviderSession, str], None]) -> int:
    """Treat every request open on `session` as lost (they move elsewhere) and keep routing away
    from it until it sends a frame again. Returns how many requests were moved."""
    router.mark_silent(session)
    moved = 0
    for request_id, channel in list(session.channels.items()):
        with contextlib.suppress(asyncio.QueueFull):  # full of answers: it is not silent for that one
            channel.put_nowait(ProviderLost(reason))
            moved += 1
        cancel(session, request_id)  # if it wakes, it must not keep working for nobody
    if moved:
        log.warning("provider %s silent (%s): moved %d requests", session.node_id[:12], reason, moved)
    return moved


class SilenceWatch:
    def __init__(self, hub: Hub, router: LiveRouter, settings: GatewaySettings,
                 cancel: Callable[[ProviderSession, str], None]):
        self.hub = hub
        self.router = router
        self.settings = settings
        self.cancel = cancel
        self._task: asyncio.Task[None] | None = None
        self.given_up = 0  # sessions given up on (tests and metrics read it)

    def start(self) -> None:
        if self._task is None and self.settings.stream_stall_factor > 0:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            late = now - last > TICK_S + LATE_TICK_S
            last = now
            if not late:
                self.check(now)

    def check(self, now: float) -> None:
        s = self.settings
        for session in list(self.hub.busy):  # only sessions with open requests can stall one
            if not session.channels or session.closed or self.router.is_silent(session):
                continue
            since = session.quiet_since()
            quiet = now - since
            if session_silent(now, since, s.ping_interval_s, session.rtt_s,
                              s.stream_stall_factor, s.stream_stall_min_s):
                self.given_up += 1
                give_up_on(self.router, session, f"silent for {quiet:.1f}s", self.cancel)
            elif quiet >= s.ping_interval_s and now - session.pinged_at >= s.ping_interval_s:
                # In a big pool the schedule pings each session only every ~40 s: one with work
                # in flight that has been quiet this long is pinged now, so that a live one
                # answers within the limit and only a silent one is given up on.
                self.hub.ping_now(session)
