"""The message log: notifications and deliveries listed newest first with filters and
cursors, the aggregate status that tells the truth, a delivery's timeline, tenant
isolation, and refusal of bad input — on both stores."""

from __future__ import annotations

import base64
import collections
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from clarion.pipeline.runtime import Roles
from clarion.store import message_log as log
from clarion.store import tenants as tenant_store
from clarion.store.db import utcnow
from clarion.store.pages import Position
from clarion.store.tables import deliveries as deliveries_table
from clarion.store.tables import delivery_claims, notifications
from harness import Harness, make_settings, running
from webhook_sink import Received, WebhookSink

TEMPLATE = {"channels": {"webhook": {"body": {"hello": "{{ recipient.id }}"}}}}


async def _get(app: Harness, path: str, **params: Any) -> Any:
    response = await app.client.get(path, params=params, headers=app.auth)
    assert response.status_code == 200, response.text
    return response.json()


async def _scene(app: Harness, sink: WebhookSink) -> dict[str, str]:
    """ok: sent; bad: rejected (failed); flaky: two 503s then sent; nourl: suppressed."""
    seen: collections.Counter[str] = collections.Counter()

    def respond(request: Received) -> int:
        seen[request.path] += 1
        if request.path == "/bad":
            return 400
        if request.path == "/flaky" and seen[request.path] <= 2:
            return 503
        return 200

    sink.respond = respond
    for rid in ("ok", "bad", "flaky"):
        await app.put_recipient(rid, webhook_url=f"{sink.url}/{rid}")
    await app.put_recipient("nourl", email="n@example.com")
    await app.put_template("hook", TEMPLATE)
    sent: dict[str, str] = {}
    for name, rids in (
        ("ok", ["ok"]),
        ("bad", ["bad"]),
        ("mixed", ["ok", "bad"]),
        ("flaky", ["flaky"]),
        ("nourl", ["nourl"]),
    ):
        response = await app.send({"template": "hook", "to": {"recipient_ids": rids}})
        assert response.status_code == 202, response.text
        sent[name] = response.json()["id"]
    await app.drain()
    return sent


async def test_planning_shows_as_processing_without_rewriting_the_notification(
    backend: tuple[str, str], sink: WebhookSink
) -> None:
    """A notification reads `accepted` (or `scheduled`) until planned, then `processing`
    while a delivery waits: its outbox row's deletion is what marks it planned, and the
    planner leaves the stored row as it was."""
    settings = make_settings(*backend, retry_schedule="1h", max_attempts=2)
    sink.respond = lambda request: 503
    async with running(settings) as app:
        await app.put_recipient("u", webhook_url=f"{sink.url}/u")
        await app.put_template("hook", TEMPLATE)
        later = {
            "template": "hook",
            "to": {"recipient_ids": ["u"]},
            "send_at": "2999-01-01T00:00:00Z",
        }
        scheduled = (await app.send(later)).json()["id"]
        retrying = (await app.send({"template": "hook", "to": {"recipient_ids": ["u"]}})).json()[
            "id"
        ]

        async def retry_waits() -> bool:
            found = (await app.notification(retrying))["deliveries"]
            return [(d["status"], d["attempts"]) for d in found] == [("queued", 1)]

        await app.until(retry_waits)
        assert (await app.notification(scheduled))["status"] == "scheduled"
        shown = await app.notification(retrying)
        assert shown["status"] == "processing", shown
        assert shown["totals"] == {"queued": 1}
        for status, expected in (
            ("scheduled", {scheduled}),
            ("processing", {retrying}),
            ("accepted", set()),
            ("completed", set()),
        ):
            page = await _get(app, "/v1/notifications", status=status)
            assert {i["id"] for i in page["data"]} == expected, status
        async with app.ctx.engine.connect() as conn:
            stored = await conn.execute(
                select(notifications.c.status).where(notifications.c.id == retrying)
            )
            assert stored.scalar_one() == "accepted"


