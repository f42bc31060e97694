"""The pure parts of many gateways in one network: shared rate windows and choosing the nearest gateways."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpupool.gateway.money.shared_limits import check_url, window_for
from gpupool.provider.discovery import base_url, choose


@given(st.integers(1, 1_000_000), st.floats(0.0, 120.0))
def test_a_window_holds_exactly_the_rate_and_at_least_the_burst(per_minute: int, burst_s: float) -> None:
    amount, seconds = window_for(per_minute, burst_s)
    assert amount * 60 == per_minute * seconds  # amount per window is exactly the rate
    assert 1 <= seconds <= 60 and amount >= 1
    assert seconds >= min(60, burst_s)


def test_windows_people_would_set() -> None:
    assert window_for(60, 10) == (10, 10)
    assert window_for(1200, 2) == (40, 2)
    assert window_for(100, 10) == (20, 12)  # 16.7 in 10 s is no whole number: 20 in 12 s
    assert window_for(7, 10) == (7, 60)


def test_redis_urls() -> None:
    assert check_url("redis://127.0.0.1:6379/0") == "async+redis://127.0.0.1:6379/0"
    assert check_url("rediss://r.example:6380") == "async+rediss://r.example:6380"
    assert check_url("unix:///run/redis.sock") == "async+redis+unix:///run/redis.sock"
    with pytest.raises(ValueError, match="redis://"):
        check_url("http://127.0.0.1:6379")


def test_the_nearest_reachable_gateways_are_chosen() -> None:
    rtts = {"ws://far": 0.080, "ws://near": 0.002, "ws://down": None, "ws://mid": 0.020}
    assert choose(rtts, 2) == ["ws://near", "ws://mid"]
    assert choose(rtts, 10) == ["ws://near", "ws://mid", "ws://far"]  # never one that did not answer
    assert choose(rtts, 0) == [] and choose(rtts, -1) == []


def test_gateway_addresses_compare_whatever_form_they_come_in() -> None:
    assert base_url("http://gw:8000") == base_url("ws://gw:8000/v1/providers/ws") == "ws://gw:8000"
    assert base_url("https://gw.example/") == "wss://gw.example"
