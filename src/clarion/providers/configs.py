"""Configuration of each provider kind, validated when a tenant stores a provider.

Field names follow the API contract. ``SECRET`` fields are encrypted at rest and shown as
``"***"``; ``KEY_CHECK`` checks a kind's key material once the fields are valid. Every kind
takes ``base_url`` to point it at another endpoint (a regional one, or a test server). Every
field that is later sent in a header, a request line or as an address is a
:data:`HeaderText` (or one of its address forms, :data:`EmailFrom`, :data:`SmsFrom`): the
rules of :mod:`clarion.domain.header_fields`, the same for every kind.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from email.utils import parseaddr
from typing import Annotated, Any, ClassVar, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    StringConstraints,
    TypeAdapter,
)

from clarion.domain.chat import MATTERMOST_CHANNEL, SLACK_CHANNEL, TELEGRAM_CHAT, chat_id_text
from clarion.domain.header_fields import header_value, mailbox, sms_sender
from clarion.domain.proxies import provider_proxies
from clarion.providers import credentials
from clarion.providers.credentials import Problems

Text = Annotated[str, StringConstraints(min_length=1, max_length=1000)]
Secret = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]
# A value sent later in a header, a request line or as an address.
HeaderText = Annotated[Text, AfterValidator(header_value)]
# A secret sent as it is in a header (an API key in `Authorization: Bearer`).
HeaderSecret = Annotated[Secret, AfterValidator(header_value)]


def _ca_pem(value: str) -> str:
    try:
        ssl.create_default_context(cadata=value)
    # TypeError: text that is not ASCII (PEM is).
    except (ssl.SSLError, ValueError, TypeError) as exc:
        raise ValueError("not PEM-encoded CA certificates") from exc
    return value


def _proxy(value: str) -> str:
    provider_proxies(value)
    return value


EmailFrom = Annotated[Text, AfterValidator(mailbox)]


def _bare_address(value: str) -> str:
    if parseaddr(value)[1] != value:
        raise ValueError("one bare email address (`bounces@example.com`), no name")
    return value


# An address alone, as an SMTP envelope names one.
EmailAddress = Annotated[EmailFrom, AfterValidator(_bare_address)]
# A provider's own outbound proxy: an http:// URL (credentials in it allowed), or "none" or
# "" to go direct; unset, the deployment's (HTTPS_PROXY, ...). Sealed like a secret: its
# URL may hold a password.
ProxySetting = Annotated[str, StringConstraints(max_length=2000), AfterValidator(_proxy)]
SmsFrom = Annotated[Text, AfterValidator(sms_sender)]
HEADER_RULES = (header_value, mailbox, sms_sender)


def header_fields(model: type[BaseModel]) -> frozenset[str]:
    """The names (as the API spells them) of the fields of ``model`` that the header
    rules check."""
    return frozenset(
        info.alias or name
        for name, info in model.model_fields.items()
        if _checked(info.metadata) or _checked(get_args(info.annotation))
    )


def _checked(parts: Any) -> bool:
    """Whether an annotation's parts (its metadata, a union's members, ...) carry one of
    the header rules."""
    for part in parts:
        if isinstance(part, AfterValidator) and part.func in HEADER_RULES:
            return True
        if get_args(part) and _checked(get_args(part)):
            return True
    return False


class KindConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    SECRET: ClassVar[frozenset[str]] = frozenset()
    # Checks the key material of a validated configuration (providers/credentials.py);
    # None for a kind whose fields' own rules say all.
    KEY_CHECK: ClassVar[Callable[[dict[str, Any]], Problems] | None] = None
    base_url: HttpUrl | None = None


class HttpKindConfig(KindConfig):
    """A kind that calls its service over HTTP: it may name its own proxy."""

    proxy: ProxySetting | None = None


class SmtpConfig(KindConfig):
    """`smtp`: any SMTP relay (STARTTLS, implicit TLS or plain), a pool of connections."""

    SECRET = frozenset({"password"})
    host: HeaderText
    port: int = Field(default=587, ge=1, le=65535)
    username: HeaderText | None = None
    password: Secret | None = None
    from_: EmailFrom = Field(alias="from")
    # The envelope sender (MAIL FROM), where bounces go: a return-path mailbox whose
    # reports are handed to POST /v1/suppressions/dsn. Unset: the address of `from`.
    return_path: EmailAddress | None = None
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    # Verify the server's certificate (turn off only for a relay with a private CA).
    verify_tls: bool = True
    # CA certificates (PEM text) to trust instead of the system's, for a relay with a
    # private CA. The text itself, not a path: tenants must not name files on the server.
    ca_pem: (
        Annotated[str, StringConstraints(min_length=1, max_length=100_000), AfterValidator(_ca_pem)]
        | None
    ) = None
    pool_size: int = Field(default=4, ge=1, le=64)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _public_key(value: str) -> str:
    credentials.p256_public_key(value)
    return value


# An SNS topic's ARN: arn:aws:sns:eu-west-1:123456789012:ses-feedback.
TopicArn = Annotated[
    str,
    StringConstraints(
        pattern=r"^arn:aws(-[a-z]+)*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$"
    ),
]


class SesConfig(HttpKindConfig):
    """`ses`: Amazon SES API v2, signed with the access key (Signature Version 4).
    `feedback_topic_arns`: the SNS topics whose bounce and complaint notifications
    `/v1/providers/{name}/feedback` takes (docs/providers.md)."""

    SECRET = frozenset({"secret_access_key", "proxy"})
    region: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")]
    access_key_id: HeaderText
    secret_access_key: Secret
    from_: EmailFrom = Field(alias="from")
    feedback_topic_arns: list[TopicArn] = Field(default_factory=list, max_length=20)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SendgridConfig(HttpKindConfig):
    """`sendgrid`: SendGrid v3 mail send. `webhook_public_key`: the verification key of the
    signed event webhook (base64 DER, as SendGrid shows it, or PEM), which
    `/v1/providers/{name}/feedback` checks every event batch against (docs/providers.md)."""

    SECRET = frozenset({"api_key", "proxy"})
    api_key: HeaderSecret
    from_: EmailFrom = Field(alias="from")
    webhook_public_key: (
        Annotated[
            str, StringConstraints(min_length=1, max_length=2000), AfterValidator(_public_key)
        ]
        | None
    ) = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TwilioConfig(HttpKindConfig):
    """`twilio`: Twilio Programmable Messaging; `from` is a number or a sender id."""

    SECRET = frozenset({"auth_token", "proxy"})
    account_sid: Annotated[str, StringConstraints(pattern=r"^AC[0-9a-fA-F]{32}$")]
    auth_token: Secret
    from_: SmsFrom = Field(alias="from")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class FcmConfig(HttpKindConfig):
    """`fcm`: Firebase Cloud Messaging HTTP v1 with a service account's key file."""

    SECRET = frozenset({"service_account", "proxy"})
    KEY_CHECK = credentials.check_fcm
    # The service account's JSON key file, as an object or as the file's text.
    service_account: dict[str, Any] | Secret
    # Where the OAuth2 token is obtained; defaults to the key file's `token_uri`.
    token_url: HttpUrl | None = None


