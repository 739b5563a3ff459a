"""A local SMTP server (aiosmtpd) that checks what a real relay checks.

It listens on a random port of 127.0.0.1, in the test's own event loop. It can require
AUTH (PLAIN or LOGIN; without it MAIL FROM is a ``530``), offer STARTTLS (and then refuse
everything before it) or speak TLS from the first byte, with a trustme certificate. It
keeps what it receives and answers chosen recipients with a chosen reply (``450``,
``550``...). ``drop_connections()`` closes every open session, as a relay does with idle
clients.
"""

from __future__ import annotations

import asyncio
import email
import ssl
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from typing import Any, Literal

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

Tls = Literal["none", "starttls", "implicit"]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    user: str | None
    tls: bool

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class _Handler:
    standin: SmtpStandIn

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.standin.users and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        reply = self.standin.refuse.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        user = session.auth_data.login.decode() if session.auth_data else None
        self.standin.received.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=data,
                user=user,
                tls=session.ssl is not None or self.standin.tls == "implicit",
            )
        )
        return "250 2.0.0 Message accepted for delivery"


@dataclass
class SmtpStandIn:
    tls: Tls = "none"
    # username → password; when set, AUTH is required before MAIL FROM.
    users: dict[str, str] = field(default_factory=dict)
    # recipient address → the reply RCPT TO gets, e.g. "550 5.1.1 No such user".
    refuse: dict[str, str] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    ca: trustme.CA = field(default_factory=trustme.CA)
    port: int = 0
    _server: asyncio.Server | None = None
    _sessions: list[SMTP] = field(default_factory=list)

    @property
    def ca_pem(self) -> str:
        return self.ca.cert_pem.bytes().decode()

    def _server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        return context

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = data.login.decode(), data.password.decode()
        return AuthResult(success=self.users.get(user) == password, handled=False, auth_data=data)

    def _protocol(self, context: ssl.SSLContext | None) -> SMTP:
        self.connections += 1
        session = SMTP(
            _Handler(self),
            hostname="standin.test",
            authenticator=self._authenticate,
            auth_exclude_mechanism=["CRAM-MD5"],
            # Over STARTTLS a real relay offers AUTH only once encrypted; the plain and
            # implicit-TLS modes take it as is (aiosmtpd cannot tell implicit TLS apart).
            auth_require_tls=self.tls == "starttls",
            tls_context=context if self.tls == "starttls" else None,
            require_starttls=self.tls == "starttls",
            loop=asyncio.get_running_loop(),
        )
        self._sessions.append(session)
        return session

    async def start(self) -> SmtpStandIn:
        context = self._server_context() if self.tls != "none" else None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: self._protocol(context),
            "127.0.0.1",
            self.port,
            ssl=context if self.tls == "implicit" else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def drop_connections(self) -> None:
        sessions, self._sessions = self._sessions, []
        for session in sessions:
            if session.transport is not None:
                session.transport.close()
        tasks = [s._handler_coroutine for s in sessions if s._handler_coroutine is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self.drop_connections()
            await self._server.wait_closed()
            self._server = None