async def test_log_status_filters_pages_and_timeline(app: Harness, sink: WebhookSink) -> None:
    sent = await _scene(app, sink)
    expected = {
        "ok": "completed",
        "bad": "failed",
        "mixed": "partial",
        "flaky": "completed",
        "nourl": "completed",  # deliberately not sent (no address) is not a failure
    }
    for name, status in expected.items():
        assert (await app.notification(sent[name]))["status"] == status, name

    # The list: newest first, with the same aggregate status and the totals.
    page = await _get(app, "/v1/notifications")
    assert page["next_cursor"] is None
    items = page["data"]
    assert {i["id"] for i in items} == set(sent.values())
    keys = [(i["created_at"], i["id"]) for i in items]
    assert keys == sorted(keys, reverse=True)
    by_id = {i["id"]: i for i in items}
    for name, status in expected.items():
        assert by_id[sent[name]]["status"] == status, name
    assert by_id[sent["mixed"]]["totals"] == {"sent": 1, "failed": 1}

    # Filtering by an aggregate status finds exactly those.
    for status in ("completed", "failed", "partial", "processing", "accepted"):
        found = {i["id"] for i in (await _get(app, "/v1/notifications", status=status))["data"]}
        assert found == {sent[n] for n, s in expected.items() if s == status}, status
    found = await _get(app, "/v1/notifications", recipient_id="bad")
    assert {i["id"] for i in found["data"]} == {sent["bad"], sent["mixed"]}
    assert len((await _get(app, "/v1/notifications", template="hook"))["data"]) == 5
    assert (await _get(app, "/v1/notifications", template="other"))["data"] == []
    assert len((await _get(app, "/v1/notifications", category="transactional"))["data"]) == 5
    assert (await _get(app, "/v1/notifications", category="marketing"))["data"] == []

    # Pages of two walk the whole list once, in order.
    walked: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await _get(app, "/v1/notifications", **params)
        walked += [i["id"] for i in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert walked == [i["id"] for i in items]

    # Deliveries across notifications, filtered.
    deliveries = (await _get(app, "/v1/deliveries"))["data"]
    assert len(deliveries) == 6
    keys = [(d["created_at"], d["id"]) for d in deliveries]
    assert keys == sorted(keys, reverse=True)
    failed = (await _get(app, "/v1/deliveries", status="failed"))["data"]
    assert {d["recipient_id"] for d in failed} == {"bad"}
    assert len(failed) == 2
    assert all(d["reason"] == "provider_rejected" for d in failed)
    rejected = await _get(app, "/v1/deliveries", reason="provider_rejected", recipient_id="bad")
    assert {d["id"] for d in rejected["data"]} == {d["id"] for d in failed}
    mixed = await _get(app, "/v1/deliveries", notification_id=sent["mixed"])
    assert {d["recipient_id"] for d in mixed["data"]} == {"ok", "bad"}
    assert len((await _get(app, "/v1/deliveries", channel="webhook"))["data"]) == 6
    assert (await _get(app, "/v1/deliveries", channel="sms"))["data"] == []
    assert len((await _get(app, "/v1/deliveries", template="hook", limit=500))["data"]) == 6
    assert len((await _get(app, "/v1/deliveries", category="transactional"))["data"]) == 6
    suppressed = (await _get(app, "/v1/deliveries", status="suppressed"))["data"]
    assert [d["reason"] for d in suppressed] == ["no_address"]
    late = await _get(app, "/v1/deliveries", created_after=utcnow().isoformat())
    assert late["data"] == []
    early = await _get(app, "/v1/deliveries", created_before="2000-01-01T00:00:00Z")
    assert early["data"] == []
    two = await _get(app, "/v1/deliveries", limit=5)
    rest = await _get(app, "/v1/deliveries", limit=5, cursor=two["next_cursor"])
    assert [d["id"] for d in two["data"] + rest["data"]] == [d["id"] for d in deliveries]
    assert rest["next_cursor"] is None

    # Timelines: a retried delivery, a rejected one, a suppressed one.
    [flaky] = (await app.notification(sent["flaky"]))["deliveries"]
    detail = await _get(app, f"/v1/deliveries/{flaky['id']}")
    assert detail["notification_id"] == sent["flaky"]
    assert detail["status"] == "sent"
    types = [e["type"] for e in detail["events"]]
    retried = ["attempt", "retry_scheduled"]
    assert types == ["queued", *retried, *retried, "attempt", "sent"]
    assert detail["events"][0]["at"] == detail["created_at"]
    assert detail["events"][2]["outcome"] == "retry"
    assert "503" in detail["events"][2]["error"]
    assert detail["events"][-1]["outcome"] == "success"
    assert detail["events"][-1]["provider"] == detail["provider"]
    [bad] = (await app.notification(sent["bad"]))["deliveries"]
    events = (await _get(app, f"/v1/deliveries/{bad['id']}"))["events"]
    assert [e["type"] for e in events] == ["queued", "attempt", "failed"]
    assert "400" in events[2]["error"]
    [nourl] = (await app.notification(sent["nourl"]))["deliveries"]
    events = (await _get(app, f"/v1/deliveries/{nourl['id']}"))["events"]
    assert [(e["type"], e["reason"]) for e in events] == [("suppressed", "no_address")]


async def test_every_attempt_is_in_the_timeline(app: Harness, sink: WebhookSink) -> None:
    """Each attempt, failed or not, is an `attempt` event with its provider, outcome,
    latency and error class; a retry names its provider and reason."""
    sent = await _scene(app, sink)
    [flaky] = (await app.notification(sent["flaky"]))["deliveries"]
    events = (await _get(app, f"/v1/deliveries/{flaky['id']}"))["events"]
    attempts = [e for e in events if e["type"] == "attempt"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["outcome"] for a in attempts] == ["failure", "failure", "success"]
    assert [a["error_class"] for a in attempts] == ["transient", "transient", None]
    for attempt in attempts:
        assert attempt["provider"] == flaky["provider"] == "webhook"
        assert isinstance(attempt["latency_ms"], int), attempt
        assert attempt["latency_ms"] >= 0
    assert all("503" in a["error"] for a in attempts[:2])
    assert attempts[2]["error"] is None
    retries = [e for e in events if e["type"] == "retry_scheduled"]
    assert len(retries) == 2
    for retry in retries:
        assert retry["provider"] == "webhook"
        assert retry["reason"]
        assert retry["outcome"] == "retry"
    # Each attempt sits right before the state it led to.
    kinds = [e["type"] for e in events]
    for index, kind in enumerate(kinds):
        if kind == "attempt":
            assert kinds[index + 1] in ("retry_scheduled", "sent", "failed", "dead")

    [bad] = (await app.notification(sent["bad"]))["deliveries"]
    events = (await _get(app, f"/v1/deliveries/{bad['id']}"))["events"]
    attempt, failed = events[1], events[2]
    assert (attempt["type"], attempt["attempt"], attempt["outcome"]) == ("attempt", 1, "failure")
    assert (attempt["provider"], attempt["error_class"]) == ("webhook", "permanent")
    assert isinstance(attempt["latency_ms"], int)
    assert "400" in attempt["error"]
    assert (failed["type"], failed["provider"], failed["reason"]) == (
        "failed",
        "webhook",
        "provider_rejected",
    )
    # Not attempted (suppressed): no attempt event.
    [nourl] = (await app.notification(sent["nourl"]))["deliveries"]
    events = (await _get(app, f"/v1/deliveries/{nourl['id']}"))["events"]
    assert [e["type"] for e in events] == ["suppressed"]


async def test_another_tenants_log_is_invisible(app: Harness, sink: WebhookSink) -> None:
    sent = await _scene(app, sink)
    [delivery] = (await app.notification(sent["ok"]))["deliveries"]
    other = {"Authorization": f"Bearer {await app.new_tenant('other')}"}
    for path in ("/v1/notifications", "/v1/deliveries"):
        response = await app.client.get(path, headers=other)
        assert response.status_code == 200
        assert response.json() == {"data": [], "next_cursor": None}
    # A cursor of ours shows nothing of ours to them either.
    mine = await _get(app, "/v1/deliveries", limit=1)
    response = await app.client.get(
        "/v1/deliveries", params={"cursor": mine["next_cursor"]}, headers=other
    )
    assert response.json()["data"] == []
    response = await app.client.get(f"/v1/deliveries/{delivery['id']}", headers=other)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def _cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


BAD_INPUT = [
    ("/v1/notifications", {"cursor": "not a cursor"}, "invalid_cursor"),
    ("/v1/deliveries", {"cursor": "bm9wZQ"}, "invalid_cursor"),  # "nope"
    ("/v1/deliveries", {"cursor": "MjAyNi0xMS0yM1QwMDowMDowMHwn"}, "invalid_cursor"),
    # A status filter's cursor is as strict: a made-up id, time or length is refused.
    (
        "/v1/deliveries",
        {"status": "failed", "cursor": _cursor("2026-11-23T00:00:00+00:00|x' OR '1'='1")},
        "invalid_cursor",
    ),
    ("/v1/deliveries", {"status": "sending", "cursor": _cursor("99999|dlv_x")}, "invalid_cursor"),
    ("/v1/deliveries", {"status": "queued", "cursor": "A" * 201}, "validation_error"),
    ("/v1/notifications", {"limit": "0"}, "validation_error"),
    ("/v1/notifications", {"limit": "501"}, "validation_error"),
    ("/v1/deliveries", {"limit": "many"}, "validation_error"),
    ("/v1/notifications", {"status": "done"}, "validation_error"),
    ("/v1/deliveries", {"status": "completed"}, "validation_error"),
    ("/v1/deliveries", {"channel": "carrier-pigeon"}, "validation_error"),
    ("/v1/deliveries", {"created_after": "yesterday"}, "validation_error"),
    ("/v1/deliveries", {"created_after": "2026-01-01T00:00:00"}, "validation_error"),
    ("/v1/notifications", {"created_before": "0001-01-01T00:00:00Z"}, "validation_error"),
    (
        "/v1/deliveries",
        {"created_after": "2026-02-01T00:00:00Z", "created_before": "2026-01-01T00:00:00Z"},
        "validation_error",
    ),
    ("/v1/deliveries", {"recipient_id": "x" * 201}, "validation_error"),
    ("/v1/deliveries", {"template": ""}, "validation_error"),
]


async def test_bad_cursors_and_filters_are_refused(app: Harness) -> None:
    for path, params, code in BAD_INPUT:
        response = await app.client.get(path, params=params, headers=app.auth)
        assert response.status_code == 422, (path, params, response.text)
        error = response.json()["error"]
        assert error["code"] == code, (path, params)
        assert error["message"]
        assert isinstance(error["details"], list)
    # NUL in the query is refused at the edge, before any handler.
    response = await app.client.get(
        "/v1/deliveries", params={"recipient_id": "a\x00b"}, headers=app.auth
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"


async def test_the_log_needs_the_read_scope(lite: Harness) -> None:
    sender = await lite.new_tenant("sender-only", ["send"])
    for path in ("/v1/notifications", "/v1/deliveries", "/v1/deliveries/dlv_x"):
        response = await lite.client.get(path, headers={"Authorization": f"Bearer {sender}"})
        assert response.status_code == 403, path
        response = await lite.client.get(path)
        assert response.status_code == 401, path
    response = await lite.client.get("/v1/deliveries/dlv_nothing", headers=lite.auth)
    assert response.status_code == 404


async def _plan(app: Harness, query: Any) -> str:
    engine = app.ctx.engine
    dialect = postgresql.dialect() if engine.dialect.name == "postgresql" else sqlite.dialect()
    compiled = query.compile(dialect=dialect, compile_kwargs={"literal_binds": True})
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            # Empty tables make a sequential scan cheapest: ask whether an index serves it.
            await conn.exec_driver_sql("SET enable_seqscan = off")
            rows = (await conn.exec_driver_sql(f"EXPLAIN {compiled}")).all()
        else:
            rows = (await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")).all()
    return "\n".join(str(r[-1]) for r in rows)


# A partition's copy of an index is named after its columns.
_PARTITION_INDEX = {
    "ix_deliveries_tenant_created": "_tenant_id_created_at_id_idx",
    "ix_deliveries_tenant_recipient_created": "_tenant_id_recipient_id_created_at_id_idx",
}
# A sort node (a Merge Append's "Sort Key" merges sorted inputs, it sorts nothing).
_SORT_NODE = re.compile(r"(^|->)\s*(Incremental )?Sort  \(", re.MULTILINE)
# The walk of a status filter: the rows of the index range numbered, at most SCAN_LIMIT.
_BOUNDED_WALK = re.compile(r"Limit  \(.*\n\s*->  WindowAgg  \(")


async def test_common_lists_are_index_ranges_without_a_sort(app: Harness) -> None:
    at = Position(utcnow(), "dlv_x")
    deliveries = {
        log.DeliveryFilter(): "ix_deliveries_tenant_created",
        log.DeliveryFilter(recipient_id="u-1"): "ix_deliveries_tenant_recipient_created",
    }
    notifications = {
        log.NotificationFilter(): "ix_notifications_tenant_created",
        log.NotificationFilter(status="accepted"): "ix_notifications_tenant_status_created",
        log.NotificationFilter(template="hook"): "ix_notifications_tenant_template_created",
    }
    for after in (None, at):
        for dfilter, index in deliveries.items():
            plan = await _plan(app, log.deliveries_query("ten_x", dfilter, after, 51))
            # On PostgreSQL deliveries are partitioned by day (store/retention.py): each
            # partition is read by its copy of the index and the pages merged in order.
            assert index in plan or _PARTITION_INDEX[index] in plan, (dfilter, plan)
            assert "Seq Scan" not in plan, (dfilter, plan)
            assert "TEMP B-TREE" not in plan, (dfilter, plan)
            assert not _SORT_NODE.search(plan), (dfilter, plan)
        for nfilter, index in notifications.items():
            plan = await _plan(app, log.notifications_query("ten_x", nfilter, after, 51))
            assert index in plan, (nfilter, plan)
            assert "Seq Scan" not in plan, (nfilter, plan)
            assert "TEMP B-TREE" not in plan, (nfilter, plan)
            assert "Sort" not in plan, (nfilter, plan)
    # The computed statuses and a recipient's notifications probe deliveries by index.
    for nfilter in (
        log.NotificationFilter(status="completed"),
        log.NotificationFilter(status="failed"),
        log.NotificationFilter(recipient_id="u-1"),
    ):
        plan = await _plan(app, log.notifications_query("ten_x", nfilter, None, 51))
        assert "Seq Scan" not in plan, (nfilter, plan)
        assert not re.search(r"\bSCAN (d_agg|deliveries)\b", plan), (nfilter, plan)


async def test_a_status_filter_walks_a_bounded_range_of_the_time_index(app: Harness) -> None:
    """No index holds a delivery's status (migration 0038), nor its channel, provider or
    reason: filtered by any of them, the list walks the tenant's time index (or a
    recipient's) newest first, at most SCAN_LIMIT rows, and reads whole only the deliveries
    it shows, by id."""
    at = Position(utcnow(), "dlv_x")
    deliveries = {
        log.DeliveryFilter(status="failed"): "ix_deliveries_tenant_created",
        log.DeliveryFilter(status="sending"): "ix_deliveries_tenant_created",
        log.DeliveryFilter(status="queued", channel="email"): "ix_deliveries_tenant_created",
        log.DeliveryFilter(channel="email"): "ix_deliveries_tenant_created",
        log.DeliveryFilter(provider="twilio", reason="invalid"): "ix_deliveries_tenant_created",
        log.DeliveryFilter(channel="sms", recipient_id="u-1"): (
            "ix_deliveries_tenant_recipient_created"
        ),
        log.DeliveryFilter(
            status="sent", recipient_id="u-1"
        ): "ix_deliveries_tenant_recipient_created",
    }
    postgres = app.ctx.engine.dialect.name == "postgresql"
    for after in (None, at):
        for dfilter, index in deliveries.items():
            query = log.deliveries_query("ten_x", dfilter, after, 51)
            compiled = str(query.compile(compile_kwargs={"literal_binds": True}))
            assert f"LIMIT {log.SCAN_LIMIT + 1}" in compiled, compiled
            plan = await _plan(app, query)
            assert index in plan or _PARTITION_INDEX[index] in plan, (dfilter, plan)
            assert "Seq Scan" not in plan, (dfilter, plan)
            if postgres:
                # The walk streams from the index, numbered, and stops at the bound; the
                # rows shown come out of it in order: nothing is sorted.
                assert _BOUNDED_WALK.search(plan), (dfilter, plan)
                assert not _SORT_NODE.search(plan), (dfilter, plan)
            else:
                # SQLite walks the index in order too, and sorts only what it keeps of the
                # walk (at most SCAN_LIMIT narrow rows, top ``limit``), then the page.
                assert not re.search(r"\bSCAN deliveries\b", plan), (dfilter, plan)
                assert plan.count("USE TEMP B-TREE FOR ORDER BY") == 2, (dfilter, plan)


# The walk of a status filter, made small: these lists cross its bound in a few rows.
SCAN = 5
BASE = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture
async def api(backend: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    """The API alone on each backend (no worker, sweeper or retention touches the rows
    stored here), a status filter walking at most SCAN deliveries a page."""
    monkeypatch.setattr(log, "SCAN_LIMIT", SCAN)
    async with running(make_settings(*backend), Roles(api=True)) as harness:
        yield harness


def _row(tenant_id: str, did: str, at: datetime, status: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": did,
        "notification_id": f"ntf_{did}",
        "tenant_id": tenant_id,
        "recipient_id": "a",
        "channel": "webhook",
        "priority": "normal",
        "status": status,
        "attempts": 0,
        "created_at": at,
        "updated_at": at,
        **fields,
    }


async def _store(
    app: Harness, rows: list[dict[str, Any]], claims: Sequence[dict[str, Any]] = ()
) -> None:
    async with app.ctx.engine.begin() as conn:
        await conn.execute(deliveries_table.insert(), rows)
        if claims:
            await conn.execute(delivery_claims.insert(), list(claims))


async def _walk(app: Harness, **params: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Every page of a delivery list, following `next_cursor` until it is null: the ids
    listed and the pages."""
    pages: list[dict[str, Any]] = []
    cursor = None
    while True:
        at = {"cursor": cursor} if cursor else {}
        page = await _get(app, "/v1/deliveries", **params, **at)
        pages.append(page)
        cursor = page["next_cursor"]
        if cursor is None:
            return [d["id"] for p in pages for d in p["data"]], pages
        assert len(pages) < 100, "the cursor does not move on"


def _cursor_id(cursor: str) -> str:
    """The delivery a cursor names (the test knows how cursors are made)."""
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    return raw.partition("|")[2]


async def test_a_status_filter_pages_through_a_bounded_walk(api: Harness) -> None:
    """30 deliveries, three to a timestamp, a few failed; another tenant's, all failed, at
    the same times. Filtered by status, each page examines at most SCAN deliveries: a page
    may be short or empty while `next_cursor` is set, and following the cursors lists every
    match once, newest first."""
    other = (await tenant_store.create_tenant(api.ctx.engine, "other")).id
    failed = {1, 2, 13, 14, 15, 16, 17, 29}
    stored: list[tuple[str, str, str]] = []  # (id, status, recipient), newest first
    rows = []
    for i in range(30):
        at = BASE + timedelta(seconds=i // 3)
        did, status, recipient = f"dlv_{i:04d}", "failed" if i in failed else "sent", "ab"[i % 2]
        stored.insert(0, (did, status, recipient))
        rows.append(_row(api.tenant_id, did, at, status, recipient_id=recipient))
        rows.append(_row(other, f"{did}_other", at, "failed", recipient_id=recipient))
    await _store(api, rows)

    def only(status: str, recipient: str | None = None) -> list[str]:
        return [d for d, s, r in stored if s == status and recipient in (None, r)]

    # Limit 2, page by page.
    ids, pages = await _walk(api, status="failed", limit=2)
    assert ids == only("failed")
    assert [[d["id"] for d in p["data"]] for p in pages] == [
        ["dlv_0029"],  # 29..25 examined
        [],  # 24..20
        ["dlv_0017", "dlv_0016"],  # a full page: 17, 16 and 15 found
        ["dlv_0015", "dlv_0014"],  # the same timestamp as 12 and 13
        ["dlv_0013"],  # 13..9
        [],  # 8..4
        ["dlv_0002", "dlv_0001"],  # 3..0: nothing left to examine
    ]
    cursors = [_cursor_id(p["next_cursor"]) for p in pages[:-1]]
    assert cursors == ["dlv_0025", "dlv_0020", "dlv_0016", "dlv_0014", "dlv_0009", "dlv_0004"]
    assert all(d["status"] == "failed" for p in pages for d in p["data"])
    # A full page's cursor is its last row's, wherever the walk stopped.
    first = await _get(api, "/v1/deliveries", status="failed", limit=1)
    assert [d["id"] for d in first["data"]] == ["dlv_0029"]
    assert _cursor_id(first["next_cursor"]) == "dlv_0029"

    # Any page size, a common status, with another filter: each match once, in order.
    for limit in (1, 3, 4, 50):
        assert (await _walk(api, status="failed", limit=limit))[0] == only("failed"), limit
        assert (await _walk(api, status="sent", limit=limit))[0] == only("sent"), limit
    for recipient in ("a", "b"):
        found, _ = await _walk(api, status="failed", recipient_id=recipient, limit=2)
        assert found == only("failed", recipient), recipient
    # A status nothing has: an empty page per walk of SCAN; the last walk ends exactly at
    # the oldest delivery, so its page says there is nothing more.
    found, pages = await _walk(api, status="dead", limit=10)
    assert (found, len(pages)) == ([], 30 // SCAN)
    # Without a status filter, pages are full as before.
    found, pages = await _walk(api, limit=7)
    assert found == [d for d, _, _ in stored]
    assert [len(p["data"]) for p in pages] == [7, 7, 7, 7, 2]

    # The other tenant sees only theirs, also from a cursor of ours.
    key = await tenant_store.create_key(api.ctx.engine, other, ["read"])
    theirs = {"Authorization": f"Bearer {key}"}
    mine = await _get(api, "/v1/deliveries", status="failed", limit=1)
    for params in ({"status": "failed"}, {"status": "failed", "cursor": mine["next_cursor"]}):
        response = await api.client.get("/v1/deliveries", params=params, headers=theirs)
        assert response.status_code == 200, response.text
        listed = response.json()["data"]
        assert listed
        assert all(d["id"].endswith("_other") for d in listed), listed


async def test_a_rare_channel_or_provider_pages_through_a_bounded_walk(api: Harness) -> None:
    """A channel or provider that few deliveries have is a walk of at most SCAN deliveries
    a page too, not a read of the tenant's whole history: pages may be short or empty while
    `next_cursor` is set, and following the cursors lists every match once, newest first."""
    rows = []
    stored: list[tuple[str, str, str]] = []  # (id, channel, provider), newest first
    for i in range(20):
        at = BASE + timedelta(seconds=i)
        channel, provider = ("sms", "twilio") if i in (3, 17) else ("webhook", "webhook")
        did = f"dlv_{i:04d}"
        stored.insert(0, (did, channel, provider))
        rows.append(_row(api.tenant_id, did, at, "sent", channel=channel, provider=provider))
    await _store(api, rows)
    expected = [d for d, c, _ in stored if c == "sms"]
    for params in (
        {"channel": "sms"},
        {"provider": "twilio"},
        {"channel": "sms", "status": "sent"},
    ):
        ids, pages = await _walk(api, limit=2, **params)
        assert ids == expected, params
        # 19..15 examined (17 found), 14..10, 9..5, 4..0 (3 found): four walks.
        assert [[d["id"] for d in p["data"]] for p in pages] == [
            ["dlv_0017"],
            [],
            [],
            ["dlv_0003"],
        ], params
    # A channel nothing has: an empty page per walk, then the end.
    ids, pages = await _walk(api, channel="email", limit=10)
    assert (ids, len(pages)) == ([], 20 // SCAN)
    # A common one: full pages, as without a filter.
    ids, pages = await _walk(api, channel="webhook", limit=2)
    assert ids == [d for d, c, _ in stored if c == "webhook"]
    assert all(len(p["data"]) == 2 for p in pages[:-1])


@dataclass(frozen=True)
class Waiting:
    """A delivery as stored (its status, attempts, claim) and the status the API shows."""

    stored: str
    shown: str
    attempts: int = 0
    # The claim of an attempt: (attempt, hours until its lease ends, cancelled).
    claim: tuple[int, int, bool] | None = None


async def test_sending_and_waiting_statuses_page_through_the_walk(api: Harness) -> None:
    """`sending` is a waiting delivery with a live claim ahead of its attempts; `queued` and
    `scheduled` are the waiting ones without one. Each filter finds exactly its own across
    walks, shown in that status."""
    kinds = {
        2: Waiting("queued", "queued"),
        4: Waiting("queued", "sending", claim=(1, 1, False)),
        7: Waiting("queued", "queued", claim=(1, -1, False)),  # lapsed
        8: Waiting("queued", "queued", claim=(1, 1, True)),  # cancelled
        11: Waiting("scheduled", "sending", claim=(1, 1, False)),
        12: Waiting("scheduled", "scheduled"),
        13: Waiting("queued", "sending", attempts=1, claim=(2, 1, False)),
        14: Waiting("queued", "queued", attempts=1, claim=(1, 1, False)),  # outcome stored
        17: Waiting("queued", "sending", claim=(1, 1, False)),
        18: Waiting("sent", "sent", attempts=1, claim=(1, 1, False)),
    }
    now = utcnow()
    other = (await tenant_store.create_tenant(api.ctx.engine, "other")).id
    rows, claims, newest = [], [], []
    for i in range(20):
        kind = kinds.get(i, Waiting("sent", "sent", attempts=1))
        did, at = f"dlv_{i:04d}", BASE + timedelta(seconds=i // 2)
        newest.insert(0, (did, kind.shown))
        rows.append(_row(api.tenant_id, did, at, kind.stored, attempts=kind.attempts))
        # Another tenant's, waiting and every other one in flight, at the same times.
        rows.append(_row(other, f"{did}_other", at, "queued"))
        if i % 2:
            until = now + timedelta(hours=1)
            claims.append(
                {"id": f"{did}_other", "attempt": 1, "leased_until": until, "cancelled": False}
            )
        if kind.claim is not None:
            attempt, hours, cancelled = kind.claim
            until = now + timedelta(hours=hours)
            claims.append(
                {"id": did, "attempt": attempt, "leased_until": until, "cancelled": cancelled}
            )
    await _store(api, rows, claims)
    for status in ("sending", "queued", "scheduled", "sent"):
        expected = [did for did, shown in newest if shown == status]
        for limit in (1, 2, 50):
            found, pages = await _walk(api, status=status, limit=limit)
            assert found == expected, (status, limit)
            assert {d["status"] for p in pages for d in p["data"]} == {status}, (status, limit)
