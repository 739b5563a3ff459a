"""The audit log: every configuration change recorded with who, what, when and a diff
without secrets, in the change's own transaction; ``GET /v1/audit`` pages and filters it."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from clarion import cli, cli_admin
from clarion.security.secrets import Keyring
from clarion.store import audit
from clarion.store import categories as category_store
from clarion.store import providers as provider_store
from clarion.store import webhooks as webhook_store
from clarion.store.tables import audit_log
from harness import Harness, make_settings, running
from webhook_sink import WebhookSink

OLD_KEY = os.urandom(32)
NEW_KEY = os.urandom(32)
SENDGRID_1 = "SG.first-secret-Qz81xWv"
SENDGRID_2 = "SG.second-secret-Lp22mNo"
HOOK_1 = "hook-secret-one-7dKq2Lmn"
HOOK_2 = "hook-secret-two-9xPw3Rtv"
ERASED = "erased-person@example.com"
EMAIL = {"channels": {"email": {"subject": "Hi", "text": "Hello"}}}


@pytest.fixture
async def audited(backend: tuple[str, str]) -> AsyncIterator[Harness]:
    """Clarion on each backend, with a secret key so providers keep credentials."""
    key = base64.b64encode(OLD_KEY).decode()
    async with running(make_settings(*backend, secret_key=key)) as harness:
        yield harness


async def _ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json() if status != 204 else None


async def _all(app: Harness, auth: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        page = await _ok(await app.client.get("/v1/audit", params=query, headers=auth))
        rows.extend(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


async def _cli(app: Harness, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    args = cli.build_parser().parse_args(list(argv))
    assert await cli_admin.run(args, app.settings) == 0
    return capsys.readouterr().out


async def _api_changes(app: Harness) -> None:
    """One of every kind of change made through the API."""
    c, auth = app.client, app.auth
    await _ok(await c.put("/v1/categories/promo", json={"max_per_hour": 3}, headers=auth))
    await _ok(await c.put("/v1/categories/promo", json={"max_per_hour": 5}, headers=auth))
    await app.put_template("welcome", {"category": "promo", **EMAIL})
    await app.put_template("welcome", {"category": "transactional", **EMAIL})
    await _ok(await c.post("/v1/templates/welcome/rollback", json={"version": 1}, headers=auth))
    provider = {
        "channel": "email",
        "kind": "sendgrid",
        "config": {"api_key": SENDGRID_1, "from": "shop@example.com"},
    }
    await _ok(await c.put("/v1/providers/mail", json=provider, headers=auth))
    provider["config"] = {"api_key": SENDGRID_2, "from": "shop@example.com"}
    await _ok(await c.put("/v1/providers/mail", json=provider, headers=auth))
    provider["config"] = {"api_key": "***", "from": "shop@example.com"}
    await _ok(await c.put("/v1/providers/mail", json={**provider, "priority": 2}, headers=auth))
    hook = {"url": "https://hooks.example.com/x", "events": ["delivery.sent"], "secret": HOOK_1}
    await _ok(await c.put("/v1/webhooks/ops", json=hook, headers=auth))
    await _ok(await c.put("/v1/webhooks/ops", json={**hook, "secret": HOOK_2}, headers=auth))
    await _ok(await c.delete("/v1/webhooks/ops", headers=auth), 204)
    await app.put_recipient(ERASED, email=ERASED)
    await _ok(await c.delete(f"/v1/recipients/{ERASED}", headers=auth), 204)


def _key_id(secret: str) -> str:
    return "key_" + secret.split("_")[1]


async def test_every_change_is_recorded_without_secrets(
    audited: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    app = audited
    me = _key_id(app.key)
    await _api_changes(app)
    await _ok(await app.client.delete("/v1/providers/mail", headers=app.auth), 204)
    # The CLI: quota, a key created and revoked, the inbox secret, a new tenant.
    await _cli(app, capsys, "tenants", "quota", "acme", "--rate", "50", "--burst", "100")
    made = (await _cli(app, capsys, "keys", "create", "acme", "--scopes", "read")).strip()
    await _cli(app, capsys, "keys", "revoke", "acme", _key_id(made))
    await _cli(app, capsys, "keys", "rotate-inbox-secret", "acme")
    printed = await _cli(app, capsys, "tenants", "create", "globex")
    globex_key = printed.strip().splitlines()[-1]
    globex_secret = printed.split("webhook signing secret: ")[1].split()[0]
    # Re-encryption with a new key (what `clarion keys rotate-secret` runs).
    again = {
        "channel": "email",
        "kind": "sendgrid",
        "config": {"api_key": SENDGRID_1, "from": "a@b.co"},
    }
    await _ok(await app.client.put("/v1/providers/second", json=again, headers=app.auth))
    hook = {"url": "https://hooks.example.com/y", "events": ["delivery.sent"], "secret": HOOK_1}
    await _ok(await app.client.put("/v1/webhooks/kept", json=hook, headers=app.auth))
    keyring = Keyring(NEW_KEY, (OLD_KEY,))
    assert (await provider_store.rotate(app.ctx.engine, keyring, actor=audit.CLI)).changed == 1
    assert (await webhook_store.rotate(app.ctx.engine, keyring, actor=audit.CLI)).changed == 1

    rows = list(reversed(await _all(app, app.auth, limit=4)))
    seen = [(r["key_id"], r["resource"], r["name"], r["action"]) for r in rows]
    erased = next(r["name"] for r in rows if r["resource"] == "recipient")
    system = {(s[1], s[3]) for s in seen if s[0] == "system"}
    assert system <= {("tenant", "create"), ("api_key", "create")}
    mine = [s for s in seen if s[0] != "system"]
    assert mine == [
        (me, "category", "promo", "create"),
        (me, "category", "promo", "update"),
        (me, "template", "welcome", "create"),
        (me, "template", "welcome", "update"),
        (me, "template", "welcome", "rollback"),
        (me, "provider", "mail", "create"),
        (me, "provider", "mail", "update"),
        (me, "provider", "mail", "update"),
        (me, "webhook", "ops", "create"),
        (me, "webhook", "ops", "update"),
        (me, "webhook", "ops", "delete"),
        (me, "recipient", erased, "erase"),
        (me, "provider", "mail", "delete"),
        ("cli", "tenant", "acme", "update"),
        ("cli", "api_key", _key_id(made), "create"),
        ("cli", "api_key", _key_id(made), "revoke"),
        ("cli", "tenant", "acme", "rotate"),
        (me, "provider", "second", "create"),
        (me, "webhook", "kept", "create"),
        ("cli", "provider", "second", "reencrypt"),
        ("cli", "webhook", "kept", "reencrypt"),
    ]
    diffs = [r["diff"] for r in rows if r["key_id"] != "system"]
    assert diffs[0] == {
        "critical": {"to": False},
        "default_channels": {"to": None},
        "digest": {"to": None},
        "during_snooze": {"to": "defer"},
        "max_per_day": {"to": None},
        "max_per_hour": {"to": 3},
        "overflow": {"to": "drop"},
        "tracking": {"to": {"opens": False, "clicks": False}},
    }
    assert diffs[1] == {"max_per_hour": {"from": 3, "to": 5}}
    assert diffs[3]["category"] == {"from": "promo", "to": "transactional"}
    assert diffs[3]["version"] == {"from": 1, "to": 2}
    assert "channels" not in diffs[3]  # unchanged
    assert diffs[4] == {"active_version": {"from": 2, "to": 1}}
    assert diffs[5]["config"]["to"]["api_key"] == "***"
    # A new credential: changed, never shown; "***" sent back keeps it (not a change).
    assert diffs[6] == {"config.api_key": {"from": "***", "to": "***"}}
    assert diffs[7] == {"priority": {"from": 1, "to": 2}}
    assert diffs[8]["secret"] == {"to": "***"}
    assert diffs[9] == {"secret": {"from": "***", "to": "***"}}
    assert diffs[10]["url"] == {"from": "https://hooks.example.com/x"}
    assert diffs[11] == {}
    assert diffs[12]["kind"] == {"from": "sendgrid"}
    assert diffs[13] == {
        "intake_burst": {"from": None, "to": 100},
        "intake_rate_per_second": {"from": None, "to": 50.0},
    }
    assert diffs[14]["scopes"] == {"to": ["read"]}
    # The erased recipient is named by a digest its tenant can compute, never by its id.
    assert re.fullmatch(r"r_[0-9a-f]{40}", erased)

    # The new tenant's own log holds its creation and its key; acme's log does not.
    theirs = await _all(app, {"Authorization": f"Bearer {globex_key}"})
    assert sorted((r["resource"], r["action"]) for r in theirs) == [
        ("api_key", "create"),
        ("tenant", "create"),
    ]
    assert not any(r["name"] == "globex" for r in rows)

    # No secret anywhere in the table, whatever tenant or column.
    async with app.ctx.engine.connect() as conn:
        stored = json.dumps(
            [[str(v) for v in row] for row in await conn.execute(select(audit_log))]
        )
    for secret in (SENDGRID_1, SENDGRID_2, HOOK_1, HOOK_2, made, globex_key, globex_secret, ERASED):
        assert secret not in stored
    assert app.key not in stored


async def test_pages_newest_first_and_filters(app: Harness) -> None:
    for n in range(7):
        body = {"max_per_hour": n + 1}
        await _ok(await app.client.put(f"/v1/categories/c{n % 2}", json=body, headers=app.auth))
    rows = await _all(app, app.auth, resource="category", limit=3)
    assert [r["diff"]["max_per_hour"]["to"] for r in rows] == [7, 6, 5, 4, 3, 2, 1]
    assert len({r["id"] for r in rows}) == 7
    stamps = [r["at"] for r in rows]
    assert stamps == sorted(stamps, reverse=True)
    c1 = await _all(app, app.auth, resource="category", name="c1", limit=2)
    assert [r["diff"]["max_per_hour"]["to"] for r in c1] == [6, 4, 2]
    created = await _all(app, app.auth, action="create", resource="category")
    assert sorted(r["name"] for r in created) == ["c0", "c1"]
    me = _key_id(app.key)
    assert len(await _all(app, app.auth, key_id=me)) == 7
    assert await _all(app, app.auth, key_id="key_nobody") == []
    newest = datetime.fromisoformat(rows[0]["at"])
    window = {"after": newest.isoformat(), "before": (newest + timedelta(seconds=1)).isoformat()}
    assert rows[0]["id"] in [r["id"] for r in await _all(app, app.auth, **window)]
    later = {"after": (newest + timedelta(seconds=1)).isoformat()}
    assert await _all(app, app.auth, **later) == []
    assert len(await _all(app, app.auth, before=datetime.now(UTC).isoformat())) >= 7


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"resource": "planet"}, "resource"),
        ({"action": "explode"}, "action"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b"2026-01-01|x y").decode()}, "cursor"),
        ({"after": "2026-01-01T00:00:00"}, "after"),
        ({"after": "2026-01-02T00:00:00Z", "before": "2026-01-01T00:00:00Z"}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"name": ""}, "name"),
        ({"key_id": "k" * 41}, "key_id"),
    ],
)
async def test_bad_filters_and_cursors_are_422(
    lite: Harness, params: dict[str, str], field: str
) -> None:
    response = await lite.client.get("/v1/audit", params=params, headers=lite.auth)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert field in json.dumps(error["details"]) or field in error["message"]


async def test_admin_scope_and_tenants_apart(lite: Harness) -> None:
    await _ok(await lite.client.put("/v1/categories/promo", json={}, headers=lite.auth))
    manager = await lite.new_tenant("initech", ["send", "read", "manage"])
    denied = await lite.client.get("/v1/audit", headers={"Authorization": f"Bearer {manager}"})
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "insufficient_scope"
    assert (await lite.client.get("/v1/audit")).status_code == 401
    other = {"Authorization": f"Bearer {await lite.new_tenant('umbrella')}"}
    await _ok(await lite.client.put("/v1/categories/theirs", json={}, headers=other))
    theirs = await _all(lite, other)
    assert "promo" not in [r["name"] for r in theirs]
    assert "theirs" in [r["name"] for r in theirs]
    assert "theirs" not in [r["name"] for r in await _all(lite, lite.auth)]
    # Even by name: another tenant's rows are never reached.
    assert await _all(lite, other, name="promo") == []


async def test_a_refused_change_records_nothing(lite: Harness) -> None:
    before = len(await _all(lite, lite.auth))
    refused = await lite.client.put(
        "/v1/categories/security", json={"critical": False}, headers=lite.auth
    )
    assert refused.status_code == 422
    missing = await lite.client.delete("/v1/providers/nothing", headers=lite.auth)
    assert missing.status_code == 404
    assert len(await _all(lite, lite.auth)) == before


async def test_the_change_and_its_record_commit_together(
    lite: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: Any) -> None:
        raise RuntimeError("the audit insert failed")

    monkeypatch.setattr(audit, "record", broken)
    with pytest.raises(RuntimeError):
        await category_store.put(lite.ctx.engine, lite.tenant_id, "promo", {"max_per_hour": 1})
    assert await category_store.get(lite.ctx.engine, lite.tenant_id, "promo") is None


def test_nothing_updates_or_deletes_audit_rows() -> None:
    """Append-only: no statement in Clarion's code updates or deletes the table."""
    src = Path(cli.__file__).parent
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"(update|delete)\(\s*(tables\.)?audit_log", text), path
        assert not re.search(r"(?i)(update|delete from)\s+audit_log", text), path


