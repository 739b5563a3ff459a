"""The clients: :class:`Clarion` (blocking) and :class:`AsyncClarion` (asyncio), over httpx.

Both run the operations described in :mod:`clarion_client._calls`; each resource method
has the signature of the description it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

import httpx
from pydantic import BaseModel

from clarion_client import _calls as calls
from clarion_client import models as m
from clarion_client._retry import RetryPolicy
from clarion_client.errors import APIConnectionError, error_from_response

__all__ = ["AsyncClarion", "AsyncPaginator", "Clarion", "Paginator"]

VERSION = "0.1.0"
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T", bound=BaseModel)
_REPEATABLE = frozenset({"GET", "HEAD", "PUT", "DELETE"})


class _Base:
    def __init__(
        self,
        api_key: str,
        base_url: str,
        timeout: float,
        retry: RetryPolicy | None,
        max_retries: int | None,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is required")
        self._api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        policy = retry or RetryPolicy()
        if max_retries is not None:
            policy = RetryPolicy(max_retries, policy.backoff, policy.max_backoff, policy.max_wait)
        self.retry = policy

    def _request(self, call: calls.Call[Any]) -> httpx.Request:
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Accept": "application/json",
            "User-Agent": f"clarion-client-python/{VERSION}",
        }
        if call.idempotency_key is not None:
            headers["Idempotency-Key"] = call.idempotency_key
        # A body as it is (with its media type), or JSON.
        body: dict[str, Any] = {"json": call.json}
        if call.content is not None:
            headers["Content-Type"] = call.content_type or "application/octet-stream"
            body = {"content": call.content}
        return httpx.Request(
            call.method, self.base_url + call.path, params=call.params, headers=headers, **body
        )

    @staticmethod
    def _repeatable(call: calls.Call[Any]) -> bool:
        return call.method in _REPEATABLE or call.idempotency_key is not None

    @staticmethod
    def _result(call: calls.Call[R], response: httpx.Response) -> R:
        if response.status_code >= 400:
            raise error_from_response(response)
        body = response.json() if response.content else None
        return call.parse(body)


# Sync -------------------------------------------------------------------------------------


class Paginator(Generic[T]):
    """Every item of a list, page after page (one request per page, as needed)."""

    def __init__(self, client: Clarion, call: calls.ListCall[T]) -> None:
        self._client = client
        self._call = call

    def pages(self) -> Iterator[m.Page[T]]:
        cursor: str | None = None
        while True:
            page = self._client.run(self._call.page(cursor))
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def __iter__(self) -> Iterator[T]:
        for page in self.pages():
            yield from page.data

    def first_page(self, cursor: str | None = None) -> m.Page[T]:
        return self._client.run(self._call.page(cursor))


class _SyncResource:
    def __init__(self, client: Clarion) -> None:
        self._client = client


def _sync(build: Callable[P, calls.Call[R]]) -> Callable[Concatenate[_SyncResource, P], R]:
    def method(self: _SyncResource, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._client.run(build(*args, **kwargs))

    method.__doc__ = build.__doc__
    return method


def _sync_list(
    build: Callable[P, calls.ListCall[T]],
) -> Callable[Concatenate[_SyncResource, P], Paginator[T]]:
    def method(self: _SyncResource, /, *args: P.args, **kwargs: P.kwargs) -> Paginator[T]:
        return Paginator(self._client, build(*args, **kwargs))

    method.__doc__ = build.__doc__
    return method


class Notifications(_SyncResource):
    send = _sync(calls.send_notification)
    send_batch = _sync(calls.send_batch)
    get = _sync(calls.get_notification)
    runs = _sync_list(calls.list_runs)
    list = _sync_list(calls.list_notifications)


class Deliveries(_SyncResource):
    list = _sync_list(calls.list_deliveries)
    get = _sync(calls.get_delivery)


class Recipients(_SyncResource):
    put = _sync(calls.put_recipient)
    get = _sync(calls.get_recipient)
    delete = _sync(calls.delete_recipient)
    get_preferences = _sync(calls.get_preferences)
    put_preferences = _sync(calls.put_preferences)
    token = _sync(calls.recipient_token)


class Templates(_SyncResource):
    put = _sync(calls.put_template)
    get = _sync(calls.get_template)
    list = _sync_list(calls.list_templates)
    rollback = _sync(calls.rollback_template)
    preview = _sync(calls.preview_template)
    preview_draft = _sync(calls.preview_draft)


class Layouts(_SyncResource):
    put = _sync(calls.put_layout)
    get = _sync(calls.get_layout)
    list = _sync_list(calls.list_layouts)
    rollback = _sync(calls.rollback_layout)
    delete = _sync(calls.delete_layout)


class BrandResource(_SyncResource):
    get = _sync(calls.get_brand)
    put = _sync(calls.put_brand)
    delete = _sync(calls.delete_brand)


class Workflows(_SyncResource):
    put = _sync(calls.put_workflow)
    get = _sync(calls.get_workflow)
    list = _sync_list(calls.list_workflows)
    rollback = _sync(calls.rollback_workflow)
    delete = _sync(calls.delete_workflow)
    cancel = _sync(calls.cancel_runs)


class Categories(_SyncResource):
    put = _sync(calls.put_category)
    get = _sync(calls.get_category)
    list = _sync_list(calls.list_categories)


class Providers(_SyncResource):
    put = _sync(calls.put_provider)
    get = _sync(calls.get_provider)
    list = _sync_list(calls.list_providers)
    delete = _sync(calls.delete_provider)
    test = _sync(calls.test_provider)


class Webhooks(_SyncResource):
    put = _sync(calls.put_webhook)
    get = _sync(calls.get_webhook)
    list = _sync_list(calls.list_webhooks)
    delete = _sync(calls.delete_webhook)


class DeadLetters(_SyncResource):
    list = _sync_list(calls.list_dead_letters)
    replay = _sync(calls.replay_dead_letter)
    replay_matching = _sync(calls.replay_dead_letters)


class Sandbox(_SyncResource):
    messages = _sync_list(calls.list_sandbox_messages)


class Suppressions(_SyncResource):
    list = _sync_list(calls.list_suppressions)
    get = _sync(calls.get_suppression)
    add = _sync(calls.add_suppression)
    delete = _sync(calls.delete_suppression)
    hand_in_dsn = _sync(calls.hand_in_dsn)


class Audit(_SyncResource):
    list = _sync_list(calls.list_audit)


class Keys(_SyncResource):
    list = _sync_list(calls.list_keys)
    create = _sync(calls.create_key)
    revoke = _sync(calls.revoke_key)


class Schedules(_SyncResource):
    put = _sync(calls.put_schedule)
    get = _sync(calls.get_schedule)
    list = _sync_list(calls.list_schedules)
    delete = _sync(calls.delete_schedule)
    runs = _sync_list(calls.list_schedule_runs)


class Topics(_SyncResource):
    get = _sync(calls.get_topic)
    create = _sync(calls.create_topic)
    delete = _sync(calls.delete_topic)
    subscribers = _sync_list(calls.list_topic_subscribers)
    subscribe = _sync(calls.subscribe)
    unsubscribe = _sync(calls.unsubscribe)


class Stats(_SyncResource):
    get = _sync(calls.get_stats)


class Clarion(_Base):
    """A blocking client. ``Clarion(api_key=..., base_url=...)``; close it (or use it as a
    context manager) to release its connections."""

    def __init__(
        self,
        api_key: str,
        base_url: str = "http://localhost:8080",
        *,
        timeout: float = 30.0,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(api_key, base_url, timeout, retry, max_retries)
        self._http = http_client or httpx.Client(timeout=timeout)
        self.notifications = Notifications(self)
        self.deliveries = Deliveries(self)
        self.recipients = Recipients(self)
        self.templates = Templates(self)
        self.layouts = Layouts(self)
        self.brand = BrandResource(self)
        self.workflows = Workflows(self)
        self.categories = Categories(self)
        self.providers = Providers(self)
        self.webhooks = Webhooks(self)
        self.dead_letters = DeadLetters(self)
        self.sandbox = Sandbox(self)
        self.suppressions = Suppressions(self)
        self.audit = Audit(self)
        self.keys = Keys(self)
        self.schedules = Schedules(self)
        self.topics = Topics(self)
        self.stats = Stats(self)

    def run(self, call: calls.Call[R]) -> R:
        """Send one request, retrying as the policy says, and read its answer."""
        attempt = 0
        while True:
            try:
                response = self._http.send(self._request(call))
            except httpx.TransportError as exc:
                delay = self.retry.after_failure(attempt, self._repeatable(call))
                if delay is None:
                    raise APIConnectionError(f"{call.method} {call.path}: {exc!r}") from exc
            else:
                delay = self.retry.after_response(response, attempt)
                if delay is None:
                    return self._result(call, response)
                response.close()
            time.sleep(delay)
            attempt += 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Clarion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Async ------------------------------------------------------------------------------------


class AsyncPaginator(Generic[T]):
    """Every item of a list, page after page: ``async for item in ...``."""

    def __init__(self, client: AsyncClarion, call: calls.ListCall[T]) -> None:
        self._client = client
        self._call = call

    async def pages(self) -> AsyncIterator[m.Page[T]]:
        cursor: str | None = None
        while True:
            page = await self._client.run(self._call.page(cursor))
            yield page
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def __aiter__(self) -> AsyncIterator[T]:
        async for page in self.pages():
            for item in page.data:
                yield item

    async def first_page(self, cursor: str | None = None) -> m.Page[T]:
        return await self._client.run(self._call.page(cursor))


class _AsyncResource:
    def __init__(self, client: AsyncClarion) -> None:
        self._client = client


def _async(
    build: Callable[P, calls.Call[R]],
) -> Callable[Concatenate[_AsyncResource, P], Coroutine[Any, Any, R]]:
    async def method(self: _AsyncResource, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await self._client.run(build(*args, **kwargs))

    method.__doc__ = build.__doc__
    return method


def _async_list(
    build: Callable[P, calls.ListCall[T]],
) -> Callable[Concatenate[_AsyncResource, P], AsyncPaginator[T]]:
    def method(self: _AsyncResource, /, *args: P.args, **kwargs: P.kwargs) -> AsyncPaginator[T]:
        return AsyncPaginator(self._client, build(*args, **kwargs))

    method.__doc__ = build.__doc__
    return method


class AsyncNotifications(_AsyncResource):
    send = _async(calls.send_notification)
    send_batch = _async(calls.send_batch)
    get = _async(calls.get_notification)
    runs = _async_list(calls.list_runs)
    list = _async_list(calls.list_notifications)


class AsyncDeliveries(_AsyncResource):
    list = _async_list(calls.list_deliveries)
    get = _async(calls.get_delivery)


class AsyncRecipients(_AsyncResource):
    put = _async(calls.put_recipient)
    get = _async(calls.get_recipient)
    delete = _async(calls.delete_recipient)
    get_preferences = _async(calls.get_preferences)
    put_preferences = _async(calls.put_preferences)
    token = _async(calls.recipient_token)


class AsyncTemplates(_AsyncResource):
    put = _async(calls.put_template)
    get = _async(calls.get_template)
    list = _async_list(calls.list_templates)
    rollback = _async(calls.rollback_template)
    preview = _async(calls.preview_template)
    preview_draft = _async(calls.preview_draft)


class AsyncLayouts(_AsyncResource):
    put = _async(calls.put_layout)
    get = _async(calls.get_layout)
    list = _async_list(calls.list_layouts)
    rollback = _async(calls.rollback_layout)
    delete = _async(calls.delete_layout)


class AsyncBrandResource(_AsyncResource):
    get = _async(calls.get_brand)
    put = _async(calls.put_brand)
    delete = _async(calls.delete_brand)


class AsyncWorkflows(_AsyncResource):
    put = _async(calls.put_workflow)
    get = _async(calls.get_workflow)
    list = _async_list(calls.list_workflows)
    rollback = _async(calls.rollback_workflow)
    delete = _async(calls.delete_workflow)
    cancel = _async(calls.cancel_runs)


class AsyncCategories(_AsyncResource):
    put = _async(calls.put_category)
    get = _async(calls.get_category)
    list = _async_list(calls.list_categories)


class AsyncProviders(_AsyncResource):
    put = _async(calls.put_provider)
    get = _async(calls.get_provider)
    list = _async_list(calls.list_providers)
    delete = _async(calls.delete_provider)
    test = _async(calls.test_provider)


class AsyncWebhooks(_AsyncResource):
    put = _async(calls.put_webhook)
    get = _async(calls.get_webhook)
    list = _async_list(calls.list_webhooks)
    delete = _async(calls.delete_webhook)


class AsyncDeadLetters(_AsyncResource):
    list = _async_list(calls.list_dead_letters)
    replay = _async(calls.replay_dead_letter)
    replay_matching = _async(calls.replay_dead_letters)


class AsyncSandbox(_AsyncResource):
    messages = _async_list(calls.list_sandbox_messages)


class AsyncSuppressions(_AsyncResource):
    list = _async_list(calls.list_suppressions)
    get = _async(calls.get_suppression)
    add = _async(calls.add_suppression)
    delete = _async(calls.delete_suppression)
    hand_in_dsn = _async(calls.hand_in_dsn)


class AsyncAudit(_AsyncResource):
    list = _async_list(calls.list_audit)


class AsyncKeys(_AsyncResource):
    list = _async_list(calls.list_keys)
    create = _async(calls.create_key)
    revoke = _async(calls.revoke_key)


class AsyncSchedules(_AsyncResource):
    put = _async(calls.put_schedule)
    get = _async(calls.get_schedule)
    list = _async_list(calls.list_schedules)
    delete = _async(calls.delete_schedule)
    runs = _async_list(calls.list_schedule_runs)


class AsyncTopics(_AsyncResource):
    get = _async(calls.get_topic)
    create = _async(calls.create_topic)
    delete = _async(calls.delete_topic)
    subscribers = _async_list(calls.list_topic_subscribers)
    subscribe = _async(calls.subscribe)
    unsubscribe = _async(calls.unsubscribe)


class AsyncStats(_AsyncResource):
    get = _async(calls.get_stats)


class AsyncClarion(_Base):
    """The asyncio client: the same resources as :class:`Clarion`, awaited."""

    def __init__(
        self,
        api_key: str,
        base_url: str = "http://localhost:8080",
        *,
        timeout: float = 30.0,
        max_retries: int | None = None,
        retry: RetryPolicy | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(api_key, base_url, timeout, retry, max_retries)
        self._http = http_client or httpx.AsyncClient(timeout=timeout)
        self.notifications = AsyncNotifications(self)
        self.deliveries = AsyncDeliveries(self)
        self.recipients = AsyncRecipients(self)
        self.templates = AsyncTemplates(self)
        self.layouts = AsyncLayouts(self)
        self.brand = AsyncBrandResource(self)
        self.workflows = AsyncWorkflows(self)
        self.categories = AsyncCategories(self)
        self.providers = AsyncProviders(self)
        self.webhooks = AsyncWebhooks(self)
        self.dead_letters = AsyncDeadLetters(self)
        self.sandbox = AsyncSandbox(self)
        self.suppressions = AsyncSuppressions(self)
        self.audit = AsyncAudit(self)
        self.keys = AsyncKeys(self)
        self.schedules = AsyncSchedules(self)
        self.topics = AsyncTopics(self)
        self.stats = AsyncStats(self)

    async def run(self, call: calls.Call[R]) -> R:
        """Send one request, retrying as the policy says, and read its answer."""
        attempt = 0
        while True:
            try:
                response = await self._http.send(self._request(call))
            except httpx.TransportError as exc:
                delay = self.retry.after_failure(attempt, self._repeatable(call))
                if delay is None:
                    raise APIConnectionError(f"{call.method} {call.path}: {exc!r}") from exc
            else:
                delay = self.retry.after_response(response, attempt)
                if delay is None:
                    return self._result(call, response)
                await response.aclose()
            await asyncio.sleep(delay)
            attempt += 1

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClarion:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
