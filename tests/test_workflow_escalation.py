"""The escalation flow of docs/workflows.md end to end: push through the FCM stand-in;
where Google answers that the device is gone (a permanent failure), the run goes on to
SMS. Waits for the real delivery outcomes, on both stores."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from harness import Harness, make_settings, running
from standins import serving
from standins.fcm import FcmStandin


@pytest.fixture
async def fcm() -> AsyncIterator[FcmStandin]:
    async with serving(FcmStandin(failures={"gone-device": "unregistered"})) as standin:
        yield standin


@pytest.fixture
async def pushing(backend: tuple[str, str], fcm: FcmStandin) -> AsyncIterator[Harness]:
    key = base64.b64encode(os.urandom(32)).decode()
    async with running(make_settings(*backend, secret_key=key)) as app:
        config = {"service_account": fcm.service_account(), "base_url": fcm.url}
        response = await app.client.put(
            "/v1/providers/fcm",
            json={"channel": "push", "kind": "fcm", "config": config},
            headers=app.auth,
        )
        assert response.status_code in (200, 201), response.text
        yield app


async def _run(app: Harness, nid: str, rid: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def ended() -> bool:
        note = await app.notification(nid)
        found.update(next((r for r in note.get("runs") or [] if r["recipient_id"] == rid), {}))
        return found.get("status") not in (None, "running", "waiting")

    await app.until(ended)
    return found


async def test_push_then_sms_when_the_device_is_gone(pushing: Harness, fcm: FcmStandin) -> None:
    app = pushing
    template = {
        "channels": {
            "push": {"title": "Alert", "body": "Check your account"},
            "sms": {"text": "Alert: check your account"},
        }
    }
    response = await app.client.put("/v1/templates/alert", json=template, headers=app.auth)
    assert response.status_code == 200, response.text
    for rid, token in (("live", "good-device"), ("gone", "gone-device")):
        await app.put_recipient(
            rid, phone="+14155550100", push_tokens=[{"platform": "fcm", "token": token}]
        )
    steps = [
        {"id": "alert", "type": "channel", "channels": ["push", "sms"],
         "mode": "first_success", "template": "alert"},
    ]  # fmt: skip
    stored = await app.client.put(
        "/v1/workflows/alert", json={"name": "Alert", "steps": steps}, headers=app.auth
    )
    assert stored.status_code == 201, stored.text
    sent = await app.send({"workflow": "alert", "to": {"recipient_ids": ["live", "gone"]}})
    assert sent.status_code == 202, sent.text
    nid = sent.json()["id"]

    live, gone = await _run(app, nid, "live"), await _run(app, nid, "gone")
    await app.drain()
    note = await app.notification(nid)
    by_recipient: dict[str, dict[str, str]] = {}
    for delivery in note["deliveries"]:
        by_recipient.setdefault(delivery["recipient_id"], {})[delivery["channel"]] = delivery[
            "status"
        ]
    assert by_recipient == {"live": {"push": "sent"}, "gone": {"push": "failed", "sms": "sent"}}
    assert live["steps"][0]["status"] == "sent"
    assert len(live["steps"][0]["delivery_ids"]) == 1
    assert gone["status"] == "completed"
    assert gone["steps"][0]["status"] == "sent"
    assert len(gone["steps"][0]["delivery_ids"]) == 2
    assert sorted(m["token"] for m in fcm.received) == ["good-device"]
