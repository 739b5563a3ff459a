"""Compiled templates, cached by (tenant, name, version): a version never changes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import replace

from clarion.domain.rendering import CompiledVersion, compile_stored
from clarion.store import templates as template_store
from clarion.store.db import AsyncEngine

Key = tuple[str, str, int]


class TemplateCache:
    """The most recently used compiled versions, at most ``max_entries`` of them."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[Key, CompiledVersion] = OrderedDict()
        self._max = max_entries

    async def load(self, engine: AsyncEngine, keys: Iterable[Key]) -> dict[Key, CompiledVersion]:
        """The compiled versions for ``keys``, loading the missing ones in one query."""
        wanted = set(keys)
        found = {key: self._entries[key] for key in wanted if key in self._entries}
        for key in found:
            self._entries.move_to_end(key)
        missing = wanted - found.keys()
        if missing:
            rows = await template_store.load_versions(engine, missing)
            for key, row in rows.items():
                compiled = compile_stored(row["category"], row["channels"], row["locales"])
                compiled = replace(compiled, fallbacks=dict(row.get("fallbacks") or {}))
                found[key] = self._entries[key] = compiled
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return found
