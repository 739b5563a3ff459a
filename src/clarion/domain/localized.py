"""Locale-aware filters (Babel): dates, times, numbers, percentages, currencies, durations.

They format in the rendering locale (the recipient's full tag, e.g. ``fr-CA``, else ``en``)
and, for times, the recipient's time zone (else UTC); both come from the render's private
state, never from the template's data. Data arrives as JSON, so values may be ISO 8601 /
RFC 3339 strings or numbers written as strings. A value that can't be read is a
:class:`TemplateError` naming the filter, never a crash.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel import dates as babel_dates
from babel import numbers as babel_numbers
from jinja2 import pass_context
from jinja2.runtime import Context

from clarion.domain.template_limits import state_of
from clarion.errors import TemplateError

DEFAULT_LOCALE = "en"
_MAX_TEXT = 64  # longest string read as a number or a date
_MAX_PATTERN = 100
_MAX_BITS = 256

_READ_ERRORS = (
    ValueError,
    TypeError,
    ArithmeticError,
    LookupError,
    OSError,
    UnknownLocaleError,
    babel_numbers.UnknownCurrencyError,
    babel_numbers.UnsupportedNumberingSystemError,
)


@functools.lru_cache(maxsize=1024)
def babel_locale(tag: str | None) -> Locale:
    """The Babel locale for a tag: ``fr-CA`` → fr_CA, else its language, else English."""
    parts = (tag or "").replace("_", "-").split("-")
    for i in range(len(parts), 0, -1):
        try:
            return Locale.parse("-".join(parts[:i]), sep="-")
        except (UnknownLocaleError, ValueError, TypeError):
            continue
    return Locale.parse(DEFAULT_LOCALE)


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> tzinfo:
    return ZoneInfo(name)


def zone(name: str | None) -> tzinfo:
    """The recipient's zone; UTC when unknown or not a zone."""
    if not name:
        return UTC
    try:
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def _text(value: str, what: str) -> str:
    value = value.strip()
    if len(value) > _MAX_TEXT:
        raise ValueError(f"a {what} longer than {_MAX_TEXT} characters")
    return value


def to_number(value: Any) -> int | float | Decimal:
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, int):
        if value.bit_length() > _MAX_BITS:
            raise ValueError("the number is too large")
        return value
    if isinstance(value, float | Decimal):
        number = value
    elif isinstance(value, str):
        try:
            number = Decimal(_text(value, "number").replace(" ", ""))
        except ArithmeticError as exc:
            raise ValueError(f"{_short(value)} is not a number") from exc
    else:
        raise ValueError(f"a {type(value).__name__} is not a number")
    finite = number.is_finite() if isinstance(number, Decimal) else math.isfinite(number)
    if not finite:
        raise ValueError(f"{value!r} is not a finite number")
    return number


def to_datetime(value: Any) -> datetime:
    """An aware datetime from a datetime, a date, an ISO string or epoch seconds (UTC)."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime.combine(value, time())
    elif isinstance(value, str):
        moment = datetime.fromisoformat(_text(value, "date"))
    elif isinstance(value, int | float) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(value, UTC)
    else:
        raise ValueError(f"{value!r} is not a date or time")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def to_date(value: Any, zone_: tzinfo) -> date:
    """A calendar date: a date-only value stays as written; an instant is seen in the zone."""
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and len(value.strip()) == 10:
        return date.fromisoformat(value.strip())
    return to_datetime(value).astimezone(zone_).date()


def to_time(value: Any) -> datetime | time:
    if isinstance(value, time):
        return value
    if isinstance(value, str) and ":" in value and "-" not in value[:5]:
        return time.fromisoformat(_text(value, "time"))
    return to_datetime(value)


def _pattern(format: str | None) -> str | None:
    if format is not None and (not isinstance(format, str) or len(format) > _MAX_PATTERN):
        raise ValueError("the format must be a string of at most 100 characters")
    return format


def _localized(func: Callable[..., str]) -> Callable[..., str]:
    """Convert what Babel or the value parsers raise into a template error."""
    name = func.__name__

    @functools.wraps(func)
    def wrapper(context: Context, value: Any, *args: Any, **kwargs: Any) -> str:
        try:
            return func(context, value, *args, **kwargs)
        except _READ_ERRORS as exc:
            raise TemplateError(f"{name}: cannot format {_short(value)}: {exc}") from exc

    return pass_context(wrapper)


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str | int | float) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _locale(context: Context) -> Locale:
    return babel_locale(state_of(context).locale)


def _tz(context: Context, tz: str | None) -> tzinfo:
    if tz is None:
        return zone(state_of(context).timezone)
    if not isinstance(tz, str):
        raise ValueError("tz must be an IANA time zone name")
    try:
        return _zone(tz)
    except ZoneInfoNotFoundError as exc:
        raise ValueError(f"unknown time zone {tz!r}") from exc


@_localized
def format_date(context: Context, value: Any, format: str = "medium", tz: str | None = None) -> str:
    day = to_date(value, _tz(context, tz))
    pattern = _pattern(format) or "medium"
    return babel_dates.format_date(day, format=pattern, locale=_locale(context))


@_localized
def format_datetime(
    context: Context, value: Any, format: str = "medium", tz: str | None = None
) -> str:
    return babel_dates.format_datetime(
        to_datetime(value),
        format=_pattern(format) or "medium",
        tzinfo=_tz(context, tz),
        locale=_locale(context),
    )


@_localized
def format_time(context: Context, value: Any, format: str = "medium", tz: str | None = None) -> str:
    moment = to_time(value)
    zone_ = _tz(context, tz) if isinstance(moment, datetime) else None
    return babel_dates.format_time(
        moment, format=_pattern(format) or "medium", tzinfo=zone_, locale=_locale(context)
    )


@_localized
def format_number(context: Context, value: Any) -> str:
    return babel_numbers.format_decimal(to_number(value), locale=_locale(context))


@_localized
def format_decimal(context: Context, value: Any, format: str | None = None) -> str:
    return babel_numbers.format_decimal(
        to_number(value), format=_pattern(format), locale=_locale(context)
    )


@_localized
def format_percent(context: Context, value: Any, format: str | None = None) -> str:
    return babel_numbers.format_percent(
        to_number(value), format=_pattern(format), locale=_locale(context)
    )


@_localized
def format_currency(context: Context, value: Any, currency: str, format: str | None = None) -> str:
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise ValueError("the currency must be a three-letter ISO 4217 code")
    return babel_numbers.format_currency(
        to_number(value), currency.upper(), format=_pattern(format), locale=_locale(context)
    )


@_localized
def format_timedelta(
    context: Context,
    value: Any,
    granularity: str = "second",
    add_direction: bool = False,
    format: str = "long",
) -> str:
    """A duration in seconds (a number) or a timedelta, e.g. ``3 hours``, ``in 2 days``."""
    seconds = value if isinstance(value, timedelta) else timedelta(seconds=float(to_number(value)))
    return babel_dates.format_timedelta(
        seconds,
        granularity=granularity,  # type: ignore[arg-type]
        add_direction=bool(add_direction),
        format=format,  # type: ignore[arg-type]
        locale=_locale(context),
    )


FILTERS: dict[str, Callable[..., str]] = {
    "format_date": format_date,
    "format_datetime": format_datetime,
    "format_time": format_time,
    "format_number": format_number,
    "format_decimal": format_decimal,
    "format_percent": format_percent,
    "format_currency": format_currency,
    "format_timedelta": format_timedelta,
}
