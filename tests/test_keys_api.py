"""``/v1/keys``: a tenant's API keys listed, made and revoked over HTTP (scope ``admin``).
The secret is in the creating answer only, never in a list, an audit diff or the store;
another tenant's key is a 404; a key cannot revoke itself; a revoked key is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from clarion.security.keys import hash_key
from clarion.store.tables import api_keys, audit_log, idempotency_keys
from harness import Harness


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if status != 204 else None


async def _error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"]["code"] == code, body
    return body


async def test_a_key_made_listed_used_and_revoked(app: Harness) -> None:
    c = app.client
    made = await _ok(
        await c.post(
            "/v1/keys",
            json={"name": "  billing job ", "scopes": ["send", "read", "send"]},
            headers=app.auth,
        ),
        201,
    )
    secret = made.pop("secret")
    assert secret.startswith(f"ck_{made['prefix']}_")
    assert made["name"] == "billing job"
    assert made["scopes"] == ["read", "send"]
    assert made["id"].startswith("key_")
    assert made["revoked_at"] is None

    # Listed newest first, without the secret or its hash; page after page.
    listed = await _ok(await c.get("/v1/keys", headers=app.auth))
    assert listed["data"][0] == made
    assert len(listed["data"]) == 2  # and the harness's own key
    text = json.dumps(listed)
    assert secret not in text
    assert hash_key(secret) not in text
    first = await _ok(await c.get("/v1/keys", params={"limit": 1}, headers=app.auth))
    assert [k["id"] for k in first["data"]] == [made["id"]]
    rest = await _ok(
        await c.get(
            "/v1/keys", params={"limit": 1, "cursor": first["next_cursor"]}, headers=app.auth
        )
    )
    assert rest["next_cursor"] is None
    assert rest["data"][0]["scopes"] == ["admin", "manage", "read", "send"]
    await _error(
        await c.get("/v1/keys", params={"cursor": "zz"}, headers=app.auth), 422, "invalid_cursor"
    )

    # It works with its scopes, and only those.
    await _ok(await c.get("/v1/templates", headers=_auth(secret)))
    await _error(await c.get("/v1/keys", headers=_auth(secret)), 403, "insufficient_scope")

    # Revoked: refused at once (it was cached by the request above), listed as revoked.
    await _ok(await c.delete(f"/v1/keys/{made['id']}", headers=app.auth), 204)
    await _error(await c.get("/v1/templates", headers=_auth(secret)), 401, "unauthorized")
    again = await _ok(await c.get("/v1/keys", headers=app.auth))
    assert again["data"][0]["revoked_at"] is not None
    # Revoking it again changes nothing.
    await _ok(await c.delete(f"/v1/keys/{made['id']}", headers=app.auth), 204)

    # Audited: one creation and one revocation, by the harness's key, with no secret.
    async with app.ctx.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(audit_log).where(audit_log.c.name == made["id"]).order_by(audit_log.c.at)
            )
        ).all()
        stored = (await conn.execute(select(api_keys).where(api_keys.c.id == made["id"]))).one()
    assert [r.action for r in rows] == ["create", "revoke"]
    assert rows[0].diff == {
        "name": {"to": "billing job"},
        "scopes": {"to": ["read", "send"]},
        "prefix": {"to": made["prefix"]},
    }
    own_id = next(k["id"] for k in listed["data"] if k["id"] != made["id"])
    assert {r.actor for r in rows} == {own_id}
    assert secret not in json.dumps([r.diff for r in rows])
    assert stored.key_hash == hash_key(secret)
    audit = await _ok(await c.get("/v1/audit", params={"resource": "api_key"}, headers=app.auth))
    assert [e["action"] for e in audit["data"] if e["name"] == made["id"]] == ["revoke", "create"]
    assert secret not in json.dumps(audit)


async def test_a_key_cannot_revoke_itself_but_another_admin_key_can(lite: Harness) -> None:
    c = lite.client
    made = await _ok(
        await c.post("/v1/keys", json={"name": "ops", "scopes": ["admin"]}, headers=lite.auth),
        201,
    )
    other = made["secret"]
    await _error(
        await c.delete(f"/v1/keys/{made['id']}", headers=_auth(other)), 409, "cannot_revoke_own_key"
    )
    await _ok(await c.get("/v1/keys", headers=_auth(other)))  # still works
    own = (await _ok(await c.get("/v1/keys", headers=lite.auth)))["data"]
    harness_key = next(k["id"] for k in own if k["id"] != made["id"])
    await _ok(await c.delete(f"/v1/keys/{harness_key}", headers=_auth(other)), 204)
    await _error(await c.get("/v1/keys", headers=lite.auth), 401, "unauthorized")


async def test_another_tenants_key_and_unknown_ids_are_not_found(lite: Harness) -> None:
    c = lite.client
    stranger = await lite.new_tenant("stranger")
    theirs = (await _ok(await c.get("/v1/keys", headers=_auth(stranger))))["data"]
    [their_key] = [k["id"] for k in theirs]
    ours = (await _ok(await c.get("/v1/keys", headers=lite.auth)))["data"]
    assert their_key not in [k["id"] for k in ours]
    await _error(await c.delete(f"/v1/keys/{their_key}", headers=lite.auth), 404, "not_found")
    await _ok(await c.get("/v1/templates", headers=_auth(stranger)))  # untouched
    await _error(await c.delete("/v1/keys/key_00000000", headers=lite.auth), 404, "not_found")
    await _error(await c.delete("/v1/keys/" + "k" * 41, headers=lite.auth), 422, "validation_error")
    await _error(await c.delete("/v1/keys/a%20b", headers=lite.auth), 422, "validation_error")


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "scopes": ["superuser"]},
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": "admin"},
        {"name": "x", "scopes": [None]},
        {"name": "x", "scopes": ["send"] * 5},
        {"name": "x" * 101, "scopes": ["send"]},
        {"name": "", "scopes": ["send"]},
        {"name": "   ", "scopes": ["send"]},
        {"name": "a\u0007b", "scopes": ["send"]},
        {"name": "a\u202eb", "scopes": ["send"]},
        {"name": 5, "scopes": ["send"]},
        {"scopes": ["send"]},
        {"name": "x"},
        {"name": "x", "scopes": ["send"], "secret": "ck_mine"},
        [],
    ],
)
async def test_careless_bodies_are_refused(lite: Harness, body: Any) -> None:
    response = await lite.client.post("/v1/keys", json=body, headers=lite.auth)
    await _error(response, 422, "validation_error")
    assert len((await _ok(await lite.client.get("/v1/keys", headers=lite.auth)))["data"]) == 1


async def test_a_name_of_100_characters_is_fine(lite: Harness) -> None:
    name = "é" * 100
    made = await _ok(
        await lite.client.post(
            "/v1/keys", json={"name": name, "scopes": ["read"]}, headers=lite.auth
        ),
        201,
    )
    assert made["name"] == name


async def test_scopes_and_authentication(lite: Harness) -> None:
    c = lite.client
    for scopes in (["send", "read", "manage"], ["read"]):
        weak = await lite.new_tenant(f"t-{len(scopes)}", scopes)
        await _error(await c.get("/v1/keys", headers=_auth(weak)), 403, "insufficient_scope")
        body = {"name": "x", "scopes": ["read"]}
        await _error(
            await c.post("/v1/keys", json=body, headers=_auth(weak)), 403, "insufficient_scope"
        )
        await _error(
            await c.delete("/v1/keys/key_1", headers=_auth(weak)), 403, "insufficient_scope"
        )
    await _error(await c.get("/v1/keys"), 401, "unauthorized")
    await _error(await c.get("/v1/keys", headers=_auth("ck_nope")), 401, "unauthorized")
    # An admin key grants only scopes it holds.
    admin_only = await _ok(
        await c.post("/v1/keys", json={"name": "a", "scopes": ["admin"]}, headers=lite.auth), 201
    )
    refused = await c.post(
        "/v1/keys",
        json={"name": "b", "scopes": ["admin", "send"]},
        headers=_auth(admin_only["secret"]),
    )
    body = await _error(refused, 403, "insufficient_scope")
    assert "send" in body["error"]["message"]
    await _ok(
        await c.post(
            "/v1/keys", json={"name": "b", "scopes": ["admin"]}, headers=_auth(admin_only["secret"])
        ),
        201,
    )


async def test_the_secret_is_never_kept_for_a_replay(lite: Harness) -> None:
    """An Idempotency-Key is not honoured here: a stored answer would hold the secret."""
    headers = {**lite.auth, "Idempotency-Key": "same"}
    body = {"name": "x", "scopes": ["read"]}
    one = await _ok(await lite.client.post("/v1/keys", json=body, headers=headers), 201)
    two = await _ok(await lite.client.post("/v1/keys", json=body, headers=headers), 201)
    assert one["id"] != two["id"]
    assert one["secret"] != two["secret"]
    async with lite.ctx.engine.connect() as conn:
        kept = (await conn.execute(select(idempotency_keys))).all()
    assert one["secret"] not in repr(kept)
