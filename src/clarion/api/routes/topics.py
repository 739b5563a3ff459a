"""``/v1/topics``: create and delete topics, subscribe and unsubscribe recipients in bulk, a
topic's size, its subscribers. A topic exists from its creation (``PUT /v1/topics/{name}``
or its first subscription) until it is deleted, with or without subscribers; one that does
not exist (or another tenant's) is a 404."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field
from starlette.responses import Response

from clarion.api.auth import Manager
from clarion.api.errors import error_body
from clarion.api.listing import NameCursor, Size, by, page
from clarion.api.outputs import TopicChange, TopicOut, TopicSubscriberPage
from clarion.api.responses import JSONResponse, deleted, or_404
from clarion.api.schemas import Body, NamePath, RecipientId
from clarion.errors import NotFound, ValidationFailed
from clarion.store import topics as store

router = APIRouter(prefix="/v1/topics", tags=["topics"])


class MembersIn(Body):
    # The bound is checked in the handler, so that too many ids is `batch_too_large`.
    recipient_ids: list[RecipientId] = Field(min_length=1)


def _checked(body: MembersIn) -> list[str]:
    if len(body.recipient_ids) > store.MAX_PER_CALL:
        raise ValidationFailed(
            f"a call takes at most {store.MAX_PER_CALL:,} recipient ids", code="batch_too_large"
        )
    return body.recipient_ids


def _unknown(body: MembersIn, unknown: list[str]) -> list[dict[str, Any]]:
    missing = set(unknown)
    return [
        {
            "index": index,
            "recipient_id": rid,
            **error_body("unknown_recipient", f"no recipient with id {rid!r}"),
        }
        for index, rid in enumerate(body.recipient_ids)
        if rid in missing
    ]


@router.put("/{name}/subscribers", response_model=TopicChange)
async def subscribe(caller: Manager, name: NamePath, body: MembersIn) -> JSONResponse:
    """Subscribe up to 10,000 recipients to a topic."""
    change = await store.subscribe(
        caller.engine, caller.tenant_id, name, _checked(body), caller.key_id
    )
    return JSONResponse(
        {
            "name": name,
            "subscribers": change.subscribers,
            "added": change.changed,
            "errors": _unknown(body, change.unknown),
        }
    )


@router.delete("/{name}/subscribers", response_model=TopicChange)
async def unsubscribe(caller: Manager, name: NamePath, body: MembersIn) -> JSONResponse:
    """Unsubscribe up to 10,000 recipients."""
    ids = _checked(body)
    if await store.size(caller.engine, caller.tenant_id, name) is None:
        raise NotFound(f"no topic {name!r}")
    change = await store.unsubscribe(caller.engine, caller.tenant_id, name, ids)
    return JSONResponse(
        {"name": name, "subscribers": change.subscribers, "removed": change.changed}
    )


@router.get("/{name}", response_model=TopicOut)
async def get(caller: Manager, name: NamePath) -> JSONResponse:
    """A topic and its number of subscribers."""
    count = await store.size(caller.engine, caller.tenant_id, name)
    if count is None:
        raise NotFound(f"no topic {name!r}")
    return JSONResponse({"name": name, "subscribers": count})


@router.put(
    "/{name}",
    response_model=TopicOut,
    responses={201: {"model": TopicOut, "description": "Created"}},
)
async def create(caller: Manager, name: NamePath) -> JSONResponse:
    """Create a topic (a topic that exists is left as it is)."""
    created, count = await store.create(caller.engine, caller.tenant_id, name, caller.key_id)
    return JSONResponse({"name": name, "subscribers": count}, status_code=201 if created else 200)


@router.delete("/{name}", status_code=204, response_class=Response)
async def delete(caller: Manager, name: NamePath) -> Response:
    """Delete a topic and its memberships."""
    removed = await store.delete_topic(caller.engine, caller.tenant_id, name, caller.key_id)
    return deleted(removed is not None, "topic", name)


@router.get("/{name}/subscribers", response_model=TopicSubscriberPage)
async def subscribers(
    caller: Manager, name: NamePath, limit: Size = 100, cursor: NameCursor = None
) -> JSONResponse:
    """A topic's subscribers, in recipient id order."""
    rows = await store.page(caller.engine, caller.tenant_id, name, cursor, limit + 1)
    return JSONResponse(page(or_404(rows, f"no topic {name!r}"), limit, by("recipient_id")))
