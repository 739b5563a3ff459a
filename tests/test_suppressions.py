"""The suppression list: operators' API, delivery status notifications handed in, and email
to a suppressed address ending `suppressed` with no provider call, on both stores."""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from clarion.domain.contact import suppression_key
from clarion.domain.dsn import NotADsn, read_dsn
from clarion.domain.feedback import FeedbackKind
from harness import Harness, make_settings, running
from standins import serving
from standins.smtp import SmtpStandIn
from test_provider_smtp import configure_smtp

PUBLIC = "https://notify.example.com"
SECRET_KEY = base64.b64encode(secrets.token_bytes(32)).decode()
TEMPLATE = {"channels": {"email": {"subject": "Order {{ id }}", "text": "Shipped {{ id }}"}}}


# -- helpers the feedback tests share --------------------------------------------------


async def send_email(app: Harness, recipient: str = "u-1", auth: Any = None) -> dict[str, Any]:
    """Send the `shipped` template to ``recipient`` and wait for the outcome: its one
    delivery, as `GET /v1/notifications/{id}` shows it."""
    headers = auth or app.auth
    response = await app.client.post(
        "/v1/notifications",
        json={"template": "shipped", "to": {"recipient_id": recipient}, "data": {"id": 7}},
        headers=headers,
    )
    assert response.status_code == 202, response.text
    await app.drain()
    nid = response.json()["id"]
    found = await app.client.get(f"/v1/notifications/{nid}", headers=headers)
    [delivery] = found.json()["deliveries"]
    return {**delivery, "notification_id": nid}


async def prepare(app: Harness, email: str = "Alex@Example.com", auth: Any = None) -> None:
    """The `shipped` template and recipient `u-1` at ``email``."""
    headers = auth or app.auth
    for path, body in (
        ("/v1/recipients/u-1", {"email": email}),
        ("/v1/templates/shipped", TEMPLATE),
    ):
        response = await app.client.put(path, json=body, headers=headers)
        assert response.status_code == 200, response.text
    await app.ctx.providers.prepare([app.tenant_id])


async def suppressions(app: Harness, auth: Any = None, **query: Any) -> list[dict[str, Any]]:
    response = await app.client.get("/v1/suppressions", params=query, headers=auth or app.auth)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


async def timeline(app: Harness, delivery_id: str) -> list[dict[str, Any]]:
    response = await app.client.get(f"/v1/deliveries/{delivery_id}", headers=app.auth)
    assert response.status_code == 200, response.text
    return list(response.json()["events"])


async def assert_suppressed(app: Harness, delivery: dict[str, Any], reason: str) -> None:
    """The delivery was not sent: `suppressed` with the reason, and its timeline says so."""
    assert delivery["status"] == "suppressed", delivery
    assert delivery["reason"] == reason
    assert delivery["attempts"] == 0
    events = await timeline(app, delivery["id"])
    assert [e["type"] for e in events][-1] == "suppressed", events
    assert events[-1]["reason"] == reason
    assert not [e for e in events if e["type"] == "attempt"]


def dsn(
    address: str,
    *,
    delivery_id: str | None = None,
    action: str = "failed",
    status: str = "5.1.1",
) -> bytes:
    """A bounce as Postfix sends it back to the return path (RFC 3464)."""
    returned = f"From: Acme <no-reply@acme.test>\r\nTo: {address}\r\nSubject: Order 7\r\n"
    if delivery_id:
        returned += f"X-Clarion-Delivery-Id: {delivery_id}\r\n"
    return (
        "From: MAILER-DAEMON@mx.acme.test (Mail Delivery System)\r\n"
        "To: bounces@acme.test\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n'
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
        "--b1\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.acme.test\r\n"
        "Arrival-Date: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\n"
        f"Final-Recipient: rfc822; {address}\r\n"
        f"Original-Recipient: rfc822;{address}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: smtp; 550 {status} <{address}>: Recipient address rejected\r\n\r\n"
        "--b1\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        f"{returned}\r\n"
        "--b1--\r\n"
    ).encode()


async def hand_in(app: Harness, raw: bytes, auth: Any = None) -> Any:
    headers = {**(auth or app.auth), "content-type": "message/rfc822"}
    return await app.client.post("/v1/suppressions/dsn", content=raw, headers=headers)


# -- the address key and the DSN reader ---------------------------------------------------


def test_addresses_are_kept_trimmed_and_lower_cased() -> None:
    assert suppression_key(" Alex@Example.COM ") == "alex@example.com"
    assert suppression_key("alex@bücher.example") == "alex@xn--bcher-kva.example"
    assert suppression_key("ALEX@XN--BCHER-KVA.EXAMPLE") == "alex@xn--bcher-kva.example"


