"""Request lifecycle: pick a provider, send the work, check the answer, hedge and fail over.

    outcome = await dispatcher.complete(request_id, model, payload, deadline)

Streaming requests build on the same pieces in `gateway.stream`.

Rules:
- Non-streaming: a provider that is lost, over capacity or failing costs nothing
  visible: the request moves to another provider. One that is slow beyond its
  expected time gets a hedge: a second copy goes to another provider, the first
  good answer wins and the loser is cancelled (only the winner's receipt counts).
- Every answer must carry a receipt signed by the provider that matches the input
  we sent and the output we got; a provider whose receipt lies is disconnected and
  recorded, and the request is retried elsewhere.
- Leaving early (deadline, client gone) cancels the work at the provider.
- A provider that never answered us is on trial: a request sent to it also goes to a
  proven provider at once (the new one's copy follows once that one answered, or
  `hedge_min_s` passed), so a key that takes work and sits on it (a Sybil: keys are
  free) costs the client nothing. The new provider's copy is not cancelled when the
  other wins: its own answer, checked like any, proves and measures it (it is never
  the client's and never charged), and its silence until the deadline opens its
  breaker. One trial at a time per provider; where nobody proven can take the copy,
  the new provider serves alone, hedged as usual.
- Streams are not raced: a stream whose pick never answered us is served by a proven
  provider, and the new one gets a non-streamed copy as its trial (`stand_in`), judged
  as above and never sent to the client nor charged. So a Sybil picked for a stream costs
  it no first-token budget, and newcomers are still proven under streaming-only traffic.

The choices themselves (which provider, when to hedge) are pure functions in
`gpupool.routing`; this module only wires them to live sessions and sockets.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from gpupool import errors
from gpupool.config import GatewaySettings
from gpupool.gateway.dispatch.provider_record import TrustView
from gpupool.gateway.dispatch.receipts import receipt_problem
from gpupool.gateway.dispatch.router import LiveRouter
from gpupool.gateway.dispatch.stalls import PoolStalled, SilenceWatch, give_up_on
from gpupool.gateway.dispatch.tries import Tries
from gpupool.gateway.peers.hub import Hub
from gpupool.gateway.peers.session import Event, ProviderLost, ProviderSession
from gpupool.gateway.probes import note_routing
from gpupool.gateway.store import Store
from gpupool.protocol import Cancel, Chunk, Done, Fail, GeneratePayload, Payload, Run
from gpupool.routing.options import DEFAULT_ROUTE, RouteOptions

# Provider failure codes that blame the *request*. The gateway checked the request at its
# edge already, so one provider saying so is a claim to check, not a verdict: the request
# goes to a second provider, and the client gets the 400 only if that one agrees (or
# there is nobody else to ask); a provider whose claim another provider disproves by
# serving the request has the failure counted against it (a "black hole" provider would
# otherwise fail everything at no cost).
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


class Dispatcher:
    """Owns the live router; `trust` is what gateway/trust/ says of providers (routing reads it)."""

    def __init__(self, hub: Hub, store: Store, settings: GatewaySettings, trust: TrustView = TrustView(),
                 rng: random.Random | None = None):
        self.hub = hub
        self.store = store
        self.router = LiveRouter(hub, settings, trust)
        hub.listeners.left.append(self.router.forget_if_crowded)
        hub.listeners.joined.append(self.router.on_join)
        hub.listeners.offer_changed.append(self.router.proven.update)
        self.settings = settings
        self.rng = rng or random.Random()
        self.silence = SilenceWatch(hub, self.router, settings, self.cancel)
        # Trials whose request was answered by another copy, left to run to their own verdict.
        self._judging: set[asyncio.Task[Outcome | None]] = set()

    def start(self) -> None:
        self.silence.start()

    async def close(self) -> None:
        await self.silence.close()
        for task in list(self._judging):
            task.cancel()

    def give_up_if_silent(self, session: ProviderSession, silent_s: float) -> None:
        """One of `session`'s streams went silent: if nothing at all came from the provider for as
        long, its other requests are stuck too (a stopped process): move them now, not one by one."""
        if (not session.closed and not self.router.is_silent(session) and session.channels
                and time.monotonic() - session.quiet_since() >= silent_s):
            give_up_on(self.router, session, f"silent for {silent_s:.1f}s with streams open", self.cancel)

    def check_signature(self) -> bool:
        return self.rng.random() < self.settings.receipt_verify_rate

    # ------------------------------------------------------------ one attempt

    def choose(self, request_id: str, model: str, payload: Payload, tries: Tries, route: RouteOptions,
               stream: bool, serving: list[ProviderSession] | None = None, hedge: bool = False,
               companion: bool = False) -> ProviderSession:
        try:
            if tries.exhausted(self.settings.max_attempts):
                raise tries.error(model)
            session = self.router.choose(request_id, model, payload, time.monotonic(), self.rng, route, tries,
                                         stream, serving, hedge, companion)
        except errors.GpupoolError:
            if tries.client_faults:  # nobody else to ask: the provider's word is all there is
                raise tries.client_fault_error() from None
            raise
        tries.tried.add(session.node_id)
        return session

    def pick(self, request_id: str, model: str, payload: Payload, tries: Tries, route: RouteOptions,
             stream: bool, serving: list[ProviderSession] | None = None) -> ProviderSession:
        """A request's next provider. While no trial may start (their rate or share is spent), a
        proven one if any can take it: a new provider picked now would get no copy anyway (`complete`,
        `stand_in`), and choosing twice, the pick and then its proven companion, was most of a
        request's routing work just after a large pool of fresh keys joined (bench/scale)."""
        if not tries.tried:
            self.router.trials.requested()
        if not self.router.trials.could_start():
            proven = self._companion(request_id, model, payload, tries, route, stream, serving)
            if proven is not None:
                return proven
        return self.choose(request_id, model, payload, tries, route, stream, serving)

    def judge_client_faults(self, tries: Tries, request_id: str, model: str, payload: Payload) -> None:
        """Another provider served a request that earlier ones refused as the client's fault:
        those refusals were false, unless the request really exceeded that provider's own offer."""
        for session, fail in tries.client_faults:
            offer = session.models.get(model)
            if (isinstance(payload, GeneratePayload) and offer is not None
                    and payload.max_tokens > offer.max_output_tokens):
                continue  # over its own advertised limit: an honest refusal
            self.router.on_failure(session, request_id, f"false client fault: {fail.code}")
            self.store.record_event(session.node_id, "false_client_fault",
                                        f"{fail.code} for {request_id}, which another provider served")
        tries.client_faults.clear()

    async def run_on(self, session: ProviderSession, request_id: str, model: str, payload: Payload,
                     deadline: float) -> Outcome | None:
        """Run one request on this provider only, like a client's (canaries): None if it failed."""
        try:
            async with asyncio.timeout_at(loop_deadline(deadline)):
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
            await session.send(Run(request_id, model, payload, deadline_ms(deadline), stream=False))
            parts: list[str] = []
            while True:
                event = await channel.get()
                if isinstance(event, Chunk):
                    parts.append(event.text)
                    continue
                finished = True
                if isinstance(event, Done):
                    text = "".join(parts) or event.text
                    if not self.receipt_ok(session, request_id, model, payload, event, text):
                        tries.failures.append("a provider returned an invalid receipt")
                        return None
                    self.router.on_success(session, request_id, model, payload, event,
                                               time.monotonic() - started)
                    return Outcome(event, session, 0, text)
                self.note_failure(session, request_id, event, tries, model)
                return None
        except ConnectionError:
            finished = True
            self.router.on_failure(session, request_id, "connection lost")
            tries.failures.append("provider connection lost")
            return None
        except (errors.GpupoolError, asyncio.CancelledError):
            raise  # the client's fault confirmed, the deadline, the client gone: not this provider's
        except Exception as exc:  # noqa: BLE001 - an answer that breaks our checks is the provider's failure
            finished = True
            self.router.on_failure(session, request_id, "answer could not be checked")
            self.hub.record_event(session.node_id, "bad_answer", f"{request_id}: {type(exc).__name__}")
            tries.failures.append("a provider's answer could not be checked")
            return None
        finally:
            session.close_channel(request_id)
            if not finished:
                self.router.on_abandoned(session, request_id)
                self.cancel(session, request_id)

    def note_failure(self, session: ProviderSession, request_id: str, event: Event, tries: Tries,
                      model: str) -> None:
        if isinstance(event, ProviderLost):
            tries.failures.append(f"provider lost: {event.reason}")
            tries.lost += 1
            self.router.on_failure(session, request_id, event.reason)
            return
        assert isinstance(event, Fail)
        # Busy or leaving is not broken; a claim that the request is bad is judged below.
        healthy = event.code in ("over_capacity", "draining") or event.code in CLIENT_FAULT_CODES
        self.router.on_failure(session, request_id, event.code, counts=not healthy)
        if event.code in CLIENT_FAULT_CODES:
            tries.client_faults.append((session, event))
            if len(tries.client_faults) >= 2:  # a second provider agrees: it is the request
                raise tries.client_fault_error()
            tries.failures.append(f"{event.code}: {event.message}")
            return
        if event.code == "deadline_exceeded":
            raise errors.Timeout(f"no answer for {model!r} before the deadline")
        if event.code == "over_capacity":
            tries.over_capacity += 1
        tries.failures.append(f"{event.code}: {event.message}")

    def cancel(self, session: ProviderSession, request_id: str) -> None:
        if session.closed:
            return

        async def send() -> None:
            try:
                await session.send(Cancel(request_id))
            except Exception:  # noqa: BLE001 - the provider may be gone already
                pass

        asyncio.create_task(send())

    def receipt_ok(self, session: ProviderSession, request_id: str, model: str, payload: Payload,
                    done: Done, text: str) -> bool:
        try:
            problem = receipt_problem(session, request_id, model, payload, done, text, self.check_signature())
        except Exception as exc:  # noqa: BLE001 - whatever its values break, it is the provider's failure
            problem = f"receipt could not be checked ({type(exc).__name__})"
        if problem:
            self.hub.disconnect(session, "bad_receipt", problem)
            return False
        return True

    # ------------------------------------------------------------ non-streaming, with hedging

    async def complete(self, request_id: str, model: str, payload: Payload, deadline: float,
                       route: RouteOptions = DEFAULT_ROUTE,
                       serving: list[ProviderSession] | None = None, lane_after_s: float | None = None) -> Outcome:
        """`serving`: the request's serving set if the caller looked it up already (`router.serving`).
        `lane_after_s`: a fallback lane could take this request. When the hedge is due and no other
        provider can take the copy, the lane is the hedge: once this many seconds have passed since
        the start (the streams' first-token budget), `PoolStalled` hands the request to it instead of
        waiting for the deadline."""
        tries = Tries()
        running: dict[asyncio.Task[Outcome | None], ProviderSession] = {}
        # Copies on providers that never answered us, raced beside a proven one's
        # (`router.needs_companion`), and those companions: neither was late, so the loser of
        # such a race is not judged by it; a trial that loses runs on to its own verdict.
        trials: set[asyncio.Task[Outcome | None]] = set()
        companions: set[asyncio.Task[Outcome | None]] = set()
        hedged = not self.settings.hedging
        started = time.monotonic()
        lane_at: float | None = None  # when the lane takes over (set once the hedge found nobody)
        try:
            async with asyncio.timeout_at(loop_deadline(deadline)):
                while True:
                    if len(running) == len(trials):  # nothing but trials running (or nothing at all)
                        if tries.tried:
                            note_routing("failover")  # the last provider failed: another one tries
                        session = self.pick(request_id, model, payload, tries, route, stream=False,
                                            serving=serving)
                        other = self._companion(request_id, model, payload, tries, route) \
                            if self.router.needs_companion(session) else None
                        if other is None:
                            running[self._start(session, request_id, model, payload, deadline, tries)] = session
                        elif not self.router.trials.may_start():
                            # Past the trials' rate: the proven provider alone (the new one gets no copy).
                            self.router.on_abandoned(session, request_id)
                            running[self._start(other, request_id, model, payload, deadline, tries)] = other
                        else:
                            note_routing("trial")
                            companion = self._start(other, request_id, model, payload, deadline, tries)
                            running[companion] = other
                            companions.add(companion)
                            task = self._start_trial(session, request_id, model, payload, deadline, tries,
                                                     after=companion)
                            running[task] = session
                            trials.add(task)
                    wait_s = None
                    if not hedged and len(running) - len(trials) == 1:
                        (first_session,) = (s for t, s in running.items() if t not in trials)
                        wait_s = self.router.hedge_delay(first_session, model, payload, route)
                        if wait_s is not None:
                            # Leave a second copy half of the time that is left, whatever the estimate.
                            left = deadline - time.monotonic()
                            wait_s = min(wait_s, max(self.settings.hedge_min_s, left / 2))
                    elif lane_at is not None:
                        wait_s = max(0.0, lane_at - time.monotonic())
                    finished, _ = await asyncio.wait(running, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                    if not finished:
                        if lane_at is not None:
                            raise PoolStalled(f"no answer from the pool within {lane_after_s:.1f}s and no other "
                                              "provider to hedge on")
                        hedged = True  # slower than expected: send a second copy elsewhere
                        try:
                            session = self.choose(request_id, model, payload, tries, route, stream=False, hedge=True)
                        except errors.GpupoolError:
                            if lane_after_s is not None:
                                lane_at = started + lane_after_s  # the lane is the hedge
                            continue  # nobody else to ask: keep waiting for the first
                        note_routing("hedge")
                        if self.router.needs_companion(session) and any(
                                self.router.record(s.node_id).proven for s in running.values()):
                            # Only new providers were left to hedge on: the copy is a trial too (judged
                            # by its own answer, one at a time), the late proven copy its rival.
                            note_routing("trial")
                            task = self._start_trial(session, request_id, model, payload, deadline, tries)
                            trials.add(task)
                        else:
                            task = self._start(session, request_id, model, payload, deadline, tries)
                        running[task] = session
                        continue
                    for task in finished:
                        running.pop(task)
                        trials.discard(task)
                        outcome = task.result()  # re-raises client faults and timeouts
                        if outcome is not None:
                            outcome.attempts = len(tries.tried)
                            self.judge_client_faults(tries, request_id, model, payload)
                            for other, other_session in list(running.items()):
                                if other in trials:  # the new provider still owes its own answer
                                    running.pop(other)
                                    self._judge_later(other)
                                    continue
                                if other not in companions:
                                    # Slower than its own expected percentile: counts against it,
                                    # so a provider that stalls opens its breaker.
                                    self.router.on_failure(other_session, request_id, "lost a hedge race",
                                                           lost_race=True)
                                other.cancel()
                            return outcome
        except TimeoutError:
            raise errors.Timeout(f"no answer for {model!r} before the deadline") from None
        finally:
            for task in running:
                task.cancel()

    def _companion(self, request_id: str, model: str, payload: Payload, tries: Tries,
                   route: RouteOptions, stream: bool = False,
                   serving: list[ProviderSession] | None = None) -> ProviderSession | None:
        """A proven provider to race a new one's copy, or None (nobody proven can take it: the new one
        serves alone, hedged as usual)."""
        try:
            return self.choose(request_id, model, payload, tries, route, stream=stream, serving=serving,
                               companion=True)
        except errors.GpupoolError:
            return None

    def stand_in(self, session: ProviderSession, request_id: str, model: str, payload: Payload, deadline: float,
                 tries: Tries, route: RouteOptions) -> ProviderSession:
        """Who serves a stream just picked `session`: `session` itself once it has answered us, else a
        proven provider if one can take it. A stream is not raced (its first token commits it to one
        provider, and a Sybil picked for it would cost it the first-token budget), so the new provider
        gets a non-streamed copy as its trial instead: judged by its own answer like a raced trial's
        (`_judge_later`), never sent to the client and never charged. A provider already on trial gets
        no second copy; where nobody proven can take the stream the new one serves it alone."""
        if not self.router.needs_companion(session):
            return session
        other = self._companion(request_id, model, payload, tries, route, stream=True)
        if other is None:
            return session
        if session.node_id in self.router.trials or not self.router.trials.may_start():
            # Picked only for want of others, or past the trials' rate: no copy sent.
            self.router.on_abandoned(session, request_id)
        else:
            note_routing("trial")
            self._judge_later(self._start_trial(session, request_id, model, payload, deadline, tries))
        return other

    def _start_trial(self, session: ProviderSession, request_id: str, model: str, payload: Payload,
                     deadline: float, tries: Tries, after: asyncio.Task[Outcome | None] | None = None,
                     ) -> asyncio.Task[Outcome | None]:
        """A new provider's copy: it owes an answer by the request's deadline, whoever wins the race
        (a provider that sits on work fails it then, at no cost to the client). `after`: the proven
        companion's copy; the trial is sent once that answered (or failed), or `hedge_min_s` passed,
        so its send and the checks of its answer are off the client's path (bench/scale: a trial
        request's own gateway work was most of the tail at 10,000 new providers)."""
        async def trial() -> Outcome | None:
            if after is not None:
                try:
                    await asyncio.wait({after}, timeout=min(self.settings.hedge_min_s,
                                                            max(0.0, deadline - time.monotonic())))
                except asyncio.CancelledError:
                    self.router.on_abandoned(session, request_id)  # never sent: no verdict, no backlog kept
                    raise
            try:
                async with asyncio.timeout_at(loop_deadline(deadline)):
                    return await self._attempt(session, request_id, model, payload, deadline, tries)
            except TimeoutError:
                self.router.on_failure(session, request_id, "no answer before the request's deadline")
                return None
            except errors.Timeout:  # its own Fail (deadline_exceeded), counted: the companion may still answer
                return None

        self.router.trials.begin(session.node_id)
        task = asyncio.create_task(trial())
        task.add_done_callback(lambda _: self.router.trials.end(session.node_id))
        return task

    def _judge_later(self, task: asyncio.Task[Outcome | None]) -> None:
        """A trial whose request another copy answered runs on: its answer proves the provider and
        measures it (`_attempt`), its silence until the deadline opens its breaker. Its answer is
        never the client's and is never charged (the client pays once, for the answer it got)."""
        self._judging.add(task)
        task.add_done_callback(_settle_judged(self._judging))

    def _start(self, session: ProviderSession, request_id: str, model: str, payload: Payload,
               deadline: float, tries: Tries) -> asyncio.Task[Outcome | None]:
        return asyncio.create_task(self._attempt(session, request_id, model, payload, deadline, tries))


def _settle_judged(judging: set[asyncio.Task[Outcome | None]]) -> Callable[[asyncio.Task[Outcome | None]], None]:
    def done(task: asyncio.Task[Outcome | None]) -> None:
        judging.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a refusal or Fail nobody waits for is only the trial's verdict
    return done


def deadline_ms(deadline: float) -> int:
    return max(1, int((deadline - time.monotonic()) * 1000))


def loop_deadline(deadline: float) -> float:
    # `deadline` is time.monotonic(); the event loop clock is monotonic too but may differ.
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())
