"""Per-key limits and fair shares (gateway/money/limits.py): pure policy, explicit `now`."""

from __future__ import annotations

import random

import pytest

from gpupool.gateway.money.anonymous_limits import HoldBack
from gpupool.gateway.money.limits import Bucket, KeyLimiter, KeyLimits, LimiterConfig

NO_LIMITS = KeyLimits()


def test_bucket_refills_at_its_rate_up_to_its_capacity() -> None:
    b = Bucket.full(per_minute=60, burst_s=5, now=0.0)  # 1/s, holds 5
    assert b.capacity == 5
    for _ in range(5):
        assert b.wait_for(1, 0.0) == 0
        b.take(1)
    assert b.wait_for(1, 0.0) == pytest.approx(1.0)
    assert b.wait_for(1, 0.5) == pytest.approx(0.5)
    assert b.wait_for(1, 100.0) == 0 and b.level == 5  # never above capacity


def test_requests_per_minute_admit_a_burst_then_the_rate_with_retry_after() -> None:
    lim = KeyLimiter(LimiterConfig(burst_s=10))
    limits = KeyLimits(rpm=30)  # 0.5/s, burst of 5
    now = 100.0
    for _ in range(5):
        d = lim.admit(1, limits, "m", 10, slots=0, now=now)
        assert d.ok
        lim.release(1, "m", 10, 10, now)
    d = lim.admit(1, limits, "m", 10, slots=0, now=now)
    assert not d.ok and d.reason == "rpm" and d.retry_after_s == pytest.approx(2.0)
    assert lim.admit(1, limits, "m", 10, slots=0, now=now + 2.0).ok
    # Another key has its own budget.
    assert lim.admit(2, limits, "m", 10, slots=0, now=now).ok


def test_tokens_per_minute_count_the_request_bound_and_give_back_unused() -> None:
    lim = KeyLimiter(LimiterConfig(burst_s=60))
    limits = KeyLimits(tpm=1000)
    assert lim.admit(1, limits, "m", 800, slots=0, now=0.0).ok
    d = lim.admit(1, limits, "m", 300, slots=0, now=0.0)
    assert not d.ok and d.reason == "tpm" and d.retry_after_s == pytest.approx(6.0)  # 100 missing at 1000/min
    lim.release(1, "m", reserved=800, used=100, now=0.0)  # used far less than it might have
    assert lim.admit(1, limits, "m", 300, slots=0, now=0.0).ok
    # A request larger than the whole budget passes once, on a full bucket, leaving it empty.
    lim2 = KeyLimiter(LimiterConfig(burst_s=60))
    assert lim2.admit(1, limits, "m", 50_000, slots=0, now=0.0).ok
    assert not lim2.admit(1, limits, "m", 1, slots=0, now=0.0).ok


def test_concurrency_limit_counts_requests_in_flight() -> None:
    lim = KeyLimiter()
    limits = KeyLimits(concurrency=2)
    assert lim.admit(1, limits, "a", 1, 0, 0.0).ok
    assert lim.admit(1, limits, "b", 1, 0, 0.0).ok
    d = lim.admit(1, limits, "a", 1, 0, 0.0)
    assert not d.ok and d.reason == "concurrency" and d.retry_after_s > 0
    lim.release(1, "b", 1, 1, 0.1)
    assert lim.admit(1, limits, "a", 1, 0, 0.2).ok


def test_a_key_alone_may_use_the_whole_pool_plus_headroom() -> None:
    lim = KeyLimiter(LimiterConfig(headroom=0.5))
    admitted = sum(lim.admit(1, NO_LIMITS, "m", 1, slots=8, now=0.0).ok for _ in range(50))
    assert admitted == 12  # 8 slots + 4 that may wait in the providers' queues


def test_a_flooding_key_leaves_room_for_a_second_key() -> None:
    lim = KeyLimiter(LimiterConfig(headroom=0.5, active_window_s=2.0))
    flood = sum(lim.admit(1, NO_LIMITS, "m", 1, slots=8, now=0.0).ok for _ in range(200))
    assert flood == 12  # alone: the 8 slots and 4 queued places
    # The bystander arrives: it gets in at once, up to its equal share of the slots (7 kept / 2 keys).
    bystander = sum(lim.admit(2, NO_LIMITS, "m", 1, slots=8, now=0.1).ok for _ in range(10))
    assert bystander == 4
    # The flooder may not replace its finished requests until it is back under its share.
    for _ in range(2):
        lim.release(1, "m", 1, 1, now=0.2)
    assert not lim.admit(1, NO_LIMITS, "m", 1, slots=8, now=0.2).ok
    # Work-conserving: once the bystander goes quiet, the flooder may use everything again.
    for _ in range(4):
        lim.release(2, "m", 1, 1, now=0.3)
    assert lim.admit(1, NO_LIMITS, "m", 1, slots=8, now=5.0).ok
    assert lim.fair_cap(1, "m", 8, now=5.0) == 12


