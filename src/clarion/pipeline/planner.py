"""The planner: turns accepted notifications into deliveries, in batches.

For a batch of plan messages it loads the notifications, their recipients and templates
with one query each, chooses channels, renders each channel's content in the recipient's
locale, inserts the deliveries (deterministic ids, so a replayed plan adds nothing) and
publishes them to their channel's lane.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clarion.broker import Message
from clarion.domain.ids import delivery_id
from clarion.domain.models import PLAN_STREAM, DeliveryStatus, NotificationStatus
from clarion.domain.rendering import CompiledVersion
from clarion.domain.routing import choose_routes
from clarion.errors import TemplateError
from clarion.pipeline.context import Context
from clarion.pipeline.messages import group_by_stream, send_payload
from clarion.pipeline.templates import TemplateCache
from clarion.store import deliveries as delivery_store
from clarion.store import notifications as notification_store
from clarion.store import recipients as recipient_store
from clarion.store import templates as template_store
from clarion.store.db import as_utc, utcnow, write_tx

log = logging.getLogger(__name__)

_RECIPIENT_VARS = ("id", "email", "phone", "locale", "timezone")


@dataclass(slots=True)
class Plan:
    rows: list[dict[str, Any]]  # new deliveries
    planned: list[str]  # notification ids this batch planned


def render_context(notification: dict[str, Any], recipient: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = dict(recipient.get("data") or {})
    context.update(notification["data"] or {})
    context["recipient"] = {name: recipient.get(name) for name in _RECIPIENT_VARS}
    return context


class Planner:
    def __init__(self, ctx: Context, consumer: str) -> None:
        self._ctx = ctx
        self._consumer = consumer
        self._templates = TemplateCache()
        self.batch_size = 200

    async def run_once(self, timeout: float) -> int:
        """Plan one batch of whatever is waiting; returns how many messages it took."""
        messages = await self._ctx.broker.consume(
            [PLAN_STREAM], self._consumer, self.batch_size, timeout
        )
        if messages:
            await self.handle(messages)
            await self._ctx.broker.ack(messages)
            self._ctx.made_progress()
        return len(messages)

    async def handle(self, messages: list[Message]) -> None:
        ids = list(dict.fromkeys(m.payload["notification"] for m in messages))
        redelivered = [m.payload["notification"] for m in messages if m.redelivered]
        plan, republish = await self._plan(ids, redelivered)
        queued = [send_payload(row) for row in plan.rows if row["status"] == DeliveryStatus.QUEUED]
        queued.extend(send_payload(row) for row in republish)
        for stream, payloads in group_by_stream(queued).items():
            await self._ctx.broker.publish(stream, payloads)

    async def _plan(
        self, ids: list[str], redelivered: list[str]
    ) -> tuple[Plan, list[dict[str, Any]]]:
        now = utcnow()
        async with self._ctx.engine.connect() as conn:
            notes = await notification_store.load_many(conn, ids)
            todo = [
                n
                for n in notes.values()
                if n["status"] in (NotificationStatus.ACCEPTED, NotificationStatus.SCHEDULED)
            ]
            heads = await template_store.active_versions(
                conn, {(n["tenant_id"], n["template"]) for n in todo}
            )
            compiled = await self._templates.load(
                conn,
                [(t, name, v) for (t, name), v in heads.items()],
            )
            people = await recipient_store.load_many(
                conn, {(n["tenant_id"], rid) for n in todo for rid in n["recipient_ids"]}
            )
            plan = Plan(rows=[], planned=[n["id"] for n in todo])
            for note in todo:
                head = heads.get((note["tenant_id"], note["template"]))
                version = compiled.get((note["tenant_id"], note["template"], head or 0))
                plan.rows.extend(self._deliveries(note, version, people, now))
            existing = await delivery_store.existing_ids(conn, [r["id"] for r in plan.rows])
            republish = (
                await delivery_store.queued_of_notifications(conn, redelivered)
                if redelivered
                else []
            )
        plan.rows = [row for row in plan.rows if row["id"] not in existing]
        async with write_tx(self._ctx.engine) as conn:
            await delivery_store.insert_planned(conn, plan.rows, plan.planned)
            await notification_store.delete_outbox(conn, ids)
        return plan, republish

    def _deliveries(
        self,
        note: dict[str, Any],
        version: CompiledVersion | None,
        people: dict[tuple[str, str], dict[str, Any]],
        now: datetime,
    ) -> list[dict[str, Any]]:
        if version is None:
            log.warning("notification %s: template %r is gone", note["id"], note["template"])
            return []
        rows = []
        expires_at = as_utc(note["expires_at"])
        for rid in note["recipient_ids"]:
            recipient = people.get((note["tenant_id"], rid))
            if recipient is None:
                continue
            context = render_context(note, recipient)
            for route in choose_routes(list(version.channels), note["channels"], recipient):
                row = self._row(note, rid, route.channel, route.address, now)
                row["expires_at"] = expires_at
                if route.address is None:
                    row.update(status=DeliveryStatus.SUPPRESSED, reason="no_address")
                elif expires_at is not None and expires_at <= now:
                    row.update(status=DeliveryStatus.FAILED, reason="expired")
                else:
                    self._render(row, version, route.channel, recipient, context)
                rows.append(row)
        return rows

    def _row(
        self, note: dict[str, Any], rid: str, channel: str, address: Any, now: datetime
    ) -> dict[str, Any]:
        return {
            "id": delivery_id(note["id"], rid, channel),
            "notification_id": note["id"],
            "tenant_id": note["tenant_id"],
            "recipient_id": rid,
            "channel": channel,
            "provider": self._ctx.providers.name_for(note["tenant_id"], channel),
            "priority": note["priority"],
            "status": DeliveryStatus.QUEUED,
            "reason": None,
            "attempts": 0,
            "last_error": None,
            "address": address,
            "content": None,
            "provider_message_id": None,
            "scheduled_for": None,
            "created_at": now,
            "updated_at": now,
            "sent_at": None,
        }

    @staticmethod
    def _render(
        row: dict[str, Any],
        version: CompiledVersion,
        channel: str,
        recipient: dict[str, Any],
        context: dict[str, Any],
    ) -> None:
        _, template = version.for_channel(channel, recipient.get("locale"))
        try:
            row["content"] = template.render(context)
        except TemplateError as exc:
            row.update(status=DeliveryStatus.FAILED, reason="render_error", last_error=exc.message)
