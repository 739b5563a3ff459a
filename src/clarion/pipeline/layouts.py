"""Tenants' looks (brand, layouts, default layout) for the planner, cached per tenant and
version, and compiled layouts cached by (tenant, name, version): a version never changes.

Every write of a tenant's layouts or brand moves its version (store/layouts.py), the one
its categories are cached by (pipeline/categories.py), which the planner reads with each
batch: a tenant whose version has not moved costs no query; one whose version moved is
read again (two queries, plus one for the layout versions not compiled yet).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping

from clarion.domain.layouts import Choice, CompiledLayout, Look, compile_stored_layout
from clarion.store import layouts as layout_store
from clarion.store.db import AsyncEngine

Key = tuple[str, str, int]
Compiler = Callable[[AsyncEngine, Iterable[Key]], Awaitable[dict[Key, CompiledLayout]]]


class LookCache:
    """Each tenant's look as of its version; at most ``max_layouts`` compiled layouts."""

    def __init__(self, max_layouts: int = 10_000) -> None:
        self._looks: dict[str, tuple[int, Look]] = {}
        self._compiled: OrderedDict[Key, CompiledLayout] = OrderedDict()
        self._max = max_layouts

    async def load(self, engine: AsyncEngine, versions: Mapping[str, int]) -> dict[str, Look]:
        """The look of each of these tenants, given its version as read with the batch
        (read after the version, so never older than it)."""
        found: dict[str, Look] = {}
        missing = []
        for tenant_id, version in versions.items():
            entry = self._looks.get(tenant_id)
            if entry is not None and entry[0] == version:
                found[tenant_id] = entry[1]
            else:
                missing.append(tenant_id)
        if missing:
            loaded = await _looks(engine, missing, self._compile)
            for tenant_id, look in loaded.items():
                self._looks[tenant_id] = (versions[tenant_id], look)
                found[tenant_id] = look
        return found

    async def _compile(self, engine: AsyncEngine, keys: Iterable[Key]) -> dict[Key, CompiledLayout]:
        wanted = set(keys)
        found = {key: self._compiled[key] for key in wanted if key in self._compiled}
        for key in found:
            self._compiled.move_to_end(key)
        missing = wanted - found.keys()
        if missing:
            for key, layout in (await _compiled(engine, missing)).items():
                found[key] = self._compiled[key] = layout
            while len(self._compiled) > self._max:
                self._compiled.popitem(last=False)
        return found


async def _compiled(engine: AsyncEngine, keys: Iterable[Key]) -> dict[Key, CompiledLayout]:
    rows = await layout_store.load_versions(engine, keys)
    return {
        key: compile_stored_layout(row["html"], row["text"], row["locales"] or {})
        for key, row in rows.items()
    }


async def _looks(
    engine: AsyncEngine,
    tenant_ids: list[str],
    compile_: Compiler,
    wanted: Callable[[str, str | None], bool] = lambda name, default: True,
) -> dict[str, Look]:
    """The looks of these tenants, with those of their layouts ``wanted`` (given a layout's
    name and the default's) compiled."""
    stored = await layout_store.looks_for(engine, tenant_ids)
    keys = [
        (t, name, v)
        for t, (_, default, heads) in stored.items()
        for name, v in heads.items()
        if wanted(name, default)
    ]
    compiled = await compile_(engine, keys)
    looks = {}
    for tenant_id, (brand, default, heads) in stored.items():
        layouts = {
            name: compiled[(tenant_id, name, v)]
            for name, v in heads.items()
            if (tenant_id, name, v) in compiled
        }
        looks[tenant_id] = Look(brand, default, layouts)
    return looks


async def look_of(engine: AsyncEngine, tenant_id: str, *choices: Choice) -> Look:
    """A tenant's look, read now, with only the layouts ``choices`` name compiled (a
    preview's: not cached)."""

    def wanted(name: str, default: str | None) -> bool:
        return any(
            name == (c if isinstance(c, str) else default) for c in choices if c is not False
        )

    return (await _looks(engine, [tenant_id], _compiled, wanted))[tenant_id]
