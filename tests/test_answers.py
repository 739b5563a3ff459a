"""One classification of answers and transport failures (net/answers.py), for every
provider and the status webhooks; a service's own table only adds to it."""

from __future__ import annotations

import ssl

import pytest

from clarion.errors import PermanentError, TransientError
from clarion.net.answers import Meaning, classify, transport_error


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 599])
def test_these_answers_are_worth_trying_again_after_retry_after(status: int) -> None:
    error = classify(status, "busy", retry_after="7")
    assert isinstance(error, TransientError)
    assert (error.reason, error.retry_after) == (f"http_{status}", 7.0)


@pytest.mark.parametrize(
    ("status", "credentials", "reason"),
    [
        (400, True, "provider_rejected"),
        (404, True, "provider_rejected"),
        (401, True, "bad_credentials"),
        (403, True, "bad_credentials"),
        (401, False, "provider_rejected"),
        (403, False, "provider_rejected"),
        (301, True, "redirect_refused"),
        (307, False, "redirect_refused"),
    ],
)
def test_the_others_are_permanent(status: int, credentials: bool, reason: str) -> None:
    error = classify(status, "no", credentials=credentials, location="http://10.0.0.1/")
    assert isinstance(error, PermanentError)
    assert error.reason == reason
    assert error.dead_address is None


def test_a_success_is_no_error() -> None:
    assert classify(200, "ok") is None
    assert classify(202, "ok") is None


def test_a_services_own_meanings_come_first() -> None:
    meanings = {
        (410, "Unregistered"): Meaning("unregistered", gone=True),
        (None, "UNAVAILABLE"): Meaning(transient=True),
        (413, ""): Meaning("payload_too_large"),
    }
    gone = classify(410, "gone", code="Unregistered", meanings=meanings, address="tok")
    assert isinstance(gone, PermanentError)
    assert (gone.reason, gone.dead_address) == ("unregistered", "tok")
    # The same status with another code: the rules of every service.
    other = classify(410, "gone", code="Other", meanings=meanings, address="tok")
    assert isinstance(other, PermanentError)
    assert (other.reason, other.dead_address) == ("provider_rejected", None)
    busy = classify(400, "busy", code="UNAVAILABLE", meanings=meanings)
    assert isinstance(busy, TransientError)
    assert busy.reason == "http_400"
    large = classify(413, "large", code="anything", meanings=meanings)
    assert isinstance(large, PermanentError)
    assert large.reason == "payload_too_large"
    refused = classify(400, "no", rejected="bad_credentials")
    assert isinstance(refused, PermanentError)
    assert refused.reason == "bad_credentials"


def test_failures_to_get_an_answer_are_transient() -> None:
    assert transport_error(TimeoutError(), after=10.0).reason == "timeout"
    assert transport_error(RuntimeError("slow"), timed_out=True).reason == "timeout"
    assert transport_error(ConnectionRefusedError("no")).reason == "connection_error"
    certificate = ssl.SSLCertVerificationError("certificate verify failed")
    assert transport_error(certificate).reason == "certificate_error"
    assert all(
        isinstance(transport_error(exc), TransientError)
        for exc in (TimeoutError(), OSError("reset"), certificate)
    )
