"""The published OpenAPI document says what the API does: the real error body, the bearer
schemes, stable operation ids, the ``Idempotency-Key`` header and response models."""

from __future__ import annotations

from typing import Any

from harness import Harness


async def _doc(app: Harness) -> dict[str, Any]:
    response = await app.client.get("/openapi.json")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items()]


async def test_errors_are_documented_as_the_error_body(lite: Harness) -> None:
    doc = await _doc(lite)
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert schemas["Error"]["required"] == ["error"]
    for method, path, op in _operations(doc):
        errors = {code: r for code, r in op["responses"].items() if code[0] in "45"}
        assert {"400", "422"} <= set(errors), (method, path)
        for code, response in errors.items():
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, code)


async def test_security_schemes_and_operation_ids(lite: Harness) -> None:
    doc = await _doc(lite)
    schemes = doc["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `Authorization: Bearer <key>`",
    }
    assert schemes["RecipientToken"]["scheme"] == "bearer"
    ops = {(m, p): op for m, p, op in _operations(doc)}
    assert ops["post", "/v1/notifications"]["security"] == [{"HTTPBearer": []}]
    assert ops["get", "/v1/inbox"]["security"] == [{"RecipientToken": []}]
    assert "security" not in ops["get", "/healthz"]
    ids = [op["operationId"] for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert ops["post", "/v1/notifications"]["operationId"] == "notifications_create"
    assert ops["get", "/v1/deliveries"]["operationId"] == "message_log_list_deliveries"


async def test_idempotency_header_and_response_models(lite: Harness) -> None:
    doc = await _doc(lite)
    ops = {(m, p): op for m, p, op in _operations(doc)}
    for path in ("/v1/notifications", "/v1/notifications/batch", "/v1/recipients/batch"):
        names = [p["name"] for p in ops["post", path].get("parameters", [])]
        assert "Idempotency-Key" in names, path
    # Every JSON answer has a model (204s have no body; the SSE stream is not JSON).
    for (method, path), op in ops.items():
        for status, response in op["responses"].items():
            if status.startswith("2") and "application/json" in response.get("content", {}):
                schema = response["content"]["application/json"]["schema"]
                assert "$ref" in schema, (method, path, status)


async def test_an_overlong_idempotency_key_is_refused(lite: Harness) -> None:
    await lite.put_recipient("u", email="u@example.com")
    await lite.put_template("t", {"channels": {"email": {"subject": "s", "text": "t"}}})
    body = {"template": "t", "to": {"recipient_id": "u"}}
    response = await lite.send(body, headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    response = await lite.send(body, headers={"Idempotency-Key": "k" * 255})
    assert response.status_code == 202
