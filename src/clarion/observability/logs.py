"""Logs: structlog over the standard library, as text or JSON lines, personal data masked.

Every module keeps logging through ``logging.getLogger(__name__)``; structlog's
``ProcessorFormatter`` renders each record (Clarion's and its libraries') with the ids bound
where the work started — ``tenant_id`` by the request's authentication, ``delivery_id``,
``notification_id`` and ``tenant_id`` by a channel worker around an attempt, ``stage`` by
the planner — and one processor, :func:`mask`, runs on every line last before rendering, so
no email address, phone number, token or secret leaves the process in a log.

Message bodies and contact data never reach a log at any level, DEBUG included, unless
``CLARION_LOG_PII`` is on: libraries that trace what they carry (SQLAlchemy's statements
with their parameters and rows, aiosqlite's operations, HTTP/2 header tables with device
tokens, WebSocket frames, request URLs) are held at WARNING and their DEBUG records dropped
(:func:`guard_libraries`, :class:`PiiGuard`), and SQL errors leave their parameters out
(store/db.py). With the switch on, for debugging on a machine of one's own, all of that is
logged and contact data is left unmasked; secrets (keys, tokens, passwords) stay masked.
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

__all__ = [
    "CHATTY",
    "PiiGuard",
    "bind",
    "bound",
    "configure_logging",
    "guard_libraries",
    "log_handler",
    "mask",
    "mask_secrets",
    "mask_text",
]

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
# The rules above that mask contact data rather than secrets (left out with CLARION_LOG_PII).
_CONTACT_RULES = 3
_SECRET_RULES = _RULES[:-_CONTACT_RULES]
_SECRET_NAMES = re.compile(
    r"(?i)password|secret|token|api_?key|authorization|private_?key|credential|signature"
)


def mask_text(text: str) -> str:
    """``text`` with every email address, phone number, token and secret masked."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text


def mask_secrets(text: str) -> str:
    """``text`` with every token and secret masked (contact data left as it is)."""
    for pattern, replacement in _SECRET_RULES:
        text = pattern.sub(replacement, text)
    return text


def _mask_value(key: str, value: Any, masker: Callable[[str], str] = mask_text) -> Any:
    if isinstance(value, str):
        return _MASK if _SECRET_NAMES.search(key) else masker(value)
    if isinstance(value, Mapping):
        return {k: _mask_value(str(k), v, masker) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(key, v, masker) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return masker(repr(value))


def _masking(masker: Callable[[str], str]) -> Processor:
    def processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        for key, value in list(event_dict.items()):
            if key.startswith("_"):
                continue
            event_dict[key] = _mask_value(key, value, masker)
        return event_dict

    return processor


mask = _masking(mask_text)
mask.__doc__ = """The processor: masks every value of the line (the message, the bound ids, the
rendered exception); a field named like a secret is masked whole."""
# With CLARION_LOG_PII on: secrets only.
mask_only_secrets = _masking(mask_secrets)

# Libraries whose records carry what they send or store: SQL statements with parameters and
# rows, aiosqlite's operations, request URLs, HTTP/2 header tables (APNs device tokens in
# the path), WebSocket and SMTP traffic.
CHATTY = (
    "sqlalchemy.engine",
    "sqlalchemy.orm",
    "aiosqlite",
    "asyncpg",
    "httpx",
    "httpcore",
    "hpack",
    "h2",
    "h11",
    "websockets",
    "aiosmtplib",
    "urllib3",
    "botocore",
    "uvicorn.access",
)


def _own(name: str) -> bool:
    return name == "clarion" or name.startswith("clarion.")


def _chatty(name: str) -> bool:
    return any(name == lib or name.startswith(lib + ".") for lib in CHATTY)


class PiiGuard(logging.Filter):
    """Drops a library's records that may carry bodies or contact data: any library's
    DEBUG records (wire traces), and INFO from the :data:`CHATTY` ones. Clarion's own
    records, and every WARNING and above, pass (masked)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _own(record.name) or record.levelno >= logging.WARNING:
            return True
        return record.levelno >= logging.INFO and not _chatty(record.name)


def guard_libraries(pii: bool, level: str = "INFO") -> None:
    """Hold the :data:`CHATTY` libraries at WARNING (so they do not even format what they
    would log), or, with ``pii``, let them follow the root ``level``. SQLAlchemy keeps its
    own default (WARNING) unless ``pii`` at DEBUG: then its statements are logged with
    their parameters."""
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if pii else logging.WARNING)
    sql = logging.INFO if pii and level.upper() == "DEBUG" else logging.WARNING
    logging.getLogger("sqlalchemy.engine").setLevel(sql)


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


def log_handler(
    fmt: str = "text", stream: IO[str] | None = None, *, pii: bool = False
) -> logging.Handler:
    """A handler rendering records as ``fmt`` (``text`` or ``json``), masked; without
    ``pii``, libraries' records that may carry bodies or contact data are dropped."""
    renderer: Processor = structlog.processors.JSONRenderer() if fmt == "json" else _text
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            mask_only_secrets if pii else mask,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    if not pii:
        handler.addFilter(PiiGuard())
    return handler


def configure_logging(level: str = "INFO", fmt: str = "text", *, pii: bool = False) -> None:
    """Send every log record of the process through one masked handler; ``pii``
    (``CLARION_LOG_PII``) lets bodies and contact data through, for debugging only."""
    root = logging.getLogger()
    root.handlers = [log_handler(fmt, pii=pii)]
    root.setLevel(level.upper())
    guard_libraries(pii, level)
    structlog.configure(
        processors=[
            *_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
