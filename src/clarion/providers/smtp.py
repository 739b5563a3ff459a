"""The SMTP provider: a small pool of aiosmtplib connections to one relay.

A connection is reused for the next message; one the server has dropped while idle is
replaced once, then the send is a :class:`TransientError`. Replies are classified by RFC
5321 class: 4xx transient, 5xx permanent (550/551/553 at RCPT: ``invalid_address``;
530/535: ``bad_credentials``). Every operation is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

import aiosmtplib

from clarion.domain.delivery import Delivery
from clarion.errors import PermanentError, ProviderError, TransientError
from clarion.net.answers import transport_error
from clarion.providers.base import Provider, ProviderEnv, ProviderSpec, SendResult
from clarion.providers.configs import SmtpConfig
from clarion.providers.mime import EmailComposer, to_bytes, to_mime

DEFAULT_TIMEOUT = 30.0
_ADDRESS_CODES = frozenset({550, 551, 553})
_CREDENTIAL_CODES = frozenset({530, 535})


def classify_reply(code: int, text: str, *, at_recipient: bool = False) -> ProviderError:
    """The error an SMTP reply code means."""
    detail = f"SMTP {code}: {text[:300]}"
    if 400 <= code < 500:
        return TransientError(detail, reason=f"smtp_{code}")
    if code in _CREDENTIAL_CODES:
        return PermanentError(detail, reason="bad_credentials")
    if at_recipient and code in _ADDRESS_CODES:
        return PermanentError(detail, reason="invalid_address")
    return PermanentError(detail, reason="provider_rejected")


def convert(exc: Exception) -> ProviderError:
    """An aiosmtplib (or socket) failure as Clarion's error."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        refused = exc.recipients[0]
        return classify_reply(refused.code, refused.message, at_recipient=True)
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return classify_reply(exc.code, exc.message, at_recipient=True)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return classify_reply(exc.code, exc.message)
    if isinstance(exc, TimeoutError | ssl.SSLError | ConnectionError | OSError):
        return transport_error(exc, what="SMTP")
    # The server lacks something the configuration requires (AUTH, STARTTLS).
    return PermanentError(f"{type(exc).__name__}: {exc}", reason="provider_rejected")


def tls_context(config: SmtpConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=config.ca_pem)
    if not config.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class SmtpProvider(Provider):
    """Sends email through an SMTP relay."""

    kind = "smtp"

    def __init__(
        self, spec: ProviderSpec, env: ProviderEnv, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._config = SmtpConfig.model_validate(spec.config)
        self._composer = EmailComposer.of(self._config.from_, env)
        self._timeout = timeout
        self._guard = env.guard()
        self._tls = tls_context(self._config) if self._config.tls != "none" else None
        self._slots = asyncio.Semaphore(self._config.pool_size)
        self._idle: list[aiosmtplib.SMTP] = []
        self._local_hostname: str | None = None
        self._closed = False

    async def start(self) -> None:
        # Looked up once: aiosmtplib would resolve it again for every connection.
        self._local_hostname = await asyncio.to_thread(socket.getfqdn)

    async def send(self, message: Delivery) -> SendResult:
        email = await self._composer.compose(message)
        mime = to_mime(email)
        data = to_bytes(mime)
        async with self._slots:
            try:
                async with asyncio.timeout(self._timeout * 4):
                    sender = self._config.return_path or email.sender.address
                    await self._deliver(sender, email.to, data)
            except ProviderError:
                raise
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                raise convert(exc) from exc
            except ValueError as exc:  # an address aiosmtplib will not put on the wire
                raise PermanentError(str(exc), reason="invalid_address") from exc
        return SendResult(provider_message_id=str(mime["Message-ID"]))

    async def _deliver(self, sender: str, to: str, data: bytes) -> None:
        client = self._idle.pop() if self._idle else None
        if client is not None and client.is_connected:
            try:
                await self._send_on(client, sender, to, data)
                return
            except aiosmtplib.SMTPServerDisconnected:
                pass  # dropped while idle: one fresh connection, below
        await self._send_on(await self._connect(), sender, to, data)

    async def _send_on(self, client: aiosmtplib.SMTP, sender: str, to: str, data: bytes) -> None:
        """Send on ``client``, then pool it again if it is still good."""
        try:
            await client.sendmail(sender, [to], data)
        except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused):
            # aiosmtplib has reset the envelope: the connection serves the next message.
            self._release(client)
            raise
        except BaseException:
            client.close()
            raise
        self._release(client)

    def _release(self, client: aiosmtplib.SMTP) -> None:
        if client.is_connected and not self._closed:
            self._idle.append(client)
        else:
            client.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        config = self._config
        # Connected here, to an address the guard checked: aiosmtplib would resolve again.
        sock = await self._guard.connect(config.host, config.port, self._timeout)
        client = aiosmtplib.SMTP(
            hostname=config.host,
            sock=sock,
            username=config.username,
            password=config.password,
            local_hostname=self._local_hostname,
            timeout=self._timeout,
            use_tls=config.tls == "implicit",
            start_tls=config.tls == "starttls",
            tls_context=self._tls,
        )
        # The transport aiosmtplib makes owns the socket (and closes it when connect fails).
        await client.connect()
        return client

    async def aclose(self) -> None:
        self._closed = True  # a send still under way closes its connection when done
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                async with asyncio.timeout(self._timeout):
                    await client.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()
