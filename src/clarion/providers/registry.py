"""Provider kinds by name, imported on first use: a process loads only the protocols its
tenants configure, and a kind's heavy dependencies stay optional."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from clarion.errors import PermanentError
from clarion.providers.base import Provider, ProviderEnv, ProviderSpec

Factory = Callable[[ProviderSpec, ProviderEnv], Provider]

# kind → "module:Class"; the class is built as ``Class(spec: ProviderSpec, env: ProviderEnv)``.
KINDS: dict[str, str] = {
    "smtp": "clarion.providers.smtp:SmtpProvider",
    "ses": "clarion.providers.ses:SesProvider",
    "sendgrid": "clarion.providers.sendgrid:SendgridProvider",
    "twilio": "clarion.providers.twilio:TwilioProvider",
    "fcm": "clarion.providers.fcm:FcmProvider",
    "apns": "clarion.providers.apns:ApnsProvider",
    "webpush": "clarion.providers.webpush:WebpushProvider",
}

# Kinds served by Clarion's own providers (one shared instance per process).
BUILT_IN_KINDS = frozenset({"sandbox", "webhook", "inapp"})


def load(kind: str) -> Factory:
    """The class of ``kind``. ``KeyError`` for a kind that does not exist; ``PermanentError``
    for one this installation cannot load."""
    target = KINDS[kind]
    module_name, _, class_name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise PermanentError(
            f"provider kind {kind!r} is not available in this installation ({target})",
            reason="no_provider",
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise PermanentError(f"{target} is not a provider", reason="no_provider")
    return cast(Factory, cls)
