"""Per-model priors (routing/priors.py): what routing assumes of unmeasured providers and answer lengths."""

from __future__ import annotations

from gpupool.routing import RouteRequest, RoutingWeights, SpeedEstimate
from gpupool.routing.priors import AT_ONCE_UP_TO, REFRESH_S, SOON_S, AnswerLengths, SpeedPriors


def est(decode_tps: float) -> SpeedEstimate:
    return SpeedEstimate(prefill_tps=20 * decode_tps, decode_tps=decode_tps, samples=1)


def test_a_first_measurement_in_a_small_pool_sets_the_prior_at_once() -> None:
    priors = SpeedPriors(RoutingWeights())
    default = priors.weights("m", 0.0).prior_speed.decode_tps
    priors.measured("m", "a", est(20.0), 0.1)
    assert priors.weights("m", 0.1).prior_speed.decode_tps == 20.0 != default


def test_in_a_big_pool_a_first_measurement_refreshes_soon_not_at_once() -> None:
    priors = SpeedPriors(RoutingWeights())
    for i in range(AT_ONCE_UP_TO + 1):
        priors.measured("m", f"n{i}", est(10.0), 0.0)
    assert priors.weights("m", 0.0).prior_speed.decode_tps == 10.0
    priors.measured("m", "new", est(10.0), 1.0)
    priors.measured("m", "fast1", est(99.0), 1.0)
    before = priors.weights("m", 1.0)
    assert priors.weights("m", 1.0 + SOON_S / 2) is before  # not yet
    assert priors.weights("m", 1.0 + SOON_S) is not before


def test_later_measurements_show_in_the_periodic_refresh() -> None:
    priors = SpeedPriors(RoutingWeights())
    priors.measured("m", "a", est(20.0), 0.0)
    assert priors.weights("m", 0.0).prior_speed.decode_tps == 20.0
    priors.measured("m", "a", est(40.0), 0.5)  # not a first measurement: waits for the refresh
    assert priors.weights("m", 0.5).prior_speed.decode_tps == 20.0
    assert priors.weights("m", REFRESH_S + 0.1).prior_speed.decode_tps == 40.0


def test_priors_are_per_model_and_forgotten_with_the_provider() -> None:
    priors = SpeedPriors(RoutingWeights())
    priors.measured("slow", "a", est(5.0), 0.0)
    priors.measured("fast", "b", est(80.0), 0.0)
    assert priors.weights("slow", 0.0).prior_speed.decode_tps == 5.0
    assert priors.weights("fast", 0.0).prior_speed.decode_tps == 80.0
    priors.forget("a")
    assert priors.weights("slow", 0.0).prior_speed == RoutingWeights().prior_speed


def test_answer_lengths_follow_what_answers_had_and_cap_at_max_tokens() -> None:
    lengths = AnswerLengths()
    assert lengths.typical("m") is None
    for _ in range(50):
        lengths.observed("m", 4)
    assert lengths.typical("m") == 4
    req = RouteRequest("m", max_output_tokens=256, expected_output_tokens=lengths.typical("m"))
    assert req.output_tokens_for_time == 4
    lengths.observed("m", 400)
    assert 4 < lengths.typical("m") < 400  # one long answer moves the mean, it does not replace it
    assert RouteRequest("m", max_output_tokens=16, expected_output_tokens=300).output_tokens_for_time == 16
