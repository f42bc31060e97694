"""Wires the pure routing policy (`gpupool.routing`) to live provider sessions.

The dispatcher owns one `LiveRouter`. It keeps what routing learns about each provider
(measured speed per model, circuit breaker) keyed by node id, so it survives
reconnects; builds `Candidate` snapshots for `routing.pick_with_reasons`; and turns
outcomes into observations (`routing.speed.observe`, `routing.breaker.*`). Every
decision is made by the pure functions that the simulator also runs; this class
only holds state and translates.

It reads the pool from the hub (who offers a model) and what trust says of each
provider from a `TrustView` handed to it (suspended, held back, reputation, proven
hardware), so routing never reaches into the auditor or the hardware checks.

A request's work does not grow with the pool: `serving` takes the model's sessions from
the hub's index in one lookup and, where more than `route_sample` serve it, draws a
random sample of that many (power-of-k choices, as `routing.policy` does); `shortlist`
keeps the `hold_candidates` best of them for this request, whose prices its hold covers.
A failover past them draws again among providers no dearer (`Tries.serving`).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Container

from gpupool import errors
from gpupool.config import GatewaySettings
from gpupool.gateway.dispatch.proven_sessions import ProvenSessions, Trials
from gpupool.gateway.dispatch.provider_record import ProviderRecord, TrustView
from gpupool.gateway.dispatch.tries import Tries
from gpupool.gateway.edge.image_inputs import reads_images
from gpupool.gateway.payload_size import PayloadSize, image_count
from gpupool.gateway.peers.hub import Hub
from gpupool.gateway.peers.model_index import Serving
from gpupool.gateway.peers.session import ProviderSession
from gpupool.protocol import Done, EmbedPayload, GeneratePayload, ModelOffer, Payload
from gpupool.routing import (
    BreakerConfig,
    Candidate,
    RouteRequest,
    RoutingWeights,
    SpeedEstimate,
    SpeedSample,
    hedge_delay_s,
    observe,
)
from gpupool.routing import breaker as breakers

# Looked up at each pick, not bound here: the simulator calls the same attribute, so a
# policy swapped in `gpupool.routing.policy` changes both (tests/integration/test_sim_live.py).
from gpupool.routing import policy as routing_policy
from gpupool.routing.options import RouteOptions
from gpupool.routing.priors import AnswerLengths, SpeedPriors
from gpupool.routing.speed import hardware_speed

GFLOPS_REFRESH_S = 2.0  # how often the pool's median proven compute is recomputed (reads every session)
# Past this many speed/breaker records, those of providers not connected are dropped.
MAX_ROUTER_RECORDS = 10_000
# The pool's proven compute is the median of at most this many sessions, drawn at random beyond
# it (profiled at 1,000 providers: reading every session's proof was a large part of a refresh).
GFLOPS_SAMPLE = 1000


class LiveRouter:
    def __init__(self, hub: Hub, settings: GatewaySettings, trust: TrustView = TrustView()):
        self.hub = hub
        self.settings = settings
        self.trust = trust
        self.priors = SpeedPriors(RoutingWeights())
        self.lengths = AnswerLengths()
        self.breaker_config = BreakerConfig(failure_threshold=settings.breaker_failures,
                                            cooldown_s=settings.breaker_cooldown_s)
        self._unproven_breaker = dataclasses.replace(self.breaker_config, failure_threshold=1)
        self.records: dict[str, ProviderRecord] = {}
        self._gflops_at = 0.0
        self._pool_gflops = 0.0  # median verified GFLOP/s of connected providers; 0 = none proved
        self.rng = random.Random()
        # Node id -> its session's last_seen when it was found silent (dispatch/stalls.py): routing
        # skips it until a newer frame arrives. Only connected nodes: dropped when they leave.
        self.silent: dict[str, float] = {}
        # Trials running per node: requests sent to it while it had never answered us, raced beside a
        # proven provider's copy (`needs_companion`). One at a time: while one runs, routing passes it
        # over if anyone else can take the request; new ones start at most `trials_per_s`.
        self.trials = Trials(settings.trials_per_s, settings.trial_share)
        self.proven = ProvenSessions()  # per model, the connected sessions of providers that answered us

    def serving(self, model: str, within: tuple[int, int] | None = None, images: bool = False) -> Serving:
        """Who may take a request for `model` now: a request looks this up once, at its start.
        `images`: only providers whose offer reads images (one from before images ignores them).

        A pool of at most `route_sample` sessions is taken whole; a bigger one is sampled (open,
        not draining, not suspended; held-back ones only if no other was drawn), and scanned
        whole only if no draw was eligible. `within`: only offers at most these (in, out) prices.
        While no trial may start (`Trials`), the sample is drawn from proven providers if any can take it."""
        pool = self.hub.index.pools.get(model)
        if pool is None:
            return Serving((), model, None)
        sessions, k = pool.sessions, max(1, self.settings.route_sample)
        if len(sessions) > k:
            if not self.trials.could_start() and (proven := self.proven.of(model)):
                # No trial may start now, so a new provider drawn would get no copy (`Dispatcher.pick`):
                # draw among the proven ones, and the request's hold and choice look at them only
                # (just after 10,000 fresh keys join, a draw of the whole pool is nearly all new).
                ready, _ = self._draw(proven, model, k, within, images)
                if ready:
                    return Serving(ready, model, pool)
            ready, held = self._draw(sessions, model, k, within, images)
            if ready:
                return Serving(ready, model, pool)
            # Nothing drawn can take work now: scan for one that can (rare), else keep the held ones.
            now = time.monotonic()
            eligible = self._eligible(sessions, model, within, images)
            return Serving([s for s in eligible if self._takes_work(s, now)] or held or eligible, model, pool)
        return Serving(self._eligible(sessions, model, within, images), model, pool)

    def serving_all(self, model: str) -> Serving:
        """Every session trust lets serve `model` (batches plan shards over the whole pool)."""
        pool = self.hub.index.pools.get(model)
        return Serving(self._eligible(pool.sessions, model, None, False) if pool else (), model, pool)

    def _eligible(self, sessions: list[ProviderSession], model: str, within: tuple[int, int] | None,
                  images: bool) -> list[ProviderSession]:
        trust = self.trust
        live = [s for s in sessions if not trust.is_suspended(s.node_id) and _fits(s, model, within, images)]
        ready = [s for s in live if not trust.is_held_back(s.node_id)]
        return ready or live

    def _draw(self, sessions: list[ProviderSession], model: str, k: int, within: tuple[int, int] | None,
              images: bool) -> tuple[list[ProviderSession], list[ProviderSession]]:
        trust, n, rand = self.trust, len(sessions), self.rng.random
        now = time.monotonic()
        ready: list[ProviderSession] = []
        held: list[ProviderSession] = []
        seen: set[int] = set()
        for _ in range(4 * k):
            i = int(rand() * n)
            if i in seen:
                continue
            seen.add(i)
            s = sessions[i]
            if s.closed or s.draining or trust.is_suspended(s.node_id) or not _fits(s, model, within, images):
                continue
            # Open breakers and silent sessions wait with the held-back ones: a sample filled with
            # providers that cannot take the request (20 Sybils that sat on work, say) refused it
            # while honest ones were free.
            (held if trust.is_held_back(s.node_id) or not self._takes_work(s, now) else ready).append(s)
            if len(ready) >= k:
                break
        return ready, held

    def _proven_in(self, model: str, within: tuple[int, int] | None, images: bool,
                   tried: Container[str]) -> list[ProviderSession]:
        """Eligible sessions of `model` that answered us before and are not in `tried`: at most
        `route_sample` of them, drawn at random from the proven ones (`ProvenSessions`), so a
        request whose first copy goes to a new provider finds its companion without walking the
        pool. All proven ones are still found: a pool of fresh keys cannot hide the few honest
        ones from the draw."""
        proven = self.proven.of(model)
        k = max(1, self.settings.route_sample)
        if len(proven) > k:
            trust = self.trust
            ready = [s for s in self.rng.sample(proven, min(len(proven), 4 * k))
                     if s.node_id not in tried and not trust.is_suspended(s.node_id)
                     and not trust.is_held_back(s.node_id) and _fits(s, model, within, images)]
            if ready:
                return ready[:k]
        # None ready in the draw: all of them, as before.
        return self._eligible([s for s in proven if s.node_id not in tried], model, within, images)

    def _takes_work(self, session: ProviderSession, now: float) -> bool:
        """Its breaker lets a request through now, it has not gone silent and is not on trial."""
        rec = self.records.get(session.node_id)
        return ((rec is None or breakers.allows(rec.breaker, now)) and not self.is_silent(session)
                and session.node_id not in self.trials)

    def shortlist(self, serving: Serving, model: str, payload: Payload, options: RouteOptions,
                  stream: bool) -> Serving:
        """The `hold_candidates` best of the request's serving set for this request (the hold covers
        their prices; the first pick and a hedge come from them). Unchanged if none is eligible, so the
        choice explains why."""
        k = self.settings.hold_candidates
        if k <= 0 or len(serving) <= k:
            return serving
        now = time.monotonic()
        weights = self._weights(model, now)
        request = self.route_request(model, payload, options, stream, ranking=True)
        best = routing_policy.rank([self.candidate(s, model, weights) for s in serving], now, request=request,
                                   weights=weights, k=k)
        if not best:
            return serving
        by_id = {s.node_id: s for s in serving}
        return Serving([by_id[c.provider_id] for c in best], model, serving.pool)

    def forget_if_crowded(self, _left: ProviderSession) -> None:
        """A provider left (hub listener): past the bound, forget what was learned about absent nodes,
        since fresh keys cost nothing."""
        self.silent.pop(_left.node_id, None)
        self.proven.remove(_left)
        if len(self.records) > MAX_ROUTER_RECORDS:
            for node_id in [n for n in self.records if n not in self.hub.sessions]:
                del self.records[node_id]
                self.priors.forget(node_id)

    def on_join(self, session: ProviderSession) -> None:
        """A provider that answered us before came back (hub listener): a companion may be drawn from it."""
        rec = self.records.get(session.node_id)
        if rec is not None and rec.proven:
            self.proven.add(session)

    def record(self, node_id: str) -> ProviderRecord:
        rec = self.records.get(node_id)
        if rec is None:
            rec = self.records[node_id] = ProviderRecord()
        return rec

    # ------------------------------------------------------------ snapshots

    def route_request(self, model: str, payload: Payload, options: RouteOptions, stream: bool,
                      ranking: bool = False) -> RouteRequest:
        """`ranking`: time estimates assume the model's typical answer length (`priors.AnswerLengths`), not
        max_tokens; hedge and stall timers pass False."""
        size = PayloadSize.of(payload)  # ~4 characters per token: a routing estimate only; usage comes from the receipt
        return RouteRequest(model, "embeddings" if size.embeddings else "generate",
                            input_tokens=size.tokens_estimate, max_output_tokens=size.max_output,
                            items=size.items if size.embeddings else 1, max_price=options.max_price,
                            region=options.region, region_policy=options.region_policy,  # type: ignore[arg-type]
                            stream=stream,
                            expected_output_tokens=self.lengths.typical(model) if ranking and not size.embeddings
                            else None)

    def candidate(self, session: ProviderSession, model: str, weights: RoutingWeights | None = None) -> Candidate:
        rec = self.record(session.node_id)
        if weights is None:
            weights = self._weights(model, time.monotonic())
        offer = session.models[model]
        speed = rec.speed.get(model)
        # A measured speed replaces any claim (`routing.estimate`): a measured provider's claim is not
        # even looked up (most of the draws in a big pool that has served a while).
        claimed = None if speed is not None and speed.samples > 0 else self._claimed(session, offer, weights)
        load = session.load
        return Candidate(
            provider_id=session.node_id,
            in_flight=len(session.channels),
            max_concurrency=session.offer.max_concurrency,
            draining=session.draining or session.closed or self.is_silent(session),
            region=session.offer.region,
            rtt_s=session.rtt_s,
            # Work the provider holds beyond ours (e.g. other gateways'), from its load report.
            queued=max(0, load.in_flight + load.queued - len(session.channels)) if load else 0,
            backlog_s=rec.backlog_s if rec.pending else None,
            price_in=offer.price_in,
            price_out=offer.price_out,
            reputation=self.trust.reputation_of(session.node_id),
            speed=speed,
            claimed_speed=claimed,
            breaker=rec.breaker,
        )

    def _claimed(self, session: ProviderSession, offer: ModelOffer,
                 weights: RoutingWeights) -> SpeedEstimate | None:
        """What to assume of an unmeasured provider: its offer's claim, which counts (capped) only once
        it proved hardware; else, with no claim, clearly more proven compute than the pool's."""
        if (offer.claimed_decode_tps or offer.claimed_items_per_s or offer.claimed_prefill_tps) \
                and self.trust.hardware_verified(session.node_id):
            return SpeedEstimate(prefill_tps=offer.claimed_prefill_tps, decode_tps=offer.claimed_decode_tps,
                                 items_per_s=offer.claimed_items_per_s)
        if self._pool_gflops > 0 and (gflops := self.trust.hardware_gflops(session.node_id)):
            return hardware_speed(weights.prior_speed, gflops / self._pool_gflops, weights.max_claim_factor)
        return None

    # ------------------------------------------------------------ choice

    def choose(self, request_id: str, model: str, payload: Payload, now: float, rng: random.Random,
               options: RouteOptions, tries: Tries, stream: bool,
               serving: list[ProviderSession] | None = None, hedge: bool = False,
               companion: bool = False) -> ProviderSession:
        """`serving`: the request's serving set, looked up once at its start (`serving(model)`, narrowed
        by `shortlist`); later tries (failover, hedge, a continued stream) take its untried ones first,
        then draw again among providers whose prices its hold covers (`Tries.serving`). `hedge`: a copy
        for a request that one provider is sitting on goes to a provider that has answered before, if
        any can take it (a new one is as likely to be one more that sits on work). `companion`: such a
        copy or none (NoProvider), for a request whose first copy went to a provider on trial."""
        if serving is not None and tries.serving is None:
            tries.serving = serving
        first = tries.serving
        # A provider with a trial running waits for its verdict while anyone else can serve (20 fresh
        # keys that sit on work would otherwise each be handed a request per pick); draws hold it back too.
        trials = self.trials
        untried = [s for s in first if s.node_id not in tries.tried and not s.closed and s.node_id not in trials] \
            if first is not None else []
        if untried:
            sessions = untried
        else:
            within = first.price_cap() if isinstance(first, Serving) else None
            sessions = self.serving(model, within, images=image_count(payload) > 0)
            if trials:
                sessions = [s for s in sessions if s.node_id not in trials] or sessions
        hedge = hedge or companion
        if hedge:
            proven = [s for s in sessions if self.record(s.node_id).proven and s.node_id not in tries.tried]
            if not proven:  # none in the request's own set: any in the pool its hold covers
                within = first.price_cap() if isinstance(first, Serving) else None
                proven = self._proven_in(model, within, image_count(payload) > 0, tries.tried)
            if companion and not proven:
                raise errors.NoProvider("no provider that answered before can race a new one")
            sessions = proven or sessions
        if not sessions and not tries.tried:
            if model in self.hub.known_models:
                raise errors.NoProvider(f"no provider is serving {model!r} right now; retry later")
            raise errors.ModelNotFound(f"The model {model!r} does not exist", param="model")
        if options.require_verified and not self.hub.model_verified(model):
            raise errors.NoProvider(f"{model!r} is not verified: no admitted checker audits it now, and the "
                                    "request requires verified models (gpupool.require_verified)",
                                    param="gpupool.require_verified", code="model_not_verified")
        weights = self._weights(model, now)
        by_id = {s.node_id: s for s in sessions}
        request = self.route_request(model, payload, options, stream, ranking=True)
        decision = routing_policy.pick_with_reasons([self.candidate(s, model, weights) for s in sessions], now, rng,
                                                    tries.tried, request=request, weights=weights)
        if decision.choice is None and untried:
            # The request's own set cannot take it now (e.g. breakers open): others its hold covers may.
            within = first.price_cap() if isinstance(first, Serving) else None
            sessions = self.serving(model, within, images=image_count(payload) > 0)
            by_id = {s.node_id: s for s in sessions}
            decision = routing_policy.pick_with_reasons([self.candidate(s, model, weights) for s in sessions], now,
                                                        rng, tries.tried, request=request, weights=weights)
        if decision.choice is None:
            constrained = {k: v for k, v in decision.excluded.items() if k in ("price", "region")}
            if constrained and not tries.tried:
                param = "max_price" if "price" in constrained else "region"
                raise errors.NoProvider(f"no provider for {model!r} meets the request's constraints: "
                                        f"{decision.explain()}", param=param, code="no_provider_within_limits")
            raise tries.error(model, decision.explain())
        session = by_id[decision.choice.provider_id]
        rec = self.record(session.node_id)
        if decision.probe:
            rec.breaker = breakers.on_dispatch(rec.breaker, now, self.breaker_config)
        busy = len(session.channels) + (decision.choice.queued or 0) >= session.offer.max_concurrency
        service = decision.service_s or 0.0
        rec.pending[request_id] = (service, busy)
        rec.backlog_s += service
        return session

    def _weights(self, model: str, now: float) -> RoutingWeights:
        """Routing weights for `model` (its speed prior: `routing.priors`), with the pool's proven compute fresh."""
        if now - self._gflops_at >= GFLOPS_REFRESH_S:
            self._gflops_at = now
            self._refresh_gflops()
        return self.priors.weights(model, now)

    def _refresh_gflops(self) -> None:
        sessions = list(self.hub.sessions.values())
        if len(sessions) > GFLOPS_SAMPLE:
            sessions = self.rng.sample(sessions, GFLOPS_SAMPLE)
        proven = sorted(g for s in sessions if (g := self.trust.hardware_gflops(s.node_id)))
        self._pool_gflops = proven[len(proven) // 2] if proven else 0.0

    def _settle(self, session: ProviderSession, request_id: str) -> bool:
        rec = self.record(session.node_id)
        service, busy = rec.pending.pop(request_id, (0.0, False))
        rec.backlog_s = max(0.0, rec.backlog_s - service) if rec.pending else 0.0
        return busy

    # ------------------------------------------------------------ observations

    def on_success(self, session: ProviderSession, request_id: str, model: str, payload: Payload, done: Done,
                   elapsed_s: float, first_token_s: float | None = None) -> None:
        now = time.monotonic()
        waited = self._settle(session, request_id)
        rec = self.record(session.node_id)
        rec.breaker = breakers.record_success(rec.breaker, now)
        rec.proven = True
        self.proven.add(session)  # O(1) once it is there
        usage = done.receipt.usage
        if isinstance(payload, EmbedPayload):
            sample = SpeedSample(elapsed_s, rtt_s=session.rtt_s or 0.0, items=len(payload.inputs), waited=waited)
        else:
            sample = SpeedSample(elapsed_s, rtt_s=session.rtt_s or 0.0, first_token_s=first_token_s,
                                 input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                                 waited=waited)
        rec.speed[model] = estimate = observe(rec.speed.get(model), sample, now)
        if not isinstance(payload, EmbedPayload):
            self.lengths.observed(model, usage.completion_tokens)
        self.priors.measured(model, session.node_id, estimate, now)

    def on_failure(self, session: ProviderSession, request_id: str, reason: str, *, counts: bool = True,
                   lost_race: bool = False) -> None:
        """A failed try; `counts=False` for load-related refusals that say nothing about health;
        `lost_race`: it was still working when a hedge's copy answered first."""
        self._settle(session, request_id)
        if not counts:
            return
        rec = self.record(session.node_id)
        # A provider that never answered us gets no run of failures: its first opens the breaker
        # (fresh keys are free, and each of 20 Sybils that sit on work cost five requests before).
        # Not for a lost race: a new honest provider slower than the pool's instant cheaters loses
        # races until measured, and one race lost must not shut it out (tests/integration/test_redteam.py).
        config = self.breaker_config if rec.proven or lost_race else self._unproven_breaker
        rec.breaker = breakers.record_failure(rec.breaker, time.monotonic(), config)
        rec.last_failure = reason

    def on_abandoned(self, session: ProviderSession, request_id: str) -> None:
        """We stopped waiting (client gone, deadline, another copy won): no verdict on the provider."""
        self._settle(session, request_id)

    # ------------------------------------------------------------ trials

    def needs_companion(self, session: ProviderSession) -> bool:
        """Whether a request just sent to `session` should be raced by a copy on a proven provider from
        the start: `session` never answered us (fresh keys are free: a Sybil that sits on work would
        cost its request a hedge delay). The new provider still gets its request and is judged by its
        own answer (`Dispatcher` lets it finish after the copy won); the client waits for neither. A
        stream goes to the proven provider alone, the new one getting a non-streamed trial copy
        (`Dispatcher.stand_in`)."""
        return not self.record(session.node_id).proven

    # ------------------------------------------------------------ silence

    def mark_silent(self, session: ProviderSession) -> None:
        self.silent[session.node_id] = session.last_seen

    def is_silent(self, session: ProviderSession) -> bool:
        """Found silent and not heard from since (any frame, a Pong included, lifts it)."""
        marked = self.silent.get(session.node_id)
        if marked is None:
            return False
        if session.last_seen > marked or session.closed:
            del self.silent[session.node_id]
            return False
        return True

    # ------------------------------------------------------------ timing decisions

    def token_gap(self, session: ProviderSession, model: str) -> float | None:
        """Seconds between tokens this provider was measured at for `model` (None: not measured)."""
        speed = self.record(session.node_id).speed.get(model)
        if speed is None or speed.samples == 0 or speed.decode_tps <= 0:
            return None
        return 1.0 / speed.decode_tps

    def hedge_delay(self, session: ProviderSession, model: str, payload: Payload, options: RouteOptions) -> float | None:
        request = self.route_request(model, payload, options, stream=False)
        weights = self._weights(model, time.monotonic())
        candidate = self.candidate(session, model, weights)
        delay = hedge_delay_s(candidate, request, self.settings.hedge_percentile, weights, self.settings.hedge_min_s)
        if delay is not None and not self.record(session.node_id).proven:
            # No benefit of the doubt for a provider that never answered us: hedge once it is slower
            # than expected (a Sybil that sits on work costs its request this much, not the
            # 95th percentile of a spread it never showed).
            delay = min(delay, hedge_delay_s(candidate, request, 0.5, weights, self.settings.hedge_min_s) or delay)
        return delay

    def first_byte_limit(self, session: ProviderSession, model: str, payload: Payload, options: RouteOptions) -> float:
        """How long to wait for a stream's first chunk before calling the provider stalled."""
        if isinstance(payload, GeneratePayload):
            request = self.route_request(model, payload, options, stream=False)
            request = RouteRequest(model, "generate", input_tokens=request.input_tokens, max_output_tokens=1)
            weights = self._weights(model, time.monotonic())
            expected = hedge_delay_s(self.candidate(session, model, weights), request, 0.999, weights, 1.0)
            if expected is not None:
                return min(self.settings.first_byte_timeout_s, max(2.0, 4 * expected))
        return self.settings.first_byte_timeout_s


def _fits(session: ProviderSession, model: str, within: tuple[int, int] | None, images: bool = False) -> bool:
    """Whether `session`'s offer of `model` is at most `within`'s (in, out) prices (None: any) and,
    with `images`, reads images."""
    if within is None and not images:
        return True
    offer = session.models.get(model)
    if offer is None or (images and not reads_images(offer)):
        return False
    return within is None or (offer.price_in <= within[0] and offer.price_out <= within[1])