def test_a_dsn_reports_hard_and_soft_bounces() -> None:
    [hard] = read_dsn(dsn("Alex@Example.com", delivery_id="dlv_1"))
    assert hard.kind is FeedbackKind.HARD_BOUNCE
    assert hard.address == "Alex@Example.com"
    assert hard.delivery_id == "dlv_1"
    assert hard.detail is not None
    assert "5.1.1" in hard.detail
    [soft] = read_dsn(dsn("a@example.com", status="4.2.2"))
    assert soft.kind is FeedbackKind.SOFT_BOUNCE
    assert soft.suppresses is None
    [delayed] = read_dsn(dsn("a@example.com", action="delayed", status="4.4.1"))
    assert delayed.kind is FeedbackKind.SOFT_BOUNCE
    assert read_dsn(dsn("a@example.com", action="delivered", status="2.0.0")) == []


@pytest.mark.parametrize(
    "raw",
    [
        b"From: a@example.com\r\nSubject: hello\r\n\r\nnot a report\r\n",
        b"Content-Type: multipart/report; report-type=disposition-notification; boundary=x\r\n"
        b"\r\n--x\r\nContent-Type: text/plain\r\n\r\nread\r\n--x--\r\n",
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n"
        b"\r\n--x\r\nContent-Type: text/plain\r\n\r\nno status part\r\n--x--\r\n",
        b"\x00\xff\xfe garbage",
        b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
            for i in range(3000)
        ),
    ],
    ids=["plain", "other-report", "no-status", "garbage", "nested"],
)
def test_what_is_not_a_dsn_is_refused(raw: bytes) -> None:
    with pytest.raises(NotADsn):
        read_dsn(raw)


def test_eight_bit_and_malformed_fields_are_read_safely() -> None:
    raw = dsn("a@example.com").replace(b"Action: failed", b"Action: f\xc3\xa4iled")
    assert read_dsn(raw) == []
    raw = dsn("a@example.com").replace(b"Status: 5.1.1", b"Status: 5.\xff.1")
    [soft] = read_dsn(raw)
    assert soft.kind is FeedbackKind.SOFT_BOUNCE
    raw = dsn("a@example.com").replace(b"rfc822; a@example.com", b"rfc822; \xe4@example.com")
    raw = raw.replace(b"rfc822;a@example.com", b"x400; whatever")
    assert read_dsn(raw) == []


def test_hostile_addresses_in_a_dsn_are_dropped() -> None:
    assert read_dsn(dsn("not-an-address")) == []
    assert read_dsn(dsn("a\x01b@example.com")) == []
    assert read_dsn(dsn("x" * 400 + "@example.com")) == []


# -- the operators' API -------------------------------------------------------------------


async def test_operators_add_list_filter_and_delete(lite: Harness) -> None:
    auth = lite.auth
    for email, reason in (("Bob@Example.com", "bounced"), ("carol@example.com", "complained")):
        response = await lite.client.post(
            "/v1/suppressions",
            json={"email": email, "reason": reason, "detail": "told by the customer"},
            headers=auth,
        )
        assert response.status_code == 201, response.text
        made = response.json()
        assert made["email"] == suppression_key(email)
        assert made["source"] == "operator"
        assert made["reason"] == reason
    listed = await suppressions(lite)
    assert [s["email"] for s in listed] == ["carol@example.com", "bob@example.com"]
    assert [s["email"] for s in await suppressions(lite, reason="bounced")] == ["bob@example.com"]
    assert [s["email"] for s in await suppressions(lite, email=" BOB@example.com")] == [
        "bob@example.com"
    ]
    assert len(await suppressions(lite, channel="email")) == 2
    first = await lite.client.get("/v1/suppressions", params={"limit": 1}, headers=auth)
    cursor = first.json()["next_cursor"]
    assert cursor
    assert [s["email"] for s in first.json()["data"]] == ["carol@example.com"]
    second = await lite.client.get(
        "/v1/suppressions", params={"limit": 1, "cursor": cursor}, headers=auth
    )
    assert [s["email"] for s in second.json()["data"]] == ["bob@example.com"]
    assert second.json()["next_cursor"] is None
    one = await lite.client.get("/v1/suppressions/BOB@EXAMPLE.COM", headers=auth)
    assert one.status_code == 200
    assert one.json()["reason"] == "bounced"

    assert (
        await lite.client.delete("/v1/suppressions/Bob@Example.com", headers=auth)
    ).status_code == 204
    again = await lite.client.delete("/v1/suppressions/bob@example.com", headers=auth)
    assert again.status_code == 404
    assert again.json()["error"]["code"] == "not_found"
    assert [s["email"] for s in await suppressions(lite)] == ["carol@example.com"]

    audit = await lite.client.get("/v1/audit", params={"resource": "suppression"}, headers=auth)
    actions = [(row["action"], row["name"]) for row in audit.json()["data"]]
    assert ("delete", "bob@example.com") in actions
    assert ("create", "carol@example.com") in actions


async def test_operator_input_is_checked(lite: Harness) -> None:
    auth = lite.auth
    for body in (
        {"email": "not an address", "reason": "bounced"},
        {"email": "a@example.com", "reason": "operator"},
        {"email": "a@example.com"},
        {"email": "a@example.com", "reason": "bounced", "detail": "x" * 1001},
        {"email": "a@example.com", "reason": "bounced", "extra": 1},
    ):
        response = await lite.client.post("/v1/suppressions", json=body, headers=auth)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] == "validation_error"
    for query in ({"reason": "nope"}, {"channel": "sms"}, {"cursor": "nope"}, {"limit": 0}):
        response = await lite.client.get("/v1/suppressions", params=query, headers=auth)
        assert response.status_code == 422, query
    assert await suppressions(lite) == []


