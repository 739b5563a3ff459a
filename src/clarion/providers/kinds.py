"""One descriptor per provider kind: everything Clarion knows of a kind besides its code.

The API validates a provider's configuration with the kind's config model (its fields, the
check of its key material), refuses a channel the kind cannot carry and tells the store
which fields to seal (the store knows no kinds); :mod:`clarion.providers.registry` builds
the kind's class, imported on first use (a process loads only the protocols its tenants
configure); the send chain guards a kind's calls with its tenant's circuit breaker unless it
is built in and local; push fans out over the kinds that are push platforms (the configured
kinds that carry push); and a kind that accepts delivery reports, or bounce and complaint
reports, names what verifies and reads them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from clarion.domain.models import ALL_CHANNELS
from clarion.errors import PermanentError
from clarion.providers import configs
from clarion.providers.base import (
    FeedbackReader,
    JsonReportReader,
    ReportReader,
    SubscriptionCheck,
)
from clarion.providers.credentials import Problems


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    channels: frozenset[str]
    # The model of its configuration; None for a kind no tenant configures (inapp).
    config: type[configs.KindConfig] | None
    # "module:Class" of a kind a tenant configures, built per provider; None for the
    # built-in kinds, one shared instance per process.
    provider: str | None = None
    # Calls go through the tenant's circuit breaker (and so fail over), unless the kind's
    # health is not one thing: a webhook's far end is each recipient's own endpoint (one
    # broken endpoint must not stop the others), in-app is Clarion's own database.
    guarded: bool = True
    # "module:function" verifying and reading the kind's delivery reports: a ReportReader
    # of form-encoded callbacks, or for ``report_format`` "json" a JsonReportReader of a
    # webhook's raw JSON body (reports that name their deliveries themselves).
    reports: str | None = None
    # "module:function" verifying and reading the kind's bounce and complaint reports (a
    # FeedbackReader), POSTed to /v1/providers/{name}/feedback.
    feedback: str | None = None
    report_format: Literal["form", "json"] = "form"
    # "module:function" answering the service's verification of a webhook URL (a GET
    # handshake, a SubscriptionCheck), for a kind whose webhook is set up that way.
    handshake: str | None = None

    @property
    def built_in(self) -> bool:
        return self.provider is None

    @property
    def push_platform(self) -> bool:
        """A platform that a push delivery fans out to (its tokens carry the platform): a
        kind a tenant configures for push."""
        return not self.built_in and "push" in self.channels

    @property
    def destination(self) -> str | None:
        """The config field of a chat kind's own destination (an ops room), if it is one."""
        if self.config is not None and issubclass(self.config, configs.ChatConfig):
            return self.config.DESTINATION
        return None

    def has_destination(self, config: Mapping[str, Any]) -> bool:
        """Whether a provider of this kind, so configured, can send without an address of
        the recipient's (a chat kind with its own destination)."""
        field = self.destination
        return field is not None and bool(config.get(field))

    @property
    def secret_fields(self) -> frozenset[str]:
        return self.config.SECRET if self.config is not None else frozenset()

    def check_credentials(self, config: dict[str, Any]) -> Problems:
        """The problems of a validated config's key material (its config model's
        ``KEY_CHECK``); [] when it is usable."""
        check = self.config.KEY_CHECK if self.config is not None else None
        return check(config) if check is not None else []

    def report_reader(self) -> ReportReader | None:
        if self.reports is None or self.report_format != "form":
            return None
        return cast(ReportReader, import_target(self.reports))

    def json_report_reader(self) -> JsonReportReader | None:
        if self.reports is None or self.report_format != "json":
            return None
        return cast(JsonReportReader, import_target(self.reports))

    def subscription_check(self) -> SubscriptionCheck | None:
        return cast(SubscriptionCheck, import_target(self.handshake)) if self.handshake else None

    def feedback_reader(self) -> FeedbackReader | None:
        return cast(FeedbackReader, import_target(self.feedback)) if self.feedback else None


