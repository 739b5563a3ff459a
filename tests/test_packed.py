"""A batch's columns as packed texts (store/packed.py), and what cannot travel so."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest

from clarion.domain.delivery import Delivery, Stored
from clarion.domain.status import StatusChange
from clarion.store import bulk, delivery_rows, packed
from clarion.store import deliveries as delivery_store
from clarion.store.db import utcnow
from harness import Harness, make_settings, running
from webhook_sink import WebhookSink

TEMPLATE = {"channels": {"webhook": {"body": {"hello": "{{ recipient.id }}"}}}}


@pytest.fixture
async def pg_app(migrated_postgres_url: str, redis_url: str) -> AsyncIterator[Harness]:
    """Clarion on PostgreSQL and Redis: the store that sends columns packed."""
    async with running(make_settings(migrated_postgres_url, redis_url)) as harness:
        yield harness


def _delivery(name: str, tenant: str) -> Delivery:
    """Delivery ``dlv_<name>`` of notification ``ntf_<name>``, before its first attempt."""
    return Delivery(
        id=f"dlv_{name}", tenant=tenant, notification=f"ntf_{name}", recipient="u1",
        channel="webhook", provider="webhook", priority="normal", attempt=1,
    )  # fmt: skip


async def _stored(app: Harness, *names: str) -> datetime:
    """Store a new delivery of each name; when."""
    now = utcnow()
    for name in names:
        assert await delivery_store.insert_one(
            app.ctx.engine, Stored(_delivery(name, app.tenant_id)), now
        )
    return now


@pytest.mark.parametrize(
    ("values", "text"),
    [
        ([], ""),
        (["a"], "a"),
        (["a", None, "c"], "a\x1f\x1e\x1fc"),
        ([None], "\x1e"),
        (["", ""], "\x1f"),
        (["", None], "\x1f\x1e"),
    ],
)
def test_a_column_packs_into_one_text(values: list[str | None], text: str) -> None:
    assert packed.pack(values) == text


@pytest.mark.parametrize(
    "values",
    [
        ["a\x1fb"],  # the separator inside a value
        ["a", "\x1e"],  # a value that would read as NULL
        ["x\x1ey", None],
        [""],  # one empty string: string_to_array reads no element
    ],
)
def test_a_value_holding_a_mark_does_not_pack(values: list[str | None]) -> None:
    assert packed.pack(values) is None


def test_kinds_pack_as_their_texts() -> None:
    moment = datetime(2026, 11, 27, 4, 0, 1, 250, tzinfo=UTC)
    columns = packed.columns(
        ["int", "bool", "timestamptz", "text"],
        [[1, None], [True, False], [moment, None], ["a", None]],
    )
    # A timestamp column stays an array: its parameter is one in either form.
    assert columns == ["1\x1f\x1e", "t\x1ff", [moment, None], "a\x1f\x1e"]
    assert packed.param(3, "timestamptz", True) == "$3::timestamptz[]"
    assert packed.param(1, "int", True) == "string_to_array($1, E'\\x1f', E'\\x1e')::int[]"
    assert packed.columns(["text", "int"], [["a\x1f"], [1]]) is None


@pytest.mark.postgres
async def test_packed_values_are_stored_exactly(pg_app: Harness) -> None:
    """On PostgreSQL the status writer sends its columns packed: what is stored is what was
    written, NULLs and empty strings included."""
    engine, tenant, pg = pg_app.ctx.engine, pg_app.tenant_id, pg_app.ctx.pg
    now = await _stored(pg_app, "plain", "empty")
    sent_at = now + timedelta(microseconds=7)
    await delivery_store.apply_changes(
        engine,
        [
            StatusChange(
                "dlv_plain",
                tenant,
                "sent",
                attempts=1,
                sent_at=sent_at,
                provider_message_id="m-1",
                latency_ms=12,
            ),
            StatusChange("dlv_empty", tenant, "failed", attempts=1, last_error="", reason="x"),
        ],
        pg,
    )
    plain = await delivery_store.get_one(engine, tenant, "dlv_plain")
    empty = await delivery_store.get_one(engine, tenant, "dlv_empty")
    assert plain is not None
    assert empty is not None
    assert (plain["status"], plain["provider_message_id"], plain["latency_ms"]) == (
        "sent",
        "m-1",
        12,
    )
    assert plain["sent_at"] == sent_at
    assert plain["last_error"] is None
    assert (empty["status"], empty["last_error"], empty["reason"]) == ("failed", "", "x")


@pytest.mark.postgres
async def test_values_holding_the_marks_travel_as_arrays(pg_app: Harness) -> None:
    """A value holding the separator or the NULL mark sends its batch as arrays, and every
    value is stored as written. (A provider's text never holds one by the time it is
    written: a status change makes it storable first, control characters replaced.)"""
    engine, tenant, pg = pg_app.ctx.engine, pg_app.tenant_id, pg_app.ctx.pg
    assert pg is not None
    now = await _stored(pg_app, "odd", "even")
    changes = [
        ("dlv_odd", "failed", 1, None, "a\x1fb\x1e", None, None, None, None, None),
        ("dlv_even", "sent", 1, None, None, "\x1e", None, now, "webhook", 5),
    ]
    events = [("dlv_odd", tenant, "failed", "a\x1fb\x1e", 1, "webhook", None, None, None)]
    await bulk.write_changes(pg, changes, events, now)
    odd = await delivery_store.get_one(engine, tenant, "dlv_odd")
    even = await delivery_store.get_one(engine, tenant, "dlv_even")
    assert odd is not None
    assert even is not None
    assert (odd["status"], odd["last_error"]) == ("failed", "a\x1fb\x1e")
    assert (even["status"], even["provider_message_id"], even["latency_ms"]) == ("sent", "\x1e", 5)


@pytest.mark.postgres
async def test_a_recipient_id_holding_the_marks_is_accepted_planned_and_sent(
    pg_app: Harness, sink: WebhookSink
) -> None:
    """Ids a client chose travel through the intake's and the planner's statements: one that
    holds the separator or the NULL mark sends its batch as arrays, beside ordinary ones."""
    odd = ["a\x1fb", "\x1e", "plain"]
    for rid in odd:
        path = quote(rid, safe="")
        await pg_app.put_recipient(path, webhook_url=f"{sink.url}/{path}")
    await pg_app.put_template("hook", TEMPLATE)
    items = [{"template": "hook", "to": {"recipient_id": rid}} for rid in odd]
    response = await pg_app.client.post(
        "/v1/notifications/batch", json={"notifications": items}, headers=pg_app.auth
    )
    assert response.status_code == 202, response.text
    ids = [item["id"] for item in response.json()["results"]]
    await pg_app.drain()
    for nid, rid in zip(ids, odd, strict=True):
        [delivery] = (await pg_app.notification(nid))["deliveries"]
        assert (delivery["recipient_id"], delivery["status"]) == (rid, "sent")
    assert sorted(r.path for r in sink.received) == sorted(f"/{quote(r, safe='')}" for r in odd)


def test_a_new_deliverys_fixed_columns_are_what_the_insert_writes_for_them() -> None:
    """The planner's insert on PostgreSQL writes the batch's time for `created_at` and
    `updated_at` and NULL for `sent_at` instead of sending them (store/bulk.py `_FIXED`):
    the row SQLite stores (delivery_rows.values) holds the same."""
    at = datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
    row = delivery_rows.row(Stored(_delivery("x", "ten_x")), at)
    assert (row["created_at"], row["updated_at"], row["sent_at"]) == (at, at, None)
