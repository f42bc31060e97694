"""Per-request probes: what a route or the dispatcher tells the metrics about the request it serves.

    note_model(model)                  # the request is for this model (label)
    note_request(model, outcome, tokens_in, tokens_out, cost_ucr)
    note_first_token()                 # a stream's first token reached the client
    note_routing("failover")           # retry / hedge / stream_continuation / fallback
    note_limit_hit("rpm")              # a per-key limit refused a request

Each writes into the current request's `RequestProbe`, a context variable that the
metrics middleware (`gateway/web/metrics.py`) sets for every HTTP request and reads when
it ends; outside a request (a batch item, a canary) they do nothing. Kept apart from
the middleware and the scrape-time collector so that the low rooms (dispatch, fallback)
can report without importing what needs the whole gateway.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextvars import ContextVar

from prometheus_client import Counter


class RequestProbe:
    """What one request's handlers told the middleware (see the `note_*` functions)."""

    __slots__ = ("routing", "extra_limit_hits", "started", "model", "outcome", "tokens_in", "tokens_out", "cost",
                 "ttft", "status", "complete")

    def __init__(self, routing: Mapping[str, Counter], extra_limit_hits: dict[str, int], started: float):
        self.routing = routing  # decision -> its counter (`DECISIONS` and "other")
        self.extra_limit_hits = extra_limit_hits
        self.started = started
        self.model = ""
        self.outcome = ""
        self.tokens_in = self.tokens_out = self.cost = 0
        self.ttft: float | None = None
        self.status = 500  # until the response starts: an exception before that is a 500
        self.complete = False  # the last body message went out (else the client left mid-answer)


CURRENT: ContextVar[RequestProbe | None] = ContextVar("gpupool_request_metrics", default=None)


# ------------------------------------------------------------------ what routes call


def note_model(model: str) -> None:
    """The current request asks for `model` (labels its metrics once it ends)."""
    rec = CURRENT.get()
    if rec is not None:
        rec.model = model


def note_request(model: str, outcome: str, tokens_in: int, tokens_out: int, cost: int) -> None:
    """The current request ended: outcome ok/error/cancelled, its usage and what it was charged (µcr)."""
    rec = CURRENT.get()
    if rec is not None:
        rec.model, rec.outcome, rec.tokens_in, rec.tokens_out, rec.cost = model, outcome, tokens_in, tokens_out, cost


def note_first_token() -> None:
    """A stream's first token is on its way to the client (time-to-first-token ends here)."""
    rec = CURRENT.get()
    if rec is not None and rec.ttft is None:
        rec.ttft = time.perf_counter() - rec.started


def note_routing(decision: str) -> None:
    """Count a routing decision for the current request: one of `web/metrics.py`'s `DECISIONS`."""
    rec = CURRENT.get()
    if rec is not None:
        rec.routing[decision if decision in rec.routing else "other"].inc()


def note_limit_hit(limit: str) -> None:
    """Count a request a per-key limit refused (`gpupool_limit_hits_total{limit=...}`).

    Limits the quota module refuses are counted from `Quotas.refused` at scrape time;
    call this for any other limit (the label is kept to `LIMITS` plus what is noted here,
    at most 20 names)."""
    rec = CURRENT.get()
    if rec is not None:
        extra = rec.extra_limit_hits
        if limit in extra or len(extra) < 20:
            extra[limit] = extra.get(limit, 0) + 1
        else:
            extra["other"] = extra.get("other", 0) + 1
