"""A local stand-in for Meta's WhatsApp Cloud API and its webhooks.

``POST /{version}/{phone_number_id}/messages`` checks what the Cloud API checks: a bearer
access token (``401`` with error ``190`` otherwise), a phone number id of the business
(``400``, error ``100`` subcode ``33``), JSON with ``messaging_product: "whatsapp"``,
``to``, and a ``template`` or ``text`` message of Meta's shape. A template message must name
a template the business has in that language (``132001``) and fill it as it was approved:
as many body parameters (or the same names), a header parameter of the header's format
(a media ``link`` over https), a parameter for each dynamic URL button, at its ``index``
(``132000``, ``131008``, ``131009``). Every error is ``{"error": {"message", "type",
"code", "error_data": {"messaging_product", "details"}, "fbtrace_id"}}``.

It answers as Meta does, ``{"messaging_product", "contacts": [{"input", "wa_id"}],
"messages": [{"id": "wamid....", "message_status": "accepted"}]}``, even for a message
that will fail: a text to a number whose customer-service window is closed fails later
with ``131047``, and a number that is not on WhatsApp with ``131026`` (``outcome``).
:meth:`WhatsappStandin.report` then plays Meta's part in a status webhook, signed with the
app secret in ``X-Hub-Signature-256``; :meth:`WhatsappStandin.verify` its GET handshake.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from aiohttp import web

from standins.web import WebStandin, json_body

NUMBER = re.compile(r"^\+?[1-9][0-9]{6,14}$")
LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Z][A-Za-z]{1,3})?$")
MAX_TEXT = 4096
MEDIA = ("image", "video", "document")
# A number that is not on WhatsApp: accepted, then failed with 131026.
NOT_ON_WHATSAPP = "+15550000404"
ERROR_TITLES = {
    131026: "Message undeliverable",
    131047: "Re-engagement message",
}


def hub_signature(app_secret: str, body: bytes) -> str:
    """As Meta signs a webhook: ``sha256=`` and the hex HMAC-SHA256 of the raw body."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Template:
    """An approved template: its header's format (None, "text", or a media kind), its body
    parameters (a count, or names), and the dynamic URL buttons' indexes."""

    header: str | None = None
    body: int | tuple[str, ...] = 0
    url_buttons: tuple[int, ...] = ()


@dataclass
class WaMessage:
    id: str
    body: dict[str, Any]
    # What Meta will report for it: ("delivered", None) or ("failed", error code).
    outcome: tuple[str, int | None] = ("delivered", None)

    @property
    def to(self) -> str:
        return str(self.body["to"])


