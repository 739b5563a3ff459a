"""A local Amazon SNS, as an HTTPS subscriber meets it: signed messages, a signing
certificate to fetch, subscription confirmations.

Its certificate chain is made here with ``cryptography``: a CA, the TLS certificate of the
stand-in's host (``localhost`` and ``127.0.0.1``), and the RSA certificate SNS signs
messages with, served at ``SigningCertURL`` over HTTPS. Messages are signed as SNS signs
them (``SignatureVersion`` 1, SHA1withRSA, or 2, SHA256withRSA, over the canonical string
of their fields), and POSTed as SNS POSTs them (``text/plain``, ``x-amz-sns-*`` headers).
A ``SubscribeURL`` visit (``Action=ConfirmSubscription``) is recorded with its token.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import ssl
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

REGION = "eu-west-1"
ACCOUNT = "123456789012"
_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
    *,
    ca: bool = False,
    hosts: bool = False,
    valid: tuple[datetime, datetime] | None = None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    start, end = valid or (now - timedelta(days=1), now + timedelta(days=30))
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if hosts:
        names = [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def canonical(message: dict[str, str]) -> bytes:
    fields = _SIGNED[message["Type"]]
    return "".join(f"{k}\n{message[k]}\n" for k in fields if k in message).encode()


@dataclass
class Confirmation:
    topic_arn: str
    token: str


@dataclass
class SnsStandIn:
    port: int = 0
    confirmations: list[Confirmation] = field(default_factory=list)
    # The answer to the next SubscribeURL visits, in order (an outage: 503).
    upcoming: list[int] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _dir: Path | None = None

    def __post_init__(self) -> None:
        self.ca_key = _key()
        self.ca = _certificate("Stand-in SNS CA", self.ca_key, None, ca=True)
        self.tls_key = _key()
        self.tls = _certificate("localhost", self.tls_key, (self.ca, self.ca_key), hosts=True)
        self.signing_key = _key()
        self.signing = _certificate(
            f"sns.{REGION}.amazonaws.com", self.signing_key, (self.ca, self.ca_key)
        )
        self.cert_path = f"/SimpleNotificationService-{secrets.token_hex(16)}.pem"
        # Other certificates it serves (an expired one, another key), by path.
        self.extra: dict[str, x509.Certificate] = {}

    @property
    def base(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def cert_url(self) -> str:
        return self.base + self.cert_path

    @property
    def ca_file(self) -> str:
        """The CA certificate, in a PEM file (CLARION_SNS_CA_FILE)."""
        assert self._dir is not None
        return str(self._dir / "ca.pem")

    def topic(self, name: str = "ses-feedback") -> str:
        return f"arn:aws:sns:{REGION}:{ACCOUNT}:{name}"

    async def start(self) -> SnsStandIn:
        self._dir = Path(tempfile.mkdtemp(prefix="sns-standin-"))
        pem = serialization.Encoding.PEM
        (self._dir / "ca.pem").write_bytes(self.ca.public_bytes(pem))
        (self._dir / "tls.pem").write_bytes(self.tls.public_bytes(pem))
        (self._dir / "tls.key").write_bytes(
            self.tls_key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._dir / "tls.pem", self._dir / "tls.key")
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def _handle(self, request: web.Request) -> web.Response:
        if request.path == self.cert_path:
            return web.Response(body=self.signing.public_bytes(serialization.Encoding.PEM))
        if request.path in self.extra:
            return web.Response(
                body=self.extra[request.path].public_bytes(serialization.Encoding.PEM)
            )
        if request.path == "/" and request.query.get("Action") == "ConfirmSubscription":
            if self.upcoming:
                return web.Response(status=self.upcoming.pop(0))
            self.confirmations.append(
                Confirmation(request.query.get("TopicArn", ""), request.query.get("Token", ""))
            )
            arn = request.query.get("TopicArn", "") + ":" + secrets.token_hex(8)
            body = (
                "<ConfirmSubscriptionResponse><ConfirmSubscriptionResult>"
                f"<SubscriptionArn>{arn}</SubscriptionArn>"
                "</ConfirmSubscriptionResult></ConfirmSubscriptionResponse>"
            )
            return web.Response(body=body, content_type="text/xml")
        return web.Response(status=404)

    # -- messages -------------------------------------------------------------------------

    def sign(
        self,
        message: dict[str, str],
        *,
        version: str = "1",
        key: rsa.RSAPrivateKey | None = None,
        cert_url: str | None = None,
    ) -> dict[str, str]:
        """``message`` with SNS's signature fields."""
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = (key or self.signing_key).sign(
            canonical(message), padding.PKCS1v15(), algorithm
        )
        return {
            **message,
            "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode(),
            "SigningCertURL": cert_url or self.cert_url,
        }

    def notification(
        self,
        topic_arn: str,
        payload: dict[str, Any],
        *,
        at: datetime | None = None,
        **signing: Any,
    ) -> dict[str, str]:
        stamp = (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        message = {
            "Type": "Notification",
            "MessageId": secrets.token_hex(16),
            "TopicArn": topic_arn,
            "Message": orjson.dumps(payload).decode(),
            "Timestamp": stamp,
            "UnsubscribeURL": f"{self.base}/?Action=Unsubscribe&SubscriptionArn={topic_arn}:x",
        }
        return self.sign(message, **signing)

    def subscription(self, topic_arn: str, **signing: Any) -> dict[str, str]:
        token = secrets.token_hex(64)
        query = urlencode({"Action": "ConfirmSubscription", "TopicArn": topic_arn, "Token": token})
        message = {
            "Type": "SubscriptionConfirmation",
            "MessageId": secrets.token_hex(16),
            "Token": token,
            "TopicArn": topic_arn,
            "Message": f"You have chosen to subscribe to the topic {topic_arn}.",
            "SubscribeURL": f"{self.base}/?{query}",
            "Timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
        }
        return self.sign(message, **signing)

    @staticmethod
    async def deliver(client: httpx.AsyncClient, url: str, message: dict[str, str]) -> Any:
        """POST ``message`` to a subscribed endpoint as SNS does."""
        headers = {
            "content-type": "text/plain; charset=UTF-8",
            "x-amz-sns-message-type": message.get("Type", ""),
            "x-amz-sns-message-id": message.get("MessageId", ""),
            "x-amz-sns-topic-arn": message.get("TopicArn", ""),
            "user-agent": "Amazon Simple Notification Service Agent",
        }
        return await client.post(url, content=orjson.dumps(message), headers=headers)


def ses_bounce(
    address: str,
    *,
    bounce_type: str = "Permanent",
    delivery_id: str | None = None,
    message_id: str = "0102abc",
) -> dict[str, Any]:
    """An SES ``Bounce`` notification, as SES publishes it to SNS."""
    headers = [{"name": "X-Clarion-Delivery-Id", "value": delivery_id}] if delivery_id else []
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": address,
                    "action": "failed",
                    "status": "5.1.1" if bounce_type == "Permanent" else "4.2.2",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }
            ],
            "timestamp": datetime.now(UTC).isoformat(),
            "feedbackId": secrets.token_hex(8),
        },
        "mail": {
            "timestamp": datetime.now(UTC).isoformat(),
            "source": "no-reply@acme.test",
            "messageId": message_id,
            "destination": [address],
            "headersTruncated": False,
            "headers": headers,
        },
    }


def ses_complaint(address: str) -> dict[str, Any]:
    return {
        "notificationType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": address}],
            "complaintFeedbackType": "abuse",
            "timestamp": datetime.now(UTC).isoformat(),
            "feedbackId": secrets.token_hex(8),
        },
        "mail": {"messageId": "0102def", "source": "no-reply@acme.test", "destination": [address]},
    }
