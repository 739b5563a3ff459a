"""Templates: versions, listing, rollback, preview, localized filters, and the sandbox."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from babel import dates as babel_dates
from babel import numbers as babel_numbers

from clarion.domain.htmltext import html_to_text
from harness import Harness

EMAIL_SMS = {
    "channels": {
        "email": {"subject": "Order {{ orderId }}", "html": "<p>Hello {{ firstName }}</p>"},
        "sms": {"text": "Order {{ orderId }} shipped"},
    },
    "locales": {
        "fr": {"email": {"subject": "Commande {{ orderId }}"}},
        "de": {"sms": {"text": "Bestellung {{ orderId }}"}},
    },
}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "Traceback" not in response.text
    return body


async def put(h: Harness, name: str, body: Any) -> httpx.Response:
    return await h.client.put(f"/v1/templates/{name}", json=body, headers=h.auth)


async def get(h: Harness, path: str, **params: Any) -> httpx.Response:
    return await h.client.get(path, params=params, headers=h.auth)


async def post(h: Harness, path: str, body: Any) -> httpx.Response:
    return await h.client.post(path, json=body, headers=h.auth)


async def preview(h: Harness, name: str, body: dict[str, Any]) -> httpx.Response:
    return await post(h, f"/v1/templates/{name}/preview", body)


async def rendered_text(h: Harness, source: str, data: dict[str, Any], **extra: Any) -> str:
    """Store a one-field SMS template and preview it; the rendered text."""
    response = await put(h, "probe", {"channels": {"sms": {"text": source}}})
    assert response.status_code == 200, response.text
    response = await preview(h, "probe", {"data": data, **extra})
    assert response.status_code == 200, response.text
    text: str = response.json()["channels"]["sms"]["text"]
    return text


# -- versions, listing, rollback -------------------------------------------------------------


async def test_every_put_is_a_new_version(lite: Harness) -> None:
    for n in (1, 2, 3):
        response = await put(lite, "t", {"channels": {"sms": {"text": f"v{n} {{{{ x }}}}"}}})
        assert response.json() == {"name": "t", "version": n}
    active = (await get(lite, "/v1/templates/t")).json()
    assert active["version"] == 3
    assert active["category"] == "transactional"
    first = (await get(lite, "/v1/templates/t", version=1)).json()
    assert first["channels"] == {"sms": {"text": "v1 {{ x }}"}}
    assert_error(await get(lite, "/v1/templates/t", version=9), 404, "not_found")
    assert_error(await get(lite, "/v1/templates/t", version=0), 422, "validation_error")
    assert_error(await get(lite, "/v1/templates/nope"), 404, "not_found")


async def test_list_walks_every_template_with_cursors(lite: Harness) -> None:
    names = ["delta", "alpha", "echo", "charlie", "bravo"]
    for name in names:
        await lite.put_template(name, {"channels": {"sms": {"text": name}}})
    await lite.put_template("alpha", {"category": "marketing", "channels": {"sms": {"text": "2"}}})
    other = {"Authorization": f"Bearer {await lite.new_tenant('other-co')}"}
    await lite.client.put(
        "/v1/templates/zulu", json={"channels": {"sms": {"text": "z"}}}, headers=other
    )

    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1} | ({"cursor": cursor} if cursor else {})
        page = (await get(lite, "/v1/templates", **params)).json()
        assert len(page["data"]) <= 1
        seen.extend(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [t["name"] for t in seen] == sorted(names)
    alpha = seen[0]
    assert alpha["active_version"] == alpha["latest_version"] == 2
    assert alpha["category"] == "marketing"
    assert set(alpha) == {"name", "active_version", "latest_version", "category", "updated_at"}

    whole = (await get(lite, "/v1/templates")).json()
    assert len(whole["data"]) == 5
    assert whole["next_cursor"] is None
    for bad in (0, 501, "x"):
        assert_error(await get(lite, "/v1/templates", limit=bad), 422, "validation_error")


async def test_versions_are_listed_newest_first(lite: Harness) -> None:
    for n in range(3):
        await lite.put_template("t", {"channels": {"sms": {"text": f"v{n}"}}})
    await post(lite, "/v1/templates/t/rollback", {"version": 2})
    page = (await get(lite, "/v1/templates/t/versions", limit=2)).json()
    assert [v["version"] for v in page["data"]] == [3, 2]
    assert [v["active"] for v in page["data"]] == [False, True]
    rest = (await get(lite, "/v1/templates/t/versions", cursor=page["next_cursor"])).json()
    assert [v["version"] for v in rest["data"]] == [1]
    assert rest["next_cursor"] is None
    assert_error(await get(lite, "/v1/templates/nope/versions"), 404, "not_found")


async def test_rollback_changes_what_is_sent(app: Harness) -> None:
    await app.put_recipient("u", email="u@example.com", locale="fr", data={"firstName": "Ana"})
    await app.put_template(
        "news", {"channels": {"email": {"subject": "v1 {{ n }}", "text": "one"}}}
    )
    html = '<p>Hi {{ firstName }}, <a href="https://x.example/{{ n }}">open</a></p>'
    await app.put_template(
        "news",
        {"channels": {"email": {"subject": "v2 {{ n|format_number }}", "html": html}}},
    )

    async def sent_email(n: int) -> dict[str, Any]:
        data = {"n": n}
        response = await app.send({"template": "news", "to": {"recipient_id": "u"}, "data": data})
        assert response.status_code == 202
        await app.drain()
        [delivery] = (await app.notification(response.json()["id"]))["deliveries"]
        assert delivery["status"] == "sent", delivery
        messages = (await get(app, "/v1/sandbox/messages", channel="email")).json()["data"]
        content: dict[str, Any] = messages[0]["content"]
        return content

    latest = await sent_email(1234567)
    assert latest["subject"] == "v2 " + babel_numbers.format_decimal(1234567, locale="fr")
    assert latest["text"] == "Hi Ana, open (https://x.example/1234567)"

    response = await post(app, "/v1/templates/news/rollback", {"version": 1})
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 1
    assert response.json()["channels"]["email"]["subject"] == "v1 {{ n }}"
    assert (await sent_email(7))["subject"] == "v1 7"

    listed = (await get(app, "/v1/templates")).json()["data"]
    assert (listed[0]["active_version"], listed[0]["latest_version"]) == (1, 2)
    assert (await put(app, "news", {"channels": {"sms": {"text": "x"}}})).json()["version"] == 3


@pytest.mark.parametrize(
    ("body", "status"),
    [({}, 422), ({"version": 0}, 422), ({"version": "two"}, 422), ({"version": 1, "x": 1}, 422),
     ([], 422), ({"version": 5}, 404)],
)  # fmt: skip
async def test_rollback_refuses_bad_requests(lite: Harness, body: Any, status: int) -> None:
    await lite.put_template("t", {"channels": {"sms": {"text": "x"}}})
    response = await post(lite, "/v1/templates/t/rollback", body)
    assert_error(response, status, "validation_error" if status == 422 else "not_found")
    assert (await get(lite, "/v1/templates/t")).json()["version"] == 1


async def test_rollback_needs_manage_and_a_template(lite: Harness) -> None:
    await lite.put_template("t", {"channels": {"sms": {"text": "x"}}})
    assert_error(await post(lite, "/v1/templates/nope/rollback", {"version": 1}), 404, "not_found")
    reader = {"Authorization": f"Bearer {await lite.new_tenant('reader-co', ['read'])}"}
    response = await lite.client.post(
        "/v1/templates/t/rollback", json={"version": 1}, headers=reader
    )
    assert_error(response, 403, "insufficient_scope")


# -- preview ---------------------------------------------------------------------------------


async def test_preview_renders_each_channel_in_the_recipients_locale(lite: Harness) -> None:
    await lite.put_template("order", EMAIL_SMS)
    await lite.put_recipient("u", locale="fr-CA", data={"firstName": "Zoé"})
    body = (await preview(lite, "order", {"recipient_id": "u", "data": {"orderId": "A1"}})).json()
    assert body["name"] == "order"
    assert body["version"] == 1
    assert body["locale"] == "fr"  # fr-CA → fr
    assert body["channels"]["email"] == {
        "subject": "Commande A1",
        "html": "<p>Hello Zoé</p>",
        "text": "Hello Zoé",
    }
    assert body["channels"]["sms"] == {"text": "Order A1 shipped"}  # no fr sms: default

    body = (
        await preview(
            lite, "order", {"recipient_id": "u", "data": {"orderId": "A1"}, "locale": "xx"}
        )
    ).json()
    assert body["locale"] is None
    assert body["channels"]["email"]["subject"] == "Order A1"

    only_sms = {"data": {"orderId": "B2"}, "locale": "de-AT", "channel": "sms"}
    body = (await preview(lite, "order", only_sms)).json()
    assert body == {
        "name": "order",
        "version": 1,
        "locale": "de",
        "channels": {"sms": {"text": "Bestellung B2"}},
    }


async def test_preview_of_a_given_version(lite: Harness) -> None:
    await lite.put_template("t", {"channels": {"sms": {"text": "one {{ x }}"}}})
    await lite.put_template("t", {"channels": {"sms": {"text": "two {{ x }}"}}})
    body = (await preview(lite, "t", {"data": {"x": 1}, "version": 1})).json()
    assert body["version"] == 1
    assert body["channels"]["sms"]["text"] == "one 1"


async def test_preview_names_a_missing_variable(lite: Harness) -> None:
    await lite.put_template("order", EMAIL_SMS)
    response = await preview(lite, "order", {"data": {"orderId": "A1"}, "channel": "email"})
    body = assert_error(response, 422, "missing_variable")
    assert "firstName" in body["error"]["message"]
    assert body["error"]["details"] == [{"channel": "email", "variable": "firstName"}]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"recipient_id": "ghost"}, 404, "not_found"),
        ({"channel": "push"}, 422, "unknown_channel"),
        ({"channel": "fax"}, 422, "validation_error"),
        ({"data": [1, 2]}, 422, "validation_error"),
        ({"locale": "not a locale"}, 422, "validation_error"),
        ({"version": 0}, 422, "validation_error"),
        ({"version": 7}, 404, "not_found"),
        ({"surprise": True}, 422, "validation_error"),
    ],
)
async def test_preview_refuses_bad_requests(
    lite: Harness, body: dict[str, Any], status: int, code: str
) -> None:
    await lite.put_template("order", EMAIL_SMS)
    assert_error(await preview(lite, "order", body), status, code)


async def test_preview_of_unknown_template_is_404(lite: Harness) -> None:
    assert_error(await preview(lite, "nope", {}), 404, "not_found")


async def test_data_cannot_spoof_the_rendering_locale(lite: Harness) -> None:
    await lite.put_recipient("u", locale="fr")
    await lite.put_template(
        "t", {"channels": {"sms": {"text": "{{ x|format_decimal }} {{ recipient.locale }}"}}}
    )
    data = {"x": 1234.5, "recipient": {"locale": "en"}, "_clarion": "nope"}
    body = (await preview(lite, "t", {"recipient_id": "u", "data": data})).json()
    assert (
        body["channels"]["sms"]["text"] == babel_numbers.format_decimal(1234.5, locale="fr") + " fr"
    )


# -- localized filters -----------------------------------------------------------------------


async def test_number_filters_follow_the_locale(lite: Harness) -> None:
    source = (
        "{{ p|format_currency('EUR') }}|{{ '1234567.891'|format_decimal }}|"
        "{{ 0.256|format_percent }}|{{ big|format_number }}"
    )
    data = {"p": 1234.5, "big": "9876543"}
    for locale in ("fr", "en", "de-CH"):
        text = await rendered_text(lite, source, data, locale=locale)
        tag = locale.replace("-", "_")
        assert text.split("|") == [
            babel_numbers.format_currency(1234.5, "EUR", locale=tag),
            babel_numbers.format_decimal("1234567.891", locale=tag),
            babel_numbers.format_percent(0.256, locale=tag),
            babel_numbers.format_decimal(9876543, locale=tag),
        ]
    fr = await rendered_text(lite, "{{ p|format_currency('EUR') }}", data, locale="fr")
    assert "\u202f" in fr  # French groups thousands with a narrow no-break space
    assert fr.endswith("\xa0€")


async def test_date_filters_use_locale_and_recipient_timezone(lite: Harness) -> None:
    await lite.put_recipient("u", locale="fr-CA", timezone="America/Toronto")
    source = (
        "{{ at|format_datetime }}|{{ day|format_date('long') }}|{{ at|format_time('short') }}|"
        "{{ at|format_datetime('short', tz='Asia/Tokyo') }}|{{ 7200|format_timedelta }}"
    )
    data = {"at": "2026-11-20T03:30:00Z", "day": "2026-11-20"}
    text = await rendered_text(lite, source, data, recipient_id="u")
    moment = datetime(2026, 11, 20, 3, 30, tzinfo=UTC)
    toronto = ZoneInfo("America/Toronto")
    assert text.split("|") == [
        babel_dates.format_datetime(moment, tzinfo=toronto, locale="fr_CA"),
        babel_dates.format_date(moment.date(), "long", locale="fr_CA"),
        babel_dates.format_time(moment, "short", tzinfo=toronto, locale="fr_CA"),
        babel_dates.format_datetime(moment, "short", tzinfo=ZoneInfo("Asia/Tokyo"), locale="fr_CA"),
        babel_dates.format_timedelta(7200, locale="fr_CA"),
    ]
    # Without a recipient: English and UTC.
    text = await rendered_text(lite, "{{ at|format_datetime }}", data)
    assert text == babel_dates.format_datetime(moment, tzinfo=UTC, locale="en")


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'soon'|format_date }}",
        "{{ 'many'|format_number }}",
        "{{ x|format_currency('EURO') }}",
        "{{ x|format_datetime(tz='Mars/Base') }}",
        "{{ [1]|format_decimal }}",
        "{{ true|format_percent }}",
        "{{ '1e999999'|format_decimal }}",
    ],
)
async def test_bad_values_for_localized_filters_are_render_errors(
    lite: Harness, source: str
) -> None:
    await lite.put_template("t", {"channels": {"sms": {"text": source}}})
    body = assert_error(await preview(lite, "t", {"data": {"x": 1}}), 422, "render_error")
    assert body["error"]["details"][0]["channel"] == "sms"


async def test_render_error_at_send_fails_the_delivery(lite: Harness) -> None:
    await lite.put_recipient("u", phone="+14155550100")
    await lite.put_template("t", {"channels": {"sms": {"text": "{{ when|format_date }}"}}})
    response = await lite.send({"template": "t", "to": {"recipient_id": "u"}, "data": {"when": 1}})
    await lite.drain()
    ok = await lite.notification(response.json()["id"])
    assert ok["deliveries"][0]["status"] == "sent"
    for data in ({"when": "not a date"}, {}):
        response = await lite.send({"template": "t", "to": {"recipient_id": "u"}, "data": data})
        await lite.drain()
        [delivery] = (await lite.notification(response.json()["id"]))["deliveries"]
        assert (delivery["status"], delivery["reason"]) == ("failed", "render_error")
        assert delivery["last_error"]


# -- email text from HTML --------------------------------------------------------------------


def test_text_is_derived_from_html() -> None:
    html = """<html><head><title>T</title><style>p { color: red }</style></head><body>
      <h1>Your   order</h1><p>Hello&nbsp;<b>Alex</b> &amp; co,<br>thanks.</p>
      <script>alert(1)</script>
      <ul><li>One</li><li>Two</li></ul>
      <p><a href="https://shop.example/o/1">Track it</a> or
         <a href="mailto:help@example.com">help@example.com</a>
         <a href="#top">top</a></p>
      <table><tr><td>Total</td><td>&euro;5</td></tr></table></body></html>"""
    assert html_to_text(html) == (
        "Your order\n\nHello Alex & co,\nthanks.\n\n- One\n- Two\n\n"
        "Track it (https://shop.example/o/1) or help@example.com top\n\nTotal €5"
    )
    assert html_to_text("") == ""
    assert html_to_text("<p>unclosed <a href='https://x.example'>") == "unclosed"


async def test_email_text_part_is_kept_when_given(lite: Harness) -> None:
    email = {"subject": "s", "html": "<p>H</p>", "text": "own text"}
    await lite.put_template("t", {"channels": {"email": email}})
    body = (await preview(lite, "t", {})).json()
    assert body["channels"]["email"]["text"] == "own text"


# -- refused templates and the sandbox -------------------------------------------------------


async def test_syntax_error_is_refused_naming_the_line(lite: Harness) -> None:
    source = "Hello\n{{ name }\nbye"
    response = await put(lite, "t", {"channels": {"email": {"subject": "ok", "text": source}}})
    body = assert_error(response, 422, "template_error")
    assert "line 2" in body["error"]["message"]
    assert "email.text" in body["error"]["message"]
    assert body["error"]["details"][0]["line"] == 2
    response = await put(
        lite,
        "t",
        {
            "channels": {"sms": {"text": "ok"}},
            "locales": {"fr": {"sms": {"text": "{% if x %}\n\n{% endfor %}"}}},
        },
    )
    body = assert_error(response, 422, "template_error")
    assert "locales.fr.sms" in body["error"]["message"]
    assert body["error"]["details"][0]["line"] == 3
    assert_error(await get(lite, "/v1/templates/t"), 404, "not_found")


ATTACKS = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ x.__globals__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner }}",
    "{{ lipsum }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ range(10**9)|list }}",
    "{{ 'a' * 10**9 }}",
    "{{ [1] * 10**9 }}",
    "{{ 9**9**9 }}",
    "{{ 9**(9**9) }}",
    "{% for i in range(10**9) %}{% endfor %}",
    "{{ self.__dict__ }}",
    "{{ self }}",
    "{{ request }}",
    "{{ config }}",
    "{{ config.items() }}",
    "{{ x._private }}",
    "{{ x['_private'] }}",
    "{{ [].append(1) }}",
    "{{ d.update({'a': 1}) }}",
    "{{ d.pop('a') }}",
    "{{ '{0.__class__}'.format(x) }}",
    "{{ '{0}'.format(x) }}",
    "{{ s.format_map(d) }}",
    "{{ ''|attr('__class__') }}",
    "{{ ''|attr('_' ~ '_class_' ~ '_') }}",
    "{{ x[('__cl' ~ 'ass__')] }}",
    "{{ x|map(attribute='__class__')|list }}",
    "{% set x = namespace() %}",
    "{{ dict(a=1) }}",
    "{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}",
    "{% for i in d recursive %}{{ loop(d) }}{% endfor %}",
    "{% include 'x' %}",
    "{% extends 'base' %}",
    "{% import 'x' as y %}",
    "{{ s.upper }}",
    "{{ s.upper|string }}",
    "{{ s.upper ~ '' }}",
    "{{ s|attr('upper')|pprint }}",
    "{{ d.items() }}",
    "{{ l|map('upper') }}",
    "{% for i in l %}{{ loop }}{% endfor %}",
    "{{ 'a'|center(10**9) }}",
    "{{ 'a'|center(1000000000) }}",
    "{{ s.ljust(1000000000) }}",
    "{{ '%*d' % (1000000000, 1) }}",
    "{{ '%1000000000d' % 1 }}",
    "{{ '%1000000000d'|format(1) }}",
    "{{ big|replace('', big) }}",
    "{{ big.replace('', big) }}",
    "{{ big ~ big ~ big }}",
    "{{ big + big + big }}",
    "{{ big|indent(1000000) }}",
    "{{ [big] * 3 }}",
    "{{ big.join([big, big, big]) }}",
    "{{ l|join(big) }}",
    "{{ big|list|batch(1)|sum(start=[]) }}",
    "{{ l|batch(1000000000, 'x')|list }}",
    "{{ l|slice(1000000000)|list }}",
    "{% for a in big %}{% for b in big %}{% endfor %}{% endfor %}",
    "{% for a in big %}{{ big }}{% endfor %}",
    "{% for a in big %}" + "x" * 200 + "{% endfor %}",
    "{{ l|tojson(1000000000) }}",
    "{{ big|wordwrap(1, wrapstring=big) }}",
    "{{ s.expandtabs(1000000000) }}",
    "{{ s.encode() }}",
    "{{ 10**4000 }}",
    "{{ ((((((((((((((((((((((((((((((x)))))))))))))))))))))))))))))) }}",
]
LEAKS = ("<class", "class '", "function", "built-in", "method", "module", "0x", "__", "jinja")


async def test_hostile_templates_are_refused_or_harmless(lite: Harness) -> None:
    """Each is refused when stored, or fails to render, or prints nothing revealing."""
    assert len(ATTACKS) >= 15
    data = {"x": "1", "s": "\tab", "d": {"a": 1}, "l": ["a", "b"], "big": "b" * 400_000}
    outcomes: dict[str, str] = {}
    for source in ATTACKS:
        response = await put(lite, "evil", {"channels": {"sms": {"text": source}}})
        if response.status_code == 422:
            assert_error(response, 422, "template_error")
            outcomes[source] = "refused"
            continue
        assert response.status_code == 200, (source, response.text)
        response = await preview(lite, "evil", {"data": data})
        if response.status_code == 422:
            code = response.json()["error"]["code"]
            assert code in ("render_error", "missing_variable"), (source, response.text)
            assert_error(response, 422, code)
            assert not any(leak in response.text for leak in ("<class", "0x")), response.text
            outcomes[source] = code
            continue
        assert response.status_code == 200, (source, response.text)
        text = response.json()["channels"]["sms"]["text"]
        assert len(text) <= 1 << 20, source
        assert not any(leak in text for leak in LEAKS), (source, text[:200])
        outcomes[source] = "harmless"
    assert outcomes["{{ ''.__class__.__mro__ }}"] == "refused"
    assert outcomes["{{ 'a' * 10**9 }}"] == "render_error"
    assert outcomes["{{ request }}"] == "missing_variable"


async def test_statically_refused_attacks_name_the_reason(lite: Harness) -> None:
    for source, reason in [
        ("{{ ''.__class__ }}", "'__class__' is private"),
        ("{{ cycler }}", "'cycler' is not available"),
        ("line\n{% macro f() %}{% endmacro %}", "line 2: the 'macro' tag"),
    ]:
        body = assert_error(
            await put(lite, "t", {"channels": {"sms": {"text": source}}}), 422, "template_error"
        )
        assert reason in body["error"]["message"]


async def test_ordinary_templates_still_work_in_the_sandbox(lite: Harness) -> None:
    source = (
        "{% for item in items %}{{ loop.index }}. {{ item.name|title }} x{{ item.qty }}"
        "{% if not loop.last %}, {% endif %}{% endfor %} | "
        "{{ items|map(attribute='qty')|sum }} | {{ items|selectattr('qty', 'gt', 1)|list|length }}"
        " | {{ name ~ '!' }} | {{ '%05.1f'|format(2.5) }} | {{ name.upper() }} | "
        "{{ meta.get('tier', 'basic') }} | {{ missing|default('-') }}"
    )
    data = {
        "items": [{"name": "pen", "qty": 2}, {"name": "ink", "qty": 1}],
        "name": "Al",
        "meta": {},
    }
    text = await rendered_text(lite, source, data)
    assert text == "1. Pen x2, 2. Ink x1 | 3 | 1 | Al! | 002.5 | AL | basic | -"
