"""What the chat providers share: where a delivery goes, and how its outcomes combine.

A chat delivery's address is the recipient's list of chat addresses
(:mod:`clarion.domain.chat`). A provider of the ``chat`` channel sends to every address of
its own service that it can use (a Slack bot to ``channel`` addresses, a Slack webhook
provider to ``webhook_url`` ones); when the recipient has none, to the provider's own
destination (its config's ``webhook_url``, ``channel`` or ``chat_id``: an ops room); with
neither, the delivery fails with ``no_address``. Each address is one request, all at once,
combined as push is (:func:`clarion.providers.push.combine`): sent when any took it; an
address the service calls gone is removed from the recipient (never the provider's own).

A service's limit per destination (Slack's message a second per channel) is declared by
:attr:`ChatProvider.PACE` and waited for by the send chain (:meth:`Provider.pacing`).
"""

from __future__ import annotations

import hashlib
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import orjson

from clarion.domain.chat import ChatContent, address_key, addresses_of, content_for
from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, ProviderError
from clarion.net.answers import Meaning, Meanings, classify
from clarion.providers.base import Pace, Provider, ProviderEnv, ProviderSpec, SendResult
from clarion.providers.configs import ChatConfig
from clarion.providers.http import ApiClient, Reply
from clarion.providers.push import combine, gather_outcomes

TIMEOUT = 15.0
USER_AGENT = "Clarion/1"
JSON = {"content-type": "application/json; charset=utf-8", "accept": "application/json"}
# An answer's text quoted in an error.
QUOTED = 300
# What a webhook's answer means when the webhook is gone for good.
GONE = Meaning("invalid_address", gone=True)


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes: a chat address (``own``: the provider's destination, not
    the recipient's, so never removed)."""

    address: dict[str, Any]
    own: bool = False

    @property
    def dead(self) -> dict[str, Any] | None:
        """What to report gone when the service says so: the recipient's address."""
        return None if self.own else self.address


class ChatProvider(Provider):
    """A chat service's provider; a kind gives its address field and its request."""

    # The service its addresses name (``kind`` of an address), and the field it sends to.
    SERVICE: ClassVar[str]
    FIELD: ClassVar[str] = "webhook_url"
    CONFIG: ClassVar[type[ChatConfig]]
    # Sends per second the service takes per destination; None: no such limit.
    PACE: ClassVar[float | None] = None

    def __init__(self, spec: ProviderSpec, env: ProviderEnv) -> None:
        self._spec = spec
        self.config: Any = self.CONFIG.model_validate(spec.config)
        self._allow_http = env.settings.allow_private_webhooks
        self._http = ApiClient(
            user_agent=USER_AGENT,
            guard=env.guard(self.config.proxy),
            timeout=float(env.extra.get("timeout", TIMEOUT)),
        )

    # -- where ----------------------------------------------------------------------------

    def targets(self, message: Delivery) -> list[Target]:
        """The recipient's addresses of this service, else the provider's destination."""
        found = addresses_of(message.to, self.SERVICE, self.FIELD)
        if found:
            return [Target(address) for address in found]
        own = getattr(self.config, self.CONFIG.DESTINATION, None)
        if own:
            return [Target({"kind": self.SERVICE, self.FIELD: str(own)}, own=True)]
        raise PermanentError(
            f"the recipient has no {self.SERVICE} address with a {self.FIELD}, and provider "
            f"{self._spec.name!r} has no destination of its own",
            reason="no_address",
        )

    def pacing(self, message: Delivery) -> Sequence[Pace]:
        if self.PACE is None:
            return ()
        try:
            targets = self.targets(message)
        except PermanentError:
            return ()
        # Keyed by a digest: a webhook URL is a credential, never a key name in Redis.
        return [(f"to:{_digest(address_key(t.address) or '')}", self.PACE) for t in targets]

    def url(self, target: Target) -> str:
        """A webhook target's URL: https, or plain http where private webhooks are allowed
        (a receiver on the deployment's own network)."""
        url = str(target.address.get("webhook_url") or "")
        scheme = urlsplit(url).scheme
        if scheme != "https" and not (scheme == "http" and self._allow_http):
            raise PermanentError("a chat webhook URL must be https", reason="invalid_address")
        return url

    # -- sending --------------------------------------------------------------------------

    async def send(self, message: Delivery) -> SendResult:
        content = content_for(message.content, self.SERVICE)
        if not content.text.strip():
            raise PermanentError("the chat content has no text", reason="render_error")
        targets = self.targets(message)
        calls = [self._one(target, content, message) for target in targets]
        return combine(await gather_outcomes(calls), noun=f"{self.SERVICE} address")

    async def _one(self, target: Target, content: ChatContent, message: Delivery) -> SendResult:
        return SendResult(provider_message_id=await self.post(target, content, message))

    @abstractmethod
    async def post(self, target: Target, content: ChatContent, message: Delivery) -> str | None:
        """Send to one target; the service's message id, or a ProviderError (with
        ``dead_address=target.dead`` when the service says the address is gone)."""

    async def post_json(
        self, url: str, payload: Any, headers: dict[str, str] | None = None
    ) -> Reply:
        return await self._http.post(
            url, orjson.dumps(payload), {**JSON, **(headers or {})}, what=self.SERVICE
        )

    async def aclose(self) -> None:
        await self._http.aclose()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def error(
    service: str,
    reply: Reply,
    target: Target,
    *,
    code: str = "",
    meanings: Meanings,
    detail: str | None = None,
    retry_after: str | None = None,
    status: int | None = None,
    credentials: bool = False,
) -> ProviderError | None:
    """The error an answer means (None for a success): the service's ``code`` looked up in
    its ``meanings``. Unless ``credentials`` (a bot token Clarion holds), a 401 or 403 is a
    refusal of the webhook URL, not of Clarion's credentials."""
    answered = reply.status if status is None else status
    words = detail if detail is not None else reply.text[:QUOTED]
    return classify(
        answered,
        f"{service} HTTP {reply.status}" + (f" {code}" if code else "") + f": {words}",
        retry_after=retry_after if retry_after is not None else reply.headers.get("retry-after"),
        code=code,
        meanings=meanings,
        credentials=credentials,
        address=target.dead,
    )


def refusal(service: str, reply: Reply, target: Target, **how: Any) -> ProviderError:
    """The error of an answer known not to be a success (an ``ok: false`` that came with a
    200, given ``status=400``)."""
    found = error(service, reply, target, **how)
    if found is None:
        return PermanentError(
            f"{service} HTTP {reply.status}: not a success", reason="provider_rejected"
        )
    return found


def json_of(reply: Reply) -> Any:
    """The answer's JSON, or None when it is not JSON."""
    try:
        return orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return None


def seconds(value: Any) -> str | None:
    """A retry delay given in a JSON body (seconds, maybe fractional) as Retry-After text."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return str(float(value))
    return None
