"""Every error leaves as an OpenAI error body, from this one handler (the app registers it for all).

A refused request that should wait (429s to clients that flood or ignore Retry-After) is
held back here before its answer goes out. (Failed keys were already counted against the
caller's address before the route ran: money/anonymous_limits.py.)
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from gpupool import errors
from gpupool.gateway.edge.http import JSON, ClientGone, error_response
from gpupool.gateway.web.context import Gateway
from gpupool.logs import REQUESTS, request_line

log = logging.getLogger("gpupool.gateway")
REQUEST_LOG = logging.getLogger(REQUESTS)


async def on_error(gw: Gateway, request: Request, exc: Exception) -> Response:
    if isinstance(exc, (ClientGone, ClientDisconnect)):
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    if isinstance(exc, (errors.RateLimited, errors.NoCapacity)):
        if exc.hold_s > 0:
            # What the refused request read and parsed (its body, its prompt) need not wait
            # with it: a flood of big refused requests would otherwise hold megabytes.
            exc.__traceback__ = None
            request.__dict__.pop("_body", None)
        await gw.holdback.hold(exc.hold_s)
    if isinstance(exc, errors.GpupoolError):
        # Refused requests get their line too (-v): a 402 or 429 is what an operator looks for.
        request_line(REQUEST_LOG, request_id="-", path=request.url.path[:100], status=exc.status,
                     error=exc.code or exc.type, param=exc.param)
        return error_response(exc)
    if isinstance(exc, HTTPException):
        return JSON({"error": {"message": str(exc.detail), "type": "invalid_request_error",
                               "param": None, "code": None}}, status_code=exc.status_code)
    log.exception("unhandled error", exc_info=exc)
    return error_response(errors.GpupoolError("internal gateway error"))
