"""Workflow definitions: steps checked once, when a version is stored, into a frozen value."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import nodes
from jinja2.exceptions import TemplateError as JinjaError

from clarion.domain.durations import duration_seconds
from clarion.domain.localized import FILTERS
from clarion.domain.template_sandbox import make_environment
from clarion.errors import ValidationFailed

STEP_TYPES = ("channel", "delay", "digest", "throttle", "exit")
MODES = ("first_success", "all")
MAX_STEPS = 50
MAX_CHANNELS = 5
MAX_WAIT = 30 * 86400
MAX_EXPRESSION = 2000
STEP_ID = re.compile(r"^[a-z0-9_]{1,40}$")
CLOCK = re.compile(r"^(?:[01]\d|2[0-3]):[0-5]\d$")
# The names an expression may read, and what it may read of an earlier step.
NAMES = frozenset({"data", "recipient", "digest", "steps"})
STEP_FIELDS = frozenset({"status", "seen", "read", "archived"})
INAPP_FIELDS = frozenset({"seen", "read", "archived"})
# Each type's fields beyond ``id``, ``type`` and ``if``.
FIELDS = {
    "channel": frozenset({"channel", "channels", "mode", "template"}),
    "delay": frozenset({"duration", "until"}),
    "digest": frozenset({"window", "key"}),
    "throttle": frozenset({"limit", "window", "key"}),
    "exit": frozenset(),
}
# Expressions compile in the templates' sandbox (no autoescape: a value, not markup).
_SANDBOX = make_environment(autoescape=False, filters=FILTERS)


@dataclass(frozen=True, slots=True)
class Step:
    """One checked step: its id, type, condition and the type's fields as given."""

    id: str
    type: str
    condition: str | None
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Workflow:
    name: str
    category: str | None
    steps: tuple[Step, ...]

    def templates(self) -> set[str]:
        return {s.fields["template"] for s in self.steps if s.type == "channel"}


@dataclass(frozen=True, slots=True)
class _Known:
    channels: frozenset[str]
    templates: frozenset[str]


class _Problems:
    def __init__(self) -> None:
        self.details: list[dict[str, Any]] = []

    def add(self, index: int, step_id: Any, field: str, message: str) -> None:
        self.details.append(
            {"step": index, "id": step_id, "field": f"steps[{index}].{field}", "message": message}
        )


def check(
    name: str,
    category: str | None,
    steps: Sequence[Mapping[str, Any]],
    channels: Iterable[str],
    templates: Iterable[str],
) -> Workflow:
    """The workflow ``steps`` describe, or a 422 naming each faulty step and field.

    ``channels`` are the channels a step may name, ``templates`` the tenant's templates."""
    known = _Known(frozenset(channels), frozenset(templates))
    problems = _Problems()
    if not 1 <= len(steps) <= MAX_STEPS:
        raise ValidationFailed(f"a workflow has 1 to {MAX_STEPS} steps")
    checked: list[Step] = []
    inapp: set[str] = set()
    earlier: set[str] = set()
    for index, raw in enumerate(steps):
        step_id, kind = raw.get("id"), raw.get("type")
        if not isinstance(step_id, str) or not STEP_ID.match(step_id):
            problems.add(index, step_id, "id", "1 to 40 of a-z, 0-9 and _")
        elif step_id in earlier:
            problems.add(index, step_id, "id", "another step has this id")
        fields = {k: v for k, v in raw.items() if k not in ("id", "type", "if") and v is not None}
        if kind not in FIELDS:
            problems.add(index, step_id, "type", f"one of {', '.join(STEP_TYPES)}")
        else:
            for extra in sorted(set(fields) - FIELDS[kind]):
                problems.add(index, step_id, extra, f"not a field of a {kind} step")
            _by_type[kind](problems, index, step_id, fields, known)
        condition = raw.get("if")
        if kind == "exit" and condition is None:
            problems.add(index, step_id, "if", "an exit step needs a condition")
        if condition is not None:
            _expression(problems, index, step_id, "if", condition, earlier, inapp)
        if kind == "channel" and _channels(fields) == ["inapp"] and isinstance(step_id, str):
            inapp.add(step_id)
        if isinstance(step_id, str):
            earlier.add(step_id)
        checked.append(Step(str(step_id), str(kind), condition, dict(fields)))
    if problems.details:
        raise ValidationFailed(
            "the workflow's steps are not valid", code="invalid_workflow", details=problems.details
        )
    return Workflow(name, category, tuple(checked))


def _channels(fields: Mapping[str, Any]) -> list[str]:
    if "channel" in fields:
        return [fields["channel"]]
    listed = fields.get("channels")
    return list(listed) if isinstance(listed, list) else []


