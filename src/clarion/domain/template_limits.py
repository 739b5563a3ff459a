"""The budgets of one template render, and the size checks that enforce them.

A render may print at most :data:`MAX_OUTPUT` characters, run loops :data:`MAX_ITERATIONS`
times and have filters, methods and operators go through :data:`MAX_WORK` characters.
Whatever could build a large value estimates its size first and refuses, so the value is
never built.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from jinja2 import Undefined
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context

MAX_OUTPUT = 1 << 20  # characters one render may print, all fields together
MAX_WORK = 20_000_000  # characters filters, methods and operators may process in a render
MAX_ITERATIONS = 10_000  # loop iterations in a render
MAX_ITEMS = 100_000  # the most items batch/slice may make
MAX_INT_BITS = 4096  # integers a template computes stay printable (Python prints <= 4300 digits)
MAX_WIDTH = 10_000  # printf-style widths and precisions
STATE = "_clarion"  # the context key of the RenderState; templates can't name it


class RenderState:
    """One render's locale, time zone and budgets; private to the render."""

    __slots__ = ("locale", "output", "steps", "timezone", "work")

    def __init__(self, locale: str | None = None, timezone: str | None = None) -> None:
        self.locale = locale
        self.timezone = timezone
        self.output = 0
        self.work = 0
        self.steps = 0

    def charge_output(self, size: int) -> None:
        self.output += size
        if self.output > MAX_OUTPUT:
            raise SecurityError(f"the output is larger than {MAX_OUTPUT} characters")

    def charge_work(self, size: int) -> None:
        self.work += size
        if self.work > MAX_WORK:
            raise SecurityError("the template does too much work for one message")

    def charge_step(self, literal: int) -> None:
        self.steps += 1
        if self.steps > MAX_ITERATIONS:
            raise SecurityError(f"loops ran more than {MAX_ITERATIONS} times")
        if literal:
            self.charge_output(literal)


def state_of(context: Context) -> RenderState:
    state = context.get(STATE)
    return state if isinstance(state, RenderState) else RenderState()


def _not_printable(value: Any) -> SecurityError:
    kind = getattr(type(value), "printable_name", type(value).__name__)
    return SecurityError(f"a {kind} value cannot be printed")


def weight(value: Any, limit: int = MAX_OUTPUT, *, printable: bool = False) -> int:
    """About how many characters ``value`` prints as; stops counting past ``limit``.

    With ``printable``, anything but plain data (strings, numbers, lists, mappings) is
    refused, so that no repr of an object reaches the output.
    """
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, bool | float) or item is None:
            total += 8
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 1
        elif isinstance(item, list | tuple):
            total += 2 + len(item)
            stack.extend(item)
        elif isinstance(item, dict):
            total += 2 + len(item)
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, Undefined):
            continue  # using it raises the undefined error, naming the variable
        elif printable:
            raise _not_printable(item)
        else:
            total += 1
    return total


def bounded(value: Any, *, printable: bool = False) -> int:
    """``value``'s weight, refusing values that print larger than the output limit."""
    size = weight(value, printable=printable)
    if size > MAX_OUTPUT:
        raise SecurityError(f"a value is larger than {MAX_OUTPUT} characters")
    return size


def refuse_above(value: Any, limit: int, what: str) -> None:
    if isinstance(value, int) and value > limit:
        raise SecurityError(f"{what} {value} is above the limit of {limit}")


def refuse_replace(text: str, old: Any, new: Any) -> None:
    """Refuse ``text.replace(old, new)`` when it could pass the output limit (every
    possible match replaced; an empty ``old`` matches between every character)."""
    size = len(text)
    if isinstance(old, str) and isinstance(new, str):
        matches = len(text) + 1 if not old else len(text) // len(old)
        size += matches * len(new)
    if size > MAX_OUTPUT:
        raise SecurityError(f"the replaced string is larger than {MAX_OUTPUT} characters")


def refuse_join(separator: str, items: list[Any]) -> None:
    size = weight(items) + len(separator) * max(len(items) - 1, 0)
    if size > MAX_OUTPUT:
        raise SecurityError(f"the joined string is larger than {MAX_OUTPUT} characters")


def take(items: Iterable[Any]) -> list[Any]:
    """``items`` as a list, refusing streams that grow past the output limit."""
    if isinstance(items, list | tuple | str | dict):
        return list(items)
    taken: list[Any] = []
    total = 0
    for item in items:
        total += weight(item)
        if total > MAX_OUTPUT:
            raise SecurityError(f"a sequence is larger than {MAX_OUTPUT} characters")
        taken.append(item)
    return taken


_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def refuse_printf(template: str) -> None:
    """Refuse ``%``-formats that would pad to huge widths (``%1000000000d``, ``%*d``)."""
    for match in _PRINTF.finditer(template):
        for number in match.groups():
            if number == "*" or (number and (len(number) > 6 or int(number) > MAX_WIDTH)):
                raise SecurityError(f"a format width or precision above {MAX_WIDTH}")
