"""Every error leaves as ``{"error": {"code", "message", "details"}}``, never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from clarion.api.responses import JSONResponse
from clarion.errors import ApiError
from clarion.observability import metrics
from clarion.observability.outages import outage_of
from clarion.store.batching import DATABASE_ERRORS, DRIVER_ERRORS, is_outage

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}
RETRY_AFTER_UNAVAILABLE = "5"


def error_body(code: str, message: str, details: list[Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def api_error_response(exc: ApiError) -> JSONResponse:
    headers = dict(exc.headers)
    if exc.status == 503:
        headers.setdefault("Retry-After", RETRY_AFTER_UNAVAILABLE)
    return JSONResponse(
        error_body(exc.code, exc.message, exc.details), status_code=exc.status, headers=headers
    )


def describe_validation(errors: list[Any]) -> list[dict[str, Any]]:
    details = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ()) if part not in ("body",)]
        details.append(
            {"field": ".".join(loc), "message": error.get("msg", ""), "type": error.get("type", "")}
        )
    return details


def _refused(request: Request, code: str) -> None:
    """A request to send refused whole (counted once, whatever it held)."""
    if request.method == "POST" and request.url.path.startswith("/v1/notifications"):
        metrics.refused(code)


def _unavailable_response(exc: BaseException) -> JSONResponse:
    """A 503 naming the component that failed (the database, the broker, the rate
    limiter...) and its server, in the log line, the message and the details."""
    outage = outage_of(exc)
    log.warning("%s unavailable: %r", outage, exc)
    return error_response(
        503,
        "unavailable",
        f"the {outage} is unavailable; try again shortly",
        [{"component": outage.component, "server": outage.server}],
        headers={"Retry-After": RETRY_AFTER_UNAVAILABLE},
    )


def _internal_response(exc: BaseException) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "an internal error occurred")


_OUTAGES = (*DATABASE_ERRORS, OSError, TimeoutError, RedisError)


def response_for(exc: Exception) -> tuple[JSONResponse, str | None]:
    """The answer to an exception a handler raised, and the refusal code to count (None for
    an internal error). The same mapping as the app's exception handlers below, for code
    that answers without FastAPI (``api/send_one.py``)."""
    if isinstance(exc, ApiError):
        return api_error_response(exc), exc.code
    if isinstance(exc, _OUTAGES):
        return _unavailable_response(exc), "unavailable"
    if isinstance(exc, DRIVER_ERRORS) and is_outage(exc):
        return _unavailable_response(exc), "unavailable"
    return _internal_response(exc), None


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        _refused(request, exc.code)
        return api_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            _refused(request, "invalid_json")
            return invalid_json_response()
        _refused(request, "validation_error")
        return validation_response(errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "error")
        _refused(request, code)
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_response(exc.status_code, code, message, headers=dict(exc.headers or {}))

    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        _refused(request, "unavailable")
        return _unavailable_response(exc)

    async def _driver(request: Request, exc: Exception) -> JSONResponse:
        # The hot statements run on asyncpg directly (store/pg.py).
        if is_outage(exc):
            return await _unavailable(request, exc)
        return await _internal(request, exc)

    for outage in _OUTAGES:
        app.add_exception_handler(outage, _unavailable)
    for error in DRIVER_ERRORS:
        app.add_exception_handler(error, _driver)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return _internal_response(exc)


def invalid_json_response() -> JSONResponse:
    return error_response(400, "invalid_json", "the request body is not valid JSON")


def validation_response(errors: list[Any]) -> JSONResponse:
    return error_response(
        422, "validation_error", "the request is not valid", describe_validation(errors)
    )
