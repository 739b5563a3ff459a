"""A local stand-in for Twilio's Programmable Messaging API and its status callbacks.

It checks what Twilio checks: HTTP basic auth with the account SID and auth token, the
account in the path, a form-encoded body with ``To``, ``Body`` and ``From`` or
``MessagingServiceSid``, and ``To`` in E.164. It answers 201 with a Message resource (sid
``SM`` + 32 hex, status ``queued``) and refuses with Twilio's documented error bodies
(``{"code", "message", "more_info", "status"}``). Twilio's magic test numbers behave as with
test credentials: ``+15005550001`` is invalid (21211), ``+15005550009`` is not a mobile
number (21614).

WhatsApp goes through the same API with ``whatsapp:+E164`` addresses (``To`` and ``From``
alike, 63007 otherwise), and a template message names a Content API template instead of a
``Body``: a ``ContentSid`` the account has (``contents``; 21655 otherwise) with its
``ContentVariables``, a JSON object of strings, one per variable (21656, 63028).

:meth:`TwilioStandin.report` then plays Twilio's part in a status callback: it POSTs the
message's status to its ``StatusCallback`` URL, signed as Twilio signs it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections import deque
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import httpx
from aiohttp import web

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
CONTENT_SID = re.compile(r"^HX[0-9a-f]{32}$")
WHATSAPP = "whatsapp:"
MAGIC_NUMBERS = {
    "+15005550001": (21211, "The 'To' number +15005550001 is not a valid phone number."),
    "+15005550009": (21614, "'To' number is not a valid mobile number"),
}


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """As Twilio documents it: the full URL, then each POST parameter's name and value in
    the order of the names, HMAC-SHA1 with the auth token as key, base64."""
    payload = url + "".join(key + params[key] for key in sorted(params))
    mac = hmac.new(auth_token.encode("utf-8"), payload.encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


@dataclass
class Sms:
    """A message Twilio accepted."""

    sid: str
    form: dict[str, str]

    @property
    def to(self) -> str:
        return self.form["To"]

    @property
    def body(self) -> str:
        return self.form.get("Body", "")

    @property
    def status_callback(self) -> str | None:
        return self.form.get("StatusCallback")


@dataclass
class TwilioStandin:
    account_sid: str = field(default_factory=lambda: "AC" + secrets.token_hex(16))
    auth_token: str = field(default_factory=lambda: secrets.token_hex(16))
    received: list[Sms] = field(default_factory=list)
    # The account's Content API templates: SID -> how many variables each takes.
    contents: dict[str, int] = field(default_factory=dict)
    # Why requests were refused (a test reads it when a send did not go through).
    rejected: list[str] = field(default_factory=list)
    port: int = 0
    _failures: deque[tuple[int, str | None, int | None]] = field(default_factory=deque)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self, **overrides: Any) -> dict[str, Any]:
        """A Clarion ``twilio`` provider config for this account."""
        return {
            "account_sid": self.account_sid,
            "auth_token": self.auth_token,
            "from": "+15005550006",
            "base_url": self.url,
            **overrides,
        }

    def fail_next(
        self, status: int, retry_after: str | None = None, code: int | None = None
    ) -> None:
        """Answer the next send with an error of this HTTP status (429 carries Retry-After),
        and of this Twilio error code if given."""
        self._failures.append((status, retry_after, code))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/2010-04-01/Accounts/{account}/Messages.json", self._create)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def report(
        self,
        client: httpx.AsyncClient,
        sms: Sms,
        status: str,
        *,
        error_code: str | None = None,
        auth_token: str | None = None,
        url: str | None = None,
    ) -> httpx.Response:
        """POST a status callback for ``sms`` as Twilio does, signed with ``auth_token`` (the
        account's by default) over ``url`` (the message's StatusCallback by default)."""
        callback = sms.status_callback
        assert callback is not None, "the message was sent without a StatusCallback"
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "From": sms.form.get("From", ""),
            "MessageSid": sms.sid,
            "MessageStatus": status,
            "SmsSid": sms.sid,
            "SmsStatus": status,
            "To": sms.to,
        }
        if error_code is not None:
            params["ErrorCode"] = error_code
        signature = twilio_signature(auth_token or self.auth_token, url or callback, params)
        return await client.post(
            callback,
            data=params,
            headers={"X-Twilio-Signature": signature, "User-Agent": "TwilioProxy/1.1"},
        )

    async def _create(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._error(401, 20003, "Authentication Error - invalid username")
        if request.match_info["account"] != self.account_sid:
            return self._error(404, 20404, "The requested resource was not found")
        if request.content_type != "application/x-www-form-urlencoded":
            return self._error(400, 21604, "A 'To' phone number is required.")
        form = {key: str(value) for key, value in (await request.post()).items()}
        problem = _problem(form, self.contents)
        if problem is not None:
            return self._error(400, *problem)
        if self._failures:
            return self._scripted(*self._failures.popleft())
        sms = Sms(sid="SM" + secrets.token_hex(16), form=form)
        self.received.append(sms)
        return web.json_response(self._resource(sms), status=201)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return False
        return hmac.compare_digest(f"{user}:{password}", f"{self.account_sid}:{self.auth_token}")

    def _scripted(self, status: int, retry_after: str | None, code: int | None) -> web.Response:
        if code is not None:
            return self._error(status, code, f"Error {code}", retry_after=retry_after)
        if status == 429:
            return self._error(429, 20429, "Too Many Requests", retry_after=retry_after or "1")
        if status >= 500:
            return self._error(status, 20500, "An internal server error has occurred")
        return self._error(status, 21610, "Attempt to send to unsubscribed recipient")

    def _error(
        self, status: int, code: int, message: str, *, retry_after: str | None = None
    ) -> web.Response:
        self.rejected.append(f"{status} {code} {message}")
        body = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        headers = {"Retry-After": retry_after} if retry_after else None
        return web.json_response(body, status=status, headers=headers)

    def _resource(self, sms: Sms) -> dict[str, Any]:
        now = formatdate(usegmt=True)
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": sms.body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": sms.form.get("From"),
            "messaging_service_sid": sms.form.get("MessagingServiceSid"),
            "num_media": "0",
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sms.sid,
            "status": "queued",
            "to": sms.to,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sms.sid}.json",
        }


def _problem(form: dict[str, str], contents: dict[str, int]) -> tuple[int, str] | None:
    """What Twilio would refuse in a Messages create request (code, message)."""
    to = form.get("To")
    if not to:
        return 21604, "A 'To' phone number is required."
    if not form.get("Body") and not form.get("ContentSid"):
        return 21602, "Message body is required."
    if not form.get("From") and not form.get("MessagingServiceSid"):
        return 21603, "A 'From' phone number is required."
    whatsapp = to.startswith(WHATSAPP)
    sender = form.get("From")
    if sender is not None and sender.startswith(WHATSAPP) != whatsapp:
        return 63007, "Twilio could not find a Channel with the specified From address"
    number = to.removeprefix(WHATSAPP)
    if not E164.match(number):
        return 21211, f"The 'To' number {to} is not a valid phone number."
    if "ContentSid" in form:
        problem = _content_problem(form, contents)
        if problem is not None:
            return problem
    return MAGIC_NUMBERS.get(number)


def _content_problem(form: dict[str, str], contents: dict[str, int]) -> tuple[int, str] | None:
    """A Content API template: a known ``HX`` SID, and its variables a JSON object of
    strings, one for each of the template's variables."""
    sid = form["ContentSid"]
    if not CONTENT_SID.match(sid) or sid not in contents:
        return 21655, "The ContentSid is Invalid."
    try:
        variables = json.loads(form.get("ContentVariables", "{}"))
    except ValueError:
        return 21656, "The ContentVariables Parameter is invalid."
    if not isinstance(variables, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in variables.items()
    ):
        return 21656, "The ContentVariables Parameter is invalid."
    if len(variables) != contents[sid]:
        return 63028, "Number of parameters provided does not match the expected number"
    return None
