"""The /v1/stats ring of recent requests (gateway/web/recent_requests.py)."""

from __future__ import annotations

from gpupool.gateway.web.recent_requests import RecentRequests, Sample


def test_it_keeps_the_last_requests_in_order_and_forgets_older_ones() -> None:
    recent = RecentRequests(3)
    assert recent.samples() == []
    recent.add(1.0, "a", 0.5, True, None)
    recent.add(2.0, "b", 0.25, False, 0.125)
    assert recent.samples() == [Sample(1.0, "a", 0.5, True, None), Sample(2.0, "b", 0.25, False, 0.125)]
    for t in (3.0, 4.0, 5.0):
        recent.add(t, "a", t, True, None)
    assert [s.at for s in recent.samples()] == [3.0, 4.0, 5.0] and recent.count == 3
    assert {s.model for s in recent.samples()} == {"a"}


def test_its_memory_does_not_grow_with_traffic() -> None:
    recent = RecentRequests(100)
    sizes = [recent._at.buffer_info()[1], len(recent._labels)]
    for i in range(10_000):
        recent.add(float(i), "m" if i % 2 else "n", 0.1, True, None)
    assert [recent._at.buffer_info()[1], len(recent._labels)] == [sizes[0], 2]
    assert recent.samples()[0].at == 9_900.0
