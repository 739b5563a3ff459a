"""The published OpenAPI document: what FastAPI derives from the routes (with the bearer
schemes of ``auth`` and ``inbox_auth``), each operation's summary and description from its
function's docstring, plus what it cannot know — the real error body
for every 4xx and 5xx, the ``Idempotency-Key`` header, stable operation ids
(``<module>_<function>``), the provider body as a union discriminated on ``kind``
(``provider_schemas``) and, as ``x-scopes``, the API key scopes that allow each operation
(any one of them)."""

from __future__ import annotations

import inspect
import json
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from clarion.api import provider_schemas
from clarion.api.auth import SCOPES_OF

ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "description": 'Every 4xx and 5xx answer: `{"error": {"code", "message", "details"}}`.',
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {
                    "type": "string",
                    "description": "Machine-readable: `validation_error`, `not_found`, ...",
                    "examples": ["validation_error"],
                },
                "message": {"type": "string"},
                "details": {"type": "array", "items": {}},
            },
        }
    },
    "examples": [
        {
            "error": {
                "code": "validation_error",
                "message": "the request is not valid",
                "details": [{"field": "to", "message": "Field required", "type": "missing"}],
            }
        }
    ],
}
_DESCRIPTIONS = {
    "400": "Malformed input (`bad_request`, `invalid_input`)",
    "401": "No API key, or not a valid one",
    "403": "The key lacks the scope this operation needs",
    "404": "No such object for this tenant",
    "409": "Conflict (`idempotency_conflict`, ...)",
    "413": "The request body is over 512 KiB",
    "422": "The request is not valid (`validation_error` and more specific codes)",
    "429": "Rate limited; `Retry-After` says when to try again",
    "503": "Temporarily unavailable; `Retry-After` says when to try again",
}
_AUTHENTICATED = ("401", "403", "429", "503")
# POSTs that create things and honour the header (see clarion.api.idempotency).
IDEMPOTENT = {
    "/v1/notifications",
    "/v1/notifications/batch",
    "/v1/recipients/batch",
    "/v1/dead-letters/replay",
    "/v1/dead-letters/{delivery_id}/replay",
}
IDEMPOTENCY_HEADER: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Repeating a request with the same key and body returns the original "
    "response; the same key with another body is a 409 `idempotency_conflict`. Kept at "
    "least 24 hours.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}


def operation_id(route: APIRoute) -> str:
    """``<router module>_<function name>``: stable while the code is. A route declared
    for a module by shared code (api/named_routes.py) carries the id it has there."""
    return route.operation_id or operation_id_of(route.endpoint.__module__, route.name)


def operation_id_of(module: str, function: str) -> str:
    """The operation id of the route that the function ``function`` of ``module`` is."""
    return f"{module.rsplit('.', 1)[-1]}_{function}"


def api_routes(routes: list[BaseRoute]) -> list[APIRoute]:
    """Every API route of ``routes``, those of included routers too."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        included = getattr(route, "original_router", None)  # an included router
        if included is not None:
            found += api_routes(included.routes)
    return found


def _scopes(dependant: Dependant) -> list[str]:
    """The scopes the first ``require`` dependency of a route allows ([] for none)."""
    for sub in dependant.dependencies:
        allowed = SCOPES_OF.get(sub.call) if sub.call is not None else None
        if allowed is not None:
            return list(allowed)
        found = _scopes(sub)
        if found:
            return found
    return []


def _document_errors(operation: dict[str, Any], path: str, method: str, secured: bool) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    codes = {"400", "422"}
    if secured:
        codes.update(_AUTHENTICATED)
    if "{" in path or secured:
        codes.add("404")
    if method in ("post", "put", "patch"):
        codes.add("413")
    for code in sorted(codes | {c for c in responses if c[0] in "45"}):
        entry = responses.setdefault(code, {"description": _DESCRIPTIONS.get(code, "Error")})
        entry["content"] = {"application/json": {"schema": ERROR_REF}}


def _describe(operation: dict[str, Any], route: APIRoute) -> None:
    """An operation declared without a summary is described by its function's docstring:
    the first paragraph, without its full stop, is the summary; the paragraphs after it are
    the description (unless the route declares its own), each on one line. FastAPI alone
    would make the whole docstring the description."""
    doc = inspect.cleandoc(route.endpoint.__doc__ or "")
    if route.summary or not doc:
        return
    summary, *paragraphs = [" ".join(p.split()) for p in doc.split("\n\n")]
    operation["summary"] = summary.removesuffix(".")
    if operation.get("description") != doc:
        return  # declared with the route
    if paragraphs:
        operation["description"] = "\n\n".join(paragraphs)
    else:
        del operation["description"]


def build(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = ERROR_SCHEMA
    schemas.update(provider_schemas.components())
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            _document_errors(operation, path, method, bool(operation.get("security")))
            if method == "post" and path in IDEMPOTENT:
                parameters = operation.setdefault("parameters", [])
                if not any(p.get("name") == "Idempotency-Key" for p in parameters):
                    parameters.append(IDEMPOTENCY_HEADER)
    routes = {operation_id(r): r for r in api_routes(app.routes)}
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            route = routes.get(operation.get("operationId", ""))
            if route is None:
                continue
            _describe(operation, route)
            allowed = _scopes(route.dependant)
            if allowed:
                operation["x-scopes"] = allowed
    _drop_unused(schemas, schema)
    return schema


def _drop_unused(schemas: dict[str, Any], document: dict[str, Any]) -> None:
    """Remove the loose ``ProviderIn`` FastAPI documents for the body it reads, now that
    the operation points at the union instead."""
    if '"#/components/schemas/ProviderIn"' not in json.dumps(document):
        schemas.pop("ProviderIn", None)


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
