"""Logs: text or JSON lines, the ids bound where work starts, personal data masked.

A send carrying an email address, a phone number and secrets in its data runs with every
logger at DEBUG (SQL statements and their parameters included), and then Clarion's loggers
write the same values at every level; none of it may reach the captured output, in either
format."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from structlog.contextvars import bound_contextvars

from clarion.observability.logs import guard_libraries, log_handler, mask_secrets, mask_text
from harness import Harness, make_settings, running
from webhook_sink import WebhookSink

EMAIL = "alex.pii-test@example.com"
PHONE = "+14155550123"
PASSWORD = "hunter2-sekret-value"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1LTEifQ.c2lnbmF0dXJlLXZhbHVl"
PEM = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
TEMPLATE = {
    "channels": {
        "email": {"subject": "Hi", "text": "Code {{ code }}"},
        "sms": {"text": "Code {{ code }}"},
    }
}


@pytest.fixture(params=["text", "json"])
def captured(request: pytest.FixtureRequest) -> Iterator[tuple[str, io.StringIO]]:
    """Every record of the process at DEBUG, rendered as the format under test."""
    stream = io.StringIO()
    handler = log_handler(request.param, stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield request.param, stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def secrets_in(text: str, key: str) -> list[str]:
    wanted = [EMAIL, "alex.pii-test", PHONE, "4155550123", PASSWORD, JWT, "MIIEvQIBADANBgkq", key]
    return [s for s in wanted if s in text]


async def test_personal_data_never_reaches_the_log(
    app: Harness, captured: tuple[str, io.StringIO]
) -> None:
    fmt, stream = captured
    await app.put_template("code", TEMPLATE)
    await app.put_recipient("u-1", email=EMAIL, phone=PHONE)
    data = {"code": "1234", "password": PASSWORD, "token": JWT}
    response = await app.send({"template": "code", "to": {"recipient_id": "u-1"}, "data": data})
    assert response.status_code == 202, response.text
    await app.drain()
    log = logging.getLogger("clarion.pipeline.worker")
    with bound_contextvars(delivery_id="dlv_x", recipient_email=EMAIL):
        log.debug("sending to %s and %s", EMAIL, PHONE)
        log.info("Authorization: Bearer %s; api key %s", app.key, app.key)
        log.warning("provider said: {'password': '%s', 'token': '%s'}", PASSWORD, JWT)
        log.error("credentials %s", PEM)
        try:
            raise ValueError(f"refused {EMAIL} / {PHONE} secret={PASSWORD}")
        except ValueError:
            log.exception("attempt failed")
    output = stream.getvalue()
    assert "attempt failed" in output
    assert secrets_in(output, app.key) == []
    assert "***@example.com" in output
    lines = [line for line in output.splitlines() if "attempt failed" in line]
    if fmt == "json":
        record = json.loads(lines[0])
        assert record["level"] == "error"
        assert record["logger"] == "clarion.pipeline.worker"
        assert record["delivery_id"] == "dlv_x"
        assert "ValueError" in record["exception"]
        for line in output.splitlines():
            json.loads(line)  # every line is one JSON object
    else:
        assert " ERROR clarion.pipeline.worker: attempt failed" in lines[0]
        assert "delivery_id=dlv_x" in lines[0]


def test_mask_text_rules() -> None:
    cases = {
        "to bob.smith+tag@mail.example.org now": "to ***@mail.example.org now",
        "sms to +1 (415) 555-0100 failed": "sms to +*** failed",
        "call 415-555-0100": "call ***",
        "Authorization: Bearer abcdef123456": "Authorization: Bearer ***",
        "key ck_ab12cd34_ZXhhbXBsZS1rZXktdmFsdWU": "key ck_***",
        "secret whsec_abcdefghijkl": "secret whsec_***",
        "password=opensesame&user=x": "password=***&user=x",
        '{"api_key": "k-123456"}': '{"api_key": "***"}',
        "aws AKIAABCDEFGHIJKLMNOP": "aws AKIA***",
    }
    for raw, masked in cases.items():
        assert mask_text(raw) == masked, raw
    # What is not personal stays readable.
    for plain in (
        "2026-11-23 12:00:00",
        "127.0.0.1:8080",
        "delivery dlv_0123456789abc",
        "8 retries",
    ):
        assert mask_text(plain) == plain


BODY = "parcel-body-7f3a91"
MAILBOX = "dana.private"
HOOK_PATH = "wh-path-5c2e0d"


@pytest.mark.parametrize("pii", [False, True], ids=["pii-off", "pii-on"])
async def test_bodies_and_addresses_only_with_the_pii_switch(
    unmigrated_backend: tuple[str, str], sink: WebhookSink, pii: bool
) -> None:
    """Every logger at DEBUG while Clarion starts on an empty database (its migrations
    run) and a send runs end to end (SQL statements, aiosqlite, HTTP traces): no message
    body, address or webhook URL reaches the output unless CLARION_LOG_PII is on; then
    they do (and secrets stay masked)."""
    stream = io.StringIO()
    handler = log_handler("text", stream, pii=pii)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    guard_libraries(pii, "DEBUG")
    try:
        async with running(make_settings(*unmigrated_backend, log_pii=pii)) as app:
            template = {
                "channels": {
                    "email": {"subject": "Parcel", "text": f"Your {BODY} ships {{{{ day }}}}"},
                    "webhook": {"body": {"text": f"{BODY} {{{{ day }}}}"}},
                }
            }
            await app.put_template("parcel", template)
            await app.put_recipient(
                "u-1", email=f"{MAILBOX}@example.org", webhook_url=f"{sink.url}/{HOOK_PATH}"
            )
            data = {"day": "friday", "password": PASSWORD}
            body = {"template": "parcel", "to": {"recipient_id": "u-1"}, "data": data}
            response = await app.send(body)
            assert response.status_code == 202, response.text
            await app.drain()
            await sink.wait_for(1, timeout=30)
            assert BODY in sink.received[0].body.decode()
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        guard_libraries(True)  # back to the defaults: libraries follow the root, SQL quiet
    output = stream.getvalue()
    leaked = [marker for marker in (BODY, MAILBOX, HOOK_PATH) if marker in output]
    if pii:
        assert " DEBUG " in output  # libraries' traces, let through
        assert BODY in output
        assert MAILBOX in output
    else:
        shown = [line for line in output.splitlines() if any(m in line for m in leaked)]
        assert leaked == [], shown[:5]
    assert PASSWORD not in output


def test_mask_secrets_leaves_contact_data() -> None:
    text = "to bob@example.org, +14155550123, Authorization: Bearer abcdef123456"
    assert mask_secrets(text) == "to bob@example.org, +14155550123, Authorization: Bearer ***"