def test_with_others_active_a_flood_never_queues_behind_the_slots() -> None:
    # A flood of long streams that filled the providers' queues would make every other key's
    # request wait behind it: with another key active, only slots are shared out.
    lim = KeyLimiter(LimiterConfig(spare=0.125, active_window_s=2.0))
    assert lim.admit(2, NO_LIMITS, "m", 1, slots=64, now=0.0, places=192).ok  # the bystander
    lim.release(2, "m", 1, 1, now=0.0)
    flood = sum(lim.admit(1, NO_LIMITS, "m", 1, slots=64, now=0.1, places=192).ok for _ in range(300))
    assert flood == 64 - 8 - 1  # slots, less the spare eighth, less one kept for the bystander
    assert lim.admit(2, NO_LIMITS, "m", 1, slots=64, now=0.2, places=192).ok


def test_models_on_the_same_providers_share_one_fair_share() -> None:
    # The flood asks for "chat"; the bystander for "embed", served by the same providers.
    lim = KeyLimiter(LimiterConfig(spare=0.125, active_window_s=2.0))
    assert lim.admit(2, NO_LIMITS, "embed", 1, slots=16, now=0.0, places=16, related=("chat",)).ok
    lim.release(2, "embed", 1, 1, now=0.0)
    flood = sum(lim.admit(1, NO_LIMITS, "chat", 1, slots=16, now=0.1, places=16, related=("embed",)).ok
                for _ in range(50))
    assert flood == 16 - 2 - 1
    # What the flood holds on "chat" counts when it asks for "embed" too.
    assert not lim.admit(1, NO_LIMITS, "embed", 1, slots=16, now=0.1, places=16, related=("chat",)).ok


def test_fair_share_is_per_model() -> None:
    lim = KeyLimiter(LimiterConfig(headroom=0.0))
    assert sum(lim.admit(1, NO_LIMITS, "a", 1, slots=2, now=0.0).ok for _ in range(5)) == 3  # headroom >= 1
    assert lim.admit(1, NO_LIMITS, "b", 1, slots=2, now=0.0).ok  # a different model's slots


def test_state_is_forgotten_when_idle_and_bounded() -> None:
    lim = KeyLimiter(LimiterConfig(burst_s=10, max_keys=100))
    for key in range(1000):
        assert lim.admit(key, KeyLimits(rpm=60), f"m{key % 3}", 1, slots=4, now=0.0).ok
        lim.release(key, f"m{key % 3}", 1, 1, now=0.0)
    assert len(lim.keys) <= 100
    lim.admit(5000, NO_LIMITS, "m0", 1, slots=4, now=100.0)  # a sweep runs on the next call
    assert set(lim.keys) == {5000}
    assert set(lim.active) == {"m0"} and set(lim.active["m0"]) == {5000}


def test_changed_limits_take_effect_and_keep_what_is_in_flight() -> None:
    lim = KeyLimiter()
    assert lim.admit(1, KeyLimits(concurrency=1), "m", 1, 0, 0.0).ok
    assert not lim.admit(1, KeyLimits(concurrency=1), "m", 1, 0, 0.0).ok
    assert lim.admit(1, KeyLimits(concurrency=2), "m", 1, 0, 0.0).ok
    assert lim.keys[1].total_in_flight == 2


def test_a_newcomer_always_finds_a_place_the_flood_cannot_take() -> None:
    lim = KeyLimiter(LimiterConfig(headroom=0.5, active_window_s=2.0))
    assert sum(lim.admit(1, NO_LIMITS, "m", 1, slots=8, now=0.0).ok for _ in range(50)) == 12
    # The second key has asked (and its request ended): it is active and holds nothing.
    assert lim.admit(2, NO_LIMITS, "m", 1, slots=8, now=0.1).ok
    lim.release(2, "m", 1, 1, now=0.1)
    # The flood's finished requests may not be replaced until one slot stays for the newcomer.
    lim.release(1, "m", 1, 1, now=0.2)
    assert not lim.admit(1, NO_LIMITS, "m", 1, slots=8, now=0.2).ok
    assert lim.fair_cap(1, "m", 8, now=0.2) == 6  # 8 slots, 1 spare, 1 kept for the newcomer
    assert lim.admit(2, NO_LIMITS, "m", 1, slots=8, now=0.3).ok


