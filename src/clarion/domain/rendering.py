"""Template rendering in a Jinja sandbox.

A template's content is, per channel, a mapping of fields to template strings (the webhook
body is any JSON whose strings are templates). Everything is compiled once, when stored or
first used, and rendered many times. The sandbox is immutable: a template can read the data
it is given, never change it, and never reach Python internals.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from clarion.errors import MissingVariable, TemplateError

_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'")


def _environment(autoescape: bool) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        autoescape=autoescape, undefined=StrictUndefined, keep_trailing_newline=True
    )
    # Globals that can be abused to build large objects or to probe the runtime.
    for name in ("range", "lipsum", "cycler", "joiner", "namespace", "dict"):
        env.globals.pop(name, None)
    return env


_PLAIN = _environment(autoescape=False)
_HTML = _environment(autoescape=True)
# Fields rendered with HTML escaping of the data placed in them.
_HTML_FIELDS = frozenset({"html"})


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    """A channel's content, compiled: the same shape as the source with templates in it."""

    tree: Any

    def render(self, context: Mapping[str, Any]) -> Any:
        return _render_tree(self.tree, context)


def _compile_tree(node: Any, field: str | None) -> Any:
    if isinstance(node, str):
        env = _HTML if field in _HTML_FIELDS else _PLAIN
        if "{" not in node:
            return node
        try:
            return env.from_string(node)
        except TemplateSyntaxError as exc:
            where = f"{field}: " if field else ""
            raise TemplateError(
                f"{where}line {exc.lineno}: {exc.message}", line=exc.lineno
            ) from exc
    if isinstance(node, Mapping):
        return {key: _compile_tree(value, str(key)) for key, value in node.items()}
    if isinstance(node, list):
        return [_compile_tree(value, field) for value in node]
    return node


def _render_tree(node: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(node, str) or node is None or isinstance(node, (int, float, bool)):
        return node
    if isinstance(node, dict):
        return {key: _render_tree(value, context) for key, value in node.items()}
    if isinstance(node, list):
        return [_render_tree(value, context) for value in node]
    try:
        return node.render(context)
    except UndefinedError as exc:
        match = _UNDEFINED_NAME.search(str(exc))
        name = (match.group(1) or match.group(2)) if match else str(exc)
        raise MissingVariable(name) from exc
    except SecurityError as exc:
        raise TemplateError(f"refused by the sandbox: {exc}") from exc
    except (TypeError, ValueError, ArithmeticError, OverflowError) as exc:
        raise TemplateError(f"render failed: {exc}") from exc


def compile_content(content: Mapping[str, Any]) -> CompiledTemplate:
    """Compile one channel's content; raises :class:`TemplateError` naming the line."""
    return CompiledTemplate(_compile_tree(content, None))


def compile_channels(channels: Mapping[str, Mapping[str, Any]]) -> dict[str, CompiledTemplate]:
    compiled = {}
    for channel, content in channels.items():
        try:
            compiled[channel] = compile_content(content)
        except TemplateError as exc:
            raise TemplateError(f"{channel}.{exc.message}", line=exc.line) from exc
    return compiled


def locale_chain(wanted: str | None, available: Mapping[str, Any]) -> list[str]:
    """The locales to try, most specific first: ``fr-CA`` → ``fr``; only those available."""
    chain: list[str] = []
    if wanted:
        parts = wanted.replace("_", "-").split("-")
        for i in range(len(parts), 0, -1):
            candidate = "-".join(parts[:i])
            for key in available:
                if key.lower() == candidate.lower() and key not in chain:
                    chain.append(key)
    return chain


@dataclass(frozen=True, slots=True)
class CompiledVersion:
    """A template version, compiled: per channel, and per locale with overrides merged."""

    category: str
    channels: dict[str, CompiledTemplate]
    locales: dict[str, dict[str, CompiledTemplate]]

    def for_channel(self, channel: str, locale: str | None) -> tuple[str | None, CompiledTemplate]:
        for candidate in locale_chain(locale, self.locales):
            compiled = self.locales[candidate].get(channel)
            if compiled is not None:
                return candidate, compiled
        return None, self.channels[channel]


def compile_version(
    category: str, channels: Mapping[str, Mapping[str, Any]], locales: Mapping[str, Any]
) -> CompiledVersion:
    """Compile every channel, and every locale's overrides merged over the default content."""
    base = compile_channels(channels)
    per_locale: dict[str, dict[str, CompiledTemplate]] = {}
    for locale, overrides in locales.items():
        merged = {
            channel: {**channels[channel], **content}
            for channel, content in overrides.items()
            if channel in channels and isinstance(content, Mapping)
        }
        try:
            per_locale[locale] = compile_channels(merged)
        except TemplateError as exc:
            raise TemplateError(f"locales.{locale}.{exc.message}", line=exc.line) from exc
    return CompiledVersion(category, base, per_locale)
