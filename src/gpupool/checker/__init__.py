"""Checker role: processes that hold reference models and judge audited requests.

    from gpupool.checker import judge, sign_verdict, CheckerAgent
    judgement = await judge(reference_backend, audit_job)     # gpupool.verify.Verdict
    wire = sign_verdict(identity, audit_job, judgement)        # signed protocol.Verdict

`agent` has the judging logic and the gateway links; `runner` builds a checker from
`CheckerSettings` (`gpupool checker --gateway … --serve NAME=BACKEND:SPEC`). Importing
this package does not load torch; starting a reference backend does.
"""

from __future__ import annotations

from gpupool.checker.agent import HARD_DIVERGENCE_FRACTION, CheckerAgent, CheckerLink, judge, sign_verdict

__all__ = ["CheckerAgent", "CheckerLink", "HARD_DIVERGENCE_FRACTION", "judge", "sign_verdict"]
