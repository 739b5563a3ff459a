"""Logs: structlog over the standard library, as text or JSON lines, personal data masked.

Every module keeps logging through ``logging.getLogger(__name__)``; structlog's
``ProcessorFormatter`` renders each record (Clarion's and its libraries') with the ids bound
where the work started — ``tenant_id`` by the request's authentication, ``delivery_id``,
``notification_id`` and ``tenant_id`` by a channel worker around an attempt, ``stage`` by
the planner — and one processor, :func:`mask`, runs on every line last before rendering, so
no email address, phone number, token or secret leaves the process in a log.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from types import MappingProxyType
from typing import IO, Any

import structlog
from structlog.contextvars import merge_contextvars
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["bind", "bound", "configure_logging", "log_handler", "mask", "mask_text"]

_MASK = "***"
# Order matters: whole secrets (PEM blocks, JWTs, keys) before the shapes inside them.
_RULES: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.S
        ),
        "-----PRIVATE KEY " + _MASK + "-----",
    ),
    # Authorization headers and bearer credentials.
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 " + _MASK),
    # JSON web tokens (recipient tokens, FCM and APNs assertions).
    (re.compile(r"\beyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]*"), _MASK),
    # Clarion's API keys and webhook secrets; Twilio, SendGrid and AWS key shapes.
    (re.compile(r"\b(ck|whsec)_[A-Za-z0-9_-]{8,}"), r"\1_" + _MASK),
    (re.compile(r"\bSG\.[\w-]{8,}\.[\w-]{8,}"), "SG." + _MASK),
    (re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{12,}"), r"\1" + _MASK),
    # key=value and "key": "value" pairs whose name says secret.
    (
        re.compile(
            r"(?i)([\"']?\b(?:password|passwd|pass|secret|token|api[_-]?key|auth[_-]?token|"
            r"authorization|private[_-]?key|client[_-]?secret|credentials?|signature)\b[\"']?"
            r"\s*[:=]\s*[\"']?)(?!\*\*\*|(?:bearer|basic)\s)([^\s\"',;&}]+)"
        ),
        r"\1" + _MASK,
    ),
    # Email addresses: the domain stays (which provider, which customer), the mailbox goes.
    (
        re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"),
        _MASK + r"@\1",
    ),
    # Phone numbers: E.164 and written forms with a leading +, or 10+ digits in groups.
    (re.compile(r"(?<![\w+])\+\d[\d ().-]{6,18}\d"), "+" + _MASK),
    (re.compile(r"(?<![\w.:/-])\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?![\w-])"), _MASK),
]
_SECRET_NAMES = re.compile(
    r"(?i)password|secret|token|api_?key|authorization|private_?key|credential|signature"
)


def mask_text(text: str) -> str:
    """``text`` with every email address, phone number, token and secret masked."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def _mask_value(key: str, value: Any) -> Any:
    if isinstance(value, str):
        return _MASK if _SECRET_NAMES.search(key) else mask_text(value)
    if isinstance(value, Mapping):
        return {k: _mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(key, v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return mask_text(repr(value))


def mask(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The processor: masks every value of the line (the message, the bound ids, the
    rendered exception); a field named like a secret is masked whole."""
    for key, value in list(event_dict.items()):
        if key.startswith("_"):
            continue
        event_dict[key] = _mask_value(key, value)
    return event_dict


def _text(_: WrappedLogger, __: str, event_dict: EventDict) -> str:
    """``time LEVEL logger: message key=value ...`` then the exception, if any."""
    head = (
        f"{event_dict.pop('timestamp', '')} {str(event_dict.pop('level', '')).upper()} "
        f"{event_dict.pop('logger', '')}: {event_dict.pop('event', '')}"
    )
    exception = event_dict.pop("exception", None)
    extra = " ".join(f"{k}={v}" for k, v in event_dict.items() if not k.startswith("_"))
    line = f"{head} {extra}" if extra else head
    return f"{line}\n{exception}" if exception else line


# The ids bound in this task (one variable holding them all: structlog's own context
# variables cost a context copy per binding, which a worker pays per delivery).
_NONE: Mapping[str, Any] = MappingProxyType({})
_IDS: ContextVar[Mapping[str, Any]] = ContextVar("clarion_log_ids", default=_NONE)


def bind(**ids: Any) -> None:
    """Ids carried by every later log line of this task (and tasks it starts)."""
    _IDS.set({**_IDS.get(), **ids})


class _Bound:
    """The context manager :func:`bound` returns: a class, not a generator, since a channel
    worker enters one per delivery."""

    __slots__ = ("_ids", "_token")

    def __init__(self, ids: Mapping[str, Any]) -> None:
        self._ids = ids

    def __enter__(self) -> None:
        self._token = _IDS.set({**_IDS.get(), **self._ids})

    def __exit__(self, *_: object) -> None:
        _IDS.reset(self._token)


def bound(**ids: Any) -> AbstractContextManager[None]:
    """Ids carried by every log line inside the block (this task only)."""
    return _Bound(ids)


def _merge_ids(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for name, value in _IDS.get().items():
        event_dict.setdefault(name, value)
    return event_dict


def _processors() -> list[Processor]:
    return [
        merge_contextvars,  # what code outside Clarion binds with structlog's own
        _merge_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def log_handler(fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """A handler rendering records as ``fmt`` (``text`` or ``json``), masked."""
    renderer: Processor = structlog.processors.JSONRenderer() if fmt == "json" else _text
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            mask,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    return handler


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send every log record of the process through one masked handler."""
    root = logging.getLogger()
    root.handlers = [log_handler(fmt)]
    root.setLevel(level.upper())
    structlog.configure(
        processors=[
            *_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
