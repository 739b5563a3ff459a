"""Clarion's outbound HTTP/1.1 client: pooled keep-alive connections to addresses the
:class:`~clarion.security.netguard.AddressGuard` checked.

- A connection goes to an address returned by ``AddressGuard.resolve`` (the one lookup;
  IP literals are checked too), and TLS verifies the certificate against the URL's host
  name, not the address. A host's addresses are tried in turn, each with an equal share
  of the time left.
- Connections are kept per origin (scheme, host, port) and reused; at most
  ``max_connections`` are open and in use, and requests beyond that wait their turn in
  order. An idle connection is closed after ``idle_timeout``, and one the server closed,
  answered ``Connection: close`` on, or that carried a cut-short or failed exchange is
  never reused.
- A whole request (waiting for a connection, connecting, sending, reading the answer) is
  bounded by ``timeout`` (while on the wire, checked every 50 ms); the answer's body by
  ``max_body`` (the rest is dropped with the connection).
- A request that fails on a reused connection before any answer arrives (the server
  closed the idle connection as it was sent) is sent once more on a new connection if it
  is safe to repeat: GET, HEAD, OPTIONS, PUT, DELETE, or an ``Idempotency-Key``.
- Through the guard's outbound proxy (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``, or
  a provider's own) a connection is a ``CONNECT`` tunnel to the checked address
  (:mod:`clarion.net.tunnel`), kept and reused like any other; TLS runs inside it.
- Redirects are answers like any other (callers refuse them); no cookies, compression or
  HTTP/2.

Failures become :class:`TransientError` here (:func:`clarion.net.answers.transport_error`):
``timeout``, ``connection_error`` (refused, reset, closed early, a malformed answer, TLS
failures), ``certificate_error`` (the server's certificate did not verify: transient,
since the owner of an expired or mismatched certificate usually fixes it within the retry
schedule); a proxy's refusal of ``CONNECT`` is what :mod:`clarion.net.tunnel` says. The
guard's refusals stay :class:`PermanentError` ``address_refused``; a URL
or header that cannot be sent is :class:`PermanentError` ``invalid_address`` or
``invalid_request``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import OrderedDict, deque
from collections.abc import Mapping

import httptools

from clarion.domain.proxies import Proxy
from clarion.errors import TransientError
from clarion.net.answers import transport_error
from clarion.net.connection import Connection, Reply
from clarion.net.framing import HeadWriter, Origin, Target, parse_target
from clarion.net.tunnel import open_tunnel
from clarion.security.netguard import AddressGuard

_MAX_TARGETS = 1024  # URLs whose parsed form is kept
# How often requests on the wire are checked against their deadlines (a timer per request
# would cost more than the rest of its bookkeeping).
_TICK = 0.05
_Call = tuple[bytes, bool, int, float]  # request bytes, HEAD or not, max_body, deadline


class HttpClient:
    """An HTTP/1.1 client; one per provider or dispatcher, closed with :meth:`aclose`."""

    def __init__(
        self,
        guard: AddressGuard,
        *,
        max_connections: int = 64,
        user_agent: str = "Clarion",
        idle_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._guard = guard
        self._max = max_connections
        self._idle_timeout = idle_timeout
        self._ssl = ssl_context
        self._heads = HeadWriter(user_agent)
        self._targets: dict[str, Target] = {}
        self._busy = 0  # requests holding a turn (at most max_connections)
        self._turns: deque[asyncio.Future[None]] = deque()  # requests waiting for one
        self._open: set[Connection] = set()
        self._idle: dict[Origin, dict[Connection, None]] = {}
        self._lru: OrderedDict[Connection, None] = OrderedDict()  # idle, oldest first
        self._sweeper: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop its connections run on, kept: on Python 3.11 each
        asyncio.get_running_loop() is a getpid system call, and a request takes several."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._open)

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes = b"",
        *,
        timeout: float,
        max_body: int,
    ) -> Reply:
        """Send one request and read its answer, whatever its status (3xx included)."""
        if self._closed:
            raise RuntimeError("the HTTP client is closed")
        target = self._target(url)
        head, replayable = self._heads.head(method, target, headers, len(body))
        data = head + body if len(body) < 65536 else b"".join((head, body))
        loop = self._running_loop()
        deadline = loop.time() + timeout
        if self._watchdog is None:
            self._watchdog = loop.call_later(_TICK, self._watch)
        try:
            # On the wire, the watchdog holds the request to its deadline; waiting for a
            # turn or a connection is bounded here.
            if self._busy < self._max and not self._turns:
                self._busy += 1
            else:
                await self._wait_turn(deadline)
            try:
                call = (data, method == "HEAD", max_body, deadline)
                return await self._send(target.origin, call, replayable)
            finally:
                self._next_turn()
        except TimeoutError as exc:
            raise transport_error(exc, after=timeout) from exc
        except (OSError, httptools.HttpParserError) as exc:
            raise transport_error(exc) from exc

    async def aclose(self) -> None:
        """Close every connection; the client takes no more requests."""
        self._closed = True
        for timer in (self._sweeper, self._watchdog):
            if timer is not None:
                timer.cancel()
        self._sweeper = self._watchdog = None
        open_now = list(self._open)
        for conn in open_now:
            conn.close()
        if open_now:
            await asyncio.wait([conn.lost for conn in open_now], timeout=5)

    def _target(self, url: str) -> Target:
        target = self._targets.get(url)
        if target is None:
            target = parse_target(url)
            if len(self._targets) >= _MAX_TARGETS:
                self._targets.clear()
            self._targets[url] = target
        return target

    async def _wait_turn(self, deadline: float) -> None:
        turn = self._running_loop().create_future()
        self._turns.append(turn)
        try:
            async with asyncio.timeout_at(deadline):
                await turn
        except BaseException:
            if turn.done() and not turn.cancelled():
                self._next_turn()  # given a turn while leaving: pass it on
            raise

    def _next_turn(self) -> None:
        """Hand the finished request's turn to the first one waiting, or give it up."""
        while self._turns:
            turn = self._turns.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._busy -= 1

    async def _send(self, origin: Origin, call: _Call, replayable: bool) -> Reply:
        conn = self._take_idle(origin) or await self._connect(origin, call[3])
        try:
            return await self._exchange(conn, call)
        except OSError as exc:
            fresh = conn.requests < 2 or conn.answered
            if fresh or not replayable or isinstance(exc, TimeoutError):
                raise
        # The server closed the kept-alive connection as the request went out.
        return await self._exchange(await self._connect(origin, call[3]), call)

    async def _exchange(self, conn: Connection, call: _Call) -> Reply:
        data, head, max_body, deadline = call
        try:
            reply = await conn.exchange(data, head=head, max_body=max_body, deadline=deadline)
        except BaseException:
            conn.close()
            raise
        self._release(conn)
        return reply

    async def _connect(self, origin: Origin, deadline: float) -> Connection:
        """A new connection to a checked address of the origin's host, tried in turn; each
        address gets an equal share of the time left, so an unreachable first address
        (a broken IPv6 route) leaves time for the next. Through a proxy, the addresses are
        what the proxy is asked to ``CONNECT`` to."""
        scheme, host, port = origin
        proxy = self._guard.proxy_for(scheme, host, port)
        loop = self._running_loop()
        proxy_addresses: list[str] = []
        async with asyncio.timeout_at(deadline):
            if proxy is None:
                targets = await self._guard.resolve(host, port)
            else:
                targets = await self._guard.tunnel_targets(host, port)
                proxy_addresses = await self._guard.proxy_addresses(proxy)
        if len(self._open) >= self._max:
            self._evict()
        last: Exception | None = None
        for tried, target in enumerate(targets):
            share = (deadline - loop.time()) / (len(targets) - tried)
            try:
                async with asyncio.timeout(share):
                    if proxy is None:
                        return await self._open_connection(origin, target)
                    return await self._open_tunnel(origin, proxy, proxy_addresses, target)
            except ssl.SSLCertVerificationError:
                raise
            except OSError as exc:  # TimeoutError included
                last = exc
            except TransientError as exc:
                if exc.reason != "proxy_error":
                    raise
                last = exc  # the proxy cannot reach this address: perhaps the next
        raise last or ConnectionError(f"no address for {host!r}")

    async def _open_connection(self, origin: Origin, address: str) -> Connection:
        scheme, host, port = origin
        tls = self._tls() if scheme == "https" else None
        transport, conn = await asyncio.get_running_loop().create_connection(
            lambda: Connection(origin, self._forget),
            address,
            port,
            ssl=tls,
            server_hostname=host if tls is not None else None,
        )
        # uvloop may return before it has called connection_made.
        conn.transport = transport
        return self._opened(conn)

    async def _open_tunnel(
        self, origin: Origin, proxy: Proxy, addresses: list[str], target: str
    ) -> Connection:
        scheme, host, _ = origin
        _, conn = await open_tunnel(
            proxy,
            addresses,
            target,
            lambda: Connection(origin, self._forget),
            tls=self._tls() if scheme == "https" else None,
            server_hostname=host,
        )
        return self._opened(conn)

    def _opened(self, conn: Connection) -> Connection:
        if self._closed:
            conn.close()
            raise RuntimeError("the HTTP client is closed")
        if not conn.lost.done():
            self._open.add(conn)
        return conn

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _take_idle(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn, _ = idle.popitem()  # the most recently used: the likeliest to be alive
            del self._lru[conn]
            if not idle:
                del self._idle[origin]
            if conn.usable():
                return conn
            conn.close()
        return None

    def _release(self, conn: Connection) -> None:
        if not conn.reusable or self._closed or not conn.usable():
            conn.close()
            return
        loop = self._running_loop()
        conn.idle_since = loop.time()
        self._idle.setdefault(conn.origin, {})[conn] = None
        self._lru[conn] = None
        if self._sweeper is None:
            self._sweeper = loop.call_at(conn.idle_since + self._idle_timeout, self._sweep)

    def _evict(self) -> None:
        """Close the longest idle connection, to make room for one to another origin."""
        if self._lru:
            conn, _ = self._lru.popitem(last=False)
            self._forget(conn)
            conn.close()

    def _sweep(self) -> None:
        self._sweeper = None
        loop = self._running_loop()
        expired = loop.time() - self._idle_timeout
        while self._lru:
            conn = next(iter(self._lru))
            if conn.idle_since > expired:
                when = conn.idle_since + self._idle_timeout
                self._sweeper = loop.call_at(when, self._sweep)
                return
            self._forget(conn)
            conn.close()

    def _watch(self) -> None:
        self._watchdog = None
        loop = self._running_loop()
        now = loop.time()
        for conn in list(self._open):
            conn.expire(now)
        if self._busy:
            self._watchdog = loop.call_later(_TICK, self._watch)

    def _forget(self, conn: Connection) -> None:
        """Drop a connection from the pool's books (closed, or about to be)."""
        self._open.discard(conn)
        self._lru.pop(conn, None)
        idle = self._idle.get(conn.origin)
        if idle is not None and conn in idle:
            del idle[conn]
            if not idle:
                del self._idle[conn.origin]
