"""One record per answered request: the store's request log, the metrics probe and the `-v` log line."""

from __future__ import annotations

import logging
import time

from gpupool.gateway.probes import note_request
from gpupool.gateway.store import ApiKey, Store
from gpupool.logs import REQUESTS, request_line

REQUEST_LOG = logging.getLogger(REQUESTS)


def log_request(store: Store, rid: str, key: ApiKey, model: str, provider: str, status: str, attempts: int,
                prompt: int, completion: int, started: float, cost: int, images: int = 0, image_cost: int = 0) -> None:
    note_request(model, status, prompt, completion, cost)
    latency_ms = (time.monotonic() - started) * 1000
    store.record_request(request_id=rid, at=time.time(), key_id=key.id, account=key.account, model=model,
                         provider=provider, status=status, attempts=attempts, prompt_tokens=prompt,
                         completion_tokens=completion, latency_ms=latency_ms, cost=cost, images=images,
                         image_cost=image_cost)
    # One line per request with -v / --log-requests (gpupool/logs.py); a no-op otherwise.
    request_line(REQUEST_LOG, request_id=rid, key=key.name, model=model, provider=provider[:14], status=status,
                 attempts=attempts, tokens=f"{prompt}+{completion}", latency_ms=round(latency_ms, 1), cost_ucr=cost)
