"""digest carriers: each open category digest window gets the run that carries it

A category digest's window is closed by its carrier, a run of the built-in workflow
``~digest`` stored when the window opens (store/digests.py ``carrier_row``). The windows
open at the upgrade get theirs here: waiting until the window closes (one due already is
taken at the next wake), its notification the digest to be. Down again, the carriers go.

Revision ID: 0036
Revises: 0035
Create Date: 2026-11-27 09:00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from clarion.domain.digests import digest_notification_id
from clarion.domain.runs import run_id

revision: str = "0036"
down_revision: str | None = "0035"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FLOW = "~digest"
_WHEN = sa.DateTime(timezone=True)
_windows = sa.table(
    "digest_windows",
    sa.column("id", sa.String),
    sa.column("tenant_id", sa.String),
    sa.column("recipient_id", sa.String),
    sa.column("closes_at", _WHEN),
    sa.column("closed_at", _WHEN),
)
_runs = sa.table(
    "workflow_runs",
    sa.column("id", sa.String),
    sa.column("tenant_id", sa.String),
    sa.column("notification_id", sa.String),
    sa.column("recipient_id", sa.String),
    sa.column("workflow", sa.String),
    sa.column("version", sa.Integer),
    sa.column("cancellation_key", sa.String),
    sa.column("status", sa.String),
    sa.column("step", sa.Integer),
    sa.column("turn", sa.Integer),
    sa.column("steps", sa.JSON),
    sa.column("wake_at", _WHEN),
    sa.column("created_at", _WHEN),
    sa.column("updated_at", _WHEN),
)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def upgrade() -> None:
    bind = op.get_bind()
    now = datetime.now(UTC)
    query = sa.select(_windows).where(_windows.c.closed_at.is_(None)).order_by(_windows.c.id)
    carriers = []
    for window in bind.execute(query).mappings():
        nid = digest_notification_id(window["id"])
        closes_at = _utc(window["closes_at"])
        step = {
            "id": "collect",
            "status": "waiting",
            "at": now.timestamp(),
            "until": closes_at.timestamp(),
            "window": window["id"],
        }
        carriers.append(
            {
                "id": run_id(nid, window["recipient_id"]),
                "tenant_id": window["tenant_id"],
                "notification_id": nid,
                "recipient_id": window["recipient_id"],
                "workflow": _FLOW,
                "version": 1,
                "cancellation_key": None,
                "status": "waiting",
                "step": 0,
                "turn": 0,
                "steps": [step],
                "wake_at": closes_at,
                "created_at": now,
                "updated_at": now,
            }
        )
    for start in range(0, len(carriers), 1000):
        bind.execute(sa.insert(_runs), carriers[start : start + 1000])


def downgrade() -> None:
    op.execute(sa.delete(_runs).where(_runs.c.workflow == _FLOW))
