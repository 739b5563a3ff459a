"""The sandbox templates render in: what they may reach, and how much they may build.

Jinja's immutable sandbox already refuses private attributes and changes to data. On top:

* every render carries a ``RenderState`` (:mod:`clarion.domain.template_limits`) under a
  context key no template can name (names starting with ``_`` are refused when a template
  is stored); it holds the rendering locale and time zone for the localized filters, and
  the render's budgets;
* printed output, loop iterations and the work done by filters, methods and operators are
  charged to those budgets, and whatever could build a large value checks its size first
  (``'a' * 10**9``, ``9**9**9``, ``'%*d'``, ``center(10**9)``, ``replace('', big)``...);
* only methods on a short list are reachable, and only plain data can be printed, so no
  template can show an object's repr;
* ``str.format`` is not available (the ``format`` filter is).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from jinja2 import StrictUndefined, Undefined, pass_context, pass_eval_context
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context, LoopContext, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment

from clarion.domain.template_filters import check_str_method, guard_filter
from clarion.domain.template_limits import (
    MAX_INT_BITS,
    MAX_OUTPUT,
    bounded,
    refuse_printf,
    state_of,
    weight,
)

LOOP_FILTER = "_clarion_loop"
CONCAT_FILTER = "_clarion_concat"

# Globals Jinja provides that templates don't need and that can be abused.
REMOVED_GLOBALS = frozenset({"range", "lipsum", "cycler", "joiner", "namespace", "dict"})
# Filters left out: ``urlize`` adds attributes per link without a useful bound.
REMOVED_FILTERS = frozenset({"urlize"})

_STR_METHODS = frozenset(
    {
        "capitalize", "casefold", "center", "count", "endswith", "find", "index", "isalnum",
        "isalpha", "isdecimal", "isdigit", "islower", "isnumeric", "isspace", "istitle",
        "isupper", "join", "ljust", "lower", "lstrip", "partition", "removeprefix",
        "removesuffix", "replace", "rfind", "rindex", "rjust", "rpartition", "rsplit", "rstrip",
        "split", "splitlines", "startswith", "strip", "swapcase", "title", "upper", "zfill",
    }
)  # fmt: skip
# The only methods a template can reach, by the type of the object they belong to.
_SAFE_METHODS: tuple[tuple[type, frozenset[str]], ...] = (
    (str, _STR_METHODS),
    (dict, frozenset({"get", "items", "keys", "values"})),
    (list, frozenset({"count", "index"})),
    (tuple, frozenset({"count", "index"})),
    (LoopContext, frozenset({"cycle", "changed"})),
)


class BoundMethod:
    """A method reached from a template: size-checked when called, never printable."""

    __slots__ = ("_method", "_name", "_owner")
    printable_name = "method"

    def __init__(self, method: Callable[..., Any], name: str, owner: Any) -> None:
        self._method = method
        self._name = name
        self._owner = owner

    @pass_context
    def __call__(self, context: Context, *args: Any, **kwargs: Any) -> Any:
        state = state_of(context)
        state.charge_work(sum(bounded(a) for a in (self._owner, *args, *kwargs.values())))
        if isinstance(self._owner, str):
            args = check_str_method(self._owner, self._name, args)
        return self._method(*args, **kwargs)

    def __repr__(self) -> str:
        return f"[method {self._name}]"


def _check_product(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise SecurityError("the product is too large a number")
        return
    for seq, count in ((left, right), (right, left)):
        sequence = isinstance(seq, str | list | tuple) and isinstance(count, int)
        if sequence and count > 0 and weight(seq) * count > MAX_OUTPUT:
            raise SecurityError(f"the product is larger than {MAX_OUTPUT} characters")


def _check_power(base: Any, exponent: Any) -> None:
    integers = isinstance(base, int) and isinstance(exponent, int)
    if integers and exponent > 0 and abs(base) > 1 and base.bit_length() * exponent > MAX_INT_BITS:
        raise SecurityError("the power is too large a number")


def _check_sum(left: Any, right: Any) -> None:
    if isinstance(left, str | list | tuple) and weight(left) + weight(right) > MAX_OUTPUT:
        raise SecurityError(f"the sum is larger than {MAX_OUTPUT} characters")


def _check_modulo(left: Any, right: Any) -> None:
    if isinstance(left, str):
        refuse_printf(left)
        bounded(right, printable=True)


_BINOP_CHECKS: dict[str, Callable[[Any, Any], None]] = {
    "*": _check_product,
    "**": _check_power,
    "+": _check_sum,
    "%": _check_modulo,
}


class ClarionSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with methods on a short list and size-checked operators."""

    intercepted_binops = frozenset(_BINOP_CHECKS)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if not super().is_safe_attribute(obj, attr, value):
            return False
        if not callable(value):
            return True
        return any(isinstance(obj, kind) and attr in names for kind, names in _SAFE_METHODS)

    def getattr(self, obj: Any, attribute: str) -> Any:
        return _as_bound(super().getattr(obj, attribute), attribute, obj)

    def getitem(self, obj: Any, argument: Any) -> Any:
        return _as_bound(super().getitem(obj, argument), str(argument), obj)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if getattr(value, "__name__", None) in ("format", "format_map") and isinstance(
            getattr(value, "__self__", None), str
        ):
            return _no_str_format
        return None

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _BINOP_CHECKS[operator](left, right)
        if isinstance(left, str | list | tuple):
            state_of(context).charge_work(weight(left) + weight(right))
        return self.binop_table[operator](left, right)


def _no_str_format(*args: Any, **kwargs: Any) -> str:
    raise SecurityError("str.format is not available in templates; use the format filter")


def _as_bound(value: Any, name: str, owner: Any) -> Any:
    if callable(value) and not isinstance(value, Undefined | BoundMethod):
        return BoundMethod(value, name, owner)
    return value


@pass_context
def _finalize(context: Context, value: Any) -> Any:
    """Every printed value: plain data only, charged to the output budget."""
    size = len(value) if isinstance(value, str) else weight(value, printable=True)
    state_of(context).charge_output(size)
    return value


@pass_context
def _loop(context: Context, iterable: Iterable[Any], literal: int) -> Iterator[Any]:
    """Wraps every ``for`` loop's iterable: each iteration costs a step and the loop body's
    literal text (an upper bound: a branch not taken is charged too)."""
    state = state_of(context)
    for item in iterable:
        state.charge_step(literal)
        yield item


@pass_eval_context
def _concat(eval_ctx: EvalContext, items: list[Any]) -> str:
    """``a ~ b ~ c``, size-checked before the string is built."""
    bounded(items, printable=True)
    return markup_join(items) if eval_ctx.autoescape else str_join(items)


def make_environment(autoescape: bool, filters: dict[str, Callable[..., Any]]) -> ClarionSandbox:
    """A sandbox with Jinja's filters and ``filters``, all guarded, and the internal ones."""
    env = ClarionSandbox(
        autoescape=autoescape,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    for name in REMOVED_GLOBALS:
        env.globals.pop(name, None)
    available = {k: v for k, v in env.filters.items() if k not in REMOVED_FILTERS}
    available.update(filters)
    env.filters = {name: guard_filter(name, func) for name, func in available.items()}
    env.filters[LOOP_FILTER] = _loop
    env.filters[CONCAT_FILTER] = _concat
    return env
