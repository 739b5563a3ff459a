"""What ``clarion apply DIR`` reads: one file per object, ``DIR/<folder>/<key>.yaml`` (or
``.yml``, ``.json``), whose content is the body ``PUT /v1/<folder>/<key>`` takes; the
folders are ``categories``, ``templates`` and ``workflows``.

Every file is read and checked before anything is sent, and every fault is reported with
its file and, where it has one, its line and column or the field. YAML is read by PyYAML's
safe loader (on libyaml where PyYAML has it; plain data only; a timestamp stays the text it
was written as, a key given twice is refused) after one pass over its events that bounds
what loading it builds: one
document, nested at most :data:`MAX_DEPTH` levels, at most :data:`MAX_VALUES` values once
its aliases are expanded, so that an alias bomb is refused before it is built."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson
import yaml

from clarion.cli_apply_kinds import KINDS, Kind

MAX_FILE_BYTES = 1024 * 1024
MAX_FILES = 10_000
# The API's own limits (api/inputs.py, api/limits.py): a body past them would be refused.
MAX_DEPTH = 32
MAX_BODY = 512 * 1024
MAX_VALUES = 100_000
SUFFIXES = (".yaml", ".yml", ".json")
_KEY = re.compile(r"^[A-Za-z0-9_.:-]+$")
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True, slots=True)
class Desired:
    """An object as the folder gives it: ``body`` is what its file holds."""

    kind: Kind
    key: str
    body: dict[str, Any]
    source: str


@dataclass(frozen=True, slots=True)
class Folder:
    """A folder's objects, kind by kind in :data:`KINDS`' order and by key within a kind,
    and the kinds it has a folder for (those ``--prune`` manages)."""

    objects: list[Desired]
    managed: tuple[Kind, ...]


class FolderError(Exception):
    """The folder cannot be applied; ``problems`` holds every fault found, each naming its
    file."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems


