"""Streaming requests: wait for a first chunk, then keep one uninterrupted stream.

    stream = await open_stream(dispatcher, request_id, model, payload, deadline)
    async for text in stream: ...          # then stream.done holds the checked result

- Failures before the first chunk retry elsewhere, so they keep their HTTP status;
  a provider far slower to its first token than it should be counts as stalled.
- A provider lost after chunks were sent is replaced by another that continues the
  text (`continue_text`), so the client sees one uninterrupted stream; the final
  chunk says so in its `gpupool` metadata. So is one that goes silent mid-answer for
  `stream_stall_factor` times its measured gap between tokens (at least
  `stream_stall_min_s`): its run is cancelled, and if its whole session went quiet the
  provider's other requests move too (`dispatch/stalls.py`).
- A pick that never answered us (a new provider, or a Sybil that sits on work) does
  not serve the stream while a proven provider can: it gets a non-streamed copy as its
  trial (`Dispatcher.stand_in`), which proves it or opens its breaker.
- The answer must match its receipt (`Dispatcher.receipt_ok`), as for
  non-streaming requests.
- Leaving early (deadline, client gone) cancels the work at the provider.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec

from gpupool import errors
from gpupool.gateway.dispatch.dispatcher import Dispatcher, deadline_ms, loop_deadline
from gpupool.gateway.dispatch.tries import Tries
from gpupool.gateway.peers.session import Event, ProviderSession
from gpupool.gateway.probes import note_routing
from gpupool.protocol import Chunk, Done, Fail, GeneratePayload, Payload, Run
from gpupool.routing.options import DEFAULT_ROUTE, RouteOptions
from gpupool.routing.stall import mean_gap_s, silence_limit_s

log = logging.getLogger("gpupool.gateway.stream")


async def open_stream(dispatcher: Dispatcher, request_id: str, model: str, payload: Payload, deadline: float,
                      route: RouteOptions = DEFAULT_ROUTE, pace_s: float = 0.0,
                      serving: list[ProviderSession] | None = None) -> Stream:
    """Start a stream; returns once the first event arrived, so errors before it keep their HTTP status.

    `pace_s` > 0: pieces leave at most this often, and what arrives in between goes with the next
    one (`stream_event_interval_ms`; longer for a key over its share while others wait,
    gateway/money/limits.py).
    `serving`: the request's serving set if the caller looked it up already."""
    tries = Tries()
    try:
        async with asyncio.timeout_at(loop_deadline(deadline)):
            session, channel, first, sent_at = await _first_event(
                dispatcher, request_id, model, payload, deadline, tries, route, serving)
    except TimeoutError:
        raise errors.Timeout(f"no answer for {model!r} before the deadline") from None
    stream = Stream(dispatcher, session, channel, request_id, model, payload, deadline, first, tries, route, sent_at)
    stream.pace_s = pace_s
    return stream


async def _first_event(dispatcher: Dispatcher, request_id: str, model: str, payload: Payload, deadline: float,
                       tries: Tries, route: RouteOptions, serving: list[ProviderSession] | None = None,
                       ) -> tuple[ProviderSession, asyncio.Queue[Event], Chunk | Done, float]:
    first_pick = True
    while True:
        if not first_pick:
            note_routing("failover")  # the last provider failed before its first token
        first_pick = False
        session = dispatcher.pick(request_id, model, payload, tries, route, stream=True, serving=serving)
        # A provider that never answered us gets a non-streamed trial copy; a proven one serves the stream.
        session = dispatcher.stand_in(session, request_id, model, payload, deadline, tries, route)
        channel = session.open_channel(request_id)
        sent_at = time.monotonic()
        try:
            await session.send(Run(request_id, model, payload, deadline_ms(deadline)))
            first = await _await_first(dispatcher, session, channel, model, payload, route)
        except ConnectionError:
            session.close_channel(request_id)
            dispatcher.router.on_failure(session, request_id, "connection lost")
            tries.failures.append("provider connection lost")
            continue
        except BaseException:  # deadline or client gone: stop the work at the provider
            session.close_channel(request_id)
            dispatcher.router.on_abandoned(session, request_id)
            dispatcher.cancel(session, request_id)
            raise
        if isinstance(first, (Chunk, Done)):
            dispatcher.judge_client_faults(tries, request_id, model, payload)
            return session, channel, first, sent_at
        session.close_channel(request_id)
        if isinstance(first, _Stalled):
            dispatcher.cancel(session, request_id)
            dispatcher.router.on_failure(session, request_id, "no first token in time")
            tries.failures.append("provider stalled before the first token")
            continue
        dispatcher.note_failure(session, request_id, first, tries, model)


