"""Email as the email providers send it: one composed :class:`Email`, and its MIME form.

SMTP and SES send the MIME message built here (so both carry the same headers); SendGrid
sends the same fields as JSON. A non-critical category gets one-click unsubscribe headers
(RFC 8058): ``List-Unsubscribe: <url>`` and ``List-Unsubscribe-Post``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime, parseaddr
from typing import Any

from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError
from clarion.providers.base import ProviderEnv
from clarion.security.unsubscribe import UnsubscribeLinks
from clarion.store.db import utcnow
from clarion.store.tenants import webhook_secrets

# Headers whose value must reach the reader exactly as written: folding a long URL into
# RFC 2047 encoded words, as the stdlib does with any word over 78 characters, would leave
# mail clients unable to read it. Their values are ASCII and under the 998-octet line limit.
_VERBATIM = frozenset({"list-unsubscribe"})


_MAX_LINE = 998


def _verbatim(name: str, value: str) -> bool:
    return name.lower() in _VERBATIM and value.isascii() and len(name) + len(value) + 2 <= _MAX_LINE


class _Policy(EmailPolicy):
    def fold(self, name: str, value: str) -> str:
        if _verbatim(name, value):
            return f"{name}: {value}{self.linesep}"
        return str(super().fold(name, value))

    def fold_binary(self, name: str, value: str) -> bytes:
        if _verbatim(name, value):
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


# SMTP line endings; bodies 7-bit clean (quoted-printable or base64), so no relay needs
# 8BITMIME.
POLICY = _Policy(linesep="\r\n", cte_type="7bit")
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"\\]+@[^@\s<>()\[\],;:\"\\]+\.[^@\s<>()\[\],;:\"\\]+$")
# Every line boundary Python knows (str.splitlines), and tabs: folded to one space.
_LINE_BREAKS = re.compile(r" *[\t\n\x0b\x0c\r\x1c-\x1e\x85\u2028\u2029]\s*")
# Control characters (Unicode category Cc) that remain are refused.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def header_text(name: str, value: str) -> str:
    """A header value made from template output, safe to send.

    Line breaks and tabs in the rendered text fold to single spaces. What remains must be
    free of control characters both as written and as a reader decodes it: the email
    library (and every mail client) decodes RFC 2047 encoded words, so template data
    holding ``=?utf-8?q?x=0D=0ABcc:_a@b?=`` would otherwise become a header line of its
    own. Anything else is refused as ``render_error``.
    """
    text = _LINE_BREAKS.sub(" ", value).strip()
    found = _CONTROL.search(text)
    if found is not None:
        raise PermanentError(
            f"the {name.lower()} holds the control character U+{ord(found.group()):04X}",
            reason="render_error",
        )
    if "=?" in text:
        decoded = str(POLICY.header_factory(name, text))
        found = _CONTROL.search(decoded)
        if found is not None:
            raise PermanentError(
                f"the {name.lower()} holds an RFC 2047 encoded word that decodes to the "
                f"control character U+{ord(found.group()):04X}",
                reason="render_error",
            )
    return text


def address_of(value: Any) -> str:
    """The recipient's address, ASCII (an international domain in its IDNA form)."""
    if not isinstance(value, str) or not _ADDRESS.match(value.strip()):
        raise PermanentError("the recipient has no valid email address", reason="invalid_address")
    if "=?" in value:
        # The email library decodes RFC 2047 encoded words even inside an address.
        raise PermanentError(
            "an RFC 2047 encoded word is not allowed in an address", reason="invalid_address"
        )
    local, domain = value.strip().rsplit("@", 1)
    if not local.isascii():
        # A non-ASCII mailbox needs SMTPUTF8 end to end; not offered.
        raise PermanentError("non-ASCII mailbox names are not supported", reason="invalid_address")
    try:
        ascii_domain = domain.encode("idna").decode()
    except UnicodeError as exc:
        raise PermanentError(f"invalid domain {domain!r}", reason="invalid_address") from exc
    return f"{local}@{ascii_domain}"


@dataclass(frozen=True, slots=True)
class Sender:
    """The configured ``from``: the header as written, and its bare address."""

    header: str
    address: str
    name: str

    @classmethod
    def parse(cls, text: str) -> Sender:
        name, address = parseaddr(text)
        if "@" not in address or "\r" in text or "\n" in text:
            raise ValueError(f"not an email address: {text!r}")
        return cls(header=text, address=address, name=name)

    @property
    def domain(self) -> str:
        return self.address.rsplit("@", 1)[1].lower()


@dataclass(frozen=True, slots=True)
class Email:
    """One composed email. ``headers`` are the extra ones (tracing, unsubscribe)."""

    sender: Sender
    to: str
    subject: str
    text: str | None
    html: str | None
    delivery_id: str
    headers: dict[str, str] = field(default_factory=dict)


class EmailComposer:
    """Turns an outbound message into an :class:`Email` from one sender."""

    def __init__(self, sender: str, links: UnsubscribeLinks) -> None:
        self.sender = Sender.parse(sender)
        self._links = links

    @classmethod
    def of(cls, sender: str, env: ProviderEnv) -> EmailComposer:
        """A composer whose unsubscribe links are signed with the tenants' webhook secrets."""
        return cls(sender, UnsubscribeLinks(webhook_secrets(env.engine), env.settings.public_url))

    async def compose(self, message: Delivery) -> Email:
        content = message.content
        subject = header_text("Subject", str(content.get("subject") or ""))
        html = content.get("html") or None
        text = content.get("text") or None
        headers = {"X-Clarion-Delivery-Id": message.id}
        if message.category and not message.critical:
            try:
                url = await self._links.url(message.tenant, message.recipient, message.category)
            except LookupError as exc:
                raise PermanentError(str(exc), reason="unknown_tenant") from exc
            headers["List-Unsubscribe"] = f"<{url}>"
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        return Email(
            sender=self.sender,
            to=address_of(message.to),
            subject=subject,
            text=str(text) if text is not None else None,
            html=str(html) if html is not None else None,
            delivery_id=message.id,
            headers=headers,
        )


def message_id(delivery_id: str, domain: str) -> str:
    """A new ``Message-ID`` for an attempt of the delivery: its id and 32 random bits, on the
    sender's domain. Short enough to stay on the header's own line for a domain of up to 24
    characters: ``make_msgid``'s time, process id and 64 random bits made it 70-odd
    characters, and a value that fits only on a line of its own is folded onto one, which
    some receivers read with the folding's leading space."""
    return f"<{delivery_id}.{secrets.token_hex(4)}@{domain}>"


def to_mime(email: Email) -> EmailMessage:
    """The MIME message: multipart/alternative (text, then HTML) when there is HTML."""
    msg = EmailMessage(policy=POLICY)
    msg["From"] = email.sender.header
    msg["To"] = email.to
    msg["Subject"] = email.subject
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = message_id(email.delivery_id, email.sender.domain)
    for name, value in email.headers.items():
        msg[name] = value
    if email.text is not None or email.html is None:
        msg.set_content(email.text or "", subtype="plain", charset="utf-8")
        if email.html is not None:
            msg.add_alternative(email.html, subtype="html", charset="utf-8")
    else:
        msg.set_content(email.html, subtype="html", charset="utf-8")
    return msg


def to_bytes(msg: EmailMessage) -> bytes:
    return msg.as_bytes(policy=POLICY)
