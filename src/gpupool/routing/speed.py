"""Learned service speed and smoothed round-trip time, one provider and model at a time.

The gateway (or the simulator) measures every answer it gets and folds the
measurement into a `SpeedEstimate`; the estimate is a plain immutable value that
the caller stores next to the provider and hands to routing in `Candidate.speed`:

    from gpupool.routing.speed import SpeedSample, observe, smooth_rtt

    # after a streamed chat answer: dispatch→first chunk 0.41 s, dispatch→done 3.2 s
    est = observe(est, SpeedSample(elapsed_s=3.2, first_token_s=0.41, rtt_s=0.03,
                                   input_tokens=512, output_tokens=180), now)
    # after an embeddings answer for 16 inputs
    est = observe(est, SpeedSample(elapsed_s=0.25, rtt_s=0.03, items=16), now)
    rtt = smooth_rtt(rtt, 0.034)        # from a ping/pong

Why these choices:
- Speeds are averaged as *seconds per unit* (1/tps), not as tokens per second,
  because routing predicts times, and averaging rates over-weights tiny requests
  whose timings are mostly noise.
- The average is an EWMA whose old weight also decays with age (half-life), so a
  provider that changed (new GPU, got busy with local work) is re-learned quickly
  and a long-idle estimate does not dominate the first new sample.
- A provider's *claimed* speed (from its offer) never enters this average: routing
  uses a claim only while no measurement exists (see `estimate.effective_speed`),
  so the first real sample replaces it and a provider that lied loses traffic.
- Each estimate also tracks how wrong its predictions were (log of actual/predicted
  time); hedging uses that spread to pick a percentile of the expected time.
- Times are measured by the gateway, never taken from the provider's word.
  Samples of requests that had to queue at the provider (`waited=True`) are
  skipped: queueing is predicted separately from load, and counting it as slowness
  too would make busy providers look slow twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from gpupool.frozen_records import builder

# Below this a measured duration is timer noise, not speed: clamp to avoid absurd rates.
MIN_SECONDS = 1e-3
# Before any measurement splits prefill from decode, assume prefill is this many
# times faster per token than decode (typical for transformer serving).
PREFILL_TO_DECODE = 20.0
# Spread of log(actual/predicted) assumed until a provider has a track record.
DEFAULT_LOG_SIGMA = 0.5


@dataclass(frozen=True, slots=True)
class SpeedEstimate:
    """What we believe one provider does for one model. 0.0 means "not known"."""

    prefill_tps: float = 0.0  # input tokens per second (generation)
    decode_tps: float = 0.0  # output tokens per second, per request (generation)
    items_per_s: float = 0.0  # embedding inputs per second
    samples: int = 0  # measurements folded in; 0 for a bare claim
    updated_at: float = 0.0  # `now` of the last sample
    # Prediction error in log space: mean and variance of log(actual / predicted).
    log_err_mean: float = 0.0
    log_err_var: float = DEFAULT_LOG_SIGMA**2

    @property
    def log_err_sigma(self) -> float:
        return math.sqrt(max(self.log_err_var, 0.0))

    def generate_seconds(self, input_tokens: int, output_tokens: int) -> float | None:
        """Service time for a generation of this size, or None if the speed is unknown."""
        if self.prefill_tps <= 0 or self.decode_tps <= 0:
            return None
        return input_tokens / self.prefill_tps + output_tokens / self.decode_tps

    def embed_seconds(self, items: int) -> float | None:
        if self.items_per_s <= 0:
            return None
        return items / self.items_per_s


@dataclass(frozen=True, slots=True)
class SpeedSample:
    """One answer as the gateway saw it. Times run from sending the request."""

    elapsed_s: float  # until the answer was complete
    rtt_s: float = 0.0  # smoothed RTT to this provider, subtracted from the times
    first_token_s: float | None = None  # until the first streamed chunk (streaming only)
    input_tokens: int = 0
    output_tokens: int = 0
    items: int = 0  # embedding inputs; > 0 marks an embeddings sample
    # The request was sent while every slot of the provider was busy (in flight +
    # queued >= concurrency), so its times include queueing, not just speed:
    # `observe` ignores it. Without this, busy providers look slow and a fast
    # provider's prefill (a small part of the time) is wildly underestimated.
    waited: bool = False


@dataclass(frozen=True, slots=True)
class SpeedConfig:
    alpha: float = 0.2  # weight of a new sample when the old estimate is fresh
    half_life_s: float = 300.0  # the old estimate's weight halves every this many seconds
    err_alpha: float = 0.1  # weight of a new sample in the prediction-error statistics


DEFAULT_SPEED_CONFIG = SpeedConfig()
# `SpeedEstimate(...)` with every field, positional, ~4x cheaper than the frozen __init__
# (gpupool/frozen_records.py): `observe` builds one per answer, in the gateway and the simulator.
_estimate = builder(SpeedEstimate)
_UNMEASURED = SpeedEstimate()  # immutable: one shared "nothing measured yet" (a first sample's base)


def observe(
    prev: SpeedEstimate | None, sample: SpeedSample, now: float,
    config: SpeedConfig = DEFAULT_SPEED_CONFIG,
) -> SpeedEstimate:
    """Fold one measured answer into the estimate; returns a new estimate.

    `prev` is the *measured* estimate (None or samples == 0 means none yet: the
    sample then becomes the estimate outright).
    """
    if sample.waited:
        return prev if prev is not None else _UNMEASURED
    fresh = prev is None or prev.samples <= 0
    # Nothing unmeasured (e.g. a claim passed in by mistake) survives the first sample.
    base = _UNMEASURED if fresh or prev is None else prev
    old_w = 0.0 if fresh else _old_weight(base, now, config)
    service = max(sample.elapsed_s - sample.rtt_s, MIN_SECONDS)

    if sample.items > 0:
        predicted = None if fresh else base.embed_seconds(sample.items)
        items_spu = _blend(_inv(base.items_per_s), service / sample.items, old_w)
        # The new speeds as plain numbers (no intermediate estimate: this runs per answer).
        prefill_tps, decode_tps, items_per_s = base.prefill_tps, base.decode_tps, 1.0 / items_spu
    else:
        p_spu, d_spu = _generate_spu(base, sample, service, fresh)
        if p_spu is None and d_spu is None:
            return base  # nothing measurable (no tokens): keep what we had
        predicted = None if fresh else base.generate_seconds(sample.input_tokens, sample.output_tokens)
        prefill = _blend(_inv(base.prefill_tps), p_spu, old_w) if p_spu else _inv(base.prefill_tps)
        decode = _blend(_inv(base.decode_tps), d_spu, old_w) if d_spu else _inv(base.decode_tps)
        prefill_tps, decode_tps, items_per_s = _inv(prefill), _inv(decode), base.items_per_s

    mean, var = base.log_err_mean, base.log_err_var
    if predicted is not None and predicted > 0:
        err = math.log(service / predicted)
        a = config.err_alpha
        diff = err - mean
        mean = mean + a * diff
        var = (1 - a) * (var + a * diff * diff)  # exponentially weighted variance
    return _estimate(prefill_tps, decode_tps, items_per_s, base.samples + 1, now, mean, var)


def pool_prior(
    estimates: Iterable[SpeedEstimate | None], fallback: SpeedEstimate, quantile: float = 0.5,
    min_measured: int = 20,
) -> SpeedEstimate:
    """A prior for not-yet-measured providers: the pool's typical *measured* speed.

    Routing assumes an unmeasured provider (without a claim) runs at the prior. A
    fixed pessimistic prior starves new providers of the traffic that would
    measure them, so the pool shrinks to the providers it already knows and their
    queues grow; a prior at the pool's median explores them at the cost of a few
    requests each. Refresh it now and then (say every 10-30 s) from a sample of
    the pool and pass it as `RoutingWeights.prior_speed`. Fields with fewer than
    `min_measured` measurements keep the fallback's value.
    """
    cols: tuple[list[float], list[float], list[float]] = ([], [], [])
    for e in estimates:
        if e is None or e.samples <= 0:
            continue
        for col, v in zip(cols, (e.prefill_tps, e.decode_tps, e.items_per_s)):
            if v > 0:
                col.append(v)
    vals = []
    for col, fb in zip(cols, (fallback.prefill_tps, fallback.decode_tps, fallback.items_per_s)):
        if len(col) < min_measured:
            vals.append(fb)
        else:
            col.sort()
            vals.append(col[min(int(quantile * len(col)), len(col) - 1)])
    return SpeedEstimate(prefill_tps=vals[0], decode_tps=vals[1], items_per_s=vals[2])


def smooth_rtt(prev: float | None, sample: float, alpha: float = 0.2) -> float:
    """EWMA of round-trip samples (seconds); the first sample is taken as is.

    A single sample more than 4x the current value moves the average by at most
    alpha of that bound, so one stalled ping does not make a provider look far away.
    """
    if sample < 0:
        return prev if prev is not None else 0.0
    if prev is None:
        return sample
    return (1 - alpha) * prev + alpha * min(sample, 4 * prev + 0.01)


# ---------------------------------------------------------------- helpers


def _old_weight(prev: SpeedEstimate, now: float, config: SpeedConfig) -> float:
    age = max(now - prev.updated_at, 0.0)
    return float((1 - config.alpha) * 0.5 ** (age / config.half_life_s))


def _generate_spu(
    base: SpeedEstimate, sample: SpeedSample, service: float, fresh: bool,
) -> tuple[float | None, float | None]:
    """Seconds per input token and per output token implied by one generation sample."""
    n_in, n_out = sample.input_tokens, sample.output_tokens
    if n_in <= 0 and n_out <= 0:
        return None, None
    if sample.first_token_s is not None:
        # Streaming splits the phases: up to the first chunk is prefill, the rest decode.
        first = min(max(sample.first_token_s - sample.rtt_s, MIN_SECONDS), service)
        p = first / n_in if n_in > 0 else None
        d = max(service - first, MIN_SECONDS) / (n_out - 1) if n_out > 1 else None
        return p, d
    # Non-streaming: one total. Scale the current split (or the default ratio) to fit it.
    p_old, d_old = _inv(base.prefill_tps), _inv(base.decode_tps)
    if fresh or p_old <= 0 or d_old <= 0:
        d = service / (n_in / PREFILL_TO_DECODE + n_out) if (n_in + n_out) > 0 else None
        return (d / PREFILL_TO_DECODE if d else None), d
    factor = service / (n_in * p_old + n_out * d_old)
    return p_old * factor, d_old * factor


def _blend(old_spu: float, new_spu: float | None, old_w: float) -> float:
    if new_spu is None:
        return old_spu
    if old_spu <= 0:
        return new_spu
    return old_w * old_spu + (1 - old_w) * new_spu


def _inv(x: float) -> float:
    return 1.0 / x if x > 0 else 0.0


def hardware_speed(prior: SpeedEstimate, relative_compute: float, cap: float,
                   clear_margin: float = 2.0) -> SpeedEstimate | None:
    """What to assume of a provider with no measured answers and no usable claim, from its
    hardware proof: the prior scaled by its verified GFLOP/s over the pool's median one,
    or None (assume the prior) unless that ratio is at least `clear_margin`.

    Only a clear advantage counts, and only upwards: a proof's timing includes the round
    trip and whatever else the machine runs (four identical providers proving at once on
    one 2-core machine: fastest 1.1-1.9x the median over three runs, up to 3.2x the
    slowest), and assuming an unmeasured provider slower than
    the prior would stop routing from ever trying it, so it would never be measured.
    A provider that proved several times the pool's compute (another GPU class) is
    tried first, up to `cap` times the prior like a claim; measured answers replace
    the guess as soon as there are any.
    """
    if relative_compute < clear_margin:
        return None
    f = min(cap, relative_compute)
    return SpeedEstimate(prefill_tps=prior.prefill_tps * f, decode_tps=prior.decode_tps * f,
                         items_per_s=prior.items_per_s * f)