async def _await_first(dispatcher: Dispatcher, session: ProviderSession, channel: asyncio.Queue[Event], model: str,
                       payload: Payload, route: RouteOptions) -> Event | _Stalled:
    """The first event, or _Stalled if it takes far longer than this provider should need."""
    limit = dispatcher.router.first_byte_limit(session, model, payload, route)
    try:
        return await asyncio.wait_for(channel.get(), limit)
    except TimeoutError:
        return _Stalled()


@dataclass
class _Stalled:
    limit_s: float = 0.0  # the silence that ended the wait


class Stream:
    """An open stream; iterate for text pieces, then read `.done`, `.text` and `.providers`."""

    def __init__(self, dispatcher: Dispatcher, session: ProviderSession, channel: asyncio.Queue[Event],
                 request_id: str, model: str, payload: Payload, deadline: float, first: Chunk | Done,
                 tries: Tries, route: RouteOptions, sent_at: float):
        self._dispatcher = dispatcher
        self.session = session
        self._channel = channel
        self.request_id = request_id
        self._run_id = request_id
        self.model = model
        self.payload = payload
        self._run_payload = payload
        self.deadline = deadline
        self._first: Event | None = first
        self.tries = tries
        self._route = route
        self.done: Done | None = None
        self.text = ""
        self.answer_text = ""  # what the last provider produced (its receipt covers this)
        self.providers = [session.node_id]
        self.continued = 0
        self._chunks = 0  # Chunk messages received: each carries at least one token
        self.run_chunks = 0  # of those, the current provider's (what a stream cut short pays it for)
        self._closed = False
        self._started = sent_at
        self._first_at: float | None = time.monotonic() - sent_at  # dispatch to first event
        self.pace_s = 0.0
        self._sent_at = 0.0  # when the last piece went to the client (pace_s counts from there)
        # When this provider's first and last chunks came (with run_chunks: its gap between tokens).
        self._gap_from: float | None = None
        self._gap_last: float | None = None

    @property
    def attempts(self) -> int:
        return len(self.tries.tried)

    @property
    def run_id(self) -> str:
        """The current provider's run: the request id, or after a continuation `rid~N`."""
        return self._run_id

    @property
    def answer_payload(self) -> Payload:
        """What the last provider was asked: after a continuation, the prompt plus the text so far."""
        return self._run_payload

    async def __aiter__(self) -> AsyncIterator[str]:
        sent: list[str] = []  # everything the client has received
        mine: list[str] = []  # what the current provider produced (its receipt covers this)
        try:
            async with asyncio.timeout_at(loop_deadline(self.deadline)):
                while True:
                    event = self._first or await self._next_event()
                    self._first = None
                    if isinstance(event, Chunk):
                        if self.pace_s:
                            # Sooner than pace_s after the last piece: wait out the rest, and what
                            # arrives meanwhile joins this one (a slower stream never waits).
                            wait = self._sent_at + self.pace_s - time.monotonic()
                            if wait > 0:
                                await asyncio.sleep(wait)
                        # Under load several chunks are already waiting: send them as one
                        # piece (one SSE event, one socket write) instead of one each.
                        pieces = [event.text]
                        while not self._channel.empty():
                            nxt = self._channel.get_nowait()
                            if not isinstance(nxt, Chunk):
                                self._first = nxt
                                break
                            pieces.append(nxt.text)
                        text = "".join(pieces)
                        self._chunks += len(pieces)
                        self.run_chunks += len(pieces)
                        self._note_chunk()
                        sent.append(text)
                        mine.append(text)
                        self._sent_at = time.monotonic()
                        yield text
                    elif isinstance(event, Done):
                        part = "".join(mine)
                        if not self._dispatcher.receipt_ok(self.session, self._run_id, self.model, self._run_payload,
                                                  event, part):
                            raise errors.ProviderFailed("the provider's answer failed verification")
                        self._dispatcher.router.on_success(self.session, self._run_id, self.model, self._run_payload,
                                                      event, time.monotonic() - self._started, self._first_at)
                        self.done = event
                        self.text = "".join(sent)
                        self.answer_text = part
                        return
                    elif isinstance(event, _Stalled):
                        reason = f"stalled mid-stream: no token for {event.limit_s:.1f}s"
                        self.session.close_channel(self._run_id)
                        self._dispatcher.cancel(self.session, self._run_id)
                        self._dispatcher.router.on_failure(self.session, self._run_id, reason)
                        self._dispatcher.give_up_if_silent(self.session, event.limit_s)
                        await self._continue_elsewhere("".join(sent), self._chunks, reason)
                        mine = []
                    else:
                        reason = (f"{event.code}: {event.message}" if isinstance(event, Fail)
                                  else f"provider lost ({event.reason})")
                        # Even a client-fault code counts here: a provider that has streamed
                        # tokens accepted the request, so blaming it now is its own failure.
                        self._dispatcher.router.on_failure(self.session, self._run_id, reason)
                        await self._continue_elsewhere("".join(sent), self._chunks, reason)
                        mine = []
        except TimeoutError:
            raise errors.Timeout("the stream did not finish before the deadline") from None
        finally:
            await self.aclose()

    def _note_chunk(self) -> None:
        now = time.monotonic()
        if self._gap_from is None:
            self._gap_from = now
        self._gap_last = now

    async def _next_event(self) -> Event | _Stalled:
        """The next event, or _Stalled once the provider has been silent far longer than its pace."""
        if not self._channel.empty():  # under load the next words are usually here already
            return self._channel.get_nowait()
        settings = self._dispatcher.settings
        if settings.stream_stall_factor <= 0 or not settings.stream_continuation:
            return await self._channel.get()  # nothing could take over: wait as long as the deadline allows
        gap = mean_gap_s(self._gap_from, self._gap_last, self.run_chunks)
        if gap is None:
            gap = self._dispatcher.router.token_gap(self.session, self.model)
        limit = silence_limit_s(gap, settings.stream_stall_factor, settings.stream_stall_min_s)
        try:
            # Not wait_for: it makes a task per call, i.e. per event of every stream.
            async with asyncio.timeout(limit):
                return await self._channel.get()
        except TimeoutError:
            # Our own loop may have been too busy to hand over frames that already came: look once more.
            await asyncio.sleep(0)
            if not self._channel.empty():
                return self._channel.get_nowait()
            return _Stalled(limit)

    async def _continue_elsewhere(self, text_so_far: str, pieces: int, reason: str) -> None:
        """Hand the stream to another provider that continues from `text_so_far`."""
        payload = self.payload
        if not isinstance(payload, GeneratePayload) or not self._dispatcher.settings.stream_continuation:
            raise errors.ProviderFailed(f"provider failed mid-stream: {reason}; the output is incomplete")
        self.session.close_channel(self._run_id)
        self.continued += 1
        note_routing("stream_continuation")
        # Each chunk is at least one token, so this never exceeds the client's max_tokens.
        remaining = max(1, payload.max_tokens - pieces)
        self._run_payload = msgspec.structs.replace(payload, continue_text=payload.continue_text + text_so_far,
                                                    max_tokens=remaining)
        self._run_id = f"{self.request_id}~{self.continued}"
        self.run_chunks = 0
        self.tries.failures.append(reason)
        try:
            session, channel, first, sent_at = await _first_event(
                self._dispatcher, self._run_id, self.model, self._run_payload, self.deadline, self.tries, self._route)
        except errors.GpupoolError as exc:
            raise errors.ProviderFailed(f"provider failed mid-stream ({reason}) and no other could continue: "
                                        f"{exc.message}") from None
        log.info("stream %s continued on %s after: %s", self.request_id, session.node_id[:12], reason)
        self.session, self._channel, self._first = session, channel, first
        self._gap_from = self._gap_last = None
        self.providers.append(session.node_id)
        self._started = sent_at
        self._first_at = time.monotonic() - sent_at

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.session.close_channel(self._run_id)
        if self.done is None:
            self._dispatcher.router.on_abandoned(self.session, self._run_id)
            self._dispatcher.cancel(self.session, self._run_id)
