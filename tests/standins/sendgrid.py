"""A local SendGrid v3 ``/v3/mail/send`` that checks what SendGrid checks.

The bearer key (401 unknown, 403 without the ``mail.send`` scope), the JSON body's required
fields and their order (text/plain before text/html), reserved headers, the verified
sender; it answers ``202`` with ``X-Message-Id``, ``400 {"errors": [{"message", "field"}]}``,
and whatever error is queued in ``upcoming`` (429 with rate-limit headers, 5xx).

It also plays SendGrid's signed event webhook: :meth:`SendgridStandIn.post_events` POSTs
a JSON array of events signed as SendGrid signs them (ECDSA P-256 with SHA-256 over the
timestamp followed by the body, base64 DER in ``X-Twilio-Email-Event-Webhook-Signature``),
with the key whose public half :attr:`SendgridStandIn.verification_key` shows as
SendGrid's settings page does (base64 of the DER SubjectPublicKeyInfo).
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

PATH = "/v3/mail/send"
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_RESERVED = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
)


class Invalid(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


@dataclass
class Upcoming:
    status: int
    message: str = "error"
    headers: dict[str, str] = field(default_factory=dict)


def _errors(status: int, *errors: tuple[str | None, str], headers: Any = None) -> web.Response:
    body = {
        "errors": [{"message": message, "field": name, "help": None} for name, message in errors]
    }
    return web.json_response(body, status=status, headers=headers)


@dataclass
class SendgridStandIn:
    # api key → its scopes
    keys: dict[str, set[str]] = field(default_factory=lambda: {"SG.standin": {"mail.send"}})
    verified_senders: set[str] = field(default_factory=lambda: {"no-reply@acme.test"})
    # recipients answered with a 400, as SendGrid does for addresses it will not take
    reject: set[str] = field(default_factory=set)
    upcoming: list[Upcoming] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    # The event webhook's signing key.
    event_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    @property
    def verification_key(self) -> str:
        """The event webhook's verification key, as SendGrid's settings show it."""
        der = self.event_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def sign_events(
        self,
        body: bytes,
        timestamp: int | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> dict[str, str]:
        """The signature headers SendGrid sends with ``body``."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = (key or self.event_key).sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        }

    async def post_events(
        self,
        client: httpx.AsyncClient,
        url: str,
        events: list[dict[str, Any]],
        *,
        timestamp: int | None = None,
        key: ec.EllipticCurvePrivateKey | None = None,
    ) -> httpx.Response:
        """POST a batch of events to ``url`` as SendGrid's signed event webhook does."""
        body = orjson.dumps(events)
        headers = {
            "content-type": "application/json",
            "user-agent": "SendGrid Event API",
            **self.sign_events(body, timestamp, key),
        }
        return await client.post(url, content=body, headers=headers)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> SendgridStandIn:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        if request.method != "POST" or request.path != PATH:
            return _errors(404, (None, "Not found"))
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        scopes = self.keys.get(key) if scheme == "Bearer" else None
        if scopes is None:
            message = "The provided authorization grant is invalid, expired, or revoked"
            return _errors(401, (None, message))
        if "mail.send" not in scopes:
            return _errors(403, (None, "access forbidden"))
        if self.upcoming:
            up = self.upcoming.pop(0)
            return _errors(up.status, (None, up.message), headers=up.headers)
        if request.content_type != "application/json":
            return _errors(415, (None, "Content-Type should be application/json."))
        try:
            body = orjson.loads(await request.read())
            self._check(body)
        except orjson.JSONDecodeError:
            return _errors(400, (None, "Bad Request"))
        except Invalid as exc:
            status = 403 if exc.field == "from" else 400
            return _errors(status, (exc.field, exc.message))
        self.sent.append(body)
        return web.Response(status=202, headers={"X-Message-Id": secrets.token_urlsafe(16)})

    def _check(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise Invalid(None, "Bad Request")
        self._check_personalizations(body.get("personalizations"))
        sender = body.get("from")
        if not isinstance(sender, dict) or not _EMAIL.match(str(sender.get("email", ""))):
            raise Invalid("from.email", "The from email does not contain a valid address.")
        if sender["email"] not in self.verified_senders:
            raise Invalid(
                "from",
                "The from address does not match a verified Sender Identity. Mail cannot be "
                "sent until this error is resolved.",
            )
        if not isinstance(body.get("subject"), str) or not body["subject"]:
            raise Invalid("subject", "The subject is required.")
        self._check_content(body.get("content"))
        self._check_strings("headers", body.get("headers", {}))
        self._check_strings("custom_args", body.get("custom_args", {}))
        reserved = {name.lower() for name in body.get("headers", {})} & _RESERVED
        if reserved:
            raise Invalid("headers", f"The following header is reserved: {sorted(reserved)[0]}")

    def _check_personalizations(self, items: Any) -> None:
        if not isinstance(items, list) or not 1 <= len(items) <= 1000:
            raise Invalid("personalizations", "The personalizations field is required.")
        for i, item in enumerate(items):
            to = item.get("to") if isinstance(item, dict) else None
            if not isinstance(to, list) or not to:
                raise Invalid(f"personalizations.{i}.to", "The to array is required.")
            for j, person in enumerate(to):
                address = str(person.get("email", "")) if isinstance(person, dict) else ""
                if not _EMAIL.match(address) or address in self.reject:
                    raise Invalid(
                        f"personalizations.{i}.to.{j}.email", "Does not contain a valid address."
                    )

    @staticmethod
    def _check_content(content: Any) -> None:
        if not isinstance(content, list) or not content:
            raise Invalid("content", "Unless a valid template_id is provided, content is required.")
        types = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not part.get("type") or not part.get("value"):
                raise Invalid(f"content.{i}", "Content types and values must be non-empty.")
            types.append(part["type"])
        if "text/plain" in types and types.index("text/plain") != 0:
            raise Invalid("content.0.type", "The text/plain content type must be first.")
        if types.count("text/html") > 1 or types.count("text/plain") > 1:
            raise Invalid("content", "Each content type may be given once.")

    @staticmethod
    def _check_strings(name: str, mapping: Any) -> None:
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise Invalid(name, f"{name} must be an object of strings.")
