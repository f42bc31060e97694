"""The pure checks behind `gpupool ledger verify` (SQL): paid-once records and release times."""

from __future__ import annotations

from gpupool.ledger.journal_checks import MAX_LISTED, paid_once_problems, release_time_problems


def batch(key: str, *requests: str) -> tuple[str, str, dict[str, object]]:
    return key, "settle_batch", {"charges": [[r, "alice", "gpa", 10, 0] for r in requests]}


def test_paid_once_records_match_the_batches_that_paid() -> None:
    rows = [batch("b1", "q1", "q2"), ("d1", "deposit", {}), batch("b2", "q3")]
    assert paid_once_problems(rows, {"q1": "b1", "q2": "b1", "q3": "b2"}) == []
    problems = paid_once_problems(rows, {"q1": "b1", "q3": "b1", "q9": "b2"})
    assert problems == [
        "request 'q2' was paid by b1 but its paid-once record is missing (it could be charged again)",
        "request 'q3' was paid by b2 but its paid-once record names b1",
        "paid-once record for request 'q9' (b2) that no batch paid",
    ]
    (twice,) = paid_once_problems([batch("b1", "q1"), batch("b2", "q1")], {"q1": "b1"})
    assert twice == "request 'q1' was paid twice: by b1 and by b2"


def test_many_problems_are_listed_up_to_a_bound_then_counted() -> None:
    problems = paid_once_problems([batch("b1", *(f"q{i}" for i in range(50)))], {})
    assert len(problems) == MAX_LISTED + 1 and problems[-1] == f"... and {50 - MAX_LISTED} more paid-once problems"


def test_releases_wait_for_their_window_and_the_promised_one() -> None:
    rows = [("b1", "settle_batch", 1000.0, {}), ("b2", "settle_batch", 5000.0, {}),
            ("release:b1", "release", 4600.0, {"batch": "b1", "window_s": 3600}),
            ("release:b2", "release", 5010.0, {"batch": "b2", "window_s": 3600}),
            ("release:b9", "release", 6000.0, {"batch": "b9"})]
    assert release_time_problems(rows) == [
        "release:b2: earnings released 10.000 s after the batch, before its 3600 s audit window ended",
        "release:b9 releases b9, which is not an earlier batch in the journal",
    ]
    # A window recorded as 0 (a test clock, an operator's setting) still has to meet the promised one.
    quick = [("b1", "settle_batch", 1000.0, {}), ("release:b1", "release", 1100.0, {"batch": "b1", "window_s": 0})]
    assert release_time_problems(quick) == []
    assert release_time_problems(quick, min_window_s=3600) == [
        "release:b1: earnings released 100.000 s after the batch, before its 3600 s audit window ended"]
    # Single-request releases (no batch in the memo) are not batch releases.
    assert release_time_problems([("release:r1", "release", 1.0, {"request_id": "r1"})]) == []