class WhatsappStandin(WebStandin):
    def __init__(self) -> None:
        super().__init__()
        self.phone_number_id = str(100000000000000 + secrets.randbelow(10**14))
        self.waba_id = str(200000000000000 + secrets.randbelow(10**14))
        self.access_token = "EAAG" + secrets.token_urlsafe(40)
        self.app_secret = secrets.token_hex(16)
        self.verify_token = secrets.token_urlsafe(12)
        self.templates: dict[tuple[str, str], Template] = {
            ("hello_world", "en_US"): Template(),
            ("order_shipped", "en_US"): Template(header="image", body=2, url_buttons=(0,)),
            ("order_shipped", "fr"): Template(header="image", body=2, url_buttons=(0,)),
            ("order_named", "en_US"): Template(header="text", body=("first_name", "order_id")),
        }
        # Numbers that wrote to the business in the last 24 hours: free-form text reaches them.
        self.window_open: set[str] = set()
        self.received: list[WaMessage] = []

    def config(self, **overrides: Any) -> dict[str, Any]:
        """A Clarion ``whatsapp_cloud`` provider config for this business number."""
        return {
            "phone_number_id": self.phone_number_id,
            "access_token": self.access_token,
            "app_secret": self.app_secret,
            "verify_token": self.verify_token,
            "base_url": self.url,
            **overrides,
        }

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/{version}/{number}/messages", self._messages)

    def throttle_next(self, code: int = 130429, retry_after: str | None = None) -> None:
        """Answer the next send with Meta's throughput error (HTTP 429 when it says
        Retry-After, else 400 as the Cloud API usually does)."""
        headers = {"Retry_After": retry_after} if retry_after else {}
        body = meta_error(
            code,
            "Rate limit hit",
            "Message failed to send because there were "
            "too many messages sent from this phone number in a short period",
        )
        self.script(429 if retry_after else 400, body, **headers)

    # -- the API -------------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.Response:
        if not re.fullmatch(r"v[0-9]{1,3}\.[0-9]{1,2}", request.match_info["version"]):
            return self._error(400, 2500, "Unknown path components")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token, self.access_token):
            return self._error(
                401,
                190,
                "Invalid OAuth access token - Cannot parse access token",
                kind="OAuthException",
            )
        if request.match_info["number"] != self.phone_number_id:
            return self._error(
                400,
                100,
                "Unsupported post request. Object with ID "
                f"'{request.match_info['number']}' does not exist",
            )
        body = await json_body(request)
        if not isinstance(body, dict):
            return self._error(400, 100, "Invalid parameter", "the body is not JSON")
        problem = _message_problem(body, self.templates)
        if problem is not None:
            return self._error(400, *problem)
        scripted = self.scripted()
        if scripted is not None:
            return scripted
        message = WaMessage("wamid." + secrets.token_urlsafe(32), body)
        to = "+" + message.to.lstrip("+")
        if to == NOT_ON_WHATSAPP:
            message.outcome = ("failed", 131026)
        elif body.get("type", "text") == "text" and to not in self.window_open:
            message.outcome = ("failed", 131047)
        self.received.append(message)
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": message.to, "wa_id": to.lstrip("+")}],
                "messages": [{"id": message.id, "message_status": "accepted"}],
            }
        )

    def _error(
        self, status: int, code: int, message: str, details: str = "", kind: str = ""
    ) -> web.Response:
        self.refused.append(f"{status} {code} {message} {details}".strip())
        return web.json_response(meta_error(code, message, details, kind), status=status)

    # -- Meta's side of the webhook ------------------------------------------------------

    def webhook(self, message: WaMessage, status: str, error_code: int | None = None) -> bytes:
        """A status notification about ``message``, as Meta sends it."""
        entry: dict[str, Any] = {
            "id": message.id,
            "status": status,
            "timestamp": str(int(time.time())),
            "recipient_id": message.to.lstrip("+"),
        }
        if "biz_opaque_callback_data" in message.body:
            entry["biz_opaque_callback_data"] = message.body["biz_opaque_callback_data"]
        if status != "failed":
            entry["conversation"] = {"id": secrets.token_hex(16), "origin": {"type": "utility"}}
            entry["pricing"] = {"billable": True, "pricing_model": "CBP", "category": "utility"}
        if error_code is not None:
            title = ERROR_TITLES.get(error_code, "Error")
            entry["errors"] = [
                {
                    "code": error_code,
                    "title": title,
                    "message": title,
                    "error_data": {"details": f"{title} (test)"},
                    "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
                }
            ]
        value = {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": "15550001234",
                "phone_number_id": self.phone_number_id,
            },
            "statuses": [entry],
        }
        change = {"value": value, "field": "messages"}
        return orjson.dumps(
            {
                "object": "whatsapp_business_account",
                "entry": [{"id": self.waba_id, "changes": [change]}],
            }
        )

    async def post_webhook(
        self, client: httpx.AsyncClient, url: str, body: bytes, *, app_secret: str | None = None
    ) -> httpx.Response:
        """POST a webhook's body to ``url``, signed with ``app_secret`` (the app's)."""
        signature = hub_signature(app_secret or self.app_secret, body)
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": signature,
            "User-Agent": "facebookexternalua",
        }
        return await client.post(url, content=body, headers=headers)

    async def report(
        self,
        client: httpx.AsyncClient,
        url: str,
        message: WaMessage,
        status: str | None = None,
        *,
        error_code: int | None = None,
        app_secret: str | None = None,
    ) -> httpx.Response:
        """Report ``message``'s status (its ``outcome`` by default) to the webhook ``url``."""
        if status is None:
            status, error_code = message.outcome
        body = self.webhook(message, status, error_code)
        return await self.post_webhook(client, url, body, app_secret=app_secret)

    async def verify(
        self, client: httpx.AsyncClient, url: str, *, token: str | None = None
    ) -> tuple[httpx.Response, str]:
        """Meta's verification of a webhook URL: the response, and the challenge sent."""
        challenge = str(secrets.randbelow(10**9))
        params = {
            "hub.mode": "subscribe",
            "hub.verify_token": token if token is not None else self.verify_token,
            "hub.challenge": challenge,
        }
        # Added to the URL's own query (the tenant), as Meta does.
        return await client.get(httpx.URL(url).copy_merge_params(params)), challenge


def meta_error(code: int, message: str, details: str = "", kind: str = "") -> dict[str, Any]:
    return {
        "error": {
            "message": f"(#{code}) {message}",
            "type": kind or "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details or message},
            "fbtrace_id": secrets.token_urlsafe(16),
        }
    }


Problem = tuple[int, str, str]
TOP_LEVEL = frozenset(
    {"messaging_product", "recipient_type", "to", "type", "template", "text",
     "biz_opaque_callback_data", "context"}
)  # fmt: skip