# -- every mutating operation of the manage and admin scopes leaves an audit row ----------

MUTATING = {"post", "put", "patch", "delete"}
GUARDED = {"manage", "admin"}
WEBHOOK_TEMPLATE = {"channels": {"webhook": {"body": {"hello": "{{ recipient.id }}"}}}}


@dataclasses.dataclass(frozen=True)
class Case:
    """How to call one operation, and the audit row (resource, action) it must leave.
    ``setup`` makes what the call needs and returns the values of the path's fields."""

    method: str
    path: str
    expect: tuple[str, str]
    body: Any = None
    setup: Callable[[Harness, WebhookSink], Awaitable[dict[str, str]]] | None = None


async def _template(app: Harness, sink: WebhookSink) -> dict[str, str]:
    await app.put_template("t", EMAIL)
    await app.put_template("t", {"channels": {"email": {"subject": "Hi", "text": "Hello again"}}})
    return {}


async def _provider(app: Harness, sink: WebhookSink) -> dict[str, str]:
    body = {"channel": "email", "kind": "sandbox", "config": {}}
    await _ok(await app.client.put("/v1/providers/p", json=body, headers=app.auth))
    return {}


async def _webhook(app: Harness, sink: WebhookSink) -> dict[str, str]:
    hook = {"url": "https://hooks.example.com/w", "events": ["delivery.sent"], "secret": HOOK_1}
    await _ok(await app.client.put("/v1/webhooks/w", json=hook, headers=app.auth))
    return {}


