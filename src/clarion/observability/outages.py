"""Which component an outage came from: named in logs, in a 503's body and in ``/readyz``.

A process stands on several servers (the database; Redis or NATS for the broker; Redis for
the rate limiter, the circuit breakers and the realtime hub): an outage that does not say
which one sends an operator to the wrong server. The component is the innermost Clarion
module the failure passed through (the broker's client, the rate limiter, the store...); the
server is told by the exception's own library. Module names are compared as text: nothing
here imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

DATABASE, BROKER, RATE_LIMITER = "database", "broker", "rate limiter"
BREAKERS, REALTIME_HUB = "circuit breakers", "realtime hub"
PROVIDER = "provider"

# Module prefix -> component, most specific first.
_COMPONENTS = (
    ("clarion.broker", BROKER),
    ("clarion.realtime", REALTIME_HUB),
    ("clarion.resilience.ratelimit", RATE_LIMITER),
    ("clarion.api.quota", RATE_LIMITER),
    ("clarion.resilience.breaker", BREAKERS),
    ("clarion.store", DATABASE),
    ("clarion.providers", PROVIDER),
)
# Library of the exception -> the server it speaks to.
_SERVERS = {
    "redis": "redis",
    "nats": "nats",
    "asyncpg": "postgresql",
    "sqlite3": "sqlite",
    "aiosqlite": "sqlite",
}


@dataclass(frozen=True, slots=True)
class Outage:
    component: str
    # "redis", "postgresql", "sqlite"; None when the exception does not tell.
    server: str | None = None

    def __str__(self) -> str:
        return self.component if self.server is None else f"{self.component} ({self.server})"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from or during, outermost first, without loops."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not s for s in seen) and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _modules(tb: TracebackType | None) -> list[str]:
    names = []
    while tb is not None:
        names.append(str(tb.tb_frame.f_globals.get("__name__", "")))
        tb = tb.tb_next
    return names


def _component(modules: list[str]) -> str | None:
    for module in reversed(modules):  # innermost first
        for prefix, component in _COMPONENTS:
            if module == prefix or module.startswith(prefix + "."):
                return component
    return None


def _server(exc: BaseException) -> str | None:
    """The server the exception's library speaks to: by the exception's class (or the
    driver's, which SQLAlchemy wraps), else by the innermost driver frame it passed (a
    refused connection is a plain ``OSError``)."""
    chain = _chain(exc)
    for cause in chain:
        for candidate in (cause, getattr(cause, "orig", None)):
            if candidate is None:
                continue
            library = type(candidate).__module__.split(".")[0]
            if library in _SERVERS:
                return _SERVERS[library]
    for cause in chain:
        for module in reversed(_modules(cause.__traceback__)):
            library = module.split(".")[0]
            if library in _SERVERS:
                return _SERVERS[library]
    return None


def outage_of(exc: BaseException) -> Outage:
    """The component (and server) an outage exception came from."""
    server = _server(exc)
    for cause in _chain(exc):
        component = _component(_modules(cause.__traceback__))
        if component is not None:
            return Outage(component, server)
    if server in ("postgresql", "sqlite") or type(exc).__module__.startswith("sqlalchemy"):
        return Outage(DATABASE, server)
    if server == "redis":
        return Outage("redis")
    return Outage("backing service", server)
