"""Pure rules: ids, rendering, locales, backoff, signatures, address guard, settings."""

from __future__ import annotations

import random
import time

import pytest

from clarion.config import Settings, parse_duration
from clarion.domain import ids
from clarion.domain.backoff import retry_delay
from clarion.domain.ids import delivery_id, derived_timed_id, new_id
from clarion.domain.rendering import compile_content, compile_version, locale_chain
from clarion.errors import MissingVariable, PermanentError, TemplateError
from clarion.security.netguard import AddressGuard, is_public
from clarion.security.signing import sign, verify


def test_ids_sort_by_time_and_delivery_ids_are_deterministic() -> None:
    first = new_id("ntf")
    time.sleep(0.002)  # ids carry milliseconds: this orders the two, it waits for no work
    assert first < new_id("ntf")
    assert delivery_id("ntf_1", "u", "email") == delivery_id("ntf_1", "u", "email")
    assert delivery_id("ntf_1", "u", "email") != delivery_id("ntf_1", "u", "sms")
    assert delivery_id("ntf_1", "u", "email").startswith("dlv_")


def test_derived_ids_never_change() -> None:
    """A replayed plan must derive the ids stored before, whatever the version: these were
    made by the first encoder, one character at a time."""
    nid = "ntf_01jc9x2v3k7q8r0m4n5p6s7t8w"
    assert delivery_id(nid, "user-123", "email") == "dlv_01jc9x2v3k84f4snsy6cebxyzd"
    assert derived_timed_id("run", nid, "a", "b") == "run_01jc9x2v3ky16dsvcq6tk9v9gg"
    assert ids._b32_26((1 << 128) - 1) == "7zzzzzzzzzzzzzzzzzzzzzzzzz"
    rng = random.Random(7)
    for _ in range(2000):
        wide, narrow = rng.getrandbits(130), rng.getrandbits(80)
        assert ids._b32_26(wide) == ids._b32(wide, 26)
        assert ids._b32_16(narrow) == ids._b32(narrow, 16)
    made = new_id("ntf")
    assert len(made) == 30
    assert made[4] == "0"


def test_render_nested_webhook_body_and_escaping() -> None:
    body = compile_content({"body": {"a": ["{{ x }}", 3], "b": "{{ y | upper }}"}})
    assert body.render({"x": "1", "y": "z"}) == {"body": {"a": ["1", 3], "b": "Z"}}
    email = compile_content({"html": "<b>{{ name }}</b>", "text": "{{ name }}"})
    rendered = email.render({"name": "<script>"})
    assert rendered["html"] == "<b>&lt;script&gt;</b>"
    assert rendered["text"] == "<script>"


def test_missing_variable_is_named() -> None:
    with pytest.raises(MissingVariable) as caught:
        compile_content({"text": "Hi {{ who }}"}).render({})
    assert caught.value.name == "who"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ lipsum.__globals__ }}",
        "{{ joiner.__init__.__globals__.os }}",
        "{{ range(10**9) | list | length }}",
        "{{ self.__init__.__globals__ }}",
    ],
)
def test_sandbox_refuses_internals(source: str) -> None:
    with pytest.raises(TemplateError):
        compile_content({"text": source}).render({})


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(TemplateError) as caught:
        compile_content({"html": "a\nb {% for %}"})
    assert caught.value.line == 2


def test_locale_fallback() -> None:
    assert locale_chain("fr-CA", {"fr": {}, "de": {}}) == ["fr"]
    assert locale_chain("fr-CA", {"fr-ca": {}, "fr": {}}) == ["fr-ca", "fr"]
    assert locale_chain("es", {"fr": {}}) == []
    version = compile_version(
        "transactional",
        {"email": {"subject": "Hi", "text": "t"}},
        {"fr": {"email": {"subject": "Salut"}}},
    )
    locale, template = version.for_channel("email", "fr-CA")
    assert locale == "fr"
    assert template.render({}) == {"subject": "Salut", "text": "t"}
    assert version.for_channel("email", None)[1].render({}) == {"subject": "Hi", "text": "t"}


def test_backoff_has_full_jitter_within_the_schedule() -> None:
    rng = random.Random(7)
    schedule = [1.0, 5.0, 30.0]
    for attempt, base in [(1, 1.0), (2, 5.0), (3, 30.0), (9, 30.0)]:
        delays = [retry_delay(attempt, schedule, rng=rng) for _ in range(200)]
        assert all(base / 2 <= d <= base for d in delays)
        assert len(set(delays)) > 100
    assert retry_delay(1, schedule, retry_after=60.0, rng=rng) == 60.0


def test_signature_round_trip_and_tamper() -> None:
    header = sign("s3cret", b'{"a":1}')
    assert verify("s3cret", b'{"a":1}', header)
    assert not verify("s3cret", b'{"a":2}', header)
    assert not verify("other", b'{"a":1}', header)
    assert not verify("s3cret", b'{"a":1}', sign("s3cret", b'{"a":1}', timestamp=1))
    assert not verify("s3cret", b"x", "garbage")


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.0.1", False),
        ("169.254.169.254", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),
        ("2001:4860:4860::8888", True),
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    assert is_public(address) is public


async def test_guard_refuses_loopback_and_bad_schemes() -> None:
    guard = AddressGuard(allow_private=False)
    with pytest.raises(PermanentError):
        await guard.check("http://127.0.0.1:8080/x")
    with pytest.raises(PermanentError):
        await guard.check("file:///etc/passwd")
    await AddressGuard(allow_private=True).check("http://127.0.0.1/x")


def test_settings_durations() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120
    assert Settings(retry_schedule="1s,5s,1h").retry_delays == [1, 5, 3600]
    with pytest.raises(ValueError, match="duration"):
        Settings(retry_schedule="soon")


def test_which_delays_are_walked_ahead() -> None:
    """A delay is walked ahead of its end only when what follows it, up to the next delay,
    is channel and exit steps that read no step."""
    from clarion.domain.runs import walks_ahead
    from clarion.domain.workflows import Workflow

    def flow(*steps: dict[str, object]) -> Workflow:
        return Workflow.stored("w", None, [{"id": f"s{i}", **s} for i, s in enumerate(steps)])

    wait = {"type": "delay", "duration": "1m"}
    mail = {"type": "channel", "channel": "email", "template": "t"}
    plain = flow(wait, mail, {"type": "exit", "if": "data.stop"}, {**mail, "if": "data.x"})
    assert walks_ahead(plain.steps, 0)
    assert not walks_ahead(flow(wait, {**mail, "if": "not steps.s9.read"}).steps, 0)
    assert not walks_ahead(flow(wait, {"type": "throttle", "limit": 1, "window": "1h"}).steps, 0)
    assert not walks_ahead(flow(wait, {"type": "digest", "window": "1h"}).steps, 0)
    # Only up to the next delay: what comes after that one is that one's to answer.
    later = flow(wait, mail, wait, {"type": "throttle", "limit": 1, "window": "1h"})
    assert walks_ahead(later.steps, 0)
    assert not walks_ahead(later.steps, 2)
    assert walks_ahead(flow(wait).steps, 0)