async def _key(app: Harness, sink: WebhookSink) -> dict[str, str]:
    body = {"name": "to revoke", "scopes": ["read"]}
    made = await _ok(await app.client.post("/v1/keys", json=body, headers=app.auth), 201)
    return {"key_id": made["id"]}


async def _recipient(app: Harness, sink: WebhookSink) -> dict[str, str]:
    await app.put_recipient("gone", email="gone@example.com")
    return {}


async def _topic(app: Harness, sink: WebhookSink) -> dict[str, str]:
    await _ok(await app.client.put("/v1/topics/old", headers=app.auth), 201)
    return {}


async def _schedule(app: Harness, sink: WebhookSink) -> dict[str, str]:
    await app.put_template("t", EMAIL)
    await app.put_recipient("u", email="u@example.com")
    return {}


async def _schedule_made(app: Harness, sink: WebhookSink) -> dict[str, str]:
    await _schedule(app, sink)
    response = await app.client.put("/v1/schedules/old", json=SCHEDULE, headers=app.auth)
    await _ok(response)
    return {}


async def _dead(app: Harness, sink: WebhookSink) -> dict[str, str]:
    """A delivery that ran out of attempts (its endpoint answers 500)."""
    sink.respond = lambda request: 500
    await app.put_template("hook", WEBHOOK_TEMPLATE)
    rid = f"d-{len(sink.received)}"
    await app.put_recipient(rid, webhook_url=f"{sink.url}/{rid}")
    response = await app.send({"template": "hook", "to": {"recipient_id": rid}})
    assert response.status_code == 202, response.text
    await app.drain()
    [dead] = (await app.notification(response.json()["id"]))["deliveries"]
    assert dead["status"] == "dead"
    return {"delivery_id": dead["id"]}


