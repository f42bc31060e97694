"""Wires the per-key limits policy (`gateway.limits`) to the live gateway: keys, settings, the clock.

    quotas = Quotas(settings)
    ticket = quotas.admit(key, model, size, serving)  # raises RateLimited / NoCapacity (429)
    return await within_quota(ticket, respond())     # released when the answer (or stream) ends

The decisions are `KeyLimiter`'s (pure, unit-tested); this module only supplies the
key's limits (its own, else the gateway's defaults), the model's slot count from the
request's serving set (looked up once by the route), and `time.monotonic()`, and shapes
refusals as errors.

With `--redis-url`, a key's requests and tokens per minute are counted network-wide
(money/shared_limits.py): the local limiter then keeps only requests at once and the
fair share, and `within_quota` asks Redis before the route runs. While Redis fails,
the local limiter counts the rates too (fail open to per-gateway limits).
"""

from __future__ import annotations

import time
from collections.abc import Coroutine, Sequence
from typing import Any, NoReturn

from starlette.background import BackgroundTasks
from starlette.responses import Response, StreamingResponse

from gpupool import errors
from gpupool.config import GatewaySettings
from gpupool.gateway.edge.http import EventStream
from gpupool.gateway.money.limits import Decision, KeyLimiter, KeyLimits, LimiterConfig
from gpupool.gateway.money.shared_limits import SharedRates, SharedRatesDown
from gpupool.gateway.edge.openai_api import ModelLimits
from gpupool.gateway.payload_size import PayloadSize
from gpupool.gateway.peers.model_index import share_figures
from gpupool.gateway.peers.session import ProviderSession
from gpupool.gateway.store import ApiKey


# The fair-share table is keyed by model names only once a provider serves them; requests
# for anything else share this entry (routing answers them with 404/503 at once).
UNSERVED = ""
# A key refused again before its last Retry-After has its 429 held back this long: spinning
# on 429s would otherwise cost the gateway the CPU (parsing, routing) its share refused.
EARLY_RETRY_HOLD_S = 1.0


class Ticket:
    """One admitted request; `release` gives its place (and unused tokens) back, once."""

    __slots__ = ("_quotas", "_key", "_model", "reserved", "_open", "stream_pace_s", "shared")

    def __init__(self, quotas: Quotas, key: int, model: str, reserved: int, stream_pace_s: float = 0.0,
                 shared: KeyLimits | None = None):
        self._quotas, self._key, self._model, self.reserved = quotas, key, model, reserved
        self._open = True
        # > 0: the key holds more than its equal share while others wait; its stream sends at
        # most one event this often (gateway/dispatch/stream.py).
        self.stream_pace_s = stream_pace_s
        # The key's rates still to be counted network-wide (`confirm`); None: nothing to ask.
        self.shared = shared

    async def confirm(self) -> None:
        """Count the request against the key's network-wide rates (Redis); RateLimited when spent."""
        limits, self.shared = self.shared, None
        if limits is not None:
            await self._quotas.confirm_shared(self._key, limits, self.reserved)

    def release(self, used_tokens: int | None = None) -> None:
        """`used_tokens`: what to count against tokens per minute; None counts the admission
        estimate (as OpenAI does), 0 gives it all back (nothing was served)."""
        if self._open:
            self._open = False
            used = self.reserved if used_tokens is None else used_tokens
            self._quotas.limiter.release(self._key, self._model, self.reserved, used, time.monotonic())


