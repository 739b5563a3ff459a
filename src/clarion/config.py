"""Settings, read from ``CLARION_*`` environment variables."""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from clarion.domain.models import ALL_CHANNELS
from clarion.domain.proxies import Proxies, environment_proxies, parse_no_proxy, parse_proxy

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# A broker URL with these schemes is a Redis (one server, or a cluster: broker/redis_client.py),
# which also serves the rate limits, breakers and live inbox events unless CLARION_REDIS_URL
# names another.
_REDIS_SCHEMES = ("redis://", "rediss://", "redis+cluster://", "rediss+cluster://")
# A broker URL with these schemes is NATS JetStream, which also carries live inbox events.
_NATS_SCHEMES = ("nats://", "tls://")


def parse_duration(text: str) -> float:
    """Parse ``500ms``, ``5s``, ``2m``, ``1h`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _channel_schedules(text: str) -> dict[str, list[float]]:
    """Parse ``sms=5s,1m;push=1s,5s`` into delays per channel."""
    schedules: dict[str, list[float]] = {}
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        channel, sep, schedule = entry.partition("=")
        channel = channel.strip()
        if not sep or channel not in ALL_CHANNELS:
            raise ValueError(f"not a channel's retry schedule: {entry!r} (e.g. sms=5s,1m,10m)")
        schedules[channel] = [parse_duration(part) for part in schedule.split(",")]
    return schedules


# The constraints most settings share.
Positive = Annotated[float, Field(gt=0)]
Share = Annotated[float, Field(gt=0, le=1)]  # of a pool, of calls
AtLeastOne = Annotated[int, Field(ge=1)]


_PROXY_VARIABLES = ("https_proxy", "http_proxy", "no_proxy")


class _ProxyVariables(PydanticBaseSettingsSource):
    """``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY`` as every HTTP client reads them: the
    lower-case spelling first, then the upper-case one."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # __call__ reads them all

    def __call__(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for name in _PROXY_VARIABLES:
            value = os.environ.get(name, os.environ.get(name.upper()))
            if value is not None:
                found[name] = value
        return found


class Settings(BaseSettings):
    """Deployment settings. Every field maps to ``CLARION_<NAME>``; the outbound proxy's
    also to the standard ``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY``."""

    # A refused value is not repeated in the error: settings hold passwords (in URLs too).
    model_config = SettingsConfigDict(
        env_prefix="CLARION_", extra="ignore", hide_input_in_errors=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # CLARION_HTTPS_PROXY (even empty) wins over HTTPS_PROXY: Clarion's own setting.
        proxies = _ProxyVariables(settings_cls)
        return init_settings, env_settings, proxies, dotenv_settings, file_secret_settings

    database_url: str = "sqlite+aiosqlite:///./clarion.db"
    broker_url: str = "embedded://"
    redis_url: str | None = None
    secret_key: str | None = None
    # Keys replaced by CLARION_SECRET_KEY, comma-separated: they still open what they sealed
    # until `clarion keys rotate-secret` has re-sealed it with the current key.
    previous_secret_keys: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # HTTP server limits (per process): see docs/operations.md, "HTTP server limits".
    http_header_timeout: Positive = 10.0
    http_body_timeout: Positive = 30.0
    http_keep_alive: Positive = 5.0
    http_max_connections: AtLeastOne = 4096
    http_max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    # Request bodies of 64 KiB or more handled at once per process (others wait their turn).
    http_large_bodies: AtLeastOne = 4
    # The address recipients' mail clients reach this API at (unsubscribe links).
    public_url: str = "http://127.0.0.1:8080"
    # Where the open and click tracking links of email point (docs/tracking.md): a host
    # of its own, or empty for CLARION_PUBLIC_URL. At most this many opens and clicks are
    # recorded per delivery; more are still answered, and not recorded.
    tracking_url: str = ""
    tracking_max_events: int = Field(default=100, ge=1, le=1000)
    allow_private_webhooks: bool = False
    max_attempts: int = Field(default=8, ge=1, le=100)
    retry_schedule: str = "1s,5s,30s,2m,10m,1h"
    # Per-channel schedules over the one above: "sms=5s,1m,10m;push=1s,5s,30s".
    channel_retry_schedules: str = ""
    default_provider: str = "sandbox"
    # How long a process trusts its copy of the tenants' provider settings; a change made
    # through another process is seen within this time.
    provider_cache_ttl: float = Field(default=5.0, ge=0)
    # How long a consumer may hold a message before another takes it back.
    broker_lease: Positive = 30.0
    # Redis broker: each stream is kept in this many Redis streams (shards), which a
    # Redis Cluster spreads over its nodes; publishers spread messages over them and
    # consumers read them all (docs/operations.md, "Redis Cluster"). Raise it freely;
    # lower it only with the streams drained.
    broker_shards: int = Field(default=1, ge=1, le=64)
    # Deliveries still `queued` this long after their last change are published again.
    sweep_after: Positive = 300.0
    # A freshly accepted notification is published by its API process at once; the relay
    # takes it from the outbox only if it is still unplanned after this grace period. Under
    # a backlog a notification can wait in the plan stream for a while: a short grace makes
    # the relay publish it again and the planner do the work twice.
    outbox_grace: Positive = 60.0
    # A topic send is planned this many subscribers at a time, each chunk committed with
    # its stripe's cursor; its subscribers are split into up to this many stripes, planned
    # side by side by whichever planners are free (docs/topics.md).
    topic_chunk: int = Field(default=2000, ge=1, le=100_000)
    topic_stripes: int = Field(default=8, ge=1, le=64)
    # While a critical or high-priority send is under way, a broadcast's chunks wait
    # before their reads and their store, and the channel workers start few lower-lane
    # sends (pipeline/urgency.py): urgent sends keep their pace during a broadcast, whose
    # deliveries are created a little later. Off: a broadcast never waits for them.
    broadcast_give_way: bool = True
    # A workflow run being advanced is leased for this long: one whose planner died is
    # taken again when the lease ends (docs/workflows.md, "Restarts and crashes").
    workflow_run_lease: float = Field(default=60.0, ge=1)
    # A run waiting in a delay whose next steps depend on nothing that can still change
    # (channel and exit steps that read no step) is walked this long before the delay
    # ends: its deliveries are made then, scheduled for the end, so they go out on time
    # however many runs end their delay at once (docs/workflows.md, "What each step
    # does"). 0: at the end.
    workflow_wake_ahead: float = Field(default=30.0, ge=0, le=3600)
    # A workflow `digest` step keeps the data of this many triggers per window (its count
    # goes on beyond it): what `digest.events` holds (docs/workflows.md).
    workflow_digest_max_events: int = Field(default=100, ge=0, le=10_000)
    # Recurring schedules (docs/schedules.md): due times missed by more than the catch-up
    # window (the scheduler was down) are skipped; a `recipient` schedule looks for new
    # time zones among its audience at least this often; runs are kept this long.
    schedule_catchup: Positive = 3600.0
    schedule_zone_rescan: Positive = 900.0
    schedule_history: Positive = 30 * 86400.0
    # The most recurring schedules one tenant may hold.
    max_schedules: AtLeastOne = 100
    # Deliveries, their events and finished notifications older than this many days leave
    # the database (0 keeps everything); the scheduler looks this often (docs/operations.md,
    # "Retention").
    retention_days: float = Field(default=30.0, ge=0)
    retention_interval: Positive = 600.0
    webhook_timeout: Positive = 10.0
    # The outbound proxy of every HTTP request (docs/operations.md, "Outbound proxy"):
    # http://[user:password@]host[:port]; empty for none. Read from CLARION_HTTPS_PROXY or
    # else HTTPS_PROXY / https_proxy (and the same for the other two).
    https_proxy: str = ""
    http_proxy: str = ""
    no_proxy: str = ""
    # Live inbox connections: events a connection may have waiting before it is closed as
    # too slow; the SSE heartbeat; how often an API process looks for revoked recipient
    # tokens and snoozed messages whose time has come.
    inbox_queue_size: int = Field(default=256, ge=1, le=100_000)
    inbox_heartbeat: Positive = 15.0
    inbox_upkeep_interval: Positive = 1.0
    # What carries live inbox events between processes: `auto` is the NATS broker's
    # servers with the NATS broker, else Redis when there is one (CLARION_REDIS_URL or a
    # Redis broker), else nothing (one process). `redis` keeps Redis pub/sub with the NATS
    # broker: while processes of a version that used it are still running.
    inbox_hub: Literal["auto", "redis", "nats"] = "auto"
    # Live inbox connections one API process accepts per recipient and per tenant (0: no
    # cap); one more is refused with a 429.
    live_max_per_recipient: int = Field(default=20, ge=0)
    live_max_per_tenant: int = Field(default=20_000, ge=0)
    shutdown_timeout: Positive = 10.0
    sqlite_synchronous: str = "FULL"
    log_level: str = "INFO"
    # Logs as one JSON object a line (`json`) or as readable text (`text`).
    log_format: Literal["text", "json"] = "text"
    # On: logs may show message bodies, addresses and SQL parameters (libraries' DEBUG
    # traces, unmasked contact data). For debugging on a machine of one's own only.
    log_pii: bool = False
    # `off`: no metric is counted (every hook returns at once) and /metrics answers 404.
    metrics: Literal["on", "off"] = "on"
    # Workers' and schedulers' port for /metrics, /healthz and /readyz (off when unset).
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    # Adds a `tenant` label to the notification and delivery counters: one series per
    # tenant, so only for deployments with few tenants.
    metrics_tenant_label: bool = False
    # Size of each channel's pool of concurrent sends.
    worker_concurrency: AtLeastOne = 512
    # The share of that pool one tenant may hold: a tenant whose endpoints hang holds at
    # most this much, the other tenants' work runs in the rest (docs/architecture.md).
    worker_tenant_share: Share = 0.5
    # The share of that pool one endpoint of a tenant (a webhook's host and port, a
    # provider) may hold: a tenant whose one endpoint hangs still reaches its others.
    worker_endpoint_share: Share = 0.25
    # The share of that pool retries may hold: fresh work keeps the rest during an outage.
    worker_retry_share: Share = 0.125
    # Status-event POSTs in flight per process, shared between tenants the same way.
    event_concurrency: AtLeastOne = 64
    # Circuit breaker per (tenant, provider): opens when at least `breaker_min_calls` sends
    # in the last `breaker_window` seconds failed at `breaker_failure_threshold` or more.
    breaker_failure_threshold: Share = 0.5
    breaker_min_calls: AtLeastOne = 20
    breaker_window: float = Field(default=10.0, ge=1)
    breaker_cooldown: Positive = 30.0
    # Notifications a tenant may submit per second (sustained) and at once (burst);
    # a tenant's settings may override both (same names).
    intake_rate_per_second: Positive = 10000.0
    intake_burst: AtLeastOne = 20000
    # Bounce and complaint reports (docs/providers.md, "Bounces and complaints"): the hosts
    # an SNS message's SigningCertURL and SubscribeURL may name (a regular expression over
    # the host name; AWS's own by default), the CA certificates (a PEM file) to verify
    # those hosts' TLS with instead of the system's, and how old a signed report may be.
    sns_cert_hosts: str = r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$"
    sns_ca_file: str | None = None
    feedback_max_age: Positive = 3600.0

    @field_validator("retry_schedule")
    @classmethod
    def _check_schedule(cls, value: str) -> str:
        for part in value.split(","):
            parse_duration(part)
        return value

    @field_validator("sns_cert_hosts")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
        return value

    @field_validator("channel_retry_schedules")
    @classmethod
    def _check_channel_schedules(cls, value: str) -> str:
        _channel_schedules(value)
        return value

    @field_validator("tracking_url")
    @classmethod
    def _check_tracking_url(cls, value: str) -> str:
        if not value.strip():
            return ""
        parts = urlsplit(value.strip())
        if not value.isascii() or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an http(s) URL in ASCII (an international domain in punycode)")
        if parts.query or parts.fragment:
            raise ValueError("a base URL, without a query or a fragment")
        return value.strip()

    @property
    def tracking_base(self) -> str:
        """The base of tracking links: ``tracking_url``, else ``public_url``."""
        return (self.tracking_url.strip() or self.public_url).rstrip("/")

    @field_validator("https_proxy", "http_proxy")
    @classmethod
    def _check_proxy(cls, value: str) -> str:
        if value.strip():
            parse_proxy(value)
        return value

    @field_validator("no_proxy")
    @classmethod
    def _check_no_proxy(cls, value: str) -> str:
        parse_no_proxy(value)
        return value

    @property
    def proxies(self) -> Proxies:
        """The deployment's outbound proxies (the three settings above, parsed)."""
        return environment_proxies(self.https_proxy, self.http_proxy, self.no_proxy)

    @property
    def retry_delays(self) -> list[float]:
        return [parse_duration(part) for part in self.retry_schedule.split(",")]

    def retry_delays_for(self, channel: str) -> list[float]:
        """The retry schedule of a channel: its own if one is set, else the default."""
        own = _channel_schedules(self.channel_retry_schedules).get(channel)
        return own if own is not None else self.retry_delays

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @model_validator(mode="after")
    def _check_inbox_hub(self) -> Settings:
        if self.inbox_hub == "nats" and not self.broker_url.startswith(_NATS_SCHEMES):
            raise ValueError("CLARION_INBOX_HUB=nats needs the NATS broker (nats://...)")
        if self.inbox_hub == "redis" and self.effective_redis_url is None:
            raise ValueError("CLARION_INBOX_HUB=redis needs CLARION_REDIS_URL")
        return self

    @property
    def live_hub(self) -> Literal["memory", "redis", "nats"]:
        """Where live inbox events go from process to process (``inbox_hub`` resolved)."""
        if self.inbox_hub == "auto":
            if self.broker_url.startswith(_NATS_SCHEMES):
                return "nats"
            return "redis" if self.effective_redis_url is not None else "memory"
        return self.inbox_hub

    @property
    def effective_redis_url(self) -> str | None:
        if self.redis_url:
            return self.redis_url
        if self.broker_url.startswith(_REDIS_SCHEMES):
            return self.broker_url
        return None
