"""The Amazon SES provider: SES API v2 ``SendEmail`` with a raw MIME message.

The message is the one :mod:`clarion.providers.mime` builds for SMTP too (so it carries
the unsubscribe headers, which SES's simple content cannot all express), sent as
``Content.Raw.Data`` and signed with Signature Version 4 by botocore. SES answers
``{"MessageId"}``; its errors name their type in ``x-amzn-ErrorType`` or ``__type``.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from clarion.domain.delivery import Delivery
from clarion.net.answers import Meaning, Meanings, classify
from clarion.providers.base import Provider, ProviderEnv, ProviderSpec, SendResult
from clarion.providers.configs import SesConfig
from clarion.providers.http import DEFAULT_TIMEOUT, ApiClient, Reply
from clarion.providers.mime import Email, EmailComposer, to_bytes, to_mime

PATH = "/v2/email/outbound-emails"
# Worth retrying whatever the status: SES throttles with 429 and with 400 LimitExceeded.
_TRANSIENT = frozenset(
    {
        "TooManyRequestsException",
        "LimitExceededException",
        "ThrottlingException",
        "Throttling",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
    }
)
# The request's signature or key is refused: nothing a retry can fix.
_CREDENTIALS = frozenset(
    {
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
        "IncompleteSignature",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "MissingAuthenticationTokenException",
        "AccessDeniedException",
        "ExpiredTokenException",
    }
)


# What SES's error types say beyond the status (net/answers.py classifies the rest).
MEANINGS: Meanings = {
    **{(None, kind): Meaning(transient=True) for kind in _TRANSIENT},
    **{(None, kind): Meaning("bad_credentials") for kind in _CREDENTIALS},
}


def error_type(reply: Reply, body: dict[str, Any]) -> str:
    """``MessageRejected`` from ``MessageRejected:http://...`` or ``ns#MessageRejected``."""
    raw = reply.headers.get("x-amzn-errortype") or str(body.get("__type") or body.get("code", ""))
    return raw.split(":", 1)[0].rsplit("#", 1)[-1]


def raise_for_reply(reply: Reply) -> None:
    if 200 <= reply.status < 300:
        return
    try:
        body = orjson.loads(reply.body) if reply.body else {}
    except orjson.JSONDecodeError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    kind = error_type(reply, body)
    detail = f"{kind}: {body.get('message') or body.get('Message') or reply.text[:200]}"
    error = classify(
        reply.status,
        f"SES {reply.status} {detail}",
        retry_after=reply.headers.get("retry-after"),
        code=kind,
        meanings=MEANINGS,
    )
    if error is not None:
        raise error


def message_id_of(reply: Reply) -> str | None:
    """SES's id of an accepted message. An answer without one was still an acceptance:
    raising would have the message sent again."""
    try:
        found = orjson.loads(reply.body).get("MessageId")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return str(found) if found else None


class SesProvider(Provider):
    """Sends email through Amazon SES."""

    kind = "ses"

    def __init__(
        self, spec: ProviderSpec, env: ProviderEnv, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._config = config = SesConfig.model_validate(spec.config)
        base = str(config.base_url or f"https://email.{config.region}.amazonaws.com")
        self._url = base.rstrip("/") + PATH
        self._signer = SigV4Auth(
            Credentials(config.access_key_id, config.secret_access_key), "ses", config.region
        )
        self._composer = EmailComposer.of(config.from_, env)
        self._http = ApiClient(
            timeout=timeout,
            user_agent="Clarion/ses",
            guard=env.guard(config.proxy),
        )

    def _request(self, email: Email) -> tuple[bytes, dict[str, str]]:
        """The signed request: its body and its headers."""
        raw = to_bytes(to_mime(email))
        body = orjson.dumps(
            {
                # The identity SES checks; the From header keeps the display name.
                "FromEmailAddress": email.sender.address,
                "Destination": {"ToAddresses": [email.to]},
                "Content": {"Raw": {"Data": base64.b64encode(raw).decode()}},
                "EmailTags": [{"Name": "clarion_delivery_id", "Value": email.delivery_id}],
            }
        )
        request = AWSRequest(
            method="POST", url=self._url, data=body, headers={"Content-Type": "application/json"}
        )
        self._signer.add_auth(request)
        return body, dict(request.headers.items())

    async def send(self, message: Delivery) -> SendResult:
        email = await self._composer.compose(message)
        body, headers = self._request(email)
        reply = await self._http.post(self._url, body, headers)
        raise_for_reply(reply)
        return SendResult(provider_message_id=message_id_of(reply))

    async def aclose(self) -> None:
        await self._http.aclose()
