"""Amazon SNS messages over HTTPS: their signatures verified, subscriptions confirmed.

SNS POSTs a JSON document to a subscribed endpoint (``Content-Type: text/plain``) and
signs it: ``Signature`` is base64 of an RSA PKCS#1 v1.5 signature (``SignatureVersion``
``1``: SHA-1, ``2``: SHA-256) over a canonical string made of the message's fields in
byte order, each as ``name\\nvalue\\n`` (a ``Notification``: ``Message``, ``MessageId``,
``Subject`` if present, ``Timestamp``, ``TopicArn``, ``Type``; a subscription's
confirmations: ``Message``, ``MessageId``, ``SubscribeURL``, ``Timestamp``, ``Token``,
``TopicArn``, ``Type``). The key is the certificate at ``SigningCertURL``, which must be an
``https`` URL on an SNS host (``CLARION_SNS_CERT_HOSTS``): the TLS connection that fetches
it proves whose it is. Certificates are fetched through the address guard, never
following a redirect, and kept by URL.

A valid signature proves that SNS sent the message, not whose topic it came from: anyone
can subscribe an endpoint to a topic of their own. Which topics a provider takes is its
configuration's business (``providers/ses_feedback.py``).
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from clarion.errors import PermanentError, TransientError
from clarion.net import HttpClient, Reply
from clarion.net.answers import RETRY_STATUSES
from clarion.providers.base import ReportRefused
from clarion.security.netguard import AddressGuard

NOTIFICATION = "Notification"
SUBSCRIPTION = "SubscriptionConfirmation"
UNSUBSCRIPTION = "UnsubscribeConfirmation"
_CONFIRMATION_FIELDS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)
SIGNED_FIELDS: dict[str, tuple[str, ...]] = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    SUBSCRIPTION: _CONFIRMATION_FIELDS,
    UNSUBSCRIPTION: _CONFIRMATION_FIELDS,
}
HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
# A message from the future by more than this is refused as well as a stale one.
CLOCK_SKEW = 300.0
TIMEOUT = 10.0
MAX_CERTIFICATE = 64 * 1024
CACHED_CERTIFICATES = 64


def canonical(message: dict[str, str]) -> bytes:
    """The string SNS signs for ``message`` (its ``Type`` known): every signed field it
    has, in order, each as ``name\\nvalue\\n``."""
    fields = SIGNED_FIELDS[message["Type"]]
    return "".join(f"{name}\n{message[name]}\n" for name in fields if name in message).encode()


def parse(body: bytes) -> dict[str, str]:
    """An SNS message's fields, checked for shape (a :class:`ReportRefused` if it is not
    one): a known ``Type``, the fields it signs (``Subject`` is optional), a signature."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ReportRefused("the request is not an SNS message (not JSON)") from exc
    if not isinstance(data, dict):
        raise ReportRefused("the request is not an SNS message")
    kind = data.get("Type")
    if kind not in SIGNED_FIELDS:
        raise ReportRefused("the request is not an SNS message (unknown Type)")
    required = [f for f in SIGNED_FIELDS[kind] if f != "Subject"]
    wanted = (*required, "Signature", "SignatureVersion", "SigningCertURL")
    missing = [name for name in wanted if not isinstance(data.get(name), str)]
    if missing or not isinstance(data.get("Subject", ""), str):
        raise ReportRefused(f"the SNS message lacks {', '.join(missing) or 'a valid Subject'}")
    return {name: value for name, value in data.items() if isinstance(value, str)}


def signed_at(message: dict[str, str]) -> datetime:
    try:
        moment = datetime.fromisoformat(message["Timestamp"].replace("Z", "+00:00"))
    except ValueError as exc:
        raise ReportRefused("the SNS message's Timestamp is not a time") from exc
    if moment.tzinfo is None:
        raise ReportRefused("the SNS message's Timestamp has no zone")
    return moment.astimezone(UTC)


