"""A node's wait before dialling a gateway again (provider/peer_link.reconnect_delay, pure).

Issue 18: after a gateway restart the providers came back ~1.4 s after it was ready,
because each refused dial doubled the wait; for a while after losing a gateway that may
come back, the wait stays short, and a busy gateway's Retry-After still wins.
"""

from __future__ import annotations

import random

from gpupool.provider.peer_link import FAST_RETRY_MAX_S, next_backoff, reconnect_delay


def waits(fast: bool, told: float = 0.0, steps: int = 8, reconnect_max_s: float = 30.0) -> list[float]:
    """The waits of `steps` failed dials in a row, doubling the backoff as PeerLink.run does."""
    rng, backoff, out = random.Random(7), 0.25, []
    for _ in range(steps):
        out.append(reconnect_delay(backoff, reconnect_max_s, fast, told, rng))
        backoff = next_backoff(backoff, reconnect_max_s, fast)
    return out


def test_a_lost_gateway_is_dialled_at_least_every_half_second() -> None:
    assert max(waits(fast=True)) <= FAST_RETRY_MAX_S
    assert sum(waits(fast=True)) < 4.0  # eight dials within a few seconds


def test_otherwise_the_wait_doubles_up_to_the_maximum() -> None:
    slow = waits(fast=False, steps=10, reconnect_max_s=8.0)
    assert slow[-1] > 2.0 and max(slow) <= 8.0  # 0.25 doubling, jittered by 0.5-1x, capped at 8 s
    assert sum(slow) > 4 * sum(waits(fast=True, steps=10))


def test_a_busy_gateways_retry_after_wins_even_when_fast() -> None:
    assert min(waits(fast=True, told=5.0)) >= 5.0
    assert max(waits(fast=True, told=5.0)) <= 6.0  # spread a little, not more


def test_a_long_retry_after_is_kept_not_stretched() -> None:
    # The gateway books each refused dial its own later turn: the last of 10,000 reconnecting
    # providers is told ~50 s, and must come then, not up to 20% later.
    assert 50.0 <= min(waits(fast=True, told=50.0, steps=50)) <= max(waits(fast=True, told=50.0, steps=50)) <= 51.0


def test_the_doubling_starts_where_the_fast_window_ends() -> None:
    """60 dials refused in the fast window (30 s of them) leave the backoff where it was, so the
    first slow waits are short: a restarted gateway's late providers are not 15-30 s away."""
    backoff = 0.25
    for _ in range(60):
        backoff = next_backoff(backoff, 30.0, fast=True)
    rng, after = random.Random(3), []
    for _ in range(4):
        after.append(reconnect_delay(backoff, 30.0, False, 0.0, rng))
        backoff = next_backoff(backoff, 30.0, fast=False)
    assert sum(after) <= 3.75  # 0.25 + 0.5 + 1 + 2 at most, not 15-30 s each