async def _workflow(app: Harness, sink: WebhookSink) -> dict[str, str]:
    await app.put_template("t", EMAIL)
    for name in ("first", "second"):
        body = {
            "name": name,
            "steps": [{"id": "mail", "type": "channel", "channel": "email", "template": "t"}],
        }
        response = await app.client.put("/v1/workflows/w", json=body, headers=app.auth)
        assert response.status_code in (200, 201), response.text
    return {}


LAYOUT = {"html": "<div>{{ content }}</div>", "text": "{{ content }}"}


async def _layout(app: Harness, sink: WebhookSink) -> dict[str, str]:
    for html in ("<div>{{ content }}</div>", "<main>{{ content }}</main>"):
        body = {**LAYOUT, "html": html}
        await _ok(await app.client.put("/v1/layouts/l", json=body, headers=app.auth))
    return {}


async def _brand(app: Harness, sink: WebhookSink) -> dict[str, str]:
    await _ok(await app.client.put("/v1/brand", json={"name": "Acme"}, headers=app.auth))
    return {}


async def _suppression(app: Harness, sink: WebhookSink) -> dict[str, str]:
    body = {"email": "gone@example.com", "reason": "bounced"}
    await _ok(await app.client.post("/v1/suppressions", json=body, headers=app.auth), 201)
    return {"email": "gone@example.com"}