def _channel(
    problems: _Problems, index: int, step_id: Any, fields: dict[str, Any], known: _Known
) -> None:
    if ("channel" in fields) == ("channels" in fields):
        problems.add(index, step_id, "channel", "exactly one of channel and channels")
    elif "channel" in fields:
        if fields["channel"] not in known.channels:
            problems.add(index, step_id, "channel", "not a known channel")
        if "mode" in fields:
            problems.add(index, step_id, "mode", "only with channels")
    else:
        listed = fields["channels"]
        if (
            not isinstance(listed, list)
            or not 1 <= len(listed) <= MAX_CHANNELS
            or len(set(map(str, listed))) != len(listed)
            or not set(map(str, listed)) <= known.channels
        ):
            problems.add(index, step_id, "channels", "1 to 5 distinct known channels")
        if fields.get("mode") not in MODES:
            problems.add(index, step_id, "mode", "first_success or all")
    if fields.get("template") not in known.templates:
        problems.add(index, step_id, "template", "not a template of the tenant")


def _duration(problems: _Problems, index: int, step_id: Any, field: str, value: Any) -> None:
    try:
        if not isinstance(value, str) or not 1 <= duration_seconds(value) <= MAX_WAIT:
            raise ValueError(value)
    except ValueError:
        problems.add(index, step_id, field, "a duration from 1s to 30d, like 90s, 15m or 2d")


def _delay(
    problems: _Problems, index: int, step_id: Any, fields: dict[str, Any], known: _Known
) -> None:
    if ("duration" in fields) == ("until" in fields):
        problems.add(index, step_id, "duration", "exactly one of duration and until")
    elif "duration" in fields:
        _duration(problems, index, step_id, "duration", fields["duration"])
    elif not (isinstance(fields["until"], str) and CLOCK.match(fields["until"])):
        _expression(problems, index, step_id, "until", fields["until"], None, set())


def _digest(
    problems: _Problems, index: int, step_id: Any, fields: dict[str, Any], known: _Known
) -> None:
    _duration(problems, index, step_id, "window", fields.get("window"))
    if "key" in fields:
        _expression(problems, index, step_id, "key", fields["key"], None, set())


def _throttle(
    problems: _Problems, index: int, step_id: Any, fields: dict[str, Any], known: _Known
) -> None:
    limit = fields.get("limit")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
        problems.add(index, step_id, "limit", "a whole number from 1 to 10000")
    _digest(problems, index, step_id, fields, known)


def _exit(
    problems: _Problems, index: int, step_id: Any, fields: dict[str, Any], known: _Known
) -> None:
    return None


_by_type = {
    "channel": _channel,
    "delay": _delay,
    "digest": _digest,
    "throttle": _throttle,
    "exit": _exit,
}


def _expression(
    problems: _Problems,
    index: int,
    step_id: Any,
    field: str,
    source: Any,
    earlier: set[str] | None,
    inapp: set[str],
) -> None:
    """Compile ``source`` in expression mode and check the names and steps it reads;
    ``earlier`` None: ``steps`` is checked as for a condition of the first step."""
    if not isinstance(source, str) or not 1 <= len(source) <= MAX_EXPRESSION:
        problems.add(index, step_id, field, f"an expression of 1 to {MAX_EXPRESSION} characters")
        return
    try:
        tree = _SANDBOX.parse(_SANDBOX.preprocess("{{ (" + source + ") }}"))
        _SANDBOX.compile_expression(source)
    except JinjaError as exc:
        problems.add(index, step_id, field, f"not an expression: {exc}")
        return
    for message in _reads(tree, earlier or set(), inapp):
        problems.add(index, step_id, field, message)


def _reads(tree: nodes.Node, earlier: set[str], inapp: set[str]) -> list[str]:
    """What an expression reads that it may not: an unknown name, an underscored attribute,
    a step that is not an earlier one, or a field a step does not show."""
    found = [
        f"{name.name!r} is not available (data, recipient, digest, steps)"
        for name in tree.find_all(nodes.Name)
        if name.ctx == "load" and name.name not in NAMES
    ]
    found += [
        f"{attr.attr!r} is not available"
        for attr in tree.find_all(nodes.Getattr)
        if attr.attr.startswith("_")
    ]
    if any(_is_steps(item.node) for item in tree.find_all(nodes.Getitem)):
        found.append("name a step as steps.<id>")
    for attr in tree.find_all(nodes.Getattr):
        if _is_steps(attr.node) and attr.attr not in earlier:
            found.append(f"steps.{attr.attr} does not name an earlier step")
        elif isinstance(attr.node, nodes.Getattr) and _is_steps(attr.node.node):
            found += _step_field(attr.node.attr, attr.attr, earlier, inapp)
    return found


def _is_steps(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "steps"


def _step_field(step: str, field: str, earlier: set[str], inapp: set[str]) -> list[str]:
    if step not in earlier:
        return []
    if field not in STEP_FIELDS:
        return [f"steps.{step}.{field}: a step shows {', '.join(sorted(STEP_FIELDS))}"]
    if field in INAPP_FIELDS and step not in inapp:
        return [f"steps.{step}.{field}: only an in-app channel step shows it"]
    return []
