"""Stand-ins for the services Clarion calls, each checking the protocol it speaks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar


class Server(Protocol):
    async def start(self) -> object: ...

    async def close(self) -> None: ...


S = TypeVar("S", bound=Server)


@asynccontextmanager
async def serving(server: S) -> AsyncIterator[S]:
    """A test server (a stand-in, a sink, a broker) started for the block, closed after."""
    await server.start()
    try:
        yield server
    finally:
        await server.close()