SCHEDULE = {"cron": "0 9 * * *", "notification": {"template": "t", "to": {"recipient_id": "u"}}}
CASES = {
    "categories_put": Case("PUT", "/v1/categories/c", ("category", "create"), {}),
    "templates_put": Case("PUT", "/v1/templates/n", ("template", "create"), EMAIL),
    "templates_rollback": Case(
        "POST", "/v1/templates/t/rollback", ("template", "rollback"), {"version": 1}, _template
    ),
    "workflows_put": Case(
        "PUT",
        "/v1/workflows/n",
        ("workflow", "create"),
        {
            "name": "n",
            "steps": [{"id": "mail", "type": "channel", "channel": "email", "template": "t"}],
        },
        _schedule,
    ),
    "workflows_rollback": Case(
        "POST", "/v1/workflows/w/rollback", ("workflow", "rollback"), {"version": 1}, _workflow
    ),
    "workflows_delete": Case("DELETE", "/v1/workflows/w", ("workflow", "delete"), None, _workflow),
    "layouts_put": Case("PUT", "/v1/layouts/n", ("layout", "create"), LAYOUT),
    "layouts_rollback": Case(
        "POST", "/v1/layouts/l/rollback", ("layout", "rollback"), {"version": 1}, _layout
    ),
    "layouts_delete": Case("DELETE", "/v1/layouts/l", ("layout", "delete"), None, _layout),
    "layouts_put_brand": Case("PUT", "/v1/brand", ("brand", "update"), {"name": "Acme"}),
    "layouts_delete_brand": Case("DELETE", "/v1/brand", ("brand", "update"), None, _brand),
    "providers_put": Case(
        "PUT",
        "/v1/providers/q",
        ("provider", "create"),
        {"channel": "email", "kind": "sandbox", "config": {}},
    ),
    "providers_delete": Case("DELETE", "/v1/providers/p", ("provider", "delete"), None, _provider),
    "webhooks_put": Case(
        "PUT",
        "/v1/webhooks/v",
        ("webhook", "create"),
        {"url": "https://hooks.example.com/v", "events": ["delivery.sent"], "secret": HOOK_2},
    ),
    "webhooks_delete": Case("DELETE", "/v1/webhooks/w", ("webhook", "delete"), None, _webhook),
    "keys_create": Case(
        "POST", "/v1/keys", ("api_key", "create"), {"name": "new", "scopes": ["read"]}
    ),
    "keys_revoke": Case("DELETE", "/v1/keys/{key_id}", ("api_key", "revoke"), None, _key),
    "recipients_erase": Case(
        "DELETE", "/v1/recipients/gone", ("recipient", "erase"), None, _recipient
    ),
    "topics_create": Case("PUT", "/v1/topics/new", ("topic", "create")),
    "topics_delete": Case("DELETE", "/v1/topics/old", ("topic", "delete"), None, _topic),
    "schedules_put": Case("PUT", "/v1/schedules/s", ("schedule", "create"), SCHEDULE, _schedule),
    "schedules_delete": Case(
        "DELETE", "/v1/schedules/old", ("schedule", "delete"), None, _schedule_made
    ),
    "dead_letters_replay_one": Case(
        "POST", "/v1/dead-letters/{delivery_id}/replay", ("dead_letter", "replay"), None, _dead
    ),
    "dead_letters_replay_matching": Case(
        "POST", "/v1/dead-letters/replay", ("dead_letter", "replay"), {}, _dead
    ),
    "suppressions_add_suppression": Case(
        "POST",
        "/v1/suppressions",
        ("suppression", "create"),
        {"email": "a@example.com", "reason": "bounced"},
    ),
    "suppressions_delete_suppression": Case(
        "DELETE", "/v1/suppressions/{email}", ("suppression", "delete"), None, _suppression
    ),
}
# Mutating operations that leave no row, each with its reason (docs/operations.md, "Audit
# log"): they change the tenant's data or traffic, not its configuration.
NOT_AUDITED = {
    "recipients_put": "a recipient's profile is the tenant's data",
    "recipients_batch": "recipients' profiles are the tenant's data",
    "recipients_put_preferences": "a recipient's preferences are the tenant's data",
    "recipients_token": "issues a short-lived recipient token; stores nothing",
    "topics_subscribe": "topic memberships are the tenant's data",
    "topics_unsubscribe": "topic memberships are the tenant's data",
    "provider_tests_test_provider": "sends one test message; changes nothing",
    "suppressions_hand_in_dsn": "a bounce report, as providers send them: the tenant's traffic",
}