def import_target(target: str) -> Any:
    """The object named by ``"module:attribute"``; :class:`PermanentError` when this
    installation cannot import it."""
    module_name, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise PermanentError(
            f"{target} is not available in this installation", reason="no_provider"
        ) from exc


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            "smtp",
            frozenset({"email"}),
            configs.SmtpConfig,
            "clarion.providers.smtp:SmtpProvider",
        ),
        Kind(
            "ses",
            frozenset({"email"}),
            configs.SesConfig,
            "clarion.providers.ses:SesProvider",
            feedback="clarion.providers.ses_feedback:read_feedback",
        ),
        Kind(
            "sendgrid",
            frozenset({"email"}),
            configs.SendgridConfig,
            "clarion.providers.sendgrid:SendgridProvider",
            feedback="clarion.providers.sendgrid_events:read_feedback",
        ),
        Kind(
            "twilio",
            frozenset({"sms"}),
            configs.TwilioConfig,
            "clarion.providers.twilio:TwilioProvider",
            reports="clarion.providers.twilio:read_report",
        ),
        Kind(
            "fcm",
            frozenset({"push"}),
            configs.FcmConfig,
            "clarion.providers.fcm:FcmProvider",
        ),
        Kind(
            "apns",
            frozenset({"push"}),
            configs.ApnsConfig,
            "clarion.providers.apns:ApnsProvider",
        ),
        Kind(
            "webpush",
            frozenset({"webpush"}),
            configs.WebpushConfig,
            "clarion.providers.webpush:WebpushProvider",
        ),
        *(
            Kind(name, frozenset({"chat"}), config, f"clarion.providers.{module}:{cls}")
            for name, config, module, cls in (
                ("slack_webhook", configs.SlackWebhookConfig, "slack", "SlackWebhookProvider"),
                ("slack", configs.SlackConfig, "slack", "SlackProvider"),
                ("teams", configs.TeamsConfig, "teams", "TeamsProvider"),
                ("discord", configs.DiscordConfig, "discord", "DiscordProvider"),
                ("mattermost", configs.MattermostConfig, "mattermost", "MattermostProvider"),
                ("google_chat", configs.GoogleChatConfig, "google_chat", "GoogleChatProvider"),
                ("telegram", configs.TelegramConfig, "telegram", "TelegramProvider"),
            )
        ),
        Kind(
            "whatsapp_cloud",
            frozenset({"whatsapp"}),
            configs.WhatsappCloudConfig,
            "clarion.providers.whatsapp:WhatsappCloudProvider",
            reports="clarion.providers.whatsapp:read_reports",
            report_format="json",
            handshake="clarion.providers.whatsapp:verify_subscription",
        ),
        Kind(
            "twilio_whatsapp",
            frozenset({"whatsapp"}),
            configs.TwilioWhatsappConfig,
            "clarion.providers.twilio_whatsapp:TwilioWhatsappProvider",
            reports="clarion.providers.twilio_whatsapp:read_report",
        ),
        Kind("sandbox", frozenset(ALL_CHANNELS), configs.SandboxConfig),
        Kind("webhook", frozenset({"webhook"}), configs.WebhookConfig, guarded=False),
        Kind("inapp", frozenset({"inapp"}), None, guarded=False),
    )
}

# Kinds a tenant may configure (PUT /v1/providers/{name}).
CONFIGURABLE = frozenset(name for name, kind in KINDS.items() if kind.config is not None)
# The built-in kinds; their names are reserved as provider names and valid for every tenant.
BUILT_IN = frozenset(name for name, kind in KINDS.items() if kind.built_in)
# Channels carried by a built-in provider of their own, with no configuration: the built-in
# kinds that carry one channel (the sandbox carries every channel, as the default).
BUILT_IN_BY_CHANNEL = {
    next(iter(kind.channels)): name
    for name, kind in KINDS.items()
    if kind.built_in and len(kind.channels) == 1
}
PUSH_PLATFORMS = frozenset(name for name, kind in KINDS.items() if kind.push_platform)
UNGUARDED = frozenset(name for name, kind in KINDS.items() if not kind.guarded)


def secret_fields(kind: str) -> frozenset[str]:
    found = KINDS.get(kind)
    return found.secret_fields if found else frozenset()