def test_a_key_alone_uses_the_providers_queues_but_leaves_spare_places() -> None:
    lim = KeyLimiter(LimiterConfig(headroom=0.5))
    # 10 places reported: one is kept for a newcomer.
    assert sum(lim.admit(1, NO_LIMITS, "m", 1, slots=8, now=0.0, places=10).ok for _ in range(50)) == 9
    lim3 = KeyLimiter(LimiterConfig(spare=0.125))
    assert sum(lim3.admit(1, NO_LIMITS, "m", 1, slots=4, now=0.0, places=40).ok for _ in range(50)) == 35
    lim2 = KeyLimiter(LimiterConfig(headroom=0.5))
    # One slot and no queue: a key alone gets exactly that place.
    assert sum(lim2.admit(1, NO_LIMITS, "m", 1, slots=1, now=0.0, places=1).ok for _ in range(5)) == 1


def test_a_key_over_its_equal_share_is_told_so_only_while_others_are_active() -> None:
    lim = KeyLimiter(LimiterConfig(spare=0.125, active_window_s=2.0))
    alone = [lim.admit(1, NO_LIMITS, "m", 1, slots=16, now=0.0, places=16) for _ in range(10)]
    assert all(d.ok and not d.over_share for d in alone)  # a key alone is never paced
    assert lim.admit(2, NO_LIMITS, "m", 1, slots=16, now=0.1, places=16).ok  # a second key arrives
    d = lim.admit(1, NO_LIMITS, "m", 1, slots=16, now=0.2, places=16)
    assert d.ok and d.over_share  # 10 held, its equal share of the 14 kept slots is 7
    d = lim.admit(2, NO_LIMITS, "m", 1, slots=16, now=0.2, places=16)
    assert d.ok and not d.over_share


def test_a_key_back_before_its_retry_after_is_marked_early() -> None:
    lim = KeyLimiter(LimiterConfig(burst_s=1))
    limits = KeyLimits(rpm=60)  # one a second, a burst of one
    assert lim.admit(1, limits, "m", 1, slots=0, now=0.0).ok
    first = lim.admit(1, limits, "m", 1, slots=0, now=0.1)
    assert not first.ok and not first.early and first.retry_after_s == pytest.approx(0.9)
    spin = lim.admit(1, limits, "m", 1, slots=0, now=0.2)  # did not wait as it was told
    assert not spin.ok and spin.early
    assert lim.admit(1, limits, "m", 1, slots=0, now=1.2).ok  # waited: served, never marked


def test_held_back_answers_wait_at_least_the_hold_and_are_spread_out() -> None:
    """A flood refused at once must not come back at once: holds are spread over [1, 1.5) x."""
    back = HoldBack(rng=random.Random(7))
    holds = [back.duration(1.0) for _ in range(1000)]
    assert min(holds) >= 1.0 and max(holds) < 1.5
    assert max(holds) - min(holds) > 0.4  # spread, not one wave


def test_a_key_early_twice_in_a_row_is_refused_before_its_request_is_read() -> None:
    lim = KeyLimiter(LimiterConfig(burst_s=1))
    limits = KeyLimits(rpm=60)
    assert lim.admit(1, limits, "m", 1, slots=0, now=0.0).ok
    assert not lim.admit(1, limits, "m", 1, slots=0, now=0.1).ok  # told: retry after 0.9 s
    assert lim.ignored_retry_after(1, 0.15) == 0.0  # one early retry may be another thread
    assert lim.admit(1, limits, "m", 1, slots=0, now=0.2).early  # back early: told again
    assert lim.ignored_retry_after(1, 0.3) == pytest.approx(0.7)  # early again: refused unread until 1.0
    assert lim.ignored_retry_after(2, 0.3) == 0.0  # other keys are not touched
    assert lim.ignored_retry_after(1, 1.2) == 0.0  # the wait is over
    assert lim.admit(1, limits, "m", 1, slots=0, now=1.2).ok
    assert lim.ignored_retry_after(1, 1.21) == 0.0  # served: forgotten
