"""What an answer to a send means, and what a failure to get one means: the one
classification every provider and the status webhooks use.

    ProviderError
    ├── TransientError            worth trying again, not before ``retry_after`` (if given)
    │   ├── http_429              rate limited: its Retry-After is honoured
    │   ├── http_408, http_425,   the service cannot answer now (Retry-After, if it says)
    │   │   http_5xx
    │   ├── timeout               no answer within the send's timeout
    │   ├── certificate_error     the TLS certificate was not accepted
    │   └── connection_error      refused, reset, unreachable, or an answer that is not HTTP
    └── PermanentError            never worth trying again
        ├── redirect_refused      3xx: no request follows a redirect (the target could be an
        │                         internal address the guard would refuse)
        ├── bad_credentials       401, 403 from a service Clarion holds credentials for
        └── provider_rejected     any other 4xx, with the service's own words

A service that says more than its status gives a small table of its own
(:data:`Meanings`), consulted first: an APNs 410 ``Unregistered`` is a dead token, an FCM
``UNAVAILABLE`` is worth retrying, a Twilio 21610 is an opted-out number. ``rejected``
names what a service's other 4xx mean (a token endpoint's refusal is ``bad_credentials``),
and ``credentials=False`` is for a far end Clarion holds no credentials for (a webhook
receiver), whose 401 or 403 is a refusal like any other.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from clarion.errors import PermanentError, ProviderError, TransientError

RETRY_STATUSES = frozenset({408, 425, 429})
CREDENTIAL_STATUSES = frozenset({401, 403})


@dataclass(frozen=True, slots=True)
class Meaning:
    """What a service's answer means where its status alone does not say."""

    # The error's reason; None for ``http_<status>``.
    reason: str | None = None
    transient: bool = False
    # The address sent to is gone for good (the worker removes it from the recipient).
    gone: bool = False


# (status, the service's code) -> its meaning; a status of None matches any status, and a
# code of "" any code (looked up in that order: both, the code alone, the status alone).
Meanings = Mapping[tuple[int | None, str], Meaning]
_NONE: Meanings = {}


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def refuse_redirect(status: int, headers: Mapping[str, str], what: str = "") -> None:
    """Raise :class:`PermanentError` ``redirect_refused`` for a 3xx answer, before its body
    is read for anything else (``what`` names the endpoint in its message)."""
    if 300 <= status < 400:
        prefix = f"{what}: " if what else ""
        raise _redirect(f"{prefix}HTTP {status}", headers.get("location", ""))


def _redirect(detail: str, location: str) -> PermanentError:
    return PermanentError(
        f"{detail}: redirect to {location[:200]!r} refused (redirects are not followed)",
        reason="redirect_refused",
    )


def _meaning(meanings: Meanings, status: int, code: str) -> Meaning | None:
    if not meanings:
        return None
    if code:
        found = meanings.get((status, code)) or meanings.get((None, code))
        if found is not None:
            return found
    return meanings.get((status, ""))


def classify(
    status: int,
    detail: str,
    *,
    retry_after: str | None = None,
    code: str = "",
    meanings: Meanings = _NONE,
    credentials: bool = True,
    rejected: str = "provider_rejected",
    address: Any = None,
    location: str = "",
) -> ProviderError | None:
    """The error an answer means (None for a 2xx): ``detail`` is its message (the service's
    words), ``retry_after`` its ``Retry-After``, ``code`` the service's own error code for
    ``meanings``, ``address`` the token or subscription a ``gone`` meaning names, and
    ``location`` a redirect's target."""
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        return _redirect(detail, location)
    meaning = _meaning(meanings, status, code)
    if meaning is None:
        meaning = _by_status(status, credentials, rejected)
    if meaning.transient:
        wait = parse_retry_after(retry_after)
        return TransientError(detail, reason=meaning.reason or f"http_{status}", retry_after=wait)
    reason = meaning.reason or rejected
    return PermanentError(detail, reason=reason, dead_address=address if meaning.gone else None)


_RETRY = Meaning(transient=True)
_BAD_CREDENTIALS = Meaning("bad_credentials")


def _by_status(status: int, credentials: bool, rejected: str) -> Meaning:
    if status in RETRY_STATUSES or status >= 500:
        return _RETRY
    if credentials and status in CREDENTIAL_STATUSES:
        return _BAD_CREDENTIALS
    return Meaning(rejected)


def raise_for_status(
    status: int,
    message: str,
    retry_after: str | None = None,
    *,
    credentials: bool = True,
    meanings: Meanings = _NONE,
    code: str = "",
) -> None:
    """Raise the error a non-2xx answer means (:func:`classify`); ``message`` is the far
    end's own words."""
    error = classify(
        status,
        f"HTTP {status}: {message[:300]}",
        retry_after=retry_after,
        code=code,
        meanings=meanings,
        credentials=credentials,
    )
    if error is not None:
        raise error


def transport_error(
    exc: BaseException, *, timed_out: bool = False, after: float | None = None, what: str = ""
) -> ProviderError:
    """The error a failure to get an answer means, all worth trying again: ``timeout``
    (``exc`` a :class:`TimeoutError`, or ``timed_out`` for a library's own kind; ``after``
    the seconds waited), ``certificate_error``, else ``connection_error``. ``what`` names
    the far end in the message."""
    prefix = f"{what} " if what else ""
    if timed_out or isinstance(exc, TimeoutError):
        waited = f" after {after}s" if after is not None else ""
        cause = f": {exc}" if str(exc) else ""
        return TransientError(f"{prefix}timed out{waited}{cause}", reason="timeout")
    if isinstance(exc, ssl.SSLCertVerificationError):
        verified = getattr(exc, "verify_message", None) or exc
        message = f"{prefix}TLS certificate not accepted: {verified}"
        return TransientError(message, reason="certificate_error")
    return TransientError(f"{prefix}{type(exc).__name__}: {exc}", reason="connection_error")
