"""The client's errors.

ClarionError
├── APIConnectionError          the server could not be reached (after the retries)
├── SignatureVerificationError  a webhook's Clarion-Signature does not check out
└── APIError                    the API answered with an error (``code`` is its code)
    ├── BadRequestError         400
    ├── AuthenticationError     401
    ├── PermissionDeniedError   403
    ├── NotFoundError           404
    ├── ConflictError           409 (``idempotency_conflict``, ...)
    ├── PayloadTooLargeError    413
    ├── UnprocessableError      422 (``validation_error``, ``unknown_template``, ...)
    ├── RateLimitError          429, with ``retry_after``
    ├── ServiceUnavailableError 503, with ``retry_after``
    └── ServerError             any other 5xx
"""

from __future__ import annotations

from typing import Any

import httpx


class ClarionError(Exception):
    """Base of every error this client raises."""


class APIConnectionError(ClarionError):
    """The request did not get an answer (connection refused, timed out, ...)."""


class SignatureVerificationError(ClarionError):
    """A webhook request whose signature is missing, wrong or too old."""


class APIError(ClarionError):
    """An error answer: ``status`` (HTTP), ``code`` (the API's, e.g. ``not_found``),
    ``message``, ``details`` and the response's headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: list[Any] | None = None,
        headers: httpx.Headers | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or httpx.Headers()

    @property
    def retry_after(self) -> float | None:
        """Seconds the server asked to wait (``Retry-After``), if it said."""
        from clarion_client._retry import parse_retry_after

        return parse_retry_after(self.headers.get("retry-after"))


class BadRequestError(APIError):
    pass


class AuthenticationError(APIError):
    pass


class PermissionDeniedError(APIError):
    pass


class NotFoundError(APIError):
    pass


class ConflictError(APIError):
    pass


class PayloadTooLargeError(APIError):
    pass


class UnprocessableError(APIError):
    pass


class RateLimitError(APIError):
    pass


class ServiceUnavailableError(APIError):
    pass


class ServerError(APIError):
    pass


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for an error answer, from its ``{"error": {...}}`` body."""
    code, message, details = f"http_{response.status_code}", response.reason_phrase, []
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = str(error.get("code") or code)
        message = str(error.get("message") or message)
        found = error.get("details")
        details = found if isinstance(found, list) else []
    default = ServerError if response.status_code >= 500 else APIError
    kind = _BY_STATUS.get(response.status_code, default)
    return kind(response.status_code, code, message, details, response.headers)
