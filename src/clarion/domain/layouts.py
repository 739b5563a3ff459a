"""Email layouts, and the tenant's look: its layouts, its default one and its brand.

A layout is the HTML and the text around a template's email: each has the slot
``{{ content }}``, where the template's rendered HTML (or text) goes. The HTML is compiled
with autoescaping, like a template's: the layout's own variables are escaped, while the
content, already rendered (and escaped) by its template, is inserted as markup, as it is.
A layout may have per-locale variants, chosen as a template's locale is (``fr-CA`` →
``fr`` → the layout's own). It renders with the template's variables (``brand``,
``recipient``, the data), plus ``content`` and ``subject`` (the email's rendered subject).

A template's email part names its layout (``"layout": "brand"``), or the tenant's default
(absent or null), or none (``false``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment, TemplateSyntaxError, nodes
from markupsafe import Markup

from clarion.domain.rendering import CompiledTemplate, compile_content, locale_chain, unusable
from clarion.errors import TemplateError

SLOT = "content"
FIELDS = ("html", "text")
# A layout's choice in a template: a layout's name, None (the default) or False (none).
Choice = str | bool | None

_PARSER = Environment()


def _has_slot(source: str) -> bool:
    """Whether ``source`` prints ``content`` somewhere (``{{ content }}``)."""
    try:
        tree = _PARSER.parse(source)
    except TemplateSyntaxError:
        return False
    return any(
        isinstance(name, nodes.Name) and name.name == SLOT and name.ctx == "load"
        for output in tree.find_all(nodes.Output)
        for name in output.find_all(nodes.Name)
    )


def _compile_part(source: str, part: str) -> CompiledTemplate:
    compiled = compile_content({part: source})
    if not _has_slot(source):
        raise TemplateError(f"{part}: the layout has no {{{{ {SLOT} }}}} slot")
    return compiled


def _compile_parts(parts: Mapping[str, str]) -> dict[str, CompiledTemplate]:
    return {part: _compile_part(parts[part], part) for part in FIELDS}


@dataclass(frozen=True, slots=True)
class CompiledLayout:
    """A layout, compiled: its HTML and text, and each locale's, overrides merged."""

    parts: dict[str, CompiledTemplate]
    locales: dict[str, dict[str, CompiledTemplate]] = field(default_factory=dict)

    def variant(self, locale: str | None) -> dict[str, CompiledTemplate]:
        for candidate in locale_chain(locale, self.locales):
            return self.locales[candidate]
        return self.parts

    def wrap(
        self,
        content: Mapping[str, Any],
        context: Mapping[str, Any],
        locale: str | None = None,
        timezone: str | None = None,
    ) -> dict[str, Any]:
        """``content`` (an email, rendered) with its HTML and text laid out; ``locale``
        chooses the variant, else the context's ``recipient``'s."""
        recipient = context.get("recipient")
        if locale is None and isinstance(recipient, Mapping):
            locale = recipient.get("locale")
        parts = self.variant(locale)
        dressed = dict(content)
        variables = dict(context)
        subject = content.get("subject")
        if isinstance(subject, str):
            variables["subject"] = subject
        for part in FIELDS:
            body = content.get(part)
            if not isinstance(body, str):
                continue
            # The HTML is the template's own output, escaped as it rendered: markup here.
            variables[SLOT] = Markup(body) if part == "html" else body
            rendered = parts[part].render(variables, locale, timezone)
            dressed[part] = rendered[part]
        return dressed


def compile_layout(
    html: str, text: str, locales: Mapping[str, Mapping[str, str]]
) -> CompiledLayout:
    """Compile a layout; raises :class:`TemplateError` naming the part (``html``,
    ``locales.de.text``) and the line, or the missing slot."""
    base = {"html": html, "text": text}
    compiled = _compile_parts(base)
    variants: dict[str, dict[str, CompiledTemplate]] = {}
    for locale, overrides in locales.items():
        try:
            variants[locale] = _compile_parts({**base, **overrides})
        except TemplateError as exc:
            raise TemplateError(f"locales.{locale}.{exc.message}", line=exc.line) from exc
    return CompiledLayout(compiled, variants)


def compile_stored_layout(
    html: str, text: str, locales: Mapping[str, Mapping[str, str]]
) -> CompiledLayout:
    """Like :func:`compile_layout`, for a layout already stored: one that no longer compiles
    (the rules got stricter) fails every render it is used in."""
    try:
        return compile_layout(html, text, locales)
    except TemplateError as exc:
        refused = unusable(f"the stored layout is refused: {exc.message}")
        return CompiledLayout(dict.fromkeys(FIELDS, refused))


@dataclass(frozen=True, slots=True)
class Look:
    """What a tenant's messages are dressed in: its brand (``brand.*`` in every template
    and layout; None: the tenant has none), its layouts and its default layout."""

    brand: Mapping[str, Any] | None = None
    default: str | None = None
    layouts: Mapping[str, CompiledLayout] = field(default_factory=dict)

    def layout_for(self, choice: Choice) -> CompiledLayout | None:
        """The layout a template's choice names; None: no layout. A layout named that does
        not exist is a template error (its render fails, as a missing variable's would)."""
        if choice is False:
            return None
        name = choice if isinstance(choice, str) else self.default
        if name is None:
            return None
        found = self.layouts.get(name)
        if found is None:
            raise TemplateError(f"layout: no layout named {name!r}")
        return found

    def dress(
        self,
        channel: str,
        choice: Choice,
        content: Any,
        context: Mapping[str, Any],
        locale: str | None = None,
        timezone: str | None = None,
    ) -> Any:
        """A channel's rendered content, laid out when it is an email with a layout."""
        if channel != "email" or not isinstance(content, Mapping):
            return content
        layout = self.layout_for(choice)
        if layout is None:
            return content
        return layout.wrap(content, context, locale, timezone)


NO_LOOK = Look()