def _message_problem(
    body: dict[str, Any], templates: dict[tuple[str, str], Template]
) -> Problem | None:
    if body.get("messaging_product") != "whatsapp":
        return 100, "The parameter messaging_product is required.", "messaging_product"
    for name in sorted(set(body) - TOP_LEVEL):
        return 100, f"Param {name} is not a valid field", name
    to = body.get("to")
    if not isinstance(to, str) or not NUMBER.match(to):
        return 100, "Invalid parameter", "to: not a phone number"
    callback = body.get("biz_opaque_callback_data")
    if callback is not None and not (isinstance(callback, str) and len(callback) <= 512):
        return 100, "Invalid parameter", "biz_opaque_callback_data: a string up to 512"
    kind = body.get("type", "text")
    if kind == "text":
        text = body.get("text")
        words = text.get("body") if isinstance(text, dict) else None
        if not isinstance(words, str) or not words.strip():
            return 100, "The parameter text['body'] is required.", "text.body"
        if len(words) > MAX_TEXT:
            return 100, "Param text['body'] must be at most 4096 characters long.", "text.body"
        return None
    if kind != "template":
        return 100, "Invalid parameter", f"type: {kind!r} is not sent by this stand-in"
    return _template_problem(body.get("template"), templates)


def _template_problem(template: Any, templates: dict[tuple[str, str], Template]) -> Problem | None:
    if not isinstance(template, dict) or not isinstance(template.get("name"), str):
        return 100, "The parameter template['name'] is required.", "template.name"
    language = template.get("language")
    code = language.get("code") if isinstance(language, dict) else None
    if not isinstance(code, str) or not LANGUAGE.match(code):
        return 100, "The parameter template['language']['code'] is required.", "language"
    approved = templates.get((template["name"], code))
    if approved is None:
        return (
            132001,
            "Template name does not exist in the translation",
            (f"template name ({template['name']}) does not exist in {code}"),
        )
    components = template.get("components", [])
    if not isinstance(components, list):
        return 100, "Invalid parameter", "template.components: an array"
    found: dict[str, Any] = {}
    buttons: dict[int, Any] = {}
    for component in components:
        if not isinstance(component, dict) or component.get("type") not in (
            "header",
            "body",
            "button",
        ):
            return 100, "Invalid parameter", "a component's type: header, body or button"
        parameters = component.get("parameters")
        if not isinstance(parameters, list) or not all(isinstance(p, dict) for p in parameters):
            return 131008, "Required parameter is missing", "component parameters: an array"
        if component["type"] == "button":
            index = component.get("index")
            if component.get("sub_type") not in ("url", "quick_reply") or not str(index).isdigit():
                return 131009, "Parameter value is not valid", "button: sub_type and index"
            buttons[int(index)] = (component["sub_type"], parameters)
        else:
            found[component["type"]] = parameters
    return (
        _header_problem(approved, found.get("header"))
        or _body_problem(approved, found.get("body", []))
        or _buttons_problem(approved, buttons)
    )


def _mismatch(details: str) -> Problem:
    return 132000, "Number of parameters does not match the expected number of params", details


def _header_problem(approved: Template, parameters: Any) -> Problem | None:
    if approved.header is None:
        return None if parameters is None else _mismatch("header: expected 0")
    if approved.header == "text" and parameters is None:
        return None  # a header without a variable
    if not parameters or len(parameters) != 1:
        return _mismatch("header: expected 1")
    [parameter] = parameters
    if parameter.get("type") != approved.header:
        return (
            132012,
            "Parameter format does not match format in the created template",
            (f"header: expected {approved.header}"),
        )
    if approved.header == "text":
        return _text_problem(parameter)
    media = parameter.get(approved.header)
    link = media.get("link") if isinstance(media, dict) else None
    if not isinstance(link, str) or not link.startswith("https://"):
        return 131009, "Parameter value is not valid", f"header: {approved.header}.link"
    return None


def _body_problem(approved: Template, parameters: list[Any]) -> Problem | None:
    for parameter in parameters:
        problem = _text_problem(parameter)
        if problem is not None:
            return problem
    if isinstance(approved.body, int):
        if len(parameters) != approved.body or any("parameter_name" in p for p in parameters):
            return _mismatch(f"body: expected {approved.body}")
        return None
    names = tuple(p.get("parameter_name") for p in parameters)
    if sorted(n for n in names if isinstance(n, str)) != sorted(approved.body) or len(names) != len(
        approved.body
    ):
        return _mismatch(f"body: expected named {list(approved.body)}")
    return None


def _buttons_problem(approved: Template, buttons: dict[int, Any]) -> Problem | None:
    for index in approved.url_buttons:
        given = buttons.get(index)
        if given is None or given[0] != "url" or len(given[1]) != 1:
            return _mismatch(f"button {index}: expected a url parameter")
        problem = _text_problem(given[1][0])
        if problem is not None:
            return problem
    extra = set(buttons) - set(approved.url_buttons)
    if extra:
        return _mismatch(f"buttons {sorted(extra)}: no dynamic URL there")
    return None


def _text_problem(parameter: dict[str, Any]) -> Problem | None:
    if parameter.get("type") != "text":
        return 132012, "Parameter format does not match format in the created template", "text"
    text = parameter.get("text")
    if not isinstance(text, str) or not text.strip():
        return 131008, "Required parameter is missing", "a text parameter is empty"
    return None
