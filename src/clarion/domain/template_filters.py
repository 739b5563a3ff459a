"""Jinja's filters, guarded: inputs size-checked and charged to the render's work budget,
and the filters that can make large output from small input checked before they run."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.utils import _PassArg

from clarion.domain.template_limits import (
    MAX_ITEMS,
    MAX_OUTPUT,
    bounded,
    refuse_above,
    refuse_join,
    refuse_printf,
    refuse_replace,
    state_of,
    take,
    weight,
)

# Filters that take structures (or generators) without printing them.
_STRUCTURAL = frozenset(
    {
        "attr", "batch", "count", "default", "d", "dictsort", "first", "groupby", "items",
        "join", "last", "length", "list", "map", "max", "min", "random", "reject",
        "rejectattr", "reverse", "select", "selectattr", "slice", "sort", "sum", "tojson",
        "unique",
    }
)  # fmt: skip


Check = Callable[[Any, list[Any], dict[str, Any]], Any]


def _arg(args: list[Any], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _check_center(value: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    refuse_above(_arg(args, kwargs, 0, "width"), MAX_OUTPUT, "a width of")
    return value


def _check_indent(value: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    width = _arg(args, kwargs, 0, "width")
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    text = str(value)
    if len(text) + pad * (text.count("\n") + 1) > MAX_OUTPUT:
        raise SecurityError(f"the indented text is larger than {MAX_OUTPUT} characters")
    return value


def _check_wordwrap(value: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    width = _arg(args, kwargs, 0, "width")
    wrap = _arg(args, kwargs, 2, "wrapstring")
    if isinstance(wrap, str) and isinstance(width, int):
        lines = len(str(value)) // max(width, 1) + 1
        if lines * len(wrap) > MAX_OUTPUT:
            raise SecurityError(f"the wrapped text is larger than {MAX_OUTPUT} characters")
    return value


def _check_replace(value: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    refuse_replace(str(value), _arg(args, kwargs, 0, "old"), _arg(args, kwargs, 1, "new"))
    return value


def _check_join(value: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    items = take(value)
    separator = _arg(args, kwargs, 0, "d")
    refuse_join(separator if isinstance(separator, str) else "", items)
    return items


def _check_format(value: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    refuse_printf(str(value))
    for extra in (*args, *kwargs.values()):
        bounded(extra, printable=True)
    return value


def _check_count(name: str, index: int) -> Check:
    def check(value: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        refuse_above(_arg(args, kwargs, index, name), MAX_ITEMS, f"a {name} of")
        return value

    return check


def _check_tojson(value: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    indent = _arg(args, kwargs, 0, "indent")
    if (isinstance(indent, int) and indent > 16) or (isinstance(indent, str) and len(indent) > 16):
        raise SecurityError("a JSON indent above 16")
    return value


def _check_sum_filter(value: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
    start = _arg(args, kwargs, 1, "start")
    if start is not None and not isinstance(start, int | float):
        raise SecurityError("sum adds numbers only")
    return value


_FILTER_CHECKS: dict[str, Check] = {
    "center": _check_center,
    "indent": _check_indent,
    "wordwrap": _check_wordwrap,
    "replace": _check_replace,
    "join": _check_join,
    "format": _check_format,
    "batch": _check_count("linecount", 0),
    "slice": _check_count("slices", 0),
    "tojson": _check_tojson,
    "sum": _check_sum_filter,
}


def _bounded_stream(items: Iterable[Any]) -> Iterator[Any]:
    total = 0
    for item in items:
        total += weight(item)
        if total > MAX_OUTPUT:
            raise SecurityError(f"a sequence is larger than {MAX_OUTPUT} characters")
        yield item


def check_str_method(owner: str, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The limits of a str method a template calls (the sandbox's ``BoundMethod``) that
    could build a large string: those of the filter that does the same; returns the
    arguments to call it with (a ``join``'s items taken once)."""
    if name in ("center", "ljust", "rjust", "zfill") and args:
        refuse_above(args[0], MAX_OUTPUT, "a width of")
    elif name == "replace" and len(args) >= 2:
        refuse_replace(owner, args[0], args[1])
    elif name == "join" and args:
        items = take(args[0])
        refuse_join(owner, items)
        args = (items, *args[1:])
    return args


def guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` with its inputs size-checked and charged to the render's work budget."""
    pass_arg = _PassArg.from_obj(func)
    check = _FILTER_CHECKS.get(name)
    printable = name not in _STRUCTURAL

    @functools.wraps(func)
    def guarded(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        work = bounded(value, printable=printable)
        work += sum(bounded(a) for a in (*args, *kwargs.values()))
        state_of(context).charge_work(work)
        if check is not None:
            value = check(value, list(args), kwargs)
        if pass_arg is _PassArg.context:
            result = func(context, value, *args, **kwargs)
        elif pass_arg is _PassArg.eval_context:
            result = func(context.eval_ctx, value, *args, **kwargs)
        elif pass_arg is _PassArg.environment:
            result = func(context.environment, value, *args, **kwargs)
        else:
            result = func(value, *args, **kwargs)
        return _bounded_stream(result) if name == "map" else result

    guarded.jinja_pass_arg = _PassArg.context  # type: ignore[attr-defined]
    return guarded
