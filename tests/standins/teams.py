"""A local Microsoft Teams: a workflow's webhook trigger and a connector's incoming webhook.

A workflow (``POST /workflows/<id>/triggers/manual/paths/invoke?sig=<sig>``) checks its
``sig`` (``401`` without the right one) and takes ``{"type": "message", "attachments":
[...]}`` whose attachments are Adaptive Cards (``contentType``
``application/vnd.microsoft.card.adaptive``, ``content.type`` ``AdaptiveCard`` with a
``version`` and a ``body`` list); it answers ``202 Accepted`` with an empty body, ``400``
for a message it cannot read, ``404`` for a deleted workflow. A connector (``POST
/webhookb2/<id>``) also takes a ``MessageCard`` (``@type``, ``text`` or ``sections``) and
answers ``200`` with ``1``; a scripted channel failure answers ``200`` with Teams' words
``Webhook message delivery failed with error: Microsoft Teams endpoint returned HTTP
error 429 ...``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from standins.web import WebStandin, json_body

ADAPTIVE = "application/vnd.microsoft.card.adaptive"


def card_problem(attachments: Any) -> str | None:
    if not isinstance(attachments, list) or not attachments:
        return "attachments must be a non-empty array"
    for item in attachments:
        if not isinstance(item, dict) or item.get("contentType") != ADAPTIVE:
            return "an attachment is not an Adaptive Card"
        card = item.get("content")
        if not (
            isinstance(card, dict)
            and card.get("type") == "AdaptiveCard"
            and isinstance(card.get("version"), str)
            and isinstance(card.get("body"), list)
        ):
            return "the card is not an AdaptiveCard with a version and a body"
    return None


@dataclass
class Received:
    via: str  # "workflow" or "connector"
    body: dict[str, Any]


class TeamsStandin(WebStandin):
    def __init__(self) -> None:
        super().__init__()
        self.workflows: dict[str, str] = {}  # id -> sig
        self.connectors: set[str] = set()
        self.received: list[Received] = []

    def workflow(self) -> str:
        made, sig = secrets.token_hex(16), secrets.token_urlsafe(24)
        self.workflows[made] = sig
        path = f"/workflows/{made}/triggers/manual/paths/invoke"
        return f"{self.url}{path}?api-version=2016-06-01&sig={sig}"

    def connector(self) -> str:
        made = secrets.token_hex(16)
        self.connectors.add(made)
        return f"{self.url}/webhookb2/{made}"

    def fail_in_channel(self, status: int = 429) -> None:
        """The connector takes the next message but Teams refuses it behind it (``200``)."""
        words = (
            "Webhook message delivery failed with error: Microsoft Teams endpoint returned "
            f"HTTP error {status} with ContextId tcid=0,server=msgapi-production,cv=abc.0."
        )
        self.script(200, words)

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/workflows/{id}/triggers/manual/paths/invoke", self._workflow)
        app.router.add_post("/webhookb2/{id}", self._connector)

    async def _workflow(self, request: web.Request) -> web.Response:
        sig = self.workflows.get(request.match_info["id"])
        if sig is None:
            return self._error(404, "WorkflowNotFound", "The workflow was not found.")
        if not secrets.compare_digest(request.query.get("sig", ""), sig):
            return self._error(401, "DirectApiInvalidAuthorizationSignature", "Bad signature.")
        body = await json_body(request)
        if not isinstance(body, dict) or body.get("type") != "message":
            return self._error(400, "InvalidRequestContent", "Not a message.")
        problem = card_problem(body.get("attachments"))
        if problem is not None:
            return self._error(400, "InvalidRequestContent", problem)
        scripted = self.scripted()
        if scripted is not None:
            return scripted
        self.received.append(Received("workflow", body))
        return web.Response(status=202)

    async def _connector(self, request: web.Request) -> web.Response:
        if request.match_info["id"] not in self.connectors:
            self.refused.append("410 connector gone")
            return web.Response(status=410, text="Connector configuration not found")
        body = await json_body(request)
        if not isinstance(body, dict):
            return web.Response(
                status=400, text="Bad payload received by generic incoming webhook."
            )
        if body.get("@type") == "MessageCard":
            if not (body.get("text") or body.get("sections")):
                return web.Response(status=400, text="Summary or Text is required.")
        elif card_problem(body.get("attachments")) is not None:
            return web.Response(
                status=400, text="Bad payload received by generic incoming webhook."
            )
        scripted = self.scripted()
        if scripted is not None:
            return scripted
        self.received.append(Received("connector", body))
        return web.Response(text="1")

    def _error(self, status: int, code: str, message: str) -> web.Response:
        self.refused.append(f"{status} {code}")
        return web.json_response({"error": {"code": code, "message": message}}, status=status)
