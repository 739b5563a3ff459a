"""Rows a tenant names itself answer one contract, providers and webhooks alike: listed by
name a page at a time, read and deleted by name, and invisible to another tenant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from harness import Harness
from test_providers_api import body as provider_body

# Each kind: its path, and a valid body for a row of a given name.
KINDS: dict[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    "providers": ("/v1/providers", lambda name: provider_body("sandbox")),
    "webhooks": (
        "/v1/webhooks",
        lambda name: {"url": f"https://example.com/{name}", "events": ["*"]},
    ),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> tuple[str, Callable[[str], dict[str, Any]]]:
    return KINDS[request.param]


async def _put(h: Harness, path: str, name: str, body: dict[str, Any], key: str = "") -> None:
    headers = {"Authorization": f"Bearer {key}"} if key else h.auth
    response = await h.client.put(f"{path}/{name}", json=body, headers=headers)
    assert response.status_code == 200, response.text


async def _names(h: Harness, url: str, headers: dict[str, str] | None = None) -> Any:
    page = (await h.client.get(url, headers=headers or h.auth)).json()
    return [row["name"] for row in page["data"]], page["next_cursor"]


async def test_the_list_is_paged_by_name_and_a_deleted_row_is_gone(
    lite: Harness, kind: tuple[str, Callable[[str], dict[str, Any]]]
) -> None:
    path, body = kind
    for name in ("c-one", "a-one", "b-one"):
        await _put(lite, path, name, body(name))
    assert await _names(lite, f"{path}?limit=2") == (["a-one", "b-one"], "b-one")
    assert await _names(lite, f"{path}?limit=2&cursor=b-one") == (["c-one"], None)
    for bad in ("limit=0", "limit=501", "limit=x"):
        response = await lite.client.get(f"{path}?{bad}", headers=lite.auth)
        assert response.status_code == 422, bad

    assert (await lite.client.delete(f"{path}/b-one", headers=lite.auth)).status_code == 204
    assert (await lite.client.get(f"{path}/b-one", headers=lite.auth)).status_code == 404
    assert (await lite.client.delete(f"{path}/b-one", headers=lite.auth)).status_code == 404
    assert await _names(lite, path) == (["a-one", "c-one"], None)


async def test_another_tenants_row_is_a_404(
    lite: Harness, kind: tuple[str, Callable[[str], dict[str, Any]]]
) -> None:
    path, body = kind
    await _put(lite, path, "main", body("main"))
    key = await lite.new_tenant("other")
    other = {"Authorization": f"Bearer {key}"}
    response = await lite.client.get(f"{path}/main", headers=other)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert (await lite.client.delete(f"{path}/main", headers=other)).status_code == 404
    listed = (await lite.client.get(path, headers=other)).json()
    assert listed == {"data": [], "next_cursor": None}
    assert (await lite.client.get(f"{path}/main", headers=lite.auth)).status_code == 200
