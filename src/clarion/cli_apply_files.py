"""What ``clarion apply DIR`` reads: one file per object, ``DIR/<folder>/<key>.yaml`` (or
``.yml``, ``.json``), whose content is the body ``PUT /v1/<folder>/<key>`` takes; the
folders are ``categories``, ``layouts``, ``templates`` and ``workflows``.

Every file is read and checked before anything is sent, and every fault is reported with
its file and, where it has one, its line and column or the field: YAML as
``cli_apply_yaml`` reads it (plain data, bounded before it is built), JSON strictly (a key
given twice, NaN and infinities refused), and either within the API's own limits."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from clarion import cli_apply_yaml
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
    text = _text(path)
    if suffix == ".json":
        value = _json(text)
    else:
        try:
            value = cli_apply_yaml.load(text, MAX_DEPTH, MAX_VALUES)
        except cli_apply_yaml.Unreadable as exc:
            raise _Fault(exc.message, exc.line, exc.column) from exc
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
