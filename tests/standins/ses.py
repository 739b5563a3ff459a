"""A local Amazon SES API v2 ``SendEmail`` endpoint that checks what SES checks.

It verifies the Signature Version 4 of every request by computing it again from the
request as received (botocore's signer, the key of the access key id it names, the time of
its ``X-Amz-Date``), checks the credential scope and the clock, the JSON body and the raw
MIME message, and answers as SES does: ``200 {"MessageId"}``, or an error whose type is in
``x-amzn-ErrorType`` with ``{"message"}``.
"""

from __future__ import annotations

import base64
import binascii
import email
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from typing import Any

import orjson
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

PATH = "/v2/email/outbound-emails"
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;-]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)
_MAX_SKEW = 15 * 60


class SesError(Exception):
    def __init__(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.headers = headers or {}

    def response(self) -> web.Response:
        return web.json_response(
            {"message": self.message},
            status=self.status,
            headers={
                "x-amzn-ErrorType": f"{self.kind}:http://internal.amazon.com/coral/com.amazon.ses/",
                "x-amzn-RequestId": secrets.token_hex(16),
                **self.headers,
            },
        )


@dataclass
class SesSent:
    body: dict[str, Any]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.raw, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class SesStandIn:
    region: str = "eu-west-1"
    # access key id → secret access key
    keys: dict[str, str] = field(default_factory=lambda: {"AKIDSTANDIN": "standin-secret"})
    # Identities that may send: addresses or whole domains.
    verified: set[str] = field(default_factory=lambda: {"acme.test"})
    # recipient → the error SES answers for it
    reject: dict[str, SesError] = field(default_factory=dict)
    # Errors to answer the next requests with, in order (throttling, outages).
    upcoming: list[SesError] = field(default_factory=list)
    sent: list[SesSent] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> SesStandIn:
        app = web.Application(client_max_size=40 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            if request.method != "POST" or request.path != PATH:
                raise SesError(404, "UnknownOperationException", "unknown operation")
            self._verify_signature(request, body)
            if self.upcoming:
                raise self.upcoming.pop(0)
            sent = self._check_email(request, body)
        except SesError as exc:
            return exc.response()
        self.sent.append(sent)
        message_id = f"0102{secrets.token_hex(8)}-{secrets.token_hex(4)}-000000"
        return web.json_response({"MessageId": message_id})

    def _verify_signature(self, request: web.Request, body: bytes) -> None:
        match = _AUTH.match(request.headers.get("Authorization", ""))
        if match is None:
            raise SesError(403, "IncompleteSignature", "Authorization header is malformed")
        secret = self.keys.get(match["key"])
        if secret is None:
            raise SesError(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        stamp = request.headers.get("X-Amz-Date", "")
        try:
            when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError as exc:
            raise SesError(403, "IncompleteSignature", "X-Amz-Date is missing") from exc
        if abs((datetime.now(UTC) - when).total_seconds()) > _MAX_SKEW:
            raise SesError(403, "InvalidSignatureException", "Signature expired")
        if (match["date"], match["region"], match["service"]) != (stamp[:8], self.region, "ses"):
            raise SesError(403, "SignatureDoesNotMatch", "Credential should be scoped correctly")
        signed = match["signed"].split(";")
        if not {"host", "x-amz-date"} <= set(signed):
            raise SesError(403, "SignatureDoesNotMatch", "host and x-amz-date must be signed")
        expected = self._signature(request, body, signed, match["key"], secret, stamp)
        if not hmac.compare_digest(expected, match["signature"]):
            raise SesError(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
            )

    def _signature(
        self,
        request: web.Request,
        body: bytes,
        signed: list[str],
        key: str,
        secret: str,
        stamp: str,
    ) -> str:
        """The signature of the request as received, computed anew."""
        headers = {name: request.headers.get(name, "") for name in signed}
        url = f"http://{request.headers.get('Host', '')}{request.path_qs}"
        again = AWSRequest(method=request.method, url=url, data=body, headers=headers)
        again.context["timestamp"] = stamp
        signer = SigV4Auth(Credentials(key, secret), "ses", self.region)
        canonical = signer.canonical_request(again)
        return str(signer.signature(signer.string_to_sign(again, canonical), again))

    def _check_email(self, request: web.Request, body: bytes) -> SesSent:
        if request.content_type != "application/json":
            raise SesError(415, "UnsupportedMediaTypeException", "expected application/json")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise SesError(400, "SerializationException", "the body is not JSON") from exc
        content = data.get("Content") if isinstance(data, dict) else None
        if not isinstance(content, dict) or len(content) != 1:
            raise SesError(400, "BadRequestException", "Content needs one of Simple/Raw/Template")
        raw = self._raw(content)
        message = email.message_from_bytes(raw, policy=policy.default)
        sender = data.get("FromEmailAddress") or str(message.get("From", ""))
        self._check_identity(sender)
        recipients = list((data.get("Destination") or {}).get("ToAddresses") or [])
        if not recipients:
            raise SesError(400, "BadRequestException", "Missing final '@domain'")
        for recipient in recipients:
            if recipient in self.reject:
                raise self.reject[recipient]
        return SesSent(body=data, raw=raw)

    @staticmethod
    def _raw(content: dict[str, Any]) -> bytes:
        try:
            raw = base64.b64decode(content["Raw"]["Data"], validate=True)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise SesError(400, "BadRequestException", "Content.Raw.Data must be base64") from exc
        if b"\r\n\r\n" not in raw:
            raise SesError(400, "MessageRejected", "the message needs a header and a body")
        headers = email.message_from_bytes(raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
        if "From" not in headers:
            raise SesError(400, "MessageRejected", "Missing required header 'From'.")
        return raw

    def _check_identity(self, sender: str) -> None:
        address = email.utils.parseaddr(sender)[1]
        if address not in self.verified and address.rpartition("@")[2] not in self.verified:
            raise SesError(
                400,
                "MessageRejected",
                "Email address is not verified. The following identities failed the check "
                f"in region {self.region.upper()}: {address}",
            )
