"""A subject made from template data can never become a header of its own: not through a
raw line break, not through an RFC 2047 encoded word that decodes to one, not through
any other control character. It is folded to one line, or refused as ``render_error``."""

from __future__ import annotations

import base64
from email import message_from_bytes
from email.policy import default
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clarion.errors import PermanentError
from clarion.providers.mime import Email, Sender, address_of, header_text, to_bytes, to_mime
from harness import Harness
from standins.smtp import SmtpStandIn
from test_provider_smtp import configure_smtp, outbound, provider, relay, send

__all__ = ["relay"]  # the SMTP relay fixture

INJECTION = "=?utf-8?q?x=0D=0ABcc:_evil@evil.example?="
CONTROL = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029]}
HEADERS = {
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "X-Clarion-Delivery-Id",
    "Content-Type",
    "Content-Transfer-Encoding",
    "MIME-Version",
}


def wire(subject: str) -> bytes:
    email = Email(
        sender=Sender.parse("Acme <no-reply@acme.test>"),
        to="alex@example.com",
        subject=header_text("Subject", subject),
        text="body",
        html=None,
        delivery_id="dlv_1",
        headers={"X-Clarion-Delivery-Id": "dlv_1"},
    )
    return to_bytes(to_mime(email))


def assert_one_subject_line(data: bytes) -> str:
    head, _, body = data.partition(b"\r\n\r\n")
    assert body == b"body\r\n"
    parsed = message_from_bytes(data, policy=default)
    assert set(parsed.keys()) == HEADERS
    assert len(parsed.keys()) == len(HEADERS)
    assert parsed["Bcc"] is None
    subject = str(parsed["Subject"])
    assert not CONTROL & set(subject)
    for line in head.split(b"\r\n"):
        assert line.isascii()
        assert b"\r" not in line
        assert b"\n" not in line
        assert line[:1] in (b" ", b"\t") or b":" in line
    return subject


def encoded_word(text: str, encoding: str) -> str:
    raw = text.encode("utf-8")
    if encoding == "b":
        return f"=?utf-8?b?{base64.b64encode(raw).decode()}?="
    return "=?utf-8?q?" + "".join(f"={b:02X}" for b in raw) + "?="


pieces = st.one_of(
    st.text(),
    st.sampled_from(sorted(CONTROL)),
    st.builds(encoded_word, st.text(), st.sampled_from(["b", "q"])),
    st.sampled_from([INJECTION, "=?utf-8?q?=0A=0A?=", "=?us-ascii?b?DQpCY2M6IGFAYi5j?="]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(pieces, max_size=6).map("".join))
def test_any_subject_is_one_header_line_or_refused(subject: str) -> None:
    refused: PermanentError | None = None
    try:
        data = wire(subject)
    except PermanentError as exc:
        refused = exc
    if refused is not None:
        assert refused.reason == "render_error"
        return
    decoded = assert_one_subject_line(data)
    # What Clarion writes is stripped; an encoded word may still decode to an edge space
    # (`=??B?0CA?=` is an invalid byte and a space), which is text, not a header break.
    if "=?" not in subject:
        assert decoded.strip() == decoded


@pytest.mark.parametrize(
    ("subject", "control"),
    [
        (INJECTION, "U+000D"),
        ("=?utf-8?b?eA0KQmNjOiBldmlsQGV2aWwuZXhhbXBsZQ==?=", "U+000D"),
        ("=?utf-8?q?a=C2=85b?=", "U+0085"),
        ("=?utf-8?q?a=E2=80=A8b?=", "U+2028"),
        ("=?utf-8?q?x=00y?=", "U+0000"),
        ("before =?utf-8?q?=0A?= after", "U+000A"),
        ("a\x00b", "U+0000"),
        ("a\x1bb", "U+001B"),
        ("a\x7fb", "U+007F"),
    ],
)
def test_a_subject_hiding_a_control_character_is_refused(subject: str, control: str) -> None:
    with pytest.raises(PermanentError) as caught:
        header_text("Subject", subject)
    assert caught.value.reason == "render_error"
    assert control in str(caught.value)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Your order\r\nshipped", "Your order shipped"),
        ("Line\u2028separator", "Line separator"),
        ("Next\x85line", "Next line"),
        ("Vertical\x0btab and\x0cform feed", "Vertical tab and form feed"),
        ("  tab\tinside \n ", "tab inside"),
        ("Soldes d'été ✓ — 注文", "Soldes d'été ✓ — 注文"),
        ("Plain =?utf-8?q?caf=C3=A9?= word", "Plain =?utf-8?q?caf=C3=A9?= word"),
    ],
)
def test_line_breaks_fold_to_one_space(subject: str, expected: str) -> None:
    assert header_text("Subject", subject) == expected
    assert_one_subject_line(wire(subject))


def test_an_encoded_word_in_an_address_is_refused() -> None:
    with pytest.raises(PermanentError) as caught:
        address_of(f"{INJECTION}@example.com")
    assert caught.value.reason == "invalid_address"


@pytest.mark.parametrize("subject", [INJECTION, "Hi\x85there", "Hi\u2028there", "Hi\x0bthere"])
async def test_smtp_never_sends_an_injected_header(
    lite: Harness, relay: SmtpStandIn, subject: str
) -> None:
    content: dict[str, Any] = {"subject": subject, "text": "hello"}
    smtp = provider(lite, relay)
    if subject == INJECTION:
        with pytest.raises(PermanentError) as caught:
            await send(smtp, outbound(lite, content=content, category=None))
        assert caught.value.reason == "render_error"
        assert relay.received == []
        return
    await send(smtp, outbound(lite, content=content, category=None))
    [got] = relay.received
    assert got.rcpt_tos == ["alex@example.com"]
    assert got.message["Subject"] == "Hi there"
    assert got.message["Bcc"] is None


async def test_through_the_api_the_delivery_fails_render_error(
    lite: Harness, relay: SmtpStandIn
) -> None:
    await configure_smtp(lite, relay)
    await lite.put_recipient("u-1", email="alex@example.com")
    await lite.put_template(
        "hello", {"channels": {"email": {"subject": "{{ s }}", "text": "Hello"}}}
    )
    sent = await lite.send(
        {"template": "hello", "to": {"recipient_id": "u-1"}, "data": {"s": INJECTION}}
    )
    assert sent.status_code == 202, sent.text
    await lite.drain()

    [delivery] = (await lite.notification(sent.json()["id"]))["deliveries"]
    assert delivery["reason"] == "render_error"
    assert delivery["status"] in ("failed", "dead")
    assert "U+000D" in delivery["last_error"]
    assert relay.received == []
