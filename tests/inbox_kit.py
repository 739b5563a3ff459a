"""Helpers for the inbox tests: a template with an in-app channel, a recipient token, sends."""

from __future__ import annotations

from typing import Any

from harness import Harness

TEMPLATE = {
    "category": "transactional",
    "channels": {
        "inapp": {
            "title": "Shipped {{ n }}",
            "body": "Order {{ n }}",
            "action_url": "/orders/{{ n }}",
            "data": {"order": "{{ n }}"},
        }
    },
}


async def token_for(app: Harness, rid: str, **body: Any) -> str:
    response = await app.client.post(
        f"/v1/recipients/{rid}/token", json=body or None, headers=app.auth
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def inbox_ready(app: Harness, rid: str) -> str:
    """The template and the recipient exist; returns the recipient's token."""
    await app.put_template("shipped", TEMPLATE)
    await app.put_recipient(rid, email=f"{rid}@example.com")
    return await token_for(app, rid)


async def send(app: Harness, rid: str, n: int) -> str:
    response = await app.send(
        {"template": "shipped", "to": {"recipient_id": rid}, "data": {"n": n}}
    )
    assert response.status_code == 202, response.text
    nid: str = response.json()["id"]
    return nid


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def feed(app: Harness, token: str, **params: Any) -> dict[str, Any]:
    response = await app.client.get("/v1/inbox", params=params, headers=bearer(token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def counts(app: Harness, token: str) -> dict[str, int]:
    response = await app.client.get("/v1/inbox/count", headers=bearer(token))
    assert response.status_code == 200, response.text
    body: dict[str, int] = response.json()
    return body
