"""Table definitions (SQLAlchemy Core). Migrations in ``migrations/`` create them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _ts(name: str, nullable: bool = True) -> Column[object]:
    return Column(name, DateTime(timezone=True), nullable=nullable)


# Clarion's ids (domain/ids.py) fit in 40 characters; most tables are keyed by their tenant.
def _id(name: str = "id") -> Column[object]:
    return Column(name, String(40), primary_key=True)


def _tenant(*, key: bool) -> Column[object]:
    return Column("tenant_id", String(40), primary_key=key, nullable=False)


tenants = Table(
    "tenants",
    metadata,
    _id(),
    Column("name", String(200), nullable=False, unique=True),
    Column("webhook_secret", String(100), nullable=False),
    Column("settings", JSON, nullable=False, default=dict),
    # Signs recipient tokens (security/inbox_tokens.py); replaced to revoke them all.
    Column("inbox_secret", String(100)),
    _ts("created_at", nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    _id(),
    Column("tenant_id", String(40), ForeignKey("tenants.id"), nullable=False, index=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(20), nullable=False),
    Column("scopes", String(100), nullable=False),
    Column("name", String(100)),
    _ts("created_at", nullable=False),
    _ts("revoked_at"),
    Index("ix_api_keys_tenant_created", "tenant_id", "created_at", "id"),
)

recipients = Table(
    "recipients",
    metadata,
    _tenant(key=True),
    Column("id", String(200), primary_key=True),
    Column("email", String(320)),
    Column("phone", String(32)),
    Column("locale", String(35)),
    Column("timezone", String(64)),
    Column("push_tokens", JSON),
    Column("webpush", JSON),
    Column("webhook_url", Text),
    Column("data", JSON),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    Column("preferences", JSON),
    Column("chat", JSON),
    # The recipient's WhatsApp number (E.164) when it is not `phone`.
    Column("whatsapp", String(32)),
)


def _versioned(name: str, key: str, *content: Column[object]) -> tuple[Table, Table]:
    """A definition kept in versions (store/versioned.py): its head, keyed by tenant and
    ``key``, naming the active and latest version, and a row per version holding ``content``."""

    def keys(*more: str) -> list[Column[Any]]:
        return [
            _tenant(key=True),
            Column(key, String(200), primary_key=True),
            *(Column(c, Integer, primary_key=True) for c in more),
        ]

    counters = [Column(c, Integer, nullable=False) for c in ("active_version", "latest_version")]
    head = Table(f"{name}s", metadata, *keys(), *counters, _ts("updated_at", nullable=False))
    versions = Table(
        f"{name}_versions", metadata, *keys("version"), *content, _ts("created_at", nullable=False)
    )
    return head, versions


templates, template_versions = _versioned(
    "template",
    "name",
    Column("category", String(100), nullable=False),
    Column("channels", JSON, nullable=False),
    Column("locales", JSON, nullable=False),
    # Critical notifications: channel -> channel to use when it has no healthy provider.
    Column("fallbacks", JSON),
    # The layout its email part names (store/layouts.py refuses to delete one in use).
    Column("layout", String(200)),
)

# A tenant's email layouts: the HTML and text around a template's email, with its slot.
layouts, layout_versions = _versioned(
    "layout",
    "name",
    Column("html", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("locales", JSON, nullable=False),
)

workflows, workflow_versions = _versioned(
    "workflow",
    "key",
    Column("name", String(200), nullable=False),
    Column("category", String(100)),
    Column("steps", JSON, nullable=False),
)

notifications = Table(
    "notifications",
    metadata,
    _id(),
    _tenant(key=False),
    Column("template", String(200), nullable=False),
    Column("recipient_ids", JSON, nullable=False),
    Column("data", JSON, nullable=False),
    Column("priority", String(10), nullable=False),
    Column("channels", JSON),
    _ts("send_at"),
    _ts("expires_at"),
    Column("status", String(16), nullable=False),
    Column("idempotency_key", String(255)),
    Column("request_hash", String(64)),
    _ts("created_at", nullable=False),
    # A topic send: the topic, and when its last chunk was planned. Its cursors are in
    # `topic_stripes`; `planned_through` is the single cursor of sends planned before
    # stripes (migration 0019 turns one in progress into a stripe), no longer written.
    Column("topic", String(200)),
    Column("planned_through", String(200)),
    _ts("planned_at"),
    # A digest: the window (digest_windows.id) whose held notifications it sums up.
    Column("digest_of", String(40)),
    # The W3C traceparent of the span it was made in (the API's intake, a schedule's run, a
    # digest's closing), when tracing is on: whoever publishes it again, or its deliveries,
    # joins that trace (observability/tracing.py).
    Column("trace", String(55)),
    # A workflow send: the workflow (its `template` is empty), and the key that
    # `POST /v1/workflows/{key}/cancel` cancels its runs by.
    Column("workflow", String(200)),
    Column("cancellation_key", String(200)),
    UniqueConstraint("tenant_id", "idempotency_key", name="uq_notifications_idempotency"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("notification_id", String(40), primary_key=True),
    _tenant(key=False),
    _ts("available_at", nullable=False),
    Index("ix_outbox_available_at", "available_at"),
)

deliveries = Table(
    "deliveries",
    metadata,
    _id(),
    Column("notification_id", String(40), nullable=False),
    _tenant(key=False),
    Column("recipient_id", String(200), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("provider", String(100)),
    Column("priority", String(10), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", String(40)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("address", JSON),
    Column("content", JSON),
    Column("provider_message_id", String(255)),
    # The template's category, and whether it is critical (no List-Unsubscribe, no opt-out).
    Column("category", String(100)),
    Column("critical", Boolean, nullable=False, default=False, server_default=false()),
    # For a critical delivery whose template names a fallback channel: that channel, the
    # recipient's address on it and its rendered content, ready if this channel has no
    # healthy provider.
    Column("fallback", JSON),
    _ts("scheduled_for"),
    _ts("expires_at"),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    _ts("sent_at"),
    # How long the provider call of the attempt that set the state took (its timeline's
    # `attempt` event of a plain `sent`, which has no event row).
    Column("latency_ms", Integer),
    # Set while the sweeper watches it: a delivery still waiting when the sweeper's pass
    # over the deliveries made in its time came by, or put back in the queue after that
    # (a replayed dead letter); cleared by the outcome that ends its wait
    # (pipeline/scheduler.py ``Sweeper``). No index holds a column that an attempt's
    # outcome changes, so that PostgreSQL writes the outcome in place (migration 0038);
    # this one is NULL, and stays NULL, for every delivery sent in its first minutes.
    _ts("watched_since"),
    # A notification's deliveries, paged in id order.
    Index("ix_deliveries_notification_id_id", "notification_id", "id"),
    Index(
        "ix_deliveries_watched_since",
        "watched_since",
        postgresql_where=text("watched_since IS NOT NULL"),
        sqlite_where=text("watched_since IS NOT NULL"),
    ),
)

# Where the sweeper's pass over new deliveries has come to (one row, id 1): every delivery
# made before ``swept_until`` and waiting then is watched (``deliveries.watched_since``).
sweeps = Table(
    "sweeps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    _ts("swept_until", nullable=False),
)

# An attempt's claim, taken right before its provider call (store/deliveries.py ``claim``):
# the attempt, and until when the worker that took it holds it (the call and the outcome's
# write fit in it; past it, the worker is taken for dead). A row of its own, not columns of
# the delivery: the claim is one narrow insert instead of a new version of the delivery's
# row and an entry in each of its six indexes. A delivery is `sending` while its claim is
# live and ahead of its stored attempts. `cancelled`: its notification's cancellation took
# it (store/deliveries.py ``stop_waiting``); no attempt is claimed after that.
delivery_claims = Table(
    "delivery_claims",
    metadata,
    _id(),
    Column("attempt", Integer, nullable=False),
    _ts("leased_until", nullable=False),
    Column("cancelled", Boolean, nullable=False, default=False, server_default=false()),
)

# A workflow send's run for one recipient (pipeline/runs.py): the workflow version it is
# pinned to, the step it is at, each step's outcome, and when it is to be looked at next
# (`wake_at`: a delay's end, a channel step's next look at its delivery, or the lease of a
# run being advanced; none once it has ended).
workflow_runs = Table(
    "workflow_runs",
    metadata,
    _id(),
    _tenant(key=False),
    Column("notification_id", String(40), nullable=False),
    Column("recipient_id", String(200), nullable=False),
    Column("workflow", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("cancellation_key", String(200)),
    Column("status", String(16), nullable=False),
    Column("step", Integer, nullable=False),
    Column("turn", Integer, nullable=False),
    Column("steps", JSON, nullable=False),
    _ts("wake_at"),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    # Partial: a run's row is rewritten at every step, and each index it is in with it.
    Index(
        "ix_workflow_runs_wake_at",
        "wake_at",
        sqlite_where=text("wake_at IS NOT NULL"),
        postgresql_where=text("wake_at IS NOT NULL"),
    ),
    Index("ix_workflow_runs_notification", "notification_id", "recipient_id"),
    # A recipient's runs, for their export and erasure.
    Index("ix_workflow_runs_recipient", "tenant_id", "recipient_id"),
    Index(
        "ix_workflow_runs_cancellation",
        "tenant_id",
        "workflow",
        "cancellation_key",
        sqlite_where=text("cancellation_key IS NOT NULL"),
        postgresql_where=text("cancellation_key IS NOT NULL"),
    ),
)

# A workflow `digest` step's open window (pipeline/runs.py): one per (tenant, workflow, step,
# key). The run that opened it carries it (`run_id`) and closes it at `closes_at`; each run
# that reaches the step meanwhile with the same key joins it and counts. Deleted when it
# closes, or when its carrier is cancelled.
workflow_digests = Table(
    "workflow_digests",
    metadata,
    _tenant(key=True),
    Column("workflow", String(200), primary_key=True),
    Column("step", String(40), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("run_id", String(40), nullable=False),
    _ts("closes_at", nullable=False),
    Column("count", Integer, nullable=False),
    _ts("created_at", nullable=False),
    Index("ix_workflow_digests_run_id", "run_id"),
)

# The triggers an open digest window collected, in the order they joined (`seq`, from 1:
# the carrier's own): the `data` of each run (`run_id`), up to
# CLARION_WORKFLOW_DIGEST_MAX_EVENTS per window. Read and deleted when the window closes.
workflow_digest_events = Table(
    "workflow_digest_events",
    metadata,
    Column("carrier_id", String(40), primary_key=True),
    Column("step", String(40), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("run_id", String(40), nullable=False),
    Column("data", JSON, nullable=False),
    _ts("created_at", nullable=False),
    Index("ix_workflow_digest_events_run_id", "run_id"),
)

delivery_events = Table(
    "delivery_events",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("delivery_id", String(40), nullable=False),
    _tenant(key=False),
    Column("status", String(16), nullable=False),
    Column("detail", Text),
    _ts("created_at", nullable=False),
    # Set when the event is the outcome of an attempt (a provider call, or a try that
    # failed before one): its number, the provider, how long the call took, the class of
    # its error (timeout, transient, permanent, internal). `reason`: why (a retry's cause,
    # a deferral's, a failure's).
    Column("attempt", Integer),
    Column("provider", String(100)),
    Column("latency_ms", Integer),
    Column("error_class", String(40)),
    Column("reason", String(40)),
    Index("ix_delivery_events_delivery_id", "delivery_id"),
    # A tenant's dead letters, newest first: each one's `dead` event (store/dead_letters.py).
    Index(
        "ix_delivery_events_tenant_status_created",
        "tenant_id",
        "status",
        "created_at",
        "delivery_id",
    ),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    _tenant(key=True),
    Column("key", String(255), primary_key=True),
    Column("scope", String(100), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status_code", Integer, nullable=False),
    Column("response", JSON, nullable=False),
    _ts("created_at", nullable=False),
)

sandbox_messages = Table(
    "sandbox_messages",
    metadata,
    _id(),
    _tenant(key=False),
    Column("delivery_id", String(40), nullable=False, unique=True),
    Column("channel", String(16), nullable=False),
    Column("recipient_id", String(200), nullable=False),
    Column("to", JSON),
    Column("content", JSON, nullable=False),
    _ts("created_at", nullable=False),
    Index("ix_sandbox_messages_tenant_id_id", "tenant_id", "id"),
)

inbox_messages = Table(
    "inbox_messages",
    metadata,
    _id(),
    _tenant(key=False),
    Column("recipient_id", String(200), nullable=False),
    Column("delivery_id", String(40), nullable=False, unique=True),
    Column("content", JSON, nullable=False),
    Column("category", String(100)),
    # unread | read | archived: derived from the timestamps below, kept for the indexes.
    Column("status", String(16), nullable=False),
    _ts("created_at", nullable=False),
    _ts("read_at"),
    _ts("seen_at"),
    _ts("archived_at"),
    # Hidden from the feed and the counts until the waker brings it back (store/inbox.py).
    _ts("snoozed_until"),
    # Offline fallback: unless seen by `fallback_due`, the notification goes out again on
    # `fallback_channel` (realtime/gate.py). Cleared once seen or sent.
    Column("notification_id", String(40)),
    _ts("fallback_due"),
    Column("fallback_channel", String(16)),
    # The recipient's arrival order, in commit order: taken from `inbox_counters.seq` under
    # that row's lock when the message is stored, and again when it comes back from snooze.
    # A live connection resumes after a `seq` (store/inbox.py::since).
    Column("seq", BigInteger, nullable=False, server_default=text("0")),
)

# The feed, newest first: each list is a range of one of these, so a page costs a page
# however many messages the recipient has. Partial (snoozed messages are in none), and the
# queries repeat their predicates word for word so both databases use them.
_VISIBLE = "snoozed_until IS NULL"
_FEED = "status IN ('unread', 'read') AND snoozed_until IS NULL"
Index(
    "ix_inbox_messages_feed",
    inbox_messages.c.tenant_id,
    inbox_messages.c.recipient_id,
    inbox_messages.c.created_at,
    inbox_messages.c.id,
    sqlite_where=text(_FEED),
    postgresql_where=text(_FEED),
)
Index(
    "ix_inbox_messages_status",
    inbox_messages.c.tenant_id,
    inbox_messages.c.recipient_id,
    inbox_messages.c.status,
    inbox_messages.c.created_at,
    inbox_messages.c.id,
    sqlite_where=text(_VISIBLE),
    postgresql_where=text(_VISIBLE),
)
Index(
    "ix_inbox_messages_all",
    inbox_messages.c.tenant_id,
    inbox_messages.c.recipient_id,
    inbox_messages.c.created_at,
    inbox_messages.c.id,
)
Index(
    "ix_inbox_messages_seq",
    inbox_messages.c.tenant_id,
    inbox_messages.c.recipient_id,
    inbox_messages.c.seq,
    unique=True,
)
Index("ix_inbox_messages_snoozed_until", inbox_messages.c.snoozed_until)
Index("ix_inbox_messages_fallback_due", inbox_messages.c.fallback_due)

# Each recipient's counts, kept by every change of its inbox in the same transaction, so
# that reading them costs one row (store/inbox.py).
inbox_counters = Table(
    "inbox_counters",
    metadata,
    _tenant(key=True),
    Column("recipient_id", String(200), primary_key=True),
    Column("unread", Integer, nullable=False),
    Column("unseen", Integer, nullable=False),
    Column("total", Integer, nullable=False),
    # The last `seq` given to a message of the recipient (see inbox_messages.seq).
    Column("seq", BigInteger, nullable=False, server_default=text("0")),
    # One more on every change of the counts: what orders the counts that live events
    # carry (realtime/base.py), whatever order they arrive in.
    Column("version", BigInteger, nullable=False, server_default=text("0")),
)

# Recipient tokens issued before `revoked_at` are refused: the recipient was erased (named
# by its digest, security/inbox_tokens.py::recipient_digest, never by its id), or
# (recipient_id "*") the tenant's inbox secret was rotated. API processes follow this table.
inbox_revocations = Table(
    "inbox_revocations",
    metadata,
    _tenant(key=True),
    Column("recipient_id", String(200), primary_key=True),
    _ts("revoked_at", nullable=False),
    Index("ix_inbox_revocations_revoked_at", "revoked_at"),
)

# Single-use tickets for a live inbox connection (``POST /v1/inbox/ticket``), so a
# browser's URL carries a ticket, never a recipient token. Kept by the SHA-256 of the
# ticket; what it grants is its token's: the recipient, when that token was issued (a
# revocation after it refuses the ticket) and when it expires (in Unix seconds).
inbox_tickets = Table(
    "inbox_tickets",
    metadata,
    Column("id", String(64), primary_key=True),
    _tenant(key=False),
    Column("recipient_id", String(200), nullable=False),
    Column("token_issued_ms", BigInteger, nullable=False),
    Column("token_expires", BigInteger, nullable=False),
    _ts("expires_at", nullable=False),
    Index("ix_inbox_tickets_expires_at", "expires_at"),
)

categories = Table(
    "categories",
    metadata,
    _tenant(key=True),
    Column("name", String(100), primary_key=True),
    Column("critical", Boolean, nullable=False, default=False),
    Column("default_channels", JSON),
    Column("digest", JSON),
    Column("max_per_hour", Integer),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    Column("max_per_day", Integer),
    Column("overflow", String(10)),
    Column("during_snooze", String(10)),
    # Open and click tracking of its email: {"opens": bool, "clicks": bool}; null: none.
    Column("tracking", JSON),
)

# A tenant's categories' version: moved by every category write, in its transaction. A
# planner reads it with each batch and reloads the tenant's categories when it has moved,
# so a change applies to everything accepted after the write. No row: version 0.
category_versions = Table(
    "category_versions",
    metadata,
    _tenant(key=True),
    Column("version", BigInteger, nullable=False),
)


def _newest_first(name: str, table: Table, *by: str) -> Index:
    """An index of a tenant's rows of ``table`` (those with equal ``by`` together) in
    (created_at, id) order."""
    columns = [table.c[column] for column in ("tenant_id", *by, "created_at", "id")]
    return Index(name, *columns)


# Erasure and export find a recipient's deliveries and sandbox captures by these; the
# message log lists a recipient's deliveries newest first by the first.
_newest_first("ix_deliveries_tenant_recipient_created", deliveries, "recipient_id")
Index(
    "ix_sandbox_messages_tenant_id_recipient_id",
    sandbox_messages.c.tenant_id,
    sandbox_messages.c.recipient_id,
)

# The message log (store/message_log.py): each list, newest first, is a range of one of
# these — unfiltered, or by status (and template) for notifications — read backwards from a
# (created_at, id) cursor. A delivery's status is in no index (migration 0038): a delivery
# list filtered by status reads the tenant's deliveries newest first.
_newest_first("ix_notifications_tenant_created", notifications)
_newest_first("ix_notifications_tenant_status_created", notifications, "status")
_newest_first("ix_notifications_tenant_template_created", notifications, "template")
_newest_first("ix_deliveries_tenant_created", deliveries)

# A tenant's providers. `config` holds the settings with each secret field shown as "***";
# `secrets` the secret fields, sealed (see clarion.security.secrets).
providers = Table(
    "providers",
    metadata,
    _tenant(key=True),
    Column("name", String(100), primary_key=True),
    Column("channel", String(16), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("config", JSON, nullable=False),
    Column("secrets", Text),
    Column("priority", Integer, nullable=False),
    Column("rate_limit_per_second", Float),
    Column("enabled", Boolean, nullable=False),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
)

# A tenant's status webhooks: where delivery status events are POSTed. `secret` is the
# signing secret, sealed (see clarion.security.secrets).
webhooks = Table(
    "webhooks",
    metadata,
    _tenant(key=True),
    Column("name", String(100), primary_key=True),
    Column("url", Text, nullable=False),
    Column("events", JSON, nullable=False),
    Column("secret", Text, nullable=False),
    Column("enabled", Boolean, nullable=False),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
)

# Topics: a topic exists from its creation (explicit, or with its first subscriber) until
# it is deleted, with or without subscribers; a send to a topic not here is refused.
topics = Table(
    "topics",
    metadata,
    _tenant(key=True),
    Column("name", String(200), primary_key=True),
    _ts("created_at", nullable=False),
    # How many subscribers it has: moved in the transaction of every change to its
    # memberships (store/topics.py), so that a call answers its size without counting them.
    Column("subscribers", Integer, nullable=False, default=0, server_default="0"),
)

# Topic memberships: the planner reads a topic's subscribers in recipient id order, in
# chunks; export and erasure find a recipient's by the second index.
topic_subscribers = Table(
    "topic_subscribers",
    metadata,
    _tenant(key=True),
    Column("topic", String(200), primary_key=True),
    Column("recipient_id", String(200), primary_key=True),
    _ts("created_at", nullable=False),
    Index("ix_topic_subscribers_recipient", "tenant_id", "recipient_id"),
)

# A topic send planned side by side (pipeline/planner.py): its subscribers, in recipient id
# order, split into stripes of about equal size when planning starts; each stripe is planned
# chunk by chunk on its own cursor (`planned_through`, the last recipient id planned) up to
# its last recipient id (`last_id`, inclusive; null for the last stripe: no end). A stripe
# is done when its last chunk is stored; the rows go when the whole send is planned.
topic_stripes = Table(
    "topic_stripes",
    metadata,
    Column("notification_id", String(40), primary_key=True),
    Column("stripe", Integer, primary_key=True, autoincrement=False),
    Column("planned_through", String(200)),
    Column("last_id", String(200)),
    _ts("done_at"),
)

# The audit log (store/audit.py): one row per change of a tenant's configuration, written
# in the change's own transaction and never updated or deleted. `actor` is the API key's id
# (or `cli`, `system`); `diff` holds the changed fields, secrets masked.
audit_log = Table(
    "audit_log",
    metadata,
    _id(),
    _tenant(key=False),
    _ts("at", nullable=False),
    Column("actor", String(40), nullable=False),
    Column("resource", String(20), nullable=False),
    Column("name", String(200), nullable=False),
    Column("action", String(20), nullable=False),
    Column("diff", JSON),
    Index("ix_audit_log_tenant_at", "tenant_id", "at", "id"),
    Index("ix_audit_log_tenant_resource_at", "tenant_id", "resource", "name", "at", "id"),
)

# Recurring schedules (store/schedules.py, docs/schedules.md). `fired_through`: every due
# time up to it has its run; `next_run_at`: when the scheduler looks at it next (NULL when
# disabled or past its end), the only column the scheduler's scan reads.
schedules = Table(
    "schedules",
    metadata,
    _tenant(key=True),
    Column("name", String(200), primary_key=True),
    Column("cron", String(100), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("notification", JSON, nullable=False),
    Column("enabled", Boolean, nullable=False),
    _ts("starts_at"),
    _ts("ends_at"),
    _ts("fired_through", nullable=False),
    _ts("next_run_at"),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    # The traceparent of the request that last stored it (tracing on): each run's span
    # links to it.
    Column("trace", String(55)),
    Index("ix_schedules_next_run_at", "next_run_at"),
)

# One row per (schedule, due time, zone): the unique key is the claim, so several
# schedulers create each run once. `lease_until` is when another scheduler may take over
# a run that is not finished; `cursor` the last recipient id whose notification is made.
schedule_runs = Table(
    "schedule_runs",
    metadata,
    _id(),
    _tenant(key=False),
    Column("schedule", String(200), nullable=False),
    _ts("due_at", nullable=False),
    Column("zone", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    _ts("lease_until", nullable=False),
    Column("cursor", String(200)),
    Column("notification_ids", JSON, nullable=False),
    Column("recipients", Integer, nullable=False),
    Column("error", Text),
    _ts("created_at", nullable=False),
    _ts("fired_at"),
    _ts("finished_at"),
    UniqueConstraint("tenant_id", "schedule", "due_at", "zone", name="uq_schedule_runs_due"),
    Index("ix_schedule_runs_history", "tenant_id", "schedule", "id"),
    Index("ix_schedule_runs_open", "status", "lease_until"),
)

# Digests (store/digests.py): a window per (recipient, channel, category, key) holds a
# category's notifications until it closes; then one notification (`digest_of` the window)
# sums them up. At most one window per key is open (`closed_at` NULL); a closed one is kept
# a day with its items, so that a plan replayed after its window closed holds nothing twice.
_OPEN = "closed_at IS NULL"
digest_windows = Table(
    "digest_windows",
    metadata,
    _id(),
    _tenant(key=False),
    Column("recipient_id", String(200), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("category", String(100), nullable=False),
    Column("dkey", String(200), nullable=False),
    Column("held", Integer, nullable=False),
    _ts("opened_at", nullable=False),
    _ts("closes_at", nullable=False),
    _ts("closed_at"),
    Column("notification_id", String(40)),
)
Index(
    "ix_digest_windows_open",
    digest_windows.c.tenant_id,
    digest_windows.c.recipient_id,
    digest_windows.c.channel,
    digest_windows.c.category,
    digest_windows.c.dkey,
    unique=True,
    sqlite_where=text(_OPEN),
    postgresql_where=text(_OPEN),
)
Index(
    "ix_digest_windows_closes_at",
    digest_windows.c.closes_at,
    sqlite_where=text(_OPEN),
    postgresql_where=text(_OPEN),
)
Index("ix_digest_windows_closed_at", digest_windows.c.closed_at)
Index("ix_digest_windows_recipient", digest_windows.c.tenant_id, digest_windows.c.recipient_id)

# What a window holds, in arrival order (`id`): one row per held delivery (its id is
# unique, so a replayed plan holds nothing twice); the data is the notification's own.
digest_items = Table(
    "digest_items",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("window_id", String(40), nullable=False),
    Column("delivery_id", String(40), nullable=False, unique=True),
    Column("notification_id", String(40), nullable=False),
    _ts("created_at", nullable=False),
    Index("ix_digest_items_window_id_id", "window_id", "id"),
)

# A tenant's email suppression list (store/suppressions.py, docs/operations.md): addresses
# that bounced hard or complained, which Clarion no longer sends email to. `address` is the
# address's key (domain/contact.py ``suppression_key``); `detail` the provider's diagnostic;
# `delivery_id` the delivery the report was about, when it named one. `created_at`: first
# suppressed; `updated_at`: the latest report. Looked up by key, in one read per worker take.
suppressions = Table(
    "suppressions",
    metadata,
    _tenant(key=True),
    Column("address", String(320), primary_key=True),
    Column("id", String(40), nullable=False),
    Column("reason", String(16), nullable=False),
    Column("source", String(16), nullable=False),
    Column("detail", Text),
    Column("delivery_id", String(40)),
    _ts("created_at", nullable=False),
    _ts("updated_at", nullable=False),
    Index("ix_suppressions_tenant_created", "tenant_id", "created_at", "id"),
)
