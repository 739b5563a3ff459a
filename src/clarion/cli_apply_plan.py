"""What ``clarion apply`` changes, and changing it: each object of the folder is compared
with the server's active version, both in their normal form (``cli_apply_kinds``), and only
what differs is stored; with ``--prune``, what the server has and the folder lacks is
deleted, for the kinds the folder has a folder for.

Changes are made in the plan's order: categories, layouts, templates, then workflows (a
template names a category and a layout, a workflow its templates), and deletions after, in
the reverse order. The
first refusal stops the run: what follows it may depend on it."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import httpx
import orjson
import yaml

from clarion.cli_apply_files import Folder
from clarion.cli_apply_kinds import Kind
from clarion.cli_client import Api

Action = Literal["create", "update", "unchanged", "delete", "keep"]
SIGNS: dict[Action, str] = {
    "create": "+",
    "update": "~",
    "unchanged": "=",
    "delete": "-",
    "keep": "!",
}
PAGE = 500
MAX_PAGES = 1000


@dataclass(frozen=True, slots=True)
class Change:
    """What ``apply`` does to one object. ``before`` is the server's active version and
    ``after`` the folder's body, both in normal form; ``body`` is what is sent."""

    kind: Kind
    key: str
    action: Action
    source: str | None = None
    body: dict[str, Any] | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    version: int | None = None

    @property
    def url(self) -> str:
        return f"{self.kind.path}/{quote(self.key, safe='')}"

    @property
    def name(self) -> str:
        return f"{self.kind.noun} {self.key}"


class Refused(Exception):
    """The server answered a request with an error, or with what is not an answer of the
    API; ``lines`` say what it answered."""

    def __init__(self, what: str, response: httpx.Response, said: list[str] | None = None) -> None:
        first, *rest = said or _said(response)
        self.lines = [f"{what}: {first}", *rest]
        super().__init__(self.lines[0])


def _answer(response: httpx.Response, what: str) -> dict[str, Any]:
    """A successful response's JSON object."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = response.text[:200]
        raise Refused(
            what, response, [f"HTTP {response.status_code}, not a Clarion answer: {text}"]
        )
    return body


def _said(response: httpx.Response) -> list[str]:
    """A response's error: its status, code and message, then each detail on a line."""
    try:
        error = response.json()["error"]
        lines = [f"{response.status_code} {error['code']}: {error['message']}"]
        details = error.get("details") or []
    except (ValueError, KeyError, TypeError):
        return [f"HTTP {response.status_code}: {response.text[:500]}"]
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict):
            where = ", ".join(f"{k} {v}" for k, v in detail.items() if k != "message")
            lines.append(f"  - {where}: {detail.get('message', '')}" if where else f"  - {detail}")
    return lines


def plan(api: Api, folder: Folder, prune: bool) -> list[Change]:
    """The change each object needs, in the order they are made; a :class:`Refused` when the
    server does not answer a read."""
    changes: list[Change] = []
    for desired in folder.objects:
        kind, key = desired.kind, desired.key
        after = kind.normal(desired.body)
        change = Change(kind, key, "create", desired.source, desired.body, after=after)
        current = _current(api, change)
        if current is not None:
            before = kind.normal(current)
            same = _canonical(before) == _canonical(after)
            action: Action = "unchanged" if same else "update"
            version = current.get("version")
            change = Change(kind, key, action, desired.source, desired.body, before, after, version)
        changes.append(change)
    if prune:
        given = {(d.kind.noun, d.key) for d in folder.objects}
        for kind in reversed(folder.managed):
            for key in _listed(api, kind):
                if (kind.noun, key) not in given:
                    changes.append(Change(kind, key, "delete" if kind.deletable else "keep"))
    return changes


def _current(api: Api, change: Change) -> dict[str, Any] | None:
    response = api.request("GET", change.url)
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise Refused(f"reading {change.name}", response)
    return _answer(response, f"reading {change.name}")


def _listed(api: Api, kind: Kind) -> Iterator[str]:
    """The keys of the server's objects of ``kind``, built-in categories left out (they
    always exist)."""
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        params: dict[str, str | int] = {"limit": PAGE, **({"cursor": cursor} if cursor else {})}
        response = api.request("GET", kind.path, params=params)
        if response.status_code != 200:
            raise Refused(f"listing the {kind.folder}", response)
        page = _answer(response, f"listing the {kind.folder}")
        for item in page.get("data") or []:
            key = item.get(kind.named_by) if isinstance(item, dict) else None
            if isinstance(key, str) and not item.get("built_in"):
                yield key
        cursor = page.get("next_cursor")
        if not cursor:
            return


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def describe(change: Change) -> list[str]:
    """A change as it is shown: a line naming it, then for a creation or an update a
    unified diff of the body (YAML, keys sorted) from the server's version to the file's."""
    head = f"{SIGNS[change.action]} {change.name}"
    if change.action == "keep":
        return [f"{head}: not in the folder; kept (the API cannot delete a {change.kind.noun})"]
    if change.action == "delete":
        return [f"{head}: not in the folder; to delete"]
    head += f"  ({change.source})"
    if change.action == "unchanged":
        return [head]
    if change.action == "create":
        server = f"{change.name}: not on the server"
    elif change.version is None:
        server = f"{change.name} on the server"
    else:
        server = f"{change.name} on the server (version {change.version})"
    diff = difflib.unified_diff(
        _shown(change.before),
        _shown(change.after),
        fromfile=server,
        tofile=str(change.source),
        lineterm="",
    )
    return [head, *(f"    {line}" for line in diff)]


class _Dumper(yaml.SafeDumper):
    """Multi-line text as a block, so that a diff shows the lines of a template that
    changed."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def _shown(body: dict[str, Any] | None) -> list[str]:
    if body is None:
        return []
    text = yaml.dump(body, Dumper=_Dumper, sort_keys=True, allow_unicode=True, width=1_000_000)
    return text.splitlines()


def apply(api: Api, changes: list[Change]) -> Iterator[str]:
    """Make ``changes`` in order, yielding a line for each one made; the first refusal
    raises :class:`Refused`, and nothing after it is tried."""
    for change in changes:
        if change.action in ("create", "update"):
            response = api.request("PUT", change.url, change.kind.sent(change.body or {}))
            what = f"storing {change.name} ({change.source})"
            if response.status_code not in (200, 201):
                raise Refused(what, response)
            version = _answer(response, what).get("version")
            done = "created" if change.action == "create" else "updated"
            yield f"{change.name}: {done}" + (f", version {version}" if version else "")
        elif change.action == "delete":
            response = api.request("DELETE", change.url)
            if response.status_code not in (204, 404):  # 404: gone already
                raise Refused(f"deleting {change.name}", response)
            yield f"{change.name}: deleted"