class _Fault(Exception):
    """A file's fault, at a line and column (from 1) where it has one."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = "" if line is None else f":{line}:{column}"


class _Mark(Protocol):
    """Where a YAML event or error is (PyYAML's ``Mark``; from 0)."""

    line: int
    column: int


def _at(message: str, mark: _Mark | None) -> _Fault:
    return _Fault(message) if mark is None else _Fault(message, mark.line + 1, mark.column + 1)


def read_folder(root: Path) -> Folder:
    """Every object of ``root``; :class:`FolderError` with every fault if any file is not
    one (nothing is sent then)."""
    if not root.is_dir():
        raise FolderError([f"{root}: not a folder"])
    problems = _stray_entries(root)
    objects: list[Desired] = []
    managed: list[Kind] = []
    files = 0
    for kind in KINDS:
        folder = root / kind.folder
        if not folder.is_dir():
            continue
        managed.append(kind)
        sources: dict[str, str] = {}
        found: list[Desired] = []
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            files += 1
            if files > MAX_FILES:
                raise FolderError([*problems, f"{root}: more than {MAX_FILES} files"])
            source = f"{kind.folder}/{path.name}"
            try:
                key, body = _object(kind, path)
            except _Fault as fault:
                problems.append(f"{source}{fault.where}: {fault.message}")
                continue
            except OSError as exc:
                problems.append(f"{source}: cannot be read ({exc.strerror or exc})")
                continue
            if key in sources:
                problems.append(f"{source}: {kind.noun} {key!r} is also given by {sources[key]}")
                continue
            sources[key] = source
            found.append(Desired(kind, key, body, source))
        objects.extend(sorted(found, key=lambda desired: desired.key))
    if problems:
        raise FolderError(problems)
    return Folder(objects, tuple(managed))


def _stray_entries(root: Path) -> list[str]:
    """Top-level entries that look like objects but are not where ``apply`` reads them
    (other files, such as a README, are left alone)."""
    folders = [kind.folder for kind in KINDS]
    problems = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and entry.name not in folders:
            problems.append(f"{entry.name}/: not a kind of object (folders: {', '.join(folders)})")
        elif not entry.is_dir() and entry.suffix.lower() in SUFFIXES:
            problems.append(
                f"{entry.name}: an object's file goes in {', '.join(folders)}, named after its key"
            )
    return problems


def _object(kind: Kind, path: Path) -> tuple[str, dict[str, Any]]:
    suffix = path.suffix.lower()
    if path.is_dir():
        raise _Fault("a folder: each object is one file")
    if suffix not in SUFFIXES:
        raise _Fault(f"not an object's file (they end in {', '.join(SUFFIXES)})")
    key = path.name[: -len(suffix)]
    if not _KEY.match(key) or len(key) > kind.max_key:
        raise _Fault(
            f"{key!r} is not a {kind.noun}'s key: 1 to {kind.max_key} of A-Z a-z 0-9 _ . : -"
        )
    value = (_json if suffix == ".json" else _yaml)(_text(path))
    _plain(value, [], [0])
    return key, _body(kind, value)


def _text(path: Path) -> str:
    if not path.is_file():
        raise _Fault("not a regular file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise _Fault(f"larger than {MAX_FILE_BYTES // 1024} KiB")
    with path.open("rb") as file:
        raw = file.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise _Fault(f"larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _Fault(f"not UTF-8 (byte {exc.start})") from exc


def _body(kind: Kind, value: Any) -> dict[str, Any]:
    if value is None:
        raise _Fault(f"empty: a {kind.noun} is a mapping of its fields")
    if not isinstance(value, dict):
        raise _Fault(f"holds a {_type(value)}: a {kind.noun} is a mapping of its fields")
    unknown = sorted(set(value) - set(kind.fields))
    if unknown:
        raise _Fault(
            f"unknown field(s) {', '.join(unknown)}: a {kind.noun} has {', '.join(kind.fields)}"
        )
    missing = [name for name in kind.required if name not in value]
    if missing:
        raise _Fault(f"a {kind.noun} needs {', '.join(missing)}")
    if len(orjson.dumps(value)) > MAX_BODY:
        raise _Fault(f"larger than the API takes ({MAX_BODY // 1024} KiB as JSON)")
    return value


def _type(value: Any) -> str:
    names = {list: "list", str: "text", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


# JSON


def _json(text: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_unique, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise _Fault(exc.msg, exc.lineno, exc.colno) from exc
    except RecursionError as exc:
        raise _Fault(f"nested more than {MAX_DEPTH} levels deep") from exc
    except ValueError as exc:  # an integer of thousands of digits
        raise _Fault(str(exc)) from exc


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _Fault(f"the key {key!r} is given twice in one object")
        found[key] = value
    return found


def _constant(name: str) -> Any:
    raise _Fault(f"{name} is not a JSON value")


# YAML

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


def _yaml(text: str) -> Any:
    try:
        _bound(text)
        return yaml.load(text, Loader=_LOADER)  # a safe loader: plain data only
    except yaml.MarkedYAMLError as exc:
        raise _at(exc.problem or str(exc), exc.problem_mark) from exc
    except yaml.YAMLError as exc:
        raise _Fault(str(exc)) from exc


def _bound(text: str) -> None:
    """Refuse what loading ``text`` would make too large, from its events alone: a second
    document, and what :class:`_Sizes` refuses."""
    sizes = _Sizes()
    documents = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise _at("a second document: a file holds one object", event.start_mark)
        sizes.take(event)


class _Sizes:
    """The values in each collection still open, an alias counted as what it repeats:
    collections nested more than :data:`MAX_DEPTH` deep, more than :data:`MAX_VALUES`
    values, and an alias of a node it is inside (or of no node) are refused."""

    def __init__(self) -> None:
        self._open: list[tuple[list[int], str | None]] = []
        self._anchors: dict[str, int] = {}

    def take(self, event: yaml.Event) -> None:
        mark = event.start_mark
        if isinstance(event, yaml.CollectionStartEvent):
            if len(self._open) >= MAX_DEPTH:
                raise _at(f"nested more than {MAX_DEPTH} levels deep", mark)
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
            if total[0] > MAX_VALUES:
                raise _at(f"more than {MAX_VALUES} values once aliases are expanded", mark)


# What both give: plain JSON data only.


def _plain(value: Any, path: list[str], seen: list[int]) -> None:
    """Refuse a value the API would not take as JSON, naming where it is."""
    seen[0] += 1
    if seen[0] > MAX_VALUES:
        raise _Fault(f"more than {MAX_VALUES} values")
    if len(path) >= MAX_DEPTH:
        raise _Fault(f"nested more than {MAX_DEPTH} levels deep")
    check = _CHECKS.get(type(value))
    if check is None:
        raise _Fault(f"{_path(path)}: a {type(value).__name__} is not a JSON value")
    check(value, path)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Fault(f"{_path(path)}: the key {key!r} is not text (quote it)")
            _text_value(key, path)
            _plain(item, [*path, key], seen)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _plain(item, [*path, f"[{index}]"], seen)


def _path(path: list[str]) -> str:
    return ".".join(path).replace(".[", "[") or "the top level"


def _text_value(value: str, path: list[str]) -> None:
    if "\x00" in value:
        raise _Fault(f"{_path(path)}: text holds the NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Fault(f"{_path(path)}: text holds a lone UTF-16 surrogate") from exc


def _number(value: Any, path: list[str]) -> None:
    if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
        raise _Fault(f"{_path(path)}: an integer outside the signed 64-bit range")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Fault(f"{_path(path)}: {value} is not a JSON number")


def _nothing(value: Any, path: list[str]) -> None:
    return None


_CHECKS: dict[type, Callable[[Any, list[str]], None]] = {
    str: _text_value,
    int: _number,
    float: _number,
    bool: _nothing,
    type(None): _nothing,
    dict: _nothing,
    list: _nothing,
}
