"""What every stage of one process shares: settings, database, broker, providers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from clarion.broker import Broker, create_broker
from clarion.config import Settings
from clarion.pipeline.categories import CategoryCache
from clarion.pipeline.subscriptions import Subscriptions
from clarion.pipeline.urgency import Urgency
from clarion.providers import ProviderSet
from clarion.providers.base import FeedbackEnv
from clarion.providers.sns import SnsVerifier
from clarion.realtime import Hub, create_hub
from clarion.realtime.gate import InboxGate
from clarion.realtime.slots import LiveSlots
from clarion.resilience.backends import Backends, open_backends
from clarion.security.netguard import AddressGuard
from clarion.security.secrets import Keyring, resolve_keyring
from clarion.store import tenants as tenant_store
from clarion.store.db import AsyncEngine, create_engine, sqlite_file, utcnow
from clarion.store.pg import PgPool


@dataclass
class Context:
    settings: Settings
    engine: AsyncEngine
    broker: Broker
    # The keys that seal tenants' provider credentials (see clarion.security.secrets).
    keyring: Keyring = field(default_factory=lambda: Keyring(None))
    providers: ProviderSet = field(init=False)
    # Rate limiter and circuit breakers: in Redis when there is one, else in-process.
    resilience: Backends = field(init=False)
    # Category policies for the planner; the API drops a tenant's entry when it changes one.
    categories: CategoryCache = field(default_factory=CategoryCache)
    # Tenants' status webhooks; the API drops a tenant's entry when it changes one.
    webhooks: Subscriptions = field(init=False)
    # Live inbox events (NATS, Redis pub/sub, or in process) and the gate of recipient tokens.
    hub: Hub = field(init=False)
    inbox: InboxGate = field(init=False)
    # What reading providers' bounce and complaint reports needs (the SNS verifier).
    feedback: FeedbackEnv = field(init=False)
    # The hot statements' asyncpg pool on PostgreSQL (store/pg.py); None on SQLite.
    pg: PgPool | None = None
    _secrets: dict[str, str] = field(default_factory=dict)
    # A tenant's secret being read: the deliveries that need it meanwhile wait for that read.
    _secret_reads: dict[str, asyncio.Future[str]] = field(default_factory=dict)
    # "Now" for the scheduler role (the relay's due outbox rows, recurring schedules):
    # tests replace it with a fake clock to cross months and clock changes without waiting.
    clock: Callable[[], datetime] = utcnow
    # Set whenever a stage finishes a piece of work; drain() waits on it.
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    # Critical and high-priority work under way in this process, which a broadcast's
    # planning gives way to (pipeline/urgency.py).
    urgency: Urgency = field(default_factory=Urgency)

    def __post_init__(self) -> None:
        self.providers = ProviderSet(self.settings, self.engine, self.webhook_secret, self.keyring)
        self.resilience = open_backends(self.settings)
        self.webhooks = Subscriptions(self.engine, self.keyring, self.settings.provider_cache_ttl)
        self.hub = create_hub(self.settings, self.resilience.redis)
        self.inbox = InboxGate(
            self.engine,
            self.hub,
            self.settings.provider_cache_ttl,
            LiveSlots(self.settings.live_max_per_recipient, self.settings.live_max_per_tenant),
        )
        self.providers.hub = self.hub
        sns = SnsVerifier(
            # Certificates and subscription confirmations go out like every request:
            # through the deployment's proxy, if any.
            AddressGuard(self.settings.allow_private_webhooks, self.settings.proxies),
            hosts=self.settings.sns_cert_hosts,
            max_age=self.settings.feedback_max_age,
            ca_file=self.settings.sns_ca_file,
        )
        self.feedback = FeedbackEnv(sns, self.settings.feedback_max_age)
        self.providers.pg = self.pg
        self.inbox.pg = self.pg

    async def webhook_secret(self, tenant_id: str) -> str:
        secret = self._secrets.get(tenant_id)
        if secret is not None:
            return secret
        # One read per tenant, however many of its deliveries start at once (a worker's
        # first take holds hundreds).
        reading = self._secret_reads.get(tenant_id)
        if reading is None:
            reading = asyncio.ensure_future(self._read_secret(tenant_id))
            self._secret_reads[tenant_id] = reading
            reading.add_done_callback(lambda _: self._secret_reads.pop(tenant_id, None))
        return await asyncio.shield(reading)

    async def _read_secret(self, tenant_id: str) -> str:
        tenant = await tenant_store.get_tenant(self.engine, tenant_id)
        if tenant is None:
            raise KeyError(tenant_id)
        secret = self._secrets[tenant_id] = tenant.webhook_secret
        return secret

    def made_progress(self) -> None:
        self.progress.set()

    async def aclose(self) -> None:
        await self.providers.aclose()
        await self.feedback.sns.aclose()
        await self.hub.aclose()
        await self.resilience.aclose()
        await self.broker.close()
        if self.pg is not None:
            await self.pg.aclose()
        await self.engine.dispose()


async def open_context(settings: Settings) -> Context:
    keyring = resolve_keyring(settings, sqlite_file(settings.database_url))
    engine = create_engine(settings)
    broker = create_broker(settings)
    await broker.start()
    pg = PgPool(settings.database_url) if engine.dialect.name == "postgresql" else None
    return Context(settings=settings, engine=engine, broker=broker, keyring=keyring, pg=pg)