class SnsVerifier:
    """One per process: verifies SNS messages and confirms subscriptions, with the signing
    certificates it fetched kept by URL."""

    def __init__(
        self,
        guard: AddressGuard,
        *,
        hosts: str,
        max_age: float,
        ca_file: str | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self._hosts = re.compile(hosts)
        self._max_age = timedelta(seconds=max_age)
        self._timeout = timeout
        context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self._http = HttpClient(
            guard, max_connections=8, user_agent="Clarion/sns", ssl_context=context
        )
        self._certificates: OrderedDict[str, x509.Certificate] = OrderedDict()

    def check_url(self, url: str, what: str) -> str:
        """``url`` if it is an ``https`` URL on an SNS host, else a :class:`ReportRefused`."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.scheme != "https" or "@" in parts.netloc or not self._hosts.search(host):
            raise ReportRefused(f"the {what} is not an https URL on an SNS host")
        return url

    async def verify(self, body: bytes, now: datetime | None = None) -> dict[str, str]:
        """The message in ``body``, once its signature, signing certificate and age are
        checked; :class:`ReportRefused` when any of them is not right,
        :class:`TransientError` when the certificate cannot be fetched now."""
        message = parse(body)
        now = now or datetime.now(UTC)
        moment = signed_at(message)
        if now - moment > self._max_age or moment - now > timedelta(seconds=CLOCK_SKEW):
            raise ReportRefused("the SNS message's Timestamp is out of the accepted window")
        algorithm = HASHES.get(message["SignatureVersion"])
        if algorithm is None:
            raise ReportRefused("unknown SNS SignatureVersion")
        try:
            signature = base64.b64decode(message["Signature"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ReportRefused("the SNS Signature is not base64") from exc
        url = self.check_url(message["SigningCertURL"], "SigningCertURL")
        certificate = await self._certificate(url)
        if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
            raise ReportRefused("the SNS signing certificate is not valid now")
        key = certificate.public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            raise ReportRefused("the SNS signing certificate's key is not RSA")
        try:
            key.verify(signature, canonical(message), padding.PKCS1v15(), algorithm())
        except InvalidSignature as exc:
            raise ReportRefused("the SNS signature is wrong") from exc
        return message

    async def confirm(self, message: dict[str, str]) -> None:
        """Confirm the subscription a verified ``SubscriptionConfirmation`` asks for, by
        visiting its ``SubscribeURL`` (an SNS host's, checked)."""
        url = self.check_url(message["SubscribeURL"], "SubscribeURL")
        reply = await self._get(url)
        if reply.status != 200:
            raise _failure(reply, "confirming the SNS subscription")

    async def _certificate(self, url: str) -> x509.Certificate:
        found = self._certificates.get(url)
        if found is not None:
            self._certificates.move_to_end(url)
            return found
        reply = await self._get(url, MAX_CERTIFICATE)
        if reply.status != 200:
            raise _failure(reply, "fetching the SNS signing certificate")
        try:
            certificate = x509.load_pem_x509_certificate(reply.body)
        except ValueError as exc:
            raise ReportRefused("the SNS SigningCertURL does not hold a certificate") from exc
        self._certificates[url] = certificate
        while len(self._certificates) > CACHED_CERTIFICATES:
            self._certificates.popitem(last=False)
        return certificate

    async def _get(self, url: str, max_body: int = MAX_CERTIFICATE) -> Reply:
        """GET through the guard; a redirect is not followed (it is a failure). An address
        the guard refuses refuses the message; a failure to connect is transient."""
        try:
            return await self._http.request(
                "GET", url, {"accept": "*/*"}, timeout=self._timeout, max_body=max_body
            )
        except PermanentError as exc:
            raise ReportRefused(f"{url}: {exc.message}") from exc

    async def aclose(self) -> None:
        await self._http.aclose()


def _failure(reply: Reply, doing: str) -> Exception:
    """A failed answer of an SNS host: worth trying again later (SNS retries a message it
    got no 2xx for) when the host says so, else the message is refused."""
    if reply.status in RETRY_STATUSES or reply.status >= 500:
        return TransientError(f"{doing}: HTTP {reply.status}", reason=f"http_{reply.status}")
    return ReportRefused(f"{doing}: HTTP {reply.status}")
