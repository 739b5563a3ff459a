"""What a template may say, checked when it is stored, and the rewrites that bound it.

A template reaching for Python internals is refused before it is ever run: a name,
attribute or constant key starting with ``_``, Jinja globals that are not available, and
the tags a notification does not need that would get round the render limits (macros and
call blocks recurse, recursive loops too; include/import/extends need a loader). Then every
``for`` loop's iterable and every ``~`` concatenation are routed through the sandbox's
internal filters, which charge them to the render's budgets.
"""

from __future__ import annotations

from typing import Any, cast

from jinja2 import Environment, nodes
from jinja2.visitor import NodeTransformer

from clarion.domain.template_sandbox import CONCAT_FILTER, LOOP_FILTER, REMOVED_GLOBALS
from clarion.errors import TemplateError

_REFUSED_NAMES = REMOVED_GLOBALS | {"self", "caller", "varargs", "kwargs"}
_REFUSED_TAGS: dict[type[nodes.Node], str] = {
    nodes.Macro: "macro",
    nodes.CallBlock: "call",
    nodes.Include: "include",
    nodes.Import: "import",
    nodes.FromImport: "from ... import",
    nodes.Extends: "extends",
}
# Filters whose string arguments name attributes or other filters.
_NAMING_FILTERS = frozenset(
    {"attr", "map", "select", "reject", "selectattr", "rejectattr", "sort", "groupby", "sum",
     "unique", "min", "max", "join", "dictsort"}
)  # fmt: skip


def _private(text: Any) -> bool:
    return isinstance(text, str) and any(part.startswith("_") for part in text.split("."))


def _refuse(node: nodes.Node, message: str) -> TemplateError:
    return TemplateError(f"line {node.lineno}: {message}", line=node.lineno)


def _check_node(node: nodes.Node) -> None:
    for kind, tag in _REFUSED_TAGS.items():
        if isinstance(node, kind):
            raise _refuse(node, f"the {tag!r} tag is not available in templates")
    if isinstance(node, nodes.For) and node.recursive:
        raise _refuse(node, "recursive loops are not available in templates")
    if isinstance(node, nodes.Name) and (node.name.startswith("_") or node.name in _REFUSED_NAMES):
        raise _refuse(node, f"{node.name!r} is not available in templates")
    if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
        raise _refuse(node, f"attribute {node.attr!r} is private")
    if (
        isinstance(node, nodes.Getitem)
        and isinstance(node.arg, nodes.Const)
        and _private(node.arg.value)
    ):
        raise _refuse(node, f"key {node.arg.value!r} is private")
    if isinstance(node, nodes.Filter | nodes.Test):
        _check_filter(node)


def _check_filter(node: nodes.Filter | nodes.Test) -> None:
    if node.name.startswith("_"):
        raise _refuse(node, f"{node.name!r} is not available in templates")
    if node.name not in _NAMING_FILTERS:
        return
    for arg in (*node.args, *(pair.value for pair in node.kwargs)):
        if isinstance(arg, nodes.Const) and _private(arg.value):
            raise _refuse(node, f"{arg.value!r} is private")


def _literal_size(body: list[nodes.Node]) -> int:
    """The literal text a loop body prints per iteration, nested loops excluded."""
    size = 0
    stack: list[nodes.Node] = list(body)
    while stack:
        node = stack.pop()
        if isinstance(node, nodes.TemplateData):
            size += len(node.data)
        elif not isinstance(node, nodes.For):
            stack.extend(node.iter_child_nodes())
    return size


class _Bound(NodeTransformer):
    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        literal = nodes.Const(_literal_size(node.body), lineno=node.lineno)
        node.iter = nodes.Filter(node.iter, LOOP_FILTER, [literal], [], None, None)
        node.iter.set_lineno(node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        items = nodes.List(list(node.nodes), lineno=node.lineno)
        joined = nodes.Filter(items, CONCAT_FILTER, [], [], None, None, lineno=node.lineno)
        return joined


def prepare(env: Environment, source: str) -> nodes.Template:
    """Parse ``source``, refuse what templates may not do, and bound loops and joins.

    Raises :class:`jinja2.TemplateSyntaxError` or :class:`TemplateError` naming the line.
    """
    try:
        tree = env.parse(source)
        for node in tree.find_all(nodes.Node):
            _check_node(node)
        bounded = _Bound().visit(tree)
    except RecursionError as exc:
        raise TemplateError("the template is nested too deeply") from exc
    template = cast(nodes.Template, bounded)  # the transformer keeps the root node
    template.set_environment(env)
    return template
