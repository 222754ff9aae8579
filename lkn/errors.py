"""Errors lkn itself produces, and how each becomes an OpenAI-shaped HTTP answer.

The tree::

    LknError                      500 server_error
    ├── BadRequest                400 invalid_request_error
    │   └── ContextLengthExceeded 400 invalid_request_error / context_length_exceeded
    ├── Unauthorized              401 authentication_error
    ├── Forbidden                 403 permission_error (the admin API off loopback, no keys)
    ├── RequestTimeout            408 invalid_request_error / request_timeout (body too slow)
    ├── PayloadTooLarge           413 invalid_request_error / request_too_large
    ├── UnsupportedMediaType      415 invalid_request_error (a JSON route, not JSON)
    ├── ModelNotFound             404 invalid_request_error / model_not_found
    ├── QueueFull                 429 rate_limit_error (Retry-After)
    ├── Overloaded                503 server_error / overloaded (max_in_flight; Retry-After)
    ├── EngineUnavailable         503 engine_unavailable (start failed, crashed, shutting down)
    ├── Cancelled                 503 server_error / request_cancelled (by an operator)
    ├── UpstreamError             502 upstream_error (engine unreachable or broke mid-answer)
    └── GatewayTimeout            504 timeout

Every body carries ``"source": "lkn"`` inside ``error`` and the response carries the header
``x-lkn-error-source: lkn``, so a client can tell lkn's errors from errors the engine produced
(those are relayed with ``x-lkn-error-source: engine``).

``x-should-retry`` is set deliberately: the openai SDK retries every 5xx three times by default,
which is wrong for an engine that cannot start (each retry would reload weights) and right for a
full queue or a timeout.
"""
from __future__ import annotations

from typing import Any

ERROR_SOURCE_HEADER = "x-lkn-error-source"


class LknError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None
    should_retry: bool | None = None
    close_connection = False  # the connection is closed after the answer (an unread body)

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.extra_headers = dict(headers or {})

    def body(self, request_id: str = "") -> dict[str, Any]:
        error = {"message": self.message, "type": self.type, "param": self.param,
                 "code": self.code, "source": "lkn"}
        if request_id:
            error["request_id"] = request_id
        return {"error": error}

    def headers(self) -> dict[str, str]:
        h = {ERROR_SOURCE_HEADER: "lkn"}
        if self.should_retry is not None:
            h["x-should-retry"] = "true" if self.should_retry else "false"
        h.update(self.extra_headers)
        return h


class BadRequest(LknError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(BadRequest):
    code = "context_length_exceeded"


class Unauthorized(LknError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(LknError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class RequestTimeout(LknError):
    """The client did not send its whole body within ``server.body_timeout_s``."""
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"
    close_connection = True


class PayloadTooLarge(LknError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    close_connection = True


class UnsupportedMediaType(LknError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class Overloaded(LknError):
    """More requests are being read or served than ``server.max_in_flight``."""
    status = 503
    type = "server_error"
    code = "overloaded"
    should_retry = True


class ModelNotFound(LknError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class QueueFull(LknError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"
    should_retry = True


class EngineUnavailable(LknError):
    status = 503
    type = "engine_unavailable"
    code = "engine_unavailable"
    should_retry = False


class UpstreamError(LknError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"
    should_retry = False


class EngineUnreachable(UpstreamError):
    """The connection to the engine was refused or failed: the request never reached it, so
    trying it again on a restarted engine replays nothing the engine saw."""


class Cancelled(LknError):
    """An operator cancelled the request (``POST /admin/requests/{id}/cancel``)."""
    status = 503
    type = "server_error"
    code = "request_cancelled"
    should_retry = False


class GatewayTimeout(LknError):
    status = 504
    type = "timeout"
    code = "timeout"
    should_retry = False


class ConfigError(Exception):
    """A configuration problem; the message names the key path and the bad value. ``errors``
    lists every problem found (a whole file is checked before it is refused)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.errors = [message]

    @classmethod
    def listing(cls, errors: list[str]) -> ConfigError:
        if len(errors) == 1:
            return cls(errors[0])
        exc = cls(f"{len(errors)} errors: " + "; ".join(errors))
        exc.errors = list(errors)
        return exc
