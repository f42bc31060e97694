"""Checking providers: audit jobs and the checkers' signed verdicts, and hardware proofs
(verify/hardware.py)."""

from __future__ import annotations

from gpupool.protocol.base import _Msg
from gpupool.protocol.work import Payload, Receipt
from gpupool.protocol_limits import Count, LogProb, Rate, Score, ShortStr, Timestamp, TokenId


class AuditJob(_Msg, tag="audit"):
    """Gateway -> checker: re-run a served request and judge the provider's committed answer.

    Sent after the provider committed (its receipt is in hand), so it cannot know which
    of its answers are audited. The output travels as the provider sent it. It carries
    only what the check needs: the request (which the checker must see to re-run it),
    the provider's signed receipt and output; never the client's account, key or address.
    """

    job_id: str
    model: str
    payload: Payload
    receipt: Receipt
    vectors: bytes = b""  # embeddings: the provider's float32 rows
    dimensions: Count = 0
    text: str = ""  # generation: the provider's text
    token_ids: list[TokenId] = []  # generation: the committed tokens, when the provider sent them
    logprobs: list[LogProb] = []
    # The gateway is waiting on this verdict (probation, a recheck after a failure, a fraud
    # confirmation): judge it at once instead of holding it for a shared batch.
    urgent: bool = False


class Verdict(_Msg, tag="verdict"):
    """Checker -> gateway: its signed judgement of one audit job (evidence for suspension and slashing)."""

    job_id: str
    request_id: str
    provider: str  # node id of the audited provider
    checker: str  # node id of the checker
    passed: bool
    hard: bool  # wrong model, garbage, bad signature: suspend at once
    reason: str
    score: Score
    issued_at: Timestamp
    signature: bytes = b""


class HardwareChallenge(_Msg, tag="hw_challenge"):
    """Gateway -> provider: prove the claimed hardware by computing C = A·B.

    A and B (n×n, integers in [-value_range, value_range]) derive from `seed`; see
    `gpupool.verify.hardware`. Round one (`open_rows` empty): compute C and commit to it.
    Round two, same `challenge_id`: open the listed rows of the committed C — chosen only
    after the commitment arrived, so a provider cannot compute just those rows.
    """

    challenge_id: str
    seed: int
    n: int
    value_range: int
    open_rows: list[int] = []


class HardwareAnswer(_Msg, tag="hw_answer"):
    """Provider -> gateway: round one carries `row_digests` (SHA-256 of each row of C as
    little-endian int64) and the provider's own timing; round two carries `rows`, the
    requested rows as little-endian int64 bytes, in the order they were asked for."""

    challenge_id: str
    row_digests: list[bytes] = []
    elapsed_s: Rate = 0.0
    rows: list[bytes] = []
    device: ShortStr = ""  # informational: where the provider computed C ("cpu", "cuda")
