"""The published schema of ``PUT /v1/providers/{name}``'s body: one object per provider
kind, a union discriminated on ``kind``, each with the channels it carries and its config
model (:mod:`clarion.providers.configs`), secret fields marked ``writeOnly``.

Documentation only. The route still reads the body as one loose model and checks the kind,
the channel and the config in turn (``api/routes/providers.py``), so the error codes it
answers (``unknown_kind``, ``channel_not_supported``, ``validation_error`` on
``config.<field>``) and what it accepts are those of before; a test holds the two to each
other: every kind's valid body is valid under its published schema and is accepted.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from clarion.providers.kinds import CONFIGURABLE, KINDS

REQUEST = "ProviderRequest"
_REF = "#/components/schemas/{model}"
_SECRET_NOTE = 'Write-only: stored encrypted, read back as `"***"`; send `"***"` to keep it.'

# One example per kind, for the reference page and schema-driven tests (placeholders:
# the key-checked kinds need real key material to be accepted).
EXAMPLES: dict[str, dict[str, Any]] = {
    "smtp": {
        "host": "smtp.example.com",
        "port": 587,
        "username": "clarion",
        "password": "<smtp password>",
        "from": "Example Shop <orders@example.com>",
    },
    "ses": {
        "region": "eu-west-1",
        "access_key_id": "AKIAEXAMPLE",
        "secret_access_key": "<secret access key>",
        "from": "orders@example.com",
    },
    "sendgrid": {"api_key": "<SendGrid API key>", "from": "orders@example.com"},
    "twilio": {
        "account_sid": "AC0123456789abcdef0123456789abcdef",
        "auth_token": "<auth token>",
        "from": "+14155550100",
    },
    "fcm": {
        "service_account": {
            "type": "service_account",
            "project_id": "my-project",
            "private_key": "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----",
            "client_email": "clarion@my-project.iam.gserviceaccount.com",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    },
    "apns": {
        "team_id": "ABCDE12345",
        "key_id": "KEY1234567",
        "private_key": "-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----",
        "topic": "com.example.app",
        "environment": "production",
    },
    "webpush": {
        "vapid_private_key": "<VAPID private key>",
        "vapid_subject": "mailto:ops@example.com",
    },
    "slack_webhook": {"webhook_url": "https://hooks.slack.com/services/T000/B000/XXXX"},
    "slack": {"token": "xoxb-0000-0000-XXXX", "channel": "C0123456789"},
    "teams": {"webhook_url": "https://example.webhook.office.com/webhookb2/..."},
    "discord": {"webhook_url": "https://discord.com/api/webhooks/123/XXXX"},
    "mattermost": {"webhook_url": "https://chat.example.com/hooks/xxxx"},
    "google_chat": {"webhook_url": "https://chat.googleapis.com/v1/spaces/AAAA/messages?key=K"},
    "telegram": {"bot_token": "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11", "chat_id": "-1001234"},
    "whatsapp_cloud": {
        "phone_number_id": "106540352242922",
        "access_token": "<system user access token>",
        "app_secret": "<app secret>",
        "verify_token": "<a token of your choice>",
    },
    "twilio_whatsapp": {
        "account_sid": "AC0123456789abcdef0123456789abcdef",
        "auth_token": "<auth token>",
        "from": "whatsapp:+14155550100",
    },
    "webhook": {},
    "sandbox": {},
}


def _title(kind: str) -> str:
    return "".join(part.capitalize() for part in kind.split("_")) + "Provider"


def _kind_model(kind: str) -> type[BaseModel]:
    descriptor = KINDS[kind]
    config = descriptor.config
    assert config is not None  # a configurable kind
    channels = tuple(sorted(descriptor.channels))
    required = any(f.is_required() for f in config.model_fields.values())
    example: dict[str, Any] = {"channel": channels[0], "kind": kind, "config": EXAMPLES[kind]}
    channel_type: Any = Literal[channels]
    kind_type: Any = Literal[kind]
    config_default: Any = ... if required else Field(default_factory=dict)
    return create_model(
        _title(kind),
        __config__=ConfigDict(
            extra="forbid",
            title=_title(kind),
            json_schema_extra={"examples": [example]},
        ),
        channel=(channel_type, Field(description="A channel this kind carries")),
        kind=(kind_type, ...),
        config=(config, config_default),
        priority=(int, Field(default=1, ge=1, le=1_000_000)),
        rate_limit_per_second=(float | None, Field(default=None, gt=0, le=1_000_000)),
        enabled=(bool, True),
    )


def _mark_secrets(schemas: dict[str, Any]) -> None:
    for kind in CONFIGURABLE:
        config = KINDS[kind].config
        assert config is not None
        properties = schemas.get(config.__name__, {}).get("properties", {})
        for field in config.SECRET:
            entry = properties[field]
            entry["writeOnly"] = True
            entry["description"] = _SECRET_NOTE


def components() -> dict[str, Any]:
    """The schemas to add to ``components.schemas``: ``ProviderRequest`` (the union), one
    per kind and one per kind's config."""
    models = tuple(_kind_model(kind) for kind in sorted(CONFIGURABLE))
    union = Annotated[Union[models], Field(discriminator="kind")]  # type: ignore[valid-type]  # noqa: UP007
    schema = TypeAdapter(union).json_schema(ref_template=_REF)
    schemas: dict[str, Any] = schema.pop("$defs")
    schema["title"] = REQUEST
    schema["description"] = (
        "A provider: its `kind` decides the channels it may carry and the fields of its "
        "`config`. Secret fields are write-only."
    )
    schemas[REQUEST] = schema
    _mark_secrets(schemas)
    return schemas


# The request body the route declares, pointed at the union (merged by FastAPI into the
# operation it generates).
OPENAPI_EXTRA: dict[str, Any] = {
    "requestBody": {
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=REQUEST)}}},
        "required": True,
    }
}
