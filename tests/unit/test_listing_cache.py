"""The listings' cache (gateway/web/listing_cache.py): rebuilt on a change of who serves what or
after its age, reused otherwise, so reading `/v1/models` in a loop walks the sessions at most once
a second."""

from gpupool.gateway.web.listing_cache import ListingCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_listing_is_built_once_per_change_and_at_most_once_a_second() -> None:
    clock, builds = Clock(), []

    def build() -> dict:
        builds.append(clock.now)
        return {"n": len(builds)}

    cache = ListingCache(max_age_s=1.0, clock=clock)
    first = cache.get("models", 7, build)
    for _ in range(1000):  # a client reading in a loop, nothing changed: no walk
        assert cache.get("models", 7, build) is first
    assert builds == [100.0]
    assert cache.get("models", 8, build) == {"n": 2}  # a join or leave: built at once
    clock.now += 0.99
    assert cache.get("models", 8, build) == {"n": 2}
    clock.now += 0.02  # older than a second (load, speed moved): built again
    assert cache.get("models", 8, build) == {"n": 3}
    assert cache.get("market", 8, build) == {"n": 4}  # each listing has its own body
    assert len(builds) == 4
