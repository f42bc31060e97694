"""market.pricing.hold_bound: the dearest cost among the prices (0 for none), capped by max_price."""

from __future__ import annotations

import random

from gpupool.market import pricing


def test_the_hold_is_the_dearest_cost_capped_by_max_price() -> None:
    rng = random.Random(5)
    assert pricing.hold_bound([], 1_000, 512, None) == 0
    assert pricing.hold_bound([], 1_000, 512, 7) == 0
    for _ in range(2_000):
        prices = [pricing.Price(rng.randrange(0, 10**6), rng.randrange(0, 10**6), rng.randrange(0, 5_000))
                  for _ in range(rng.randrange(1, 6))]
        n_in, n_out, images = rng.randrange(0, 50_000), rng.randrange(0, 4_096), rng.randrange(0, 3)
        costs = [pricing.cost(p, n_in + images * pricing.IMAGE_TOKENS_BOUND, n_out, images) for p in prices]
        assert pricing.hold_bound(prices, n_in, n_out, None, images) == max(costs)
        cap = rng.randrange(0, 2 * max(costs) + 1)
        assert pricing.hold_bound(prices, n_in, n_out, cap, images) == min(max(costs), cap)