class ApnsConfig(HttpKindConfig):
    """`apns`: Apple Push Notification service with a `.p8` token-auth key."""

    SECRET = frozenset({"private_key", "proxy"})
    KEY_CHECK = credentials.check_apns
    team_id: Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{10}$")]
    key_id: Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{10}$")]
    private_key: Secret
    topic: HeaderText
    environment: Literal["production", "sandbox"] = "production"


class WebpushConfig(HttpKindConfig):
    """`webpush`: Web Push with a VAPID P-256 key (PEM, or base64url of raw or DER bytes)."""

    SECRET = frozenset({"vapid_private_key", "proxy"})
    KEY_CHECK = credentials.check_webpush
    vapid_private_key: Secret
    vapid_subject: Annotated[HeaderText, StringConstraints(pattern=r"^(mailto:|https://).+")]


class SandboxConfig(KindConfig):
    """`sandbox`: keeps each message for `GET /v1/sandbox/messages`; sends nothing."""


class WebhookConfig(KindConfig):
    """`webhook`: a signed JSON POST to each recipient's `webhook_url`."""


_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


def _web_url(value: str) -> str:
    """A webhook URL (kept as given, since it holds its own credentials): http(s) with a
    host; whether plain http may be used depends on the deployment (checked by the API and
    again at each send)."""
    _URL.validate_python(value)
    if urlsplit(value).scheme not in ("http", "https"):
        raise ValueError("an https URL")
    return value


# A chat service's webhook URL: a secret (whoever holds it can post), so sealed at rest.
WebhookUrl = Annotated[Secret, AfterValidator(header_value), AfterValidator(_web_url)]
SlackChannel = Annotated[str, StringConstraints(pattern=SLACK_CHANNEL)]
ChatName = Annotated[HeaderText, StringConstraints(max_length=80)]


