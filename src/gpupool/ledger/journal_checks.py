"""Checks `SqlLedger.verify` runs over the journal besides replaying balances (pure: rows in, problems out).

    problems = paid_once_problems([(key, kind, memo), ...], {request_id: batch_key, ...})
    problems += release_time_problems([(key, kind, at, memo), ...], min_window_s=3600)

The paid-once table (`ledger_paid`) is what stops a receipt being charged twice; it is
not part of the hash chain, so it is checked against the batches that did the paying:
deleting a row would let that request be charged again, adding one would refuse an
honest charge. Release times matter because held earnings stay slashable until then:
a release sooner than its audit window means checkers had less time than promised.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

MAX_LISTED = 20  # problems of one kind listed one by one; the rest are counted

JournalRow = tuple[str, str, Any]  # (key, kind, memo)
TimedRow = tuple[str, str, float, Any]  # (key, kind, at, memo)


def _capped(problems: list[str], what: str) -> list[str]:
    if len(problems) <= MAX_LISTED:
        return problems
    return problems[:MAX_LISTED] + [f"... and {len(problems) - MAX_LISTED} more {what}"]


def paid_once_problems(rows: Iterable[JournalRow], paid: dict[str, str]) -> list[str]:
    """Every request a batch paid has exactly one paid-once record naming that batch, and no other records exist."""
    problems: list[str] = []
    paid_by: dict[str, str] = {}
    for key, kind, memo in rows:
        if kind != "settle_batch" or not isinstance(memo, dict):
            continue
        for charge in memo.get("charges", []):
            request_id = str(charge[0])
            if request_id in paid_by:
                problems.append(f"request {request_id!r} was paid twice: by {paid_by[request_id]} and by {key}")
                continue
            paid_by[request_id] = key
            recorded = paid.get(request_id)
            if recorded is None:
                problems.append(f"request {request_id!r} was paid by {key} but its paid-once record is missing "
                                "(it could be charged again)")
            elif recorded != key:
                problems.append(f"request {request_id!r} was paid by {key} but its paid-once record names {recorded}")
    for request_id in sorted(set(paid) - set(paid_by)):
        problems.append(f"paid-once record for request {request_id!r} ({paid[request_id]}) that no batch paid")
    return _capped(problems, "paid-once problems")


def release_time_problems(rows: Iterable[TimedRow], min_window_s: float = 0.0) -> list[str]:
    """Each batch's release came after the batch, no sooner than its recorded window and `min_window_s`."""
    problems: list[str] = []
    batch_at: dict[str, float] = {}
    for key, kind, at, memo in rows:
        if kind == "settle_batch":
            batch_at[key] = at
            continue
        if kind != "release" or not isinstance(memo, dict) or "batch" not in memo:
            continue
        batch = str(memo["batch"])
        if batch not in batch_at:
            problems.append(f"{key} releases {batch}, which is not an earlier batch in the journal")
            continue
        waited = at - batch_at[batch]
        window = max(float(memo.get("window_s", 0.0)), min_window_s)
        # 1 ms of slack: times are stored in whole milliseconds.
        if waited < window - 0.001:
            problems.append(f"{key}: earnings released {waited:.3f} s after the batch, before its "
                            f"{window:g} s audit window ended")
    return _capped(problems, "early releases")
