"""Workflow definitions: steps checked once, when a version is stored, into a frozen value."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
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
STEP_FIELDS = frozenset({"status", "seen", "read", "archived", "opened", "clicked"})
INAPP_FIELDS = frozenset({"seen", "read", "archived"})
# What only a step that sends email shows (docs/tracking.md).
EMAIL_FIELDS = frozenset({"opened", "clicked"})
# Each type's fields beyond ``id``, ``type`` and ``if``.
FIELDS = {
    "channel": frozenset({"channel", "channels", "mode", "template"}),
    "delay": frozenset({"duration", "until"}),
    "digest": frozenset({"window", "key"}),
    "throttle": frozenset({"limit", "window", "key"}),
    "exit": frozenset(),
}
# The built-in workflow a template send runs when its template's in-app part has an offline
# fallback (a name no tenant's workflow can have), and its steps' ids.
TEMPLATE_FLOW = "~template"
SEND_STEP, WAIT_STEP, FALLBACK_STEP = "send", "wait", "fallback"
# The built-in workflow that carries a category digest's window (docs/digests.md), and its
# one step's id: the window's wait, over when the window closes into its digest.
DIGEST_FLOW = "~digest"
COLLECT_STEP = "collect"
# The built-in workflows have one version each.
BUILTIN_VERSION = 1
# Expressions compile in the templates' sandbox (no autoescape: a value, not markup).
SANDBOX = make_environment(autoescape=False, filters=FILTERS)


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

    @classmethod
    def stored(
        cls, name: str, category: str | None, steps: Sequence[Mapping[str, Any]]
    ) -> Workflow:
        """A version as stored (checked by :func:`check` when it was)."""
        return cls(
            name,
            category,
            tuple(
                Step(
                    str(raw["id"]),
                    str(raw["type"]),
                    raw.get("if"),
                    {
                        k: v
                        for k, v in raw.items()
                        if k not in ("id", "type", "if") and v is not None
                    },
                )
                for raw in steps
            ),
        )

    def templates(self) -> set[str]:
        return {s.fields["template"] for s in self.steps if s.type == "channel"}


def template_flow(template: str, after: str, channel: str) -> Workflow:
    """The built-in workflow of a send of ``template`` whose in-app part falls back to
    ``channel`` when unseen after ``after``: the send's channels (planned with the send),
    a delay, and the fallback channel unless a message of the send was seen by then."""
    return Workflow(
        template,
        None,
        (
            Step(SEND_STEP, "channel", None, {"template": template, "mode": "all"}),
            Step(WAIT_STEP, "delay", None, {"duration": after}),
            Step(
                FALLBACK_STEP,
                "channel",
                f"not steps.{SEND_STEP}.seen",
                {"template": template, "channel": channel},
            ),
        ),
    )


def digest_flow(category: str) -> Workflow:
    """The built-in workflow of a category digest's window: one digest step, which waits
    until the window closes, then closes it into the digest notification (the window's
    row, not a step's fields, says which window and when)."""
    return Workflow(f"{category} digest", category, (Step(COLLECT_STEP, "digest", None, {}),))


@dataclass(frozen=True, slots=True)
class _Known:
    channels: frozenset[str]
    templates: frozenset[str]


@dataclass(slots=True)
class _At:
    """The step being checked, what it may name, and the faults found so far (all steps')."""

    problems: list[dict[str, Any]]
    index: int
    step_id: Any
    fields: dict[str, Any]
    known: _Known
    earlier: frozenset[str] = frozenset()
    inapp: frozenset[str] = frozenset()
    email: frozenset[str] = frozenset()

    def add(self, field: str, message: str) -> None:
        self.problems.append(
            {
                "step": self.index,
                "id": self.step_id,
                "field": f"steps[{self.index}].{field}",
                "message": message,
            }
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
    if not 1 <= len(steps) <= MAX_STEPS:
        raise ValidationFailed(f"a workflow has 1 to {MAX_STEPS} steps")
    problems: list[dict[str, Any]] = []
    checked: list[Step] = []
    earlier: set[str] = set()
    inapp: set[str] = set()
    email: set[str] = set()
    for index, raw in enumerate(steps):
        fields = {k: v for k, v in raw.items() if k not in ("id", "type", "if") and v is not None}
        seen = (frozenset(earlier), frozenset(inapp), frozenset(email))
        at = _At(problems, index, raw.get("id"), fields, known, *seen)
        kind = raw.get("type")
        _step(at, kind, raw.get("if"))
        if isinstance(at.step_id, str):
            earlier.add(at.step_id)
            if kind == "channel" and _channels(fields) == ["inapp"]:
                inapp.add(at.step_id)
            if kind == "channel" and "email" in _channels(fields):
                email.add(at.step_id)
        checked.append(Step(str(at.step_id), str(kind), raw.get("if"), fields))
    if problems:
        raise ValidationFailed(
            "the workflow's steps are not valid", code="invalid_workflow", details=problems
        )
    return Workflow(name, category, tuple(checked))


def _step(at: _At, kind: Any, condition: Any) -> None:
    if not isinstance(at.step_id, str) or not STEP_ID.match(at.step_id):
        at.add("id", "1 to 40 of a-z, 0-9 and _")
    elif at.step_id in at.earlier:
        at.add("id", "another step has this id")
    if kind not in FIELDS:
        at.add("type", f"one of {', '.join(STEP_TYPES)}")
    else:
        for extra in sorted(set(at.fields) - FIELDS[kind]):
            at.add(extra, f"not a field of a {kind} step")
        _BY_TYPE[kind](at)
    if kind == "exit" and condition is None:
        at.add("if", "an exit step needs a condition")
    if condition is not None:
        _expression(at, "if", condition, steps=True)


def _channels(fields: Mapping[str, Any]) -> list[str]:
    if "channel" in fields:
        return [fields["channel"]]
    listed = fields.get("channels")
    return list(listed) if isinstance(listed, list) else []


def _channel(at: _At) -> None:
    fields, known = at.fields, at.known.channels
    if ("channel" in fields) == ("channels" in fields):
        at.add("channel", "exactly one of channel and channels")
    elif "channel" in fields:
        if fields["channel"] not in known:
            at.add("channel", "not a known channel")
        if "mode" in fields:
            at.add("mode", "only with channels")
    else:
        listed = [str(c) for c in fields["channels"]]
        if not 1 <= len(listed) <= MAX_CHANNELS or len(set(listed)) != len(listed):
            at.add("channels", f"1 to {MAX_CHANNELS} distinct channels")
        if not set(listed) <= known:
            at.add("channels", "not known channels: " + ", ".join(sorted(set(listed) - known)))
        if fields.get("mode") not in MODES:
            at.add("mode", "first_success or all")
    if fields.get("template") not in at.known.templates:
        at.add("template", "not a template of the tenant")


def _duration(at: _At, field: str) -> None:
    value = at.fields.get(field)
    try:
        if not isinstance(value, str) or not 1 <= duration_seconds(value) <= MAX_WAIT:
            raise ValueError(value)
    except ValueError:
        at.add(field, "a duration from 1s to 30d, like 90s, 15m or 2d")


def _delay(at: _At) -> None:
    if ("duration" in at.fields) == ("until" in at.fields):
        at.add("duration", "exactly one of duration and until")
    elif "duration" in at.fields:
        _duration(at, "duration")
    elif not (isinstance(until := at.fields["until"], str) and CLOCK.match(until)):
        _expression(at, "until", until, steps=False)


def _digest(at: _At) -> None:
    _duration(at, "window")
    if "key" in at.fields:
        _expression(at, "key", at.fields["key"], steps=False)


def _throttle(at: _At) -> None:
    limit = at.fields.get("limit")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
        at.add("limit", "a whole number from 1 to 10000")
    _digest(at)


def _exit(at: _At) -> None:
    return None


_BY_TYPE: dict[str, Callable[[_At], None]] = {
    "channel": _channel,
    "delay": _delay,
    "digest": _digest,
    "throttle": _throttle,
    "exit": _exit,
}


def _expression(at: _At, field: str, source: Any, *, steps: bool) -> None:
    """Compile ``source`` in expression mode and check the names and steps it reads
    (``steps`` false: no step may be read, as for a condition of the first step)."""
    if not isinstance(source, str) or not 1 <= len(source) <= MAX_EXPRESSION:
        at.add(field, f"an expression of 1 to {MAX_EXPRESSION} characters")
        return
    try:
        tree = expression_tree(source)
        SANDBOX.compile_expression(source)
    except JinjaError as exc:
        at.add(field, f"not an expression: {exc}")
        return
    earlier = set(at.earlier) if steps else set()
    for message in _reads(tree, earlier, set(at.inapp), set(at.email)):
        at.add(field, message)


def _reads(tree: nodes.Node, earlier: set[str], inapp: set[str], email: set[str]) -> list[str]:
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
            found += _step_field(attr.node.attr, attr.attr, earlier, inapp, email)
    return found


def expression_tree(source: str) -> nodes.Template:
    """The parse tree of an expression (``if``, ``until``, ``key``)."""
    return SANDBOX.parse(SANDBOX.preprocess("{{ (" + source + ") }}"))


@functools.lru_cache(maxsize=4096)
def reads_steps(source: str) -> bool:
    """Whether an expression (checked when its workflow was stored) reads ``steps``."""
    return any(_is_steps(name) for name in expression_tree(source).find_all(nodes.Name))


def _is_steps(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "steps"


def _step_field(
    step: str, field: str, earlier: set[str], inapp: set[str], email: set[str]
) -> list[str]:
    if step not in earlier:
        return []
    if field not in STEP_FIELDS:
        return [f"steps.{step}.{field}: a step shows {', '.join(sorted(STEP_FIELDS))}"]
    if field in INAPP_FIELDS and step not in inapp:
        return [f"steps.{step}.{field}: only an in-app channel step shows it"]
    if field in EMAIL_FIELDS and step not in email:
        return [f"steps.{step}.{field}: only a channel step that sends email shows it"]
    return []
