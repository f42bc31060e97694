"""Checker role: processes that hold reference models and judge audited requests.

    from gpupool.checker import CheckerAgent, sign_verdict
    from gpupool.verify.judging import judge
    judgement = await judge(reference_backend, audit_job)     # gpupool.verify.Judgement
    wire = sign_verdict(identity, audit_job, judgement)        # signed protocol.Verdict

`agent` has the agent, its gateway links and verdict signing (the judging itself is
`gpupool.verify.judging`); `metrics` its Prometheus collector; `runner` builds a
checker from `CheckerSettings` (`gpupool checker --gateway … --serve NAME=BACKEND:SPEC`).
Importing this package does not load torch; starting a reference backend does.
"""

from __future__ import annotations

from gpupool.checker.agent import CheckerAgent, CheckerLink, sign_verdict

__all__ = ["CheckerAgent", "CheckerLink", "sign_verdict"]
