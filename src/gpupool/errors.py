"""One small exception hierarchy, each error mapped to one OpenAI-format error body.

    GpupoolError                     500 server_error
    ├── InvalidRequest               400 invalid_request_error
    ├── AuthenticationFailed         401 authentication_error (invalid_api_key)
    ├── PaymentRequired              402 insufficient_quota (balance cannot cover the hold)
    ├── ModelNotFound                404 invalid_request_error (model_not_found)
    ├── NotFound                     404 invalid_request_error (not_found: a file or batch, or another account's)
    ├── BodyTooLarge                 413 invalid_request_error (request_too_large)
    ├── NoCapacity                   429 rate_limit_error (no_capacity; Retry-After)
    ├── RateLimited                  429 rate_limit_exceeded (a key's own limit; Retry-After)
    ├── ProviderFailed               502 server_error (provider_error)
    ├── NoProvider                   503 service_unavailable (no_provider)
    └── Timeout                      504 timeout (timeout)

Routes raise these; one handler in the gateway turns them into
`{"error": {"message", "type", "param", "code"}}` with the status below.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GpupoolError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code  # type: ignore[misc]

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GpupoolError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(GpupoolError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PaymentRequired(GpupoolError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_quota"


class ModelNotFound(GpupoolError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(GpupoolError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class BodyTooLarge(GpupoolError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class NoCapacity(GpupoolError):
    """Every provider that could serve the request is busy (or the key holds its fair share).

    Always carries a Retry-After: slots free up within seconds, and the official clients
    wait that long before they retry."""

    status = 429
    type = "rate_limit_error"
    code = "no_capacity"

    def __init__(self, message: str, *, retry_after_s: float = 1.0, code: str | None = None, hold_s: float = 0.0):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s
        self.hold_s = hold_s  # the gateway holds the answer back this long (the client ignored a Retry-After)


class RateLimited(GpupoolError):
    """The key is over one of its limits (requests/min, tokens/min, concurrency, fair share).

    `retry_after_s` becomes the response's Retry-After header."""

    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None, hold_s: float = 0.0):
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s
        self.hold_s = hold_s  # the gateway holds the answer back this long (the client ignored a Retry-After)


class ProviderFailed(GpupoolError):
    status = 502
    type = "server_error"
    code = "provider_error"


class NoProvider(GpupoolError):
    status = 503
    type = "service_unavailable"
    code = "no_provider"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 retry_after_s: float | None = None):
        super().__init__(message, param=param, code=code)
        if retry_after_s is not None:  # becomes the response's Retry-After header
            self.retry_after_s = retry_after_s


class Timeout(GpupoolError):
    status = 504
    type = "timeout"
    code = "timeout"


class StartupError(Exception):
    """A process cannot start for a reason its operator can fix (no model loaded, port in use).

    Not an HTTP error: the CLI prints its message as one line and exits with status 1.
    """
