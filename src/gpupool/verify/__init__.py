"""Verification policy (pure): audit sampling, comparators, reputation, suspension,
hardware proof.

Everything here takes state, `now`, an RNG or a secret and returns decisions; nothing
does I/O or reads the wall clock (`hardware.solve` times its own GEMM — it is the
prover's work, not policy). The gateway, the checker processes and the simulator call
the same functions. Wiring (audit jobs, checker processes, slashing through the ledger)
lives elsewhere; see docs/verification.md.

    from gpupool.verify import should_audit, audit_rate, AuditRecord
    if should_audit(secret, request_id, audit_rate(record)):
        ...  # send an audit job to a checker

Modules: judgement (the `Judgement` type: a comparator's outcome, not the signed
`protocol.Verdict`), sampling (which requests to audit), token_sampler (numpy: the
seeded token sampler providers use and checkers replay), comparators (numpy), judging
(numpy: one audit job against a reference model; import it directly), reputation (the
router's score and portable records), suspension_rule (the k-of-m `suspension` rule and
the math behind its defaults), hardware (numpy; torch optional). comparators and
hardware are imported on first use, so the pure-Python parts work without numpy installed.
"""

from __future__ import annotations

from typing import Any

from gpupool.verify.reputation import (
    DEFAULT_REPUTATION,
    Event,
    Reputation,
    ReputationPolicy,
    beta_params,
    event_for,
    from_record,
    lower_bound,
    observe,
    observe_verdict,
    record_bytes,
    score,
    to_record,
)
from gpupool.verify.sampling import (
    DEFAULT_SAMPLING,
    AuditRecord,
    SamplingPolicy,
    audit_draw,
    audit_rate,
    checker_for_slot,
    decide,
    record_served,
    record_verdict,
    should_audit,
)
from gpupool.verify.suspension_rule import (
    DEFAULT_SUSPENSION,
    DESIGN_FALSE_POSITIVE_RATE,
    Decision,
    SuspensionPolicy,
    choose_k_m,
    p_honest_suspended,
    p_honest_suspended_bound,
    requests_until_suspension,
    suspension,
    suspension_cdf,
)
from gpupool.verify.judgement import PASS, Judgement, combine, fail

_LAZY = {
    "comparators": (
        "DEFAULT_EMBEDDING_THRESHOLD", "DEFAULT_LOGPROB_TOLERANCE", "DEFAULT_TIE_MARGIN",
        "GreedyReport", "Usage", "calibrate_threshold", "check_end", "check_sampled_plausibility",
        "check_usage", "compare_embeddings", "compare_greedy", "compare_greedy_report",
        "compare_sampled_replay", "cosine_similarities",
    ),
    "hardware": (
        "Challenge", "Commitment", "HardwareAnswer", "HardwareVerdict", "Solution",
        "answer_from", "check", "commit", "make_challenge", "open_rows", "pick_rows", "solve",
    ),
}


def __getattr__(name: str) -> Any:
    # numpy-backed modules load on first use (PEP 562), so `import gpupool.verify` stays
    # cheap and works in a gateway installed without the ml extra.
    import importlib

    for module, names in _LAZY.items():
        if name in names:
            return getattr(importlib.import_module(f"gpupool.verify.{module}"), name)
    raise AttributeError(f"module 'gpupool.verify' has no attribute {name!r}")


__all__ = [
    "DEFAULT_REPUTATION", "DEFAULT_SAMPLING", "DEFAULT_SUSPENSION", "DESIGN_FALSE_POSITIVE_RATE",
    "PASS", "AuditRecord", "Decision", "Event", "Reputation", "ReputationPolicy",
    "SamplingPolicy", "SuspensionPolicy", "Judgement", "audit_draw", "audit_rate", "beta_params", "checker_for_slot", "decide",
    "choose_k_m", "combine", "event_for", "fail", "from_record", "lower_bound", "observe",
    "observe_verdict", "p_honest_suspended", "p_honest_suspended_bound", "record_bytes",
    "record_served", "record_verdict", "requests_until_suspension", "score", "should_audit",
    "suspension", "suspension_cdf", "to_record",
    *_LAZY["comparators"], *_LAZY["hardware"],
]