class ChatConfig(HttpKindConfig):
    """A chat kind: what it sends through, and optionally a destination of its own (an ops
    room) for recipients with no chat address of its kind; ``DESTINATION`` names that
    field. Like every HTTP kind it may name its own proxy."""

    DESTINATION: ClassVar[str] = "webhook_url"


class WebhookChatConfig(ChatConfig):
    """A chat kind that posts to webhook URLs: the recipient's, else this one."""

    SECRET = frozenset({"webhook_url", "proxy"})
    webhook_url: WebhookUrl | None = None


class SlackWebhookConfig(WebhookChatConfig):
    """`slack_webhook`: Slack incoming webhooks (the recipient's, or this one)."""


class SlackConfig(ChatConfig):
    """`slack`: Slack's Web API `chat.postMessage` with a bot token."""

    DESTINATION = "channel"
    SECRET = frozenset({"token", "proxy"})
    KEY_CHECK = credentials.check_slack
    token: HeaderSecret
    channel: SlackChannel | None = None
    username: ChatName | None = None
    icon_emoji: Annotated[str, StringConstraints(pattern=r"^:[a-z0-9_+'-]{1,100}:$")] | None = None


class TeamsConfig(WebhookChatConfig):
    """`teams`: a Microsoft Teams workflow (Power Automate) or incoming webhook URL."""


class DiscordConfig(WebhookChatConfig):
    """`discord`: Discord webhooks."""

    username: ChatName | None = None
    avatar_url: HttpUrl | None = None


class MattermostConfig(WebhookChatConfig):
    """`mattermost`: Mattermost incoming webhooks."""

    channel: Annotated[str, StringConstraints(pattern=MATTERMOST_CHANNEL)] | None = None
    username: ChatName | None = None
    icon_url: HttpUrl | None = None


class GoogleChatConfig(WebhookChatConfig):
    """`google_chat`: Google Chat incoming webhooks."""


class TelegramConfig(ChatConfig):
    """`telegram`: the Telegram Bot API's `sendMessage`."""

    DESTINATION = "chat_id"
    SECRET = frozenset({"bot_token", "proxy"})
    KEY_CHECK = credentials.check_telegram
    bot_token: HeaderSecret
    chat_id: (
        Annotated[str, StringConstraints(pattern=TELEGRAM_CHAT), BeforeValidator(chat_id_text)]
        | None
    ) = None
    disable_link_preview: bool = False


# A WhatsApp sender at Twilio: its number (E.164; "whatsapp:" before it is taken off), or a
# Messaging Service whose sender pool holds WhatsApp numbers.
WHATSAPP_SENDER = r"^(\+[1-9][0-9]{6,14}|MG[0-9a-fA-F]{32})$"


def _whatsapp_sender(value: Any) -> Any:
    return value.removeprefix("whatsapp:") if isinstance(value, str) else value


class WhatsappCloudConfig(HttpKindConfig):
    """`whatsapp_cloud`: Meta's WhatsApp Cloud API (`POST /{version}/{phone_number_id}/
    messages` with a bearer access token); `app_secret` verifies its status webhooks
    (`X-Hub-Signature-256`) and `verify_token` answers the webhook's verification."""

    SECRET = frozenset({"access_token", "app_secret", "verify_token", "proxy"})
    # Sent in the request's path: digits only.
    phone_number_id: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,30}$")]
    access_token: HeaderSecret
    app_secret: Secret | None = None
    verify_token: Annotated[Secret, StringConstraints(max_length=200)] | None = None
    api_version: Annotated[str, StringConstraints(pattern=r"^v[0-9]{1,3}\.[0-9]{1,2}$")] = "v21.0"


class TwilioWhatsappConfig(HttpKindConfig):
    """`twilio_whatsapp`: Twilio's Messages API with `whatsapp:` addresses; templates
    through the Content API (`ContentSid`, `ContentVariables`)."""

    SECRET = frozenset({"auth_token", "proxy"})
    account_sid: Annotated[str, StringConstraints(pattern=r"^AC[0-9a-fA-F]{32}$")]
    auth_token: Secret
    from_: Annotated[
        str, BeforeValidator(_whatsapp_sender), StringConstraints(pattern=WHATSAPP_SENDER)
    ] = Field(alias="from")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
