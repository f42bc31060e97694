"""Request lifecycle: pick a provider, send the work, check the answer, hedge and fail over.

    outcome = await dispatcher.complete(request_id, model, payload, deadline)
    stream = await dispatcher.open_stream(request_id, model, payload, deadline)
    async for text in stream: ...          # then stream.done holds the checked result

Rules:
- Non-streaming: a provider that is lost, over capacity or failing costs nothing
  visible: the request moves to another provider. One that is slow beyond its
  expected time gets a hedge: a second copy goes to another provider, the first
  good answer wins and the loser is cancelled (only the winner's receipt counts).
- Streaming: failures before the first chunk retry elsewhere. A provider lost
  after chunks were sent is replaced by another that continues the text
  (`continue_text`), so the client sees one uninterrupted stream; the final chunk
  says so in its `gpupool` metadata.
- Every answer must carry a receipt signed by the provider that matches the input
  we sent and the output we got; a provider whose receipt lies is disconnected and
  recorded, and the request is retried elsewhere.
- Leaving early (deadline, client gone) cancels the work at the provider.

The choices themselves (which provider, when to hedge) are pure functions in
`gpupool.routing`; this module only wires them to live sessions and sockets.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import msgspec

from gpupool import errors, protocol
from gpupool.config import GatewaySettings
from gpupool.gateway.hub import Event, Hub, ProviderLost, ProviderSession
from gpupool.gateway.router import DEFAULT_ROUTE, RouteOptions
from gpupool.protocol import Cancel, Chunk, Done, EmbedPayload, Fail, GeneratePayload, Payload, Run

log = logging.getLogger("gpupool.gateway.dispatch")

# Provider failure codes that mean the *request* is bad: retrying elsewhere won't help.
CLIENT_FAULT_CODES = frozenset({"invalid_input", "context_length_exceeded", "unsupported_task"})


@dataclass
class Outcome:
    done: Done
    session: ProviderSession  # who served it: its price and key settle the charge
    attempts: int
    text: str = ""

    @property
    def provider(self) -> str:
        return self.session.node_id


@dataclass
class Tries:
    """Providers tried for one request and what went wrong, to pick the right final error."""

    tried: set[str] = field(default_factory=set)
    over_capacity: int = 0
    lost: int = 0  # providers that vanished mid-request: the request was not at fault, so they count less
    failures: list[str] = field(default_factory=list)

    def exhausted(self, max_attempts: int) -> bool:
        """No more tries: `max_attempts` real failures, or twice that when providers keep vanishing."""
        return len(self.tried) - self.lost >= max_attempts or len(self.tried) >= 2 * max_attempts

    def error(self, model: str, why_not_others: str = "") -> errors.GpupoolError:
        if self.failures and self.over_capacity == len(self.failures):
            return errors.NoCapacity(
                f"all {len(self.tried)} providers tried for {model!r} are at capacity; retry shortly"
            )
        detail = "; ".join(self.failures[-3:]) or "no provider available"
        if why_not_others:
            detail += f"; others: {why_not_others}"
        return errors.NoProvider(f"no provider could serve {model!r} ({detail})")


class Dispatcher:
    def __init__(self, hub: Hub, settings: GatewaySettings, rng: random.Random | None = None):
        self.hub = hub
        self.settings = settings
        self.rng = rng or random.Random()

    def check_signature(self) -> bool:
        return self.rng.random() < self.settings.receipt_verify_rate

    # ------------------------------------------------------------ one attempt

    def choose(self, request_id: str, model: str, payload: Payload, tries: Tries, route: RouteOptions,
               stream: bool) -> ProviderSession:
        if tries.exhausted(self.settings.max_attempts):
            raise tries.error(model)
        session = self.hub.router.choose(request_id, model, payload, time.monotonic(), self.rng, route, tries,
                                         stream)
        tries.tried.add(session.node_id)
        return session

    async def run_on(self, session: ProviderSession, request_id: str, model: str, payload: Payload,
                     deadline: float) -> Outcome | None:
        """Run one request on this provider only, like a client's (canaries): None if it failed."""
        try:
            async with asyncio.timeout_at(_loop_deadline(deadline)):
                return await self._attempt(session, request_id, model, payload, deadline, Tries())
        except (errors.GpupoolError, TimeoutError):
            return None

    async def _attempt(self, session: ProviderSession, request_id: str, model: str, payload: Payload,
                       deadline: float, tries: Tries) -> Outcome | None:
        """One provider, one try. None means "try another provider"."""
        channel = session.open_channel(request_id)
        finished = False
        started = time.monotonic()
        try:
            await session.send(Run(request_id, model, payload, _deadline_ms(deadline), stream=False))
            parts: list[str] = []
            while True:
                event = await channel.get()
                if isinstance(event, Chunk):
                    parts.append(event.text)
                    continue
                finished = True
                if isinstance(event, Done):
                    text = "".join(parts) or event.text
                    if not self._receipt_ok(session, request_id, model, payload, event, text):
                        tries.failures.append("a provider returned an invalid receipt")
                        return None
                    self.hub.router.on_success(session, request_id, model, payload, event,
                                               time.monotonic() - started)
                    return Outcome(event, session, 0, text)
                self._note_failure(session, request_id, event, tries, model)
                return None
        except ConnectionError:
            finished = True
            self.hub.router.on_failure(session, request_id, "connection lost")
            tries.failures.append("provider connection lost")
            return None
        finally:
            session.close_channel(request_id)
            if not finished:
                self.hub.router.on_abandoned(session, request_id)
                self._cancel(session, request_id)

    def _note_failure(self, session: ProviderSession, request_id: str, event: Event, tries: Tries,
                      model: str) -> None:
        if isinstance(event, ProviderLost):
            tries.failures.append(f"provider lost: {event.reason}")
            tries.lost += 1
            self.hub.router.on_failure(session, request_id, event.reason)
            return
        assert isinstance(event, Fail)
        # Busy or leaving is not broken, and a bad request is not the provider's fault.
        healthy = event.code in ("over_capacity", "draining") or event.code in CLIENT_FAULT_CODES
        self.hub.router.on_failure(session, request_id, event.code, counts=not healthy)
        if event.code in CLIENT_FAULT_CODES:
            raise errors.InvalidRequest(event.message, code=event.code)
        if event.code == "deadline_exceeded":
            raise errors.Timeout(f"no answer for {model!r} before the deadline")
        if event.code == "over_capacity":
            tries.over_capacity += 1
        tries.failures.append(f"{event.code}: {event.message}")

    def _cancel(self, session: ProviderSession, request_id: str) -> None:
        if session.closed:
            return

        async def send() -> None:
            try:
                await session.send(Cancel(request_id))
            except Exception:  # noqa: BLE001 - the provider may be gone already
                pass

        asyncio.create_task(send())

    def _receipt_ok(self, session: ProviderSession, request_id: str, model: str, payload: Payload,
                    done: Done, text: str) -> bool:
        problem = receipt_problem(session, request_id, model, payload, done, text, self.check_signature())
        if problem:
            self.hub.disconnect(session, "bad_receipt", problem)
            return False
        return True

    # ------------------------------------------------------------ non-streaming, with hedging

    async def complete(self, request_id: str, model: str, payload: Payload, deadline: float,
                       route: RouteOptions = DEFAULT_ROUTE) -> Outcome:
        tries = Tries()
        running: dict[asyncio.Task[Outcome | None], ProviderSession] = {}
        hedged = False
        try:
            async with asyncio.timeout_at(_loop_deadline(deadline)):
                while True:
                    if not running:
                        session = self.choose(request_id, model, payload, tries, route, stream=False)
                        running[self._start(session, request_id, model, payload, deadline, tries)] = session
                    wait_s = None
                    if not hedged and self.settings.hedging and len(running) == 1:
                        (first_session,) = running.values()
                        wait_s = self.hub.router.hedge_delay(first_session, model, payload, route)
                        if wait_s is not None:
                            # Leave a second copy half of the time that is left, whatever the estimate.
                            left = deadline - time.monotonic()
                            wait_s = min(wait_s, max(self.settings.hedge_min_s, left / 2))
                    finished, _ = await asyncio.wait(running, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                    if not finished:
                        hedged = True  # slower than expected: send a second copy elsewhere
                        try:
                            session = self.choose(request_id, model, payload, tries, route, stream=False)
                        except errors.GpupoolError:
                            continue  # nobody else to ask: keep waiting for the first
                        running[self._start(session, request_id, model, payload, deadline, tries)] = session
                        continue
                    for task in finished:
                        running.pop(task)
                        outcome = task.result()  # re-raises client faults and timeouts
                        if outcome is not None:
                            outcome.attempts = len(tries.tried)
                            for other, other_session in running.items():
                                # Slower than its own expected percentile: counts against it,
                                # so a provider that stalls opens its breaker.
                                self.hub.router.on_failure(other_session, request_id, "lost a hedge race")
                                other.cancel()
                            return outcome
        except TimeoutError:
            raise errors.Timeout(f"no answer for {model!r} before the deadline") from None
        finally:
            for task in running:
                task.cancel()

    def _start(self, session: ProviderSession, request_id: str, model: str, payload: Payload,
               deadline: float, tries: Tries) -> asyncio.Task[Outcome | None]:
        return asyncio.create_task(self._attempt(session, request_id, model, payload, deadline, tries))

    # ------------------------------------------------------------ streaming, with continuation

    async def open_stream(self, request_id: str, model: str, payload: Payload, deadline: float,
                          route: RouteOptions = DEFAULT_ROUTE) -> Stream:
        """Start a stream; returns once the first event arrived, so errors before it keep their HTTP status."""
        tries = Tries()
        try:
            async with asyncio.timeout_at(_loop_deadline(deadline)):
                session, channel, first, sent_at = await self._first_event(request_id, model, payload,
                                                                           deadline, tries, route)
        except TimeoutError:
            raise errors.Timeout(f"no answer for {model!r} before the deadline") from None
        return Stream(self, session, channel, request_id, model, payload, deadline, first, tries, route, sent_at)

    async def _first_event(self, request_id: str, model: str, payload: Payload, deadline: float,
                           tries: Tries, route: RouteOptions,
                           ) -> tuple[ProviderSession, asyncio.Queue[Event], Chunk | Done, float]:
        while True:
            session = self.choose(request_id, model, payload, tries, route, stream=True)
            channel = session.open_channel(request_id)
            sent_at = time.monotonic()
            try:
                await session.send(Run(request_id, model, payload, _deadline_ms(deadline)))
                first = await self._await_first(session, channel, model, payload, route)
            except ConnectionError:
                session.close_channel(request_id)
                self.hub.router.on_failure(session, request_id, "connection lost")
                tries.failures.append("provider connection lost")
                continue
            except BaseException:  # deadline or client gone: stop the work at the provider
                session.close_channel(request_id)
                self.hub.router.on_abandoned(session, request_id)
                self._cancel(session, request_id)
                raise
            if isinstance(first, (Chunk, Done)):
                return session, channel, first, sent_at
            session.close_channel(request_id)
            if isinstance(first, _Stalled):
                self._cancel(session, request_id)
                self.hub.router.on_failure(session, request_id, "no first token in time")
                tries.failures.append("provider stalled before the first token")
                continue
            self._note_failure(session, request_id, first, tries, model)

    async def _await_first(self, session: ProviderSession, channel: asyncio.Queue[Event], model: str,
                           payload: Payload, route: RouteOptions) -> Event | _Stalled:
        """The first event, or _Stalled if it takes far longer than this provider should need."""
        limit = self.hub.router.first_byte_limit(session, model, payload, route)
        try:
            return await asyncio.wait_for(channel.get(), limit)
        except TimeoutError:
            return _Stalled()


@dataclass
class _Stalled:
    pass


class Stream:
    """An open stream; iterate for text pieces, then read `.done`, `.text` and `.providers`."""

    def __init__(self, dispatcher: Dispatcher, session: ProviderSession, channel: asyncio.Queue[Event],
                 request_id: str, model: str, payload: Payload, deadline: float, first: Chunk | Done,
                 tries: Tries, route: RouteOptions, sent_at: float):
        self._d = dispatcher
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
        self._closed = False
        self._started = sent_at
        self._first_at: float | None = time.monotonic() - sent_at  # dispatch to first event

    @property
    def attempts(self) -> int:
        return len(self.tries.tried)

    @property
    def answer_payload(self) -> Payload:
        """What the last provider was asked: after a continuation, the prompt plus the text so far."""
        return self._run_payload

    async def __aiter__(self) -> AsyncIterator[str]:
        sent: list[str] = []  # everything the client has received
        mine: list[str] = []  # what the current provider produced (its receipt covers this)
        try:
            async with asyncio.timeout_at(_loop_deadline(self.deadline)):
                while True:
                    event = self._first or await self._channel.get()
                    self._first = None
                    if isinstance(event, Chunk):
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
                        sent.append(text)
                        mine.append(text)
                        yield text
                    elif isinstance(event, Done):
                        part = "".join(mine)
                        problem = receipt_problem(self.session, self._run_id, self.model, self._run_payload,
                                                  event, part, self._d.check_signature())
                        if problem:
                            self._d.hub.disconnect(self.session, "bad_receipt", problem)
                            raise errors.ProviderFailed("the provider's answer failed verification")
                        self._d.hub.router.on_success(self.session, self._run_id, self.model, self._run_payload,
                                                      event, time.monotonic() - self._started, self._first_at)
                        self.done = event
                        self.text = "".join(sent)
                        self.answer_text = part
                        return
                    else:
                        reason = (f"{event.code}: {event.message}" if isinstance(event, Fail)
                                  else f"provider lost ({event.reason})")
                        if isinstance(event, Fail) and event.code in CLIENT_FAULT_CODES:
                            raise errors.InvalidRequest(event.message, code=event.code)
                        self._d.hub.router.on_failure(self.session, self._run_id, reason)
                        await self._continue_elsewhere("".join(sent), self._chunks, reason)
                        mine = []
        except TimeoutError:
            raise errors.Timeout("the stream did not finish before the deadline") from None
        finally:
            await self.aclose()

    async def _continue_elsewhere(self, text_so_far: str, pieces: int, reason: str) -> None:
        """Hand the stream to another provider that continues from `text_so_far`."""
        payload = self.payload
        if not isinstance(payload, GeneratePayload) or not self._d.settings.stream_continuation:
            raise errors.ProviderFailed(f"provider failed mid-stream: {reason}; the output is incomplete")
        self.session.close_channel(self._run_id)
        self.continued += 1
        # Each chunk is at least one token, so this never exceeds the client's max_tokens.
        remaining = max(1, payload.max_tokens - pieces)
        self._run_payload = msgspec.structs.replace(payload, continue_text=payload.continue_text + text_so_far,
                                                    max_tokens=remaining)
        self._run_id = f"{self.request_id}~{self.continued}"
        self.tries.failures.append(reason)
        try:
            session, channel, first, sent_at = await self._d._first_event(
                self._run_id, self.model, self._run_payload, self.deadline, self.tries, self._route)
        except errors.GpupoolError as exc:
            raise errors.ProviderFailed(f"provider failed mid-stream ({reason}) and no other could continue: "
                                        f"{exc.message}") from None
        log.info("stream %s continued on %s after: %s", self.request_id, session.node_id[:12], reason)
        self.session, self._channel, self._first = session, channel, first
        self.providers.append(session.node_id)
        self._started = sent_at
        self._first_at = time.monotonic() - sent_at

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.session.close_channel(self._run_id)
        if self.done is None:
            self._d.hub.router.on_abandoned(self.session, self._run_id)
            self._d._cancel(self.session, self._run_id)


def receipt_problem(session: ProviderSession, request_id: str, model: str, payload: Payload, done: Done,
                    text: str, check_signature: bool = True) -> str | None:
    """Why this answer cannot be accepted, or None if its receipt binds it to our request.

    The hashes are always checked (cheap). Receipts normally come unsigned and are
    signed in bulk by the provider's next Statement, which billing waits for
    before charging; a receipt that carries its own signature has a sample of
    those checked inline (`receipt_verify_rate`) and all of them before charging.
    """
    r = done.receipt
    if r.request_id != request_id or done.request_id != request_id:
        return "receipt is for another request"
    if r.node_id != session.node_id or r.model != model:
        return "receipt names another provider or model"
    if r.input_hash != protocol.payload_hash(payload):
        return "receipt input hash does not match the request"
    if isinstance(payload, EmbedPayload):
        expected_len = len(payload.inputs) * done.dimensions * 4
        if done.dimensions <= 0 or len(done.vectors) != expected_len:
            return "embedding result has the wrong shape"
        output = done.vectors
    else:
        if done.text and done.text != text:
            return "streamed chunks do not add up to the final text"
        output = text.encode()
    if r.output_hash != protocol.output_hash(output):
        return "receipt output hash does not match the output"
    if (done.token_ids or r.tokens_hash) and r.tokens_hash != protocol.tokens_hash(done.token_ids, done.logprobs):
        return "receipt tokens hash does not match the tokens sent"
    if check_signature and r.signature and not protocol.verify_claim(r, session.public_key):
        return "receipt signature does not verify"
    return None


def _deadline_ms(deadline: float) -> int:
    return max(1, int((deadline - time.monotonic()) * 1000))


def _loop_deadline(deadline: float) -> float:
    # `deadline` is time.monotonic(); the event loop clock is monotonic too but may differ.
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())
