"""When a second copy of a slow request goes out."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from gpupool.routing import Candidate, RouteRequest, SpeedEstimate, estimate_seconds, hedge_delay_s, should_hedge

REQ = RouteRequest("m", input_tokens=500, max_output_tokens=200)
Z95 = NormalDist().inv_cdf(0.95)


def test_streaming_requests_are_never_hedged() -> None:
    c = Candidate("a", 0, 4, rtt_s=0.05)
    stream = RouteRequest("m", input_tokens=500, max_output_tokens=200, stream=True)
    assert hedge_delay_s(c, stream) is None
    assert not should_hedge(1e9, c, stream)


def test_delay_is_a_percentile_of_the_expected_time() -> None:
    unknown = Candidate("a", 0, 4, rtt_s=0.05)
    assert hedge_delay_s(unknown, REQ) == pytest.approx(estimate_seconds(unknown, REQ) * math.exp(Z95 * 0.5))
    # A provider whose answers matched predictions closely gets hedged sooner.
    steady = Candidate("b", 0, 4, rtt_s=0.05, speed=SpeedEstimate(3000, 50, samples=40, log_err_var=0.01))
    assert hedge_delay_s(steady, REQ) == pytest.approx(estimate_seconds(steady, REQ) * math.exp(Z95 * 0.1))
    assert hedge_delay_s(steady, REQ, percentile=0.99) > hedge_delay_s(steady, REQ)  # type: ignore[operator]
    # A provider that is usually slower than predicted is given that much longer.
    late = Candidate("c", 0, 4, rtt_s=0.05, speed=SpeedEstimate(3000, 50, samples=40, log_err_mean=0.3,
                                                                log_err_var=0.01))
    assert hedge_delay_s(late, REQ) == pytest.approx(hedge_delay_s(steady, REQ) * math.exp(0.3))  # type: ignore[operator]


def test_should_hedge_only_once_and_only_after_the_delay() -> None:
    c = Candidate("a", 0, 4, rtt_s=0.05, speed=SpeedEstimate(3000, 50, samples=10, log_err_var=0.04))
    delay = hedge_delay_s(c, REQ)
    assert delay is not None
    assert not should_hedge(delay * 0.99, c, REQ)
    assert should_hedge(delay, c, REQ)
    assert not should_hedge(delay * 5, c, REQ, already_hedged=True)


def test_tiny_requests_get_a_floor_and_bad_percentiles_are_refused() -> None:
    c = Candidate("a", 0, 4, rtt_s=0.0, speed=SpeedEstimate(1e9, 1e9, 1e9, samples=10, log_err_var=0.0))
    assert hedge_delay_s(c, RouteRequest("m", input_tokens=1, max_output_tokens=1)) == 0.05
    with pytest.raises(ValueError):
        hedge_delay_s(c, REQ, percentile=1.0)


def test_a_picks_estimate_passed_in_gives_the_same_delay() -> None:
    """`expected_s`: a caller that routed with the same request and weights passes its decision's
    `estimate_s` (the simulator does) instead of estimating again; the delay is the same float."""
    import random

    from gpupool.routing import pick_with_reasons

    cands = [Candidate(f"p{k}", k % 3, 4, rtt_s=0.01 * k, queued=k % 5, backlog_s=0.4 * k if k % 3 else None,
                       speed=SpeedEstimate(3000 + k, 50 - k, samples=k, log_err_var=0.02 * k) if k % 2 else None)
             for k in range(1, 9)]
    for seed in range(20):
        d = pick_with_reasons(cands, 0.0, random.Random(seed), request=REQ)
        assert d.choice is not None and d.estimate_s is not None
        assert hedge_delay_s(d.choice, REQ, expected_s=d.estimate_s) == hedge_delay_s(d.choice, REQ)
    assert hedge_delay_s(cands[1], REQ, expected_s=2.0) == pytest.approx(2.0 * math.exp(Z95 * 0.5))  # no speed yet
