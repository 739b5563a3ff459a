"""The published OpenAPI document says what the API does: the real error body, the bearer
schemes, stable operation ids, the ``Idempotency-Key`` header and response models."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema_rs
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from clarion.providers.kinds import CONFIGURABLE, KINDS
from harness import Harness
from test_providers_api import VALID
from test_providers_api import body as provider_body
from test_providers_api import put as put_provider


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
    assert ops["get", "/v1/keys"]["operationId"] == "keys_list_keys"
    assert ops["post", "/v1/keys"]["operationId"] == "keys_create"
    assert ops["delete", "/v1/keys/{key_id}"]["operationId"] == "keys_revoke"


async def test_api_keys_are_documented(lite: Harness) -> None:
    doc = await _doc(lite)
    schemas = doc["components"]["schemas"]
    create = doc["paths"]["/v1/keys"]["post"]
    made = create["responses"]["201"]["content"]["application/json"]["schema"]
    assert made == {"$ref": "#/components/schemas/ApiKeyCreated"}
    assert "secret" in schemas["ApiKeyCreated"]["required"]
    assert "secret" not in schemas["ApiKeyOut"]["properties"]
    # The answer holds a secret that is not kept: no replay, so no Idempotency-Key.
    assert "Idempotency-Key" not in [p["name"] for p in create.get("parameters", [])]
    revoke = doc["paths"]["/v1/keys/{key_id}"]["delete"]
    assert {"204", "404", "409"} <= set(revoke["responses"])
    body = create["requestBody"]["content"]["application/json"]["schema"]
    scopes = schemas[body["$ref"].rsplit("/", 1)[-1]]["properties"]["scopes"]
    assert scopes["items"] == {"$ref": "#/components/schemas/Scope"}
    assert schemas["Scope"]["enum"] == ["send", "read", "manage", "admin"]


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


async def test_summaries_and_descriptions_come_from_docstrings(lite: Harness) -> None:
    doc = await _doc(lite)
    ops = {(m, p): op for m, p, op in _operations(doc)}
    # The docstring's first paragraph, without its full stop; no description repeats it.
    for (method, path), op in ops.items():
        summary = op["summary"]
        assert not summary.endswith("."), (method, path)
        assert not op.get("description", "").startswith(summary), (method, path)
    assert ops["get", "/v1/categories/{name}"]["summary"] == "A category"
    assert "description" not in ops["get", "/v1/categories/{name}"]
    # The paragraphs after it are the description, each on one line.
    cancel = ops["delete", "/v1/notifications/{notification_id}"]
    assert cancel["summary"] == "Cancel what is not sent yet"
    assert cancel["description"].startswith("Deliveries still `queued` or `scheduled` are ")
    assert "\n" not in cancel["description"]
    # A description the route declares (made from constants) stays the route's.
    assert ops["get", "/v1/stats"]["description"].startswith("Of the deliveries created in ")


async def test_an_overlong_idempotency_key_is_refused(lite: Harness) -> None:
    await lite.put_recipient("u", email="u@example.com")
    await lite.put_template("t", {"channels": {"email": {"subject": "s", "text": "t"}}})
    body = {"template": "t", "to": {"recipient_id": "u"}}
    response = await lite.send(body, headers={"Idempotency-Key": "k" * 256})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    response = await lite.send(body, headers={"Idempotency-Key": "k" * 255})
    assert response.status_code == 202


# -- provider bodies: a union discriminated on `kind` ----------------------------------------

# Config fields whose checks a JSON schema cannot state (an address parsed, a URL's scheme,
# key material loaded): a body valid under the published schema may still be refused there.
SEMANTIC = {
    # Fields sent in a header or as an address: no control characters (header rules).
    "config.host",
    "config.username",
    "config.access_key_id",
    "config.api_key",
    "config.topic",
    "config.vapid_subject",
    "config.from",
    "config.return_path",
    "config.base_url",
    "config.token_url",
    "config.ca_pem",
    "config.private_key",
    "config.service_account",
    "config.vapid_private_key",
    # A proxy URL, parsed (its scheme, host and port).
    "config.proxy",
    # Chat kinds: tokens checked for their form, URLs for being web URLs (https).
    "config.token",
    "config.bot_token",
    "config.webhook_url",
    "config.avatar_url",
    "config.icon_url",
    "config.webhook_public_key",
    # WhatsApp: the Cloud API's access token is sent in a header.
    "config.access_token",
}


def _validator(doc: dict[str, Any], name: str) -> Any:
    root = {"components": doc["components"], "$ref": f"#/components/schemas/{name}"}
    return jsonschema_rs.validator_for(root)


async def test_provider_bodies_are_a_union_on_kind(lite: Harness) -> None:
    doc = await _doc(lite)
    schemas = doc["components"]["schemas"]
    put = doc["paths"]["/v1/providers/{name}"]["put"]
    body = put["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ProviderRequest"}
    assert put["requestBody"]["required"] is True
    assert "ProviderIn" not in schemas
    union = schemas["ProviderRequest"]
    assert union["discriminator"]["propertyName"] == "kind"
    mapping = union["discriminator"]["mapping"]
    assert set(mapping) == CONFIGURABLE
    assert sorted(r["$ref"] for r in union["oneOf"]) == sorted(mapping.values())
    for kind, ref in mapping.items():
        one = schemas[ref.rsplit("/", 1)[-1]]
        assert one["properties"]["kind"]["const"] == kind
        channel = one["properties"]["channel"]
        assert set(channel.get("enum", [channel.get("const")])) == KINDS[kind].channels
        assert one["additionalProperties"] is False
        config_model = KINDS[kind].config
        assert config_model is not None
        config_ref = one["properties"]["config"]["$ref"]
        config = schemas[config_ref.rsplit("/", 1)[-1]]
        assert config["description"]  # each kind's config is documented
        assert config["additionalProperties"] is False
        assert "base_url" in config["properties"]
        for field, prop in config["properties"].items():
            assert prop.get("writeOnly", False) is (field in config_model.SECRET), (kind, field)
        assert ("config" in one.get("required", [])) == bool(config.get("required")), kind
        # The published example is a body of this kind.
        [example] = one["examples"]
        assert example["kind"] == kind
        assert _validator(doc, "ProviderRequest").is_valid(example), kind
    assert "from" in schemas["SmtpConfig"]["properties"]  # the wire name, not `from_`


async def test_valid_bodies_of_every_kind_pass_the_schema_and_the_server(lite: Harness) -> None:
    doc = await _doc(lite)
    union = _validator(doc, "ProviderRequest")
    assert set(VALID) == CONFIGURABLE
    for kind in sorted(VALID):
        payload = provider_body(kind, priority=2, rate_limit_per_second=5.5, enabled=False)
        assert union.is_valid(payload), (kind, list(union.iter_errors(payload))[:1])
        response = await put_provider(lite, f"p-{kind}", payload)
        assert response.status_code == 200, (kind, response.text)
        # What GET shows (secrets as "***") goes back as a valid body, and is accepted.
        shown = response.json()
        again = {k: shown[k] for k in ("channel", "kind", "config", "priority", "enabled")}
        again["config"] = {k: v for k, v in again["config"].items() if v is not None}
        assert union.is_valid(again), (kind, list(union.iter_errors(again))[:1])
        response = await put_provider(lite, f"p-{kind}", again)
        assert response.status_code == 200, (kind, response.text)
    # Refused by both, with the codes of before.
    refusals = [
        ({**provider_body("smtp"), "channel": "sms"}, "channel_not_supported"),
        ({**provider_body("smtp"), "kind": "carrier-pigeon"}, "unknown_kind"),
        ({**provider_body("smtp"), "kind": "inapp", "channel": "inapp"}, "unknown_kind"),
        (provider_body("sendgrid", config={"api_key": "k", "from": "a@b.c", "x": 1}), None),
        ({"channel": "email", "kind": "smtp"}, None),
        ({**provider_body("sandbox"), "priority": 0}, None),
    ]
    for payload, code in refusals:
        assert not union.is_valid(payload), payload
        response = await put_provider(lite, "refused", payload)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == (code or "validation_error"), payload
    # Valid by the schema, refused by a check it cannot state (not ASCII, so not PEM).
    smtp = provider_body("smtp")
    payload = {**smtp, "config": {**smtp["config"], "ca_pem": "é"}}
    assert union.is_valid(payload)
    response = await put_provider(lite, "refused", payload)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == "config.ca_pem"


def _generate(operation: Any, count: int) -> list[Any]:
    bodies: list[Any] = []

    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def collect(case: Any) -> None:
        bodies.append(case.body)

    collect()
    return bodies


async def test_generated_bodies_agree_with_the_server(lite: Harness) -> None:
    """Bodies schemathesis generates from the published union: each is accepted, or refused
    only for what a JSON schema cannot say (never an unknown kind or a channel the kind
    cannot carry, never a field the schema allows)."""
    doc = await _doc(lite)
    mapping = doc["components"]["schemas"]["ProviderRequest"]["discriminator"]["mapping"]
    bodies: list[Any] = []
    for kind in sorted(mapping):  # each kind alone, so that every one is tried
        one_kind = copy.deepcopy(doc)
        one_kind["components"]["schemas"]["ProviderRequest"] = {"$ref": mapping[kind]}
        operation = schemathesis.openapi.from_dict(one_kind)["/v1/providers/{name}"]["PUT"]
        made = _generate(operation, 12)
        assert made, kind
        assert {b["kind"] for b in made} == {kind}
        bodies += made
    for payload in bodies:
        response = await put_provider(lite, "generated", payload)
        if response.status_code == 200:
            continue
        error = response.json()["error"]
        if response.status_code == 400:  # lone surrogates, NUL: refused at the edge
            assert error["code"] == "invalid_input", payload
            continue
        assert response.status_code == 422, (payload, response.text)
        assert error["code"] == "validation_error", (payload, error)
        fields = {d["field"] for d in error["details"]}
        assert fields <= SEMANTIC, (payload, error)


async def test_layouts_and_the_brand_are_documented(lite: Harness) -> None:
    doc = await _doc(lite)
    ops = {(m, p): op for m, p, op in _operations(doc)}
    schemas = doc["components"]["schemas"]
    put = ops["put", "/v1/layouts/{name}"]
    assert put["operationId"] == "layouts_put"
    assert "manage" in put["x-scopes"]
    assert {"200", "409", "413", "422"} <= set(put["responses"])
    body = put["requestBody"]["content"]["application/json"]["schema"]
    layout_in = schemas[body["$ref"].rsplit("/", 1)[-1]]
    assert set(layout_in["required"]) == {"html", "text"}
    assert "{{ content }}" in layout_in["properties"]["html"]["description"]
    [example] = layout_in["examples"]
    assert "{{ content }}" in example["html"]
    assert "{{ content }}" in example["text"]
    delete = ops["delete", "/v1/layouts/{name}"]
    assert {"204", "404", "409"} <= set(delete["responses"])
    assert "layout_in_use" in delete["responses"]["409"]["description"]
    for path in ("/v1/layouts", "/v1/layouts/{name}", "/v1/layouts/{name}/versions"):
        assert (
            "$ref" in ops["get", path]["responses"]["200"]["content"]["application/json"]["schema"]
        )
    assert ops["post", "/v1/layouts/{name}/rollback"]["operationId"] == "layouts_rollback"
    assert schemas["LayoutSummary"]["properties"]["default"]["type"] == "boolean"
    brand = ops["put", "/v1/brand"]["requestBody"]["content"]["application/json"]["schema"]
    brand_in = schemas[brand["$ref"].rsplit("/", 1)[-1]]
    assert brand_in["additionalProperties"] is True
    assert {"name", "logo_url", "colors", "address"} <= set(brand_in["properties"])
    assert {("get", "/v1/brand"), ("delete", "/v1/brand")} <= set(ops)
