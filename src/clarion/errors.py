"""Clarion's error tree.

    ClarionError
    ├── ApiError                 an HTTP-facing error with a status and a code
    │   ├── ValidationFailed     422 validation_error
    │   ├── NotFound             404 not_found
    │   ├── Conflict             409 (idempotency_conflict, ...)
    │   ├── Unauthorized         401
    │   ├── Forbidden            403
    │   ├── TooManyRequests      429 rate_limited, with Retry-After
    │   └── Unavailable          503, with Retry-After
    ├── TemplateError            a template that cannot be stored or rendered
    │   └── MissingVariable
    └── ProviderError            a failed send
        ├── TransientError       worth retrying (timeouts, 429, 5xx), maybe after retry_after
        └── PermanentError       never worth retrying (invalid address, rejected content)

Foreign exceptions are converted at the boundary where they enter (``raise ... from exc``).
"""

from __future__ import annotations

from typing import Any


class ClarionError(Exception):
    """Base of every error Clarion raises on purpose."""


class ApiError(ClarionError):
    """An error the API answers with ``status`` and an error body naming ``code``. A
    subclass gives them as class keywords (``class NotFound(ApiError, status=404,
    code="not_found")``), or inherits its parent's; ``code=`` at a raise overrides both."""

    status = 400
    code = "bad_request"

    def __init_subclass__(
        cls, *, status: int | None = None, code: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if code is not None:
            cls.code = code

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: list[Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details or []
        self.headers = headers or {}


class BadRequest(ApiError, status=400, code="bad_request"): ...


class ValidationFailed(ApiError, status=422, code="validation_error"): ...


class NotFound(ApiError, status=404, code="not_found"): ...


class Conflict(ApiError, status=409, code="conflict"): ...


class Unauthorized(ApiError, status=401, code="unauthorized"): ...


class Forbidden(ApiError, status=403, code="forbidden"): ...


class PayloadTooLarge(ApiError, status=413, code="payload_too_large"): ...


class TooManyRequests(ApiError, status=429, code="rate_limited"):
    """429; carries ``Retry-After`` and the ``RateLimit-*`` headers."""


class Unavailable(ApiError, status=503, code="unavailable"): ...


class TemplateError(ClarionError):
    """A template that cannot be compiled, or cannot be rendered with the data given."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


class MissingVariable(TemplateError):
    def __init__(self, name: str) -> None:
        super().__init__(f"the template uses {name!r}, which the data lacks")
        self.name = name


class ProviderError(ClarionError):
    """A send that did not succeed. ``reason`` is a short machine-readable cause."""

    def __init__(self, message: str, *, reason: str = "provider_error") -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


class TransientError(ProviderError):
    def __init__(
        self, message: str, *, reason: str = "provider_error", retry_after: float | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after


class PermanentError(ProviderError):
    """``dead_address``: the token or subscription the service says is gone for good; the
    worker removes it from the recipient."""

    def __init__(
        self, message: str, *, reason: str = "provider_rejected", dead_address: Any = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.dead_address = dead_address


def error_class(exc: BaseException) -> str:
    """The class of a failed attempt's error, as timelines and logs show it: ``timeout``,
    ``transient``, ``permanent``, or ``internal`` (an unforeseen exception)."""
    if isinstance(exc, TransientError):
        return "timeout" if exc.reason == "timeout" else "transient"
    if isinstance(exc, PermanentError):
        return "permanent"
    if isinstance(exc, ProviderError):
        return "transient"
    return "internal"