def _template_of(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")


async def test_every_mutating_operation_leaves_an_audit_row(
    audited: Harness, sink: WebhookSink
) -> None:
    """Walks the published OpenAPI document: every POST, PUT, PATCH and DELETE that the
    `manage` or `admin` scope allows must have a case here (or a reason in NOT_AUDITED),
    and its case must leave an audit row of the right resource and action."""
    app = audited
    doc = (await app.client.get("/openapi.json")).json()
    operations = {
        op["operationId"]: (method.upper(), path)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in MUTATING and GUARDED & set(op.get("x-scopes", []))
    }
    missing = sorted(operations.keys() - CASES.keys() - NOT_AUDITED.keys())
    assert not missing, f"mutating operations with no audit case: {missing}"
    assert (CASES.keys() | NOT_AUDITED.keys()) <= operations.keys()
    for op_id, case in sorted(CASES.items()):
        method, template = operations[op_id]
        values = await case.setup(app, sink) if case.setup else {}
        path = case.path.format(**values)
        assert case.method == method, op_id
        assert _template_of(template).match(path), (op_id, path)
        before = {row["id"] for row in await _all(app, app.auth)}
        response = await app.client.request(
            case.method,
            path,
            json=case.body,
            headers={**app.auth, **({"content-type": "application/json"} if case.body else {})},
        )
        assert 200 <= response.status_code < 300, (op_id, response.text)
        rows = [row for row in await _all(app, app.auth) if row["id"] not in before]
        assert [(row["resource"], row["action"]) for row in rows] == [case.expect], (op_id, rows)
        assert rows[0]["key_id"] != audit.SYSTEM
