"""YAML as ``clarion apply`` reads it: PyYAML's safe loader (on libyaml where PyYAML has
it), so plain data only, with two changes: a timestamp stays the text it was written as
(JSON has no dates) and a mapping that gives a key twice is refused, instead of keeping the
last. Before it loads, one pass over the text's events bounds what loading builds: one
document, collections nested at most ``max_depth`` deep, at most ``max_values`` values with
each alias counted as what it repeats, so that an alias bomb is refused before it is built."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol

import yaml


class Unreadable(Exception):
    """The text cannot be read as one bounded YAML document; ``line`` and ``column`` (from
    1) say where, when known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


class _Mark(Protocol):
    """Where a YAML event or error is (PyYAML's ``Mark``; from 0)."""

    line: int
    column: int


def _at(message: str, mark: _Mark | None) -> Unreadable:
    if mark is None:
        return Unreadable(message)
    return Unreadable(message, mark.line + 1, mark.column + 1)


_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"


class _Strict(yaml.constructor.SafeConstructor):
    """PyYAML's safe constructor, but a mapping that gives a key twice is refused (instead
    of keeping the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[str] = set()
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE:
                if key.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"the key {key.value!r} is given twice", key.start_mark
                    )
                seen.add(key.value)
        return super().construct_mapping(node, deep)


class _PureLoader(_Strict, yaml.SafeLoader):
    """The safe loader in Python, strict."""


_LOADER: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = _PureLoader
if yaml.__with_libyaml__:  # libyaml's parser: the same events, some thirty times faster

    class _FastLoader(_Strict, yaml.CSafeLoader):
        """The safe loader on libyaml, strict."""

    _LOADER = _FastLoader


def _as_written(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return loader.construct_scalar(node)


# A timestamp stays the text it was written as: JSON has no dates.
for _loader in (_PureLoader, _LOADER):
    _loader.yaml_implicit_resolvers = {
        first: [(tag, pattern) for tag, pattern in resolvers if tag != _TIMESTAMP]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _loader.add_constructor(_TIMESTAMP, _as_written)


def load(text: str, max_depth: int, max_values: int) -> Any:
    """The one document of ``text``, as plain data; :class:`Unreadable` if it is not one,
    or is larger than the bounds."""
    try:
        _bound(text, _Sizes(max_depth, max_values))
        return yaml.load(text, Loader=_LOADER)  # a safe loader: plain data only
    except yaml.MarkedYAMLError as exc:
        raise _at(exc.problem or str(exc), exc.problem_mark) from exc
    except yaml.YAMLError as exc:
        raise Unreadable(str(exc)) from exc


def _bound(text: str, sizes: _Sizes) -> None:
    """Refuse what loading ``text`` would make too large, from its events alone: a second
    document, and what ``sizes`` refuses."""
    documents = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise _at("a second document: a file holds one object", event.start_mark)
        sizes.take(event)


class _Sizes:
    """The values in each collection still open, an alias counted as what it repeats:
    collections nested more than ``max_depth`` deep, more than ``max_values`` values, and an
    alias of a node it is inside (or of no node) are refused."""

    def __init__(self, max_depth: int, max_values: int) -> None:
        self._max_depth = max_depth
        self._max_values = max_values
        self._open: list[tuple[list[int], str | None]] = []
        self._anchors: dict[str, int] = {}

    def take(self, event: yaml.Event) -> None:
        mark = event.start_mark
        if isinstance(event, yaml.CollectionStartEvent):
            if len(self._open) >= self._max_depth:
                raise _at(f"nested more than {self._max_depth} levels deep", mark)
            self._open.append(([1], event.anchor))
        elif isinstance(event, yaml.CollectionEndEvent):
            count, anchor = self._open.pop()
            self._add(count[0], anchor, mark)
        elif isinstance(event, yaml.ScalarEvent):
            self._add(1, event.anchor, mark)
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in self._anchors:
                raise _at(f"the alias *{event.anchor} names no anchor finished before it", mark)
            self._add(self._anchors[event.anchor], None, mark)

    def _add(self, count: int, anchor: str | None, mark: _Mark | None) -> None:
        if anchor is not None:
            self._anchors[anchor] = count
        if self._open:
            total = self._open[-1][0]
            total[0] += count
            if total[0] > self._max_values:
                raise _at(f"more than {self._max_values} values once aliases are expanded", mark)