async def test_scopes(lite: Harness) -> None:
    reader = {"Authorization": f"Bearer {await lite.new_tenant('readers', ['read'])}"}
    assert (await lite.client.get("/v1/suppressions", headers=reader)).status_code == 200
    body = {"email": "a@example.com", "reason": "bounced"}
    refused = await lite.client.post("/v1/suppressions", json=body, headers=reader)
    assert refused.status_code == 403
    assert (await hand_in(lite, dsn("a@example.com"), auth=reader)).status_code == 403
    assert (await lite.client.get("/v1/suppressions")).status_code == 401


# -- a DSN handed in, then the next send, on both stores -----------------------------------


@pytest.fixture
async def relay() -> AsyncIterator[SmtpStandIn]:
    async with serving(SmtpStandIn()) as server:
        yield server


@pytest.fixture
async def clarion(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    async with running(make_settings(*backend, public_url=PUBLIC, secret_key=SECRET_KEY)) as app:
        yield app


async def test_a_bounce_from_the_mta_suppresses_the_address(
    clarion: Harness, relay: SmtpStandIn
) -> None:
    await configure_smtp(clarion, relay)
    await prepare(clarion)
    first = await send_email(clarion)
    assert first["status"] == "sent", first
    [received] = relay.received
    delivery_id = received.message["X-Clarion-Delivery-Id"]
    assert delivery_id == first["id"]

    response = await hand_in(clarion, dsn("alex@example.com", delivery_id=delivery_id))
    assert response.status_code == 200, response.text
    assert response.json() == {"reported": 1, "suppressed": 1, "bounced": 1}
    [entry] = await suppressions(clarion)
    assert entry["email"] == "alex@example.com"
    assert (entry["reason"], entry["source"], entry["delivery_id"]) == (
        "bounced",
        "dsn",
        first["id"],
    )
    assert "Recipient address rejected" in entry["detail"]
    # The delivery that bounced reads failed, bounced.
    bounced = await clarion.client.get(f"/v1/deliveries/{first['id']}", headers=clarion.auth)
    assert (bounced.json()["status"], bounced.json()["reason"]) == ("failed", "bounced")

    # The next email to the address is not sent.
    second = await send_email(clarion)
    await assert_suppressed(clarion, second, "bounced")
    assert len(relay.received) == 1
    # Deliberately not sent: the notification completed.
    assert (await clarion.notification(second["notification_id"]))["status"] == "completed"

    # Off the list, mail goes to it again.
    gone = await clarion.client.delete("/v1/suppressions/alex@example.com", headers=clarion.auth)
    assert gone.status_code == 204
    third = await send_email(clarion)
    assert third["status"] == "sent", third
    assert len(relay.received) == 2


async def test_a_soft_bounce_suppresses_nothing(clarion: Harness, relay: SmtpStandIn) -> None:
    await configure_smtp(clarion, relay)
    await prepare(clarion)
    first = await send_email(clarion)
    response = await hand_in(
        clarion, dsn("alex@example.com", delivery_id=first["id"], status="4.2.2")
    )
    assert response.json() == {"reported": 1, "suppressed": 0, "bounced": 0}
    assert await suppressions(clarion) == []
    assert (await send_email(clarion))["status"] == "sent"
    assert len(relay.received) == 2


async def test_one_tenants_bounce_does_not_suppress_another_tenants_mail(
    clarion: Harness, relay: SmtpStandIn
) -> None:
    other = {"Authorization": f"Bearer {await clarion.new_tenant('globex')}"}
    await configure_smtp(clarion, relay)
    await prepare(clarion)
    await prepare(clarion, auth=other)  # the same address, another tenant (the sandbox)
    response = await hand_in(clarion, dsn("alex@example.com"))
    assert response.json()["suppressed"] == 1
    await assert_suppressed(clarion, await send_email(clarion), "bounced")
    assert relay.received == []

    theirs = await send_email(clarion, auth=other)
    assert theirs["status"] == "sent", theirs
    assert await suppressions(clarion, auth=other) == []
    hidden = await clarion.client.get("/v1/suppressions/alex@example.com", headers=other)
    assert hidden.status_code == 404
    refused = await clarion.client.delete("/v1/suppressions/alex@example.com", headers=other)
    assert refused.status_code == 404
    assert len(await suppressions(clarion)) == 1


async def test_what_is_not_a_dsn_is_a_client_error(lite: Harness) -> None:
    response = await hand_in(lite, b"From: a@example.com\r\n\r\nhello\r\n")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "not_a_dsn"
    plain = await lite.client.post(
        "/v1/suppressions/dsn",
        content=dsn("a@example.com"),
        headers={**lite.auth, "content-type": "text/plain"},
    )
    assert plain.status_code == 415
    assert plain.json()["error"]["code"] == "unsupported_media_type"
    assert await suppressions(lite) == []