class Quotas:
    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.limiter = KeyLimiter(LimiterConfig(burst_s=settings.rate_burst_s))
        self.refused: dict[str, int] = {}  # reason -> count, for operators
        # Rates counted across the network's gateways (--redis-url); None: by this gateway alone.
        self.shared = SharedRates(settings.redis_url, settings.rate_burst_s) if settings.redis_url else None

    def limits_for(self, key: ApiKey) -> KeyLimits:
        s = self.settings
        return KeyLimits(rpm=key.rpm or s.key_rpm, tpm=key.tpm or s.key_tpm,
                         concurrency=key.concurrency or s.key_concurrency)

    async def confirm_shared(self, key: int, limits: KeyLimits, tokens: int) -> None:
        assert self.shared is not None
        try:
            refusal = await self.shared.hit(key, limits, tokens)
        except SharedRatesDown:
            return  # fail open: this one passes; the next ones meet this gateway's own buckets
        if refusal is not None:
            self.refused[refusal.reason] = self.refused.get(refusal.reason, 0) + 1
            early = self.limiter.refused_elsewhere(key, refusal.retry_after_s, time.monotonic())
            raise errors.RateLimited(f"Rate limit reached for this key on {refusal.message}. Please try again in "
                                     f"{refusal.retry_after_s:.2f}s.", retry_after_s=refusal.retry_after_s,
                                     hold_s=EARLY_RETRY_HOLD_S if early else 0.0)

    def model_limits(self, model: str, serving: Sequence[ProviderSession]) -> ModelLimits | None:
        """The largest completion and prompt the model's live providers offer (None: nobody serves it).

        The most generous provider sets the limit (one provider offering a tiny limit must
        not shrink it for everyone), capped by the operator's `max_output_tokens`. Over the whole
        pool where `serving` carries its figures (a sample of a big pool does)."""
        pool = getattr(serving, "pool", None)
        if pool is not None:
            most_out, most_in = pool.limits()
        else:
            offers = [s.models[model] for s in serving]
            most_out = max((o.max_output_tokens for o in offers), default=0)
            most_in = max((o.max_input_tokens for o in offers), default=0)
        if not serving:
            return None
        return ModelLimits(max_output_tokens=max(1, min(self.settings.max_output_tokens, most_out)),
                           max_input_tokens=max(1, most_in))

    def refuse_if_ignoring_retry_after(self, key: ApiKey) -> None:
        """Before the body is read: a key that keeps coming back before its Retry-After gets a
        held-back 429 at once (reading and parsing each of its requests first cost the event
        loop what everyone else's requests wait for)."""
        wait = self.limiter.ignored_retry_after(key.id, time.monotonic())
        if wait > 0:
            self.refused["ignored_retry_after"] = self.refused.get("ignored_retry_after", 0) + 1
            raise errors.RateLimited(f"This key keeps retrying before its Retry-After; wait {wait:.1f}s before the "
                                     "next request.", retry_after_s=wait, hold_s=EARLY_RETRY_HOLD_S)

    def admit(self, key: ApiKey, model: str, size: PayloadSize, serving: Sequence[ProviderSession]) -> Ticket:
        """Count the request against its key, or raise the 429 that says which limit it hit."""
        decision, ticket = self._decide(key, model, size.quota_tokens, serving)
        if ticket is None:
            self._refuse(decision)
        return ticket

    def try_admit(self, key: ApiKey, model: str, tokens: int, serving: Sequence[ProviderSession]) -> Ticket | None:
        """As `admit`, for work nobody waits on (a batch shard): None instead of a 429, and then the
        work waits for a later try."""
        return self._decide(key, model, tokens, serving, background=True)[1]

    def _decide(self, key: ApiKey, model: str, tokens: int, serving: Sequence[ProviderSession],
                background: bool = False) -> tuple[Decision, Ticket | None]:
        slots, places, related = 0, None, ()
        if self.settings.fair_share:
            # The model's slots, plus queues as the providers last reported them (unknown until each
            # has), and the other models sharing those slots: running figures of the whole pool
            # (peers/model_index.py), each session's word capped by --max-session-slots.
            slots, places, related = share_figures(serving, model, self.settings.max_session_slots)
        name = model if slots > 0 else UNSERVED
        limits = self.limits_for(key)
        shared = None
        if (not background and self.shared is not None and (limits.rpm or limits.tpm)
                and self.shared.available()):
            # Redis counts the rates (Ticket.confirm); here only requests at once and the fair share.
            # Batch shards (background) are counted by this gateway alone: nobody awaits a confirm.
            shared, limits = limits, KeyLimits(concurrency=limits.concurrency)
        decision = self.limiter.admit(key.id, limits, name, tokens, slots, time.monotonic(), places, related,
                                      background)
        if not decision.ok:
            return decision, None
        pace = max(self.settings.stream_event_interval_ms,
                   self.settings.over_share_stream_pace_ms if decision.over_share else 0.0) / 1000
        return decision, Ticket(self, key.id, name, tokens, pace, shared)

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()

    def count_call(self, key: ApiKey) -> None:
        """A request that runs nothing on the pool (files, batches): counted against the key's
        requests per minute (and its concurrency, for the moment it is admitted), or a 429."""
        now = time.monotonic()
        decision = self.limiter.admit(key.id, self.limits_for(key), UNSERVED, 0, 0, now)
        if not decision.ok:
            self._refuse(decision)
        self.limiter.release(key.id, UNSERVED, 0, 0, now)

    def _refuse(self, decision: Decision) -> NoReturn:
        self.refused[decision.reason] = self.refused.get(decision.reason, 0) + 1
        # Back before its last Retry-After: the answer is held back (the client waits either way).
        hold = EARLY_RETRY_HOLD_S if decision.early else 0.0
        if decision.reason == "fair_share":
            # Not the key's own limit: the pool is busy and others need their share.
            raise errors.NoCapacity(f"{decision.message}; retry shortly", retry_after_s=decision.retry_after_s,
                                    hold_s=hold)
        raise errors.RateLimited(f"Rate limit reached for this key on {decision.message}. Please try again "
                                 f"in {decision.retry_after_s:.1f}s.", retry_after_s=decision.retry_after_s,
                                 hold_s=hold)


async def within_quota(ticket: Ticket, respond: Coroutine[Any, Any, Response]) -> Response:
    """Await the route's response; the ticket is released when the client has it (streams: when
    the stream ends, however it ends), or at once if the route raised. The network-wide rates
    are counted first: a refused request never starts its route."""
    try:
        await ticket.confirm()
        response = await respond
    except BaseException:
        respond.close()  # refused before it started: the route's coroutine never runs
        ticket.release(0)  # refused or failed before an answer: no tokens were used
        raise
    if isinstance(response, EventStream):
        response.add_close_callback(ticket.release)
    elif isinstance(response, StreamingResponse):
        # Another kind of stream (e.g. a fallback lane's): Starlette runs background tasks
        # once the body is sent. An async one: a sync task would run in a worker thread.
        async def release() -> None:
            ticket.release()

        tasks = BackgroundTasks([t for t in [response.background] if t is not None])
        tasks.add_task(release)
        response.background = tasks
    else:
        ticket.release()  # the work is done; sending the bytes holds no provider
    return response
