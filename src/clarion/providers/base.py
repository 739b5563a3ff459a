"""The provider interface: one method that sends one delivery.

A provider receives the :class:`~clarion.domain.delivery.Delivery` the planner made and the
worker read from the broker, as it is: one naming from the planner to the provider.

A provider knows only its own wire protocol and how to classify its failures: it raises
:class:`~clarion.errors.TransientError` (worth retrying) or
:class:`~clarion.errors.PermanentError` (never). Retries, rate limits, circuit breakers and
status recording are layers around it, not inside it.

A configurable provider is built from a :class:`ProviderSpec` (its tenant's stored
configuration, secrets decrypted) and the process's :class:`ProviderEnv`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from clarion.domain.delivery import Delivery
from clarion.domain.feedback import Feedback
from clarion.domain.proxies import provider_proxies
from clarion.security.netguard import AddressGuard

if TYPE_CHECKING:
    from clarion.config import Settings
    from clarion.providers.sns import SnsVerifier
    from clarion.store.db import AsyncEngine


@dataclass(frozen=True, slots=True)
class SendResult:
    """A send the service accepted. ``dead_addresses``: tokens or subscriptions the service
    refused as gone while others of the same delivery went through (they are removed from
    the recipient)."""

    provider_message_id: str | None = None
    dead_addresses: tuple[Any, ...] = ()


# A limit of the service's own that a send falls under: (what it is counted by, e.g. a
# Slack channel; sends per second).
Pace = tuple[str, float]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """A tenant's configured provider, as stored (``config`` validated, secrets decrypted)."""

    tenant_id: str
    name: str
    kind: str
    channel: str
    # Left out of the repr: it holds credentials.
    config: dict[str, Any] = field(repr=False)
    priority: int = 1
    rate_limit_per_second: float | None = None
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class ProviderEnv:
    """What a provider may use from its process."""

    settings: Settings
    engine: AsyncEngine
    extra: dict[str, Any] = field(default_factory=dict)

    def guard(self, proxy: str | None = None) -> AddressGuard:
        """The check of every address a provider connects to: public ones only, unless the
        deployment allows private ones (``CLARION_ALLOW_PRIVATE_WEBHOOKS``); and the proxy
        its HTTP requests go through: the deployment's (``HTTPS_PROXY``, ...), or the
        provider's own ``proxy`` (a URL, or ``"none"`` for none) if it names one."""
        proxies = self.settings.proxies if proxy is None else provider_proxies(proxy)
        return AddressGuard(self.settings.allow_private_webhooks, proxies)


# A report that the recipient read the message: an event on the delivery's timeline (the
# delivery itself is then `delivered`).
READ = "read"


@dataclass(frozen=True, slots=True)
class Report:
    """What a provider reported later about a sent delivery: ``delivered``, ``read`` or
    ``failed`` (with the reason and the provider's words). ``delivery_id`` is set by a
    report that names its delivery itself (one webhook for every message), else the
    delivery is the one the callback's URL names; ``message_id`` is the provider's id of
    the message, which must then be the delivery's."""

    status: str
    reason: str | None = None
    error: str | None = None
    delivery_id: str | None = None
    message_id: str | None = None


class ReportRefused(Exception):
    """A delivery report that is not authentic (its signature is missing or wrong) or is
    not a report at all."""


class ReportReader(Protocol):
    """Verifies a delivery report against the provider's configuration and reads it; None
    for a report that changes nothing. ``url`` is the address the provider was told to
    call; ``params`` the form fields of the report."""

    def __call__(
        self,
        config: Mapping[str, Any],
        url: str,
        params: Sequence[tuple[str, str]],
        headers: Mapping[str, str],
    ) -> Report | None: ...


@dataclass(frozen=True, slots=True)
class FeedbackEnv:
    """What reading bounce and complaint reports needs from its process: the SNS verifier
    (its certificates cached), and how old a signed report may be (seconds)."""

    sns: SnsVerifier
    max_age: float


class FeedbackReader(Protocol):
    """Verifies a report of bounces and complaints against the provider's configuration
    and reads it (``body`` as received): the addresses it names, [] when it names none.
    :class:`ReportRefused` when it is not authentic, :class:`~clarion.errors.ProviderError`
    when it cannot be checked now."""

    async def __call__(
        self,
        config: Mapping[str, Any],
        body: bytes,
        headers: Mapping[str, str],
        env: FeedbackEnv,
    ) -> list[Feedback]: ...


class JsonReportReader(Protocol):
    """Verifies a webhook's JSON delivery reports against the provider's configuration
    (its signature over the raw ``body``) and reads them: one report per message it is
    about (each naming its delivery), none for a webhook that changes nothing. Raises
    :class:`ReportRefused` for a forged or malformed one."""

    def __call__(
        self, config: Mapping[str, Any], body: bytes, headers: Mapping[str, str]
    ) -> Sequence[Report]: ...


class SubscriptionCheck(Protocol):
    """Answers a service's verification of the webhook URL (a GET with a challenge and
    the token the tenant set up there): the text to answer with, or
    :class:`ReportRefused`."""

    def __call__(self, config: Mapping[str, Any], query: Mapping[str, str]) -> str: ...


class Provider(ABC):
    """Sends messages of one channel through one service."""

    kind: str = "base"

    @abstractmethod
    async def send(self, message: Delivery) -> SendResult:
        """Send, or raise TransientError / PermanentError."""

    def pacing(self, message: Delivery) -> Sequence[Pace]:
        """The service's own per-destination limits this send falls under, besides the
        provider's ``rate_limit_per_second`` (Slack's one message a second per channel):
        the send chain waits for a slot of each before the call."""
        return ()

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open pools and background writers."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Close connections; called once at shutdown."""
