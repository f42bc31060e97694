"""UploadLimits: one upload at a time per account, a byte bucket, holds for early retries (pure)."""

from __future__ import annotations

from gpupool.gateway.batches.upload_limits import EARLY_HOLD_S, MAX_ENTRIES, UploadLimits

MIB = 1024 * 1024


def test_one_upload_at_a_time_per_account() -> None:
    lim = UploadLimits(bytes_per_s=MIB, burst_bytes=100 * MIB)
    assert lim.admit("a", MIB, 0.0) is None
    assert lim.admit("a", MIB, 0.0) == 1.0  # the first is still being stored
    assert lim.admit("b", MIB, 0.0) is None  # another account is not affected
    lim.done("a")
    assert lim.admit("a", MIB, 0.0) is None


def test_bytes_past_the_burst_wait_for_the_rate() -> None:
    lim = UploadLimits(bytes_per_s=2 * MIB, burst_bytes=10 * MIB)
    assert lim.admit("a", 8 * MIB, 0.0) is None
    lim.done("a")
    wait = lim.admit("a", 8 * MIB, 0.0)  # 2 MiB left: 6 more at 2 MiB/s
    assert wait == 3.0
    assert lim.admit("a", 8 * MIB, 3.0) is None


def test_a_refusal_is_held_only_for_a_client_back_before_its_retry_after() -> None:
    lim = UploadLimits(bytes_per_s=MIB, burst_bytes=MIB)
    assert lim.admit("a", MIB, 0.0) is None
    assert lim.refused("a", 5.0, 0.5) == 0.0  # the first refusal goes out at once
    assert lim.refused("a", 5.0, 1.0) == EARLY_HOLD_S  # back at 1 s, told 5.5 s: held
    assert lim.refused("a", 1.0, 20.0) == 0.0


def test_idle_full_accounts_are_forgotten_past_the_bound() -> None:
    lim = UploadLimits(bytes_per_s=MIB, burst_bytes=MIB)
    for i in range(MAX_ENTRIES):
        assert lim.admit(f"k{i}", 1, 0.0) is None
        lim.done(f"k{i}")
    lim.admit("busy", MIB, 100.0)  # all others refilled by now: dropped
    assert len(lim.buckets) <= 2
