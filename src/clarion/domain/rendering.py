"""Template rendering in a Jinja sandbox.

A template's content is, per channel, a mapping of fields to template strings (the webhook
body is any JSON whose strings are templates). Everything is compiled once, when stored or
first used, and rendered many times. The sandbox is immutable: a template can read the data
it is given, never change it, and never reach Python internals.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Template, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError, TemplateRuntimeError

from clarion.domain.htmltext import html_to_text
from clarion.domain.localized import FILTERS
from clarion.domain.template_check import prepare
from clarion.domain.template_limits import STATE, RenderState
from clarion.domain.template_sandbox import ClarionSandbox, make_environment
from clarion.errors import MissingVariable, TemplateError

_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'")

_PLAIN = make_environment(autoescape=False, filters=FILTERS)
_HTML = make_environment(autoescape=True, filters=FILTERS)
# Fields rendered with HTML escaping of the data placed in them.
_HTML_FIELDS = frozenset({"html"})


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    """A channel's content, compiled: the same shape as the source with templates in it.

    ``text_from_html``: an email with HTML and no text part; rendering derives the text.
    """

    tree: Any
    text_from_html: bool = False

    def render(
        self, context: Mapping[str, Any], locale: str | None = None, timezone: str | None = None
    ) -> Any:
        """Render with ``context``'s variables. ``locale`` and ``timezone`` drive the
        localized filters; left out, they are the context's ``recipient``'s (the planner's
        context always sets ``recipient`` itself, after the data, so data cannot spoof it)."""
        recipient = context.get("recipient")
        if isinstance(recipient, Mapping):
            locale = locale or recipient.get("locale")
            timezone = timezone or recipient.get("timezone")
        variables = dict(context)
        variables[STATE] = RenderState(locale, timezone)
        rendered = _render_tree(self.tree, variables)
        if self.text_from_html and isinstance(rendered, dict) and "html" in rendered:
            rendered["text"] = html_to_text(rendered["html"])
        return rendered


def _compile_string(source: str, field: str | None) -> Template | str:
    env: ClarionSandbox = _HTML if field in _HTML_FIELDS else _PLAIN
    if "{" not in source:
        return source
    where = f"{field}: " if field else ""
    try:
        template = env.from_string(prepare(env, source))
    except TemplateSyntaxError as exc:
        raise TemplateError(f"{where}line {exc.lineno}: {exc.message}", line=exc.lineno) from exc
    except TemplateError as exc:
        raise TemplateError(f"{where}{exc.message}", line=exc.line) from exc
    # Every render makes a context that copies the keys of the template's globals: from a
    # plain dict, not the ChainMap over the environment's (which never changes once made).
    template.globals = dict(template.globals)
    return template


def _compile_tree(node: Any, field: str | None) -> Any:
    if isinstance(node, str):
        return _compile_string(node, field)
    if isinstance(node, Mapping):
        return {key: _compile_tree(value, str(key)) for key, value in node.items()}
    if isinstance(node, list):
        return [_compile_tree(value, field) for value in node]
    return node


@dataclass(frozen=True, slots=True)
class _Unusable:
    """Stands for a stored template that no longer compiles: rendering it fails."""

    message: str


def unusable(message: str) -> CompiledTemplate:
    """Content whose every render fails with ``message`` (a template error)."""
    return CompiledTemplate(_Unusable(message))


def _render_tree(node: Any, variables: dict[str, Any]) -> Any:
    # Most common first: a compiled tree holds dicts, templates, lists and plain values.
    if isinstance(node, dict):
        return {key: _render_tree(value, variables) for key, value in node.items()}
    if isinstance(node, Template):
        return _render_one(node, variables)
    if isinstance(node, list):
        return [_render_tree(value, variables) for value in node]
    if isinstance(node, _Unusable):
        raise TemplateError(node.message)
    return node


def _render_one(template: Template, variables: dict[str, Any]) -> str:
    try:
        context = template.new_context(variables, shared=True)
        return template.environment.concat(template.root_render_func(context))
    except UndefinedError as exc:
        match = _UNDEFINED_NAME.search(str(exc))
        name = (match.group(1) or match.group(2)) if match else str(exc)
        raise MissingVariable(name) from exc
    except SecurityError as exc:
        raise TemplateError(f"refused by the sandbox: {exc}") from exc
    except TemplateError:
        raise
    except TemplateRuntimeError as exc:
        raise TemplateError(f"render failed: {exc}") from exc
    except RecursionError as exc:
        raise TemplateError("render failed: nested too deeply") from exc
    except Exception as exc:  # data of any shape meets template code of any shape
        raise TemplateError(f"render failed: {exc}") from exc


def compile_content(content: Mapping[str, Any], channel: str | None = None) -> CompiledTemplate:
    """Compile one channel's content; raises :class:`TemplateError` naming the line."""
    derive = channel == "email" and "html" in content and "text" not in content
    return CompiledTemplate(_compile_tree(content, None), text_from_html=derive)


def compile_channels(channels: Mapping[str, Mapping[str, Any]]) -> dict[str, CompiledTemplate]:
    compiled = {}
    for channel, content in channels.items():
        try:
            compiled[channel] = compile_content(content, channel)
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


# A channel's content may carry, under this key, the content its digest is rendered from
# (with ``items`` and ``count``); it is never part of the channel's own message.
DIGEST_KEY = "digest"
# An in-app part's offline fallback (``fallback_after``, ``fallback_channel``): fields of the
# template, run as steps of its send (pipeline/runs.py), never part of the message.
OFFLINE_KEYS = ("fallback_after", "fallback_channel")
# The email part's layout (domain/layouts.py): a name, null (the tenant's default) or false
# (none); a field of the template, never part of the message.
LAYOUT_KEY = "layout"


@dataclass(frozen=True, slots=True)
class CompiledVersion:
    """A template version, compiled: per channel, and per locale with overrides merged.

    ``digests`` and ``locale_digests`` hold, the same way, each channel's digest content
    (only for the channels that have one)."""

    category: str
    channels: dict[str, CompiledTemplate]
    locales: dict[str, dict[str, CompiledTemplate]]
    # channel -> the channel critical notifications use when it has no healthy provider
    fallbacks: dict[str, str] = dataclasses.field(default_factory=dict)
    digests: dict[str, CompiledTemplate] = dataclasses.field(default_factory=dict)
    locale_digests: dict[str, dict[str, CompiledTemplate]] = dataclasses.field(default_factory=dict)
    # The in-app part's offline fallback: after how long unseen (a duration), and on which
    # channel.
    offline: tuple[str, str] | None = None
    # The email part's layout: a layout's name, None (the tenant's default) or False (none).
    layout: str | bool | None = None

    def for_channel(self, channel: str, locale: str | None) -> tuple[str | None, CompiledTemplate]:
        for candidate in locale_chain(locale, self.locales):
            compiled = self.locales[candidate].get(channel)
            if compiled is not None:
                return candidate, compiled
        return None, self.channels[channel]

    def digest_version(self) -> CompiledVersion:
        """The version a digest is rendered with: each channel's digest content in place of
        its content. A channel without digest content renders as a template error."""
        missing = CompiledTemplate(_Unusable("the template has no digest content for this channel"))
        return CompiledVersion(
            self.category,
            {channel: self.digests.get(channel, missing) for channel in self.channels},
            self.locale_digests,
            layout=self.layout,
        )


def offline_of(channels: Mapping[str, Any]) -> tuple[str, str] | None:
    """The in-app part's offline fallback, if it names one (checked when stored)."""
    inapp = channels.get("inapp")
    if not isinstance(inapp, Mapping):
        return None
    after, channel = inapp.get("fallback_after"), inapp.get("fallback_channel")
    return (after, channel) if isinstance(after, str) and isinstance(channel, str) else None


def layout_of(channels: Mapping[str, Any]) -> str | bool | None:
    """The layout the email part names: a name, None (the default) or False (none)."""
    email = channels.get("email")
    chosen = email.get(LAYOUT_KEY) if isinstance(email, Mapping) else None
    return chosen if isinstance(chosen, str) or chosen is False else None


# The keys of each channel's part that are fields of the template, not of its message.
_TEMPLATE_KEYS = {"inapp": frozenset(OFFLINE_KEYS), "email": frozenset({LAYOUT_KEY})}


def _message_parts(channels: Mapping[str, Any]) -> dict[str, Any]:
    return {
        channel: (
            {k: v for k, v in content.items() if k not in _TEMPLATE_KEYS[channel]}
            if channel in _TEMPLATE_KEYS and isinstance(content, Mapping)
            else content
        )
        for channel, content in channels.items()
    }


def _split(content: Mapping[str, Any]) -> tuple[dict[str, Any], Mapping[str, Any] | None]:
    """A channel's own content, and its digest content if it has one."""
    own = {key: value for key, value in content.items() if key != DIGEST_KEY}
    digest = content.get(DIGEST_KEY)
    if digest is not None and not isinstance(digest, Mapping):
        raise TemplateError(f"{DIGEST_KEY}: must be an object of fields, like the channel's")
    return own, digest


def _compile_split(
    channels: Mapping[str, Mapping[str, Any]],
) -> tuple[dict[str, CompiledTemplate], dict[str, CompiledTemplate]]:
    own: dict[str, dict[str, Any]] = {}
    digests: dict[str, Mapping[str, Any]] = {}
    for channel, content in channels.items():
        try:
            own[channel], digest = _split(content)
        except TemplateError as exc:
            raise TemplateError(f"{channel}.{exc.message}", line=exc.line) from exc
        if digest is not None:
            digests[channel] = digest
    compiled = compile_channels(own)
    try:
        compiled_digests = compile_channels(digests)
    except TemplateError as exc:
        raise TemplateError(f"{DIGEST_KEY}.{exc.message}", line=exc.line) from exc
    return compiled, compiled_digests


def compile_version(
    category: str, channels: Mapping[str, Mapping[str, Any]], locales: Mapping[str, Any]
) -> CompiledVersion:
    """Compile every channel, and every locale's overrides merged over the default content
    (a locale's ``digest`` replaces the channel's whole digest content). The in-app
    part's offline fallback is kept apart (``offline``), out of its content, and so is the
    email part's layout (``layout``)."""
    offline, layout = offline_of(channels), layout_of(channels)
    channels = _message_parts(channels)
    base, digests = _compile_split(channels)
    per_locale: dict[str, dict[str, CompiledTemplate]] = {}
    per_locale_digests: dict[str, dict[str, CompiledTemplate]] = {}
    for locale, overrides in locales.items():
        merged = _message_parts(
            {
                channel: {**channels[channel], **content}
                for channel, content in overrides.items()
                if channel in channels and isinstance(content, Mapping)
            }
        )
        try:
            per_locale[locale], per_locale_digests[locale] = _compile_split(merged)
        except TemplateError as exc:
            raise TemplateError(f"locales.{locale}.{exc.message}", line=exc.line) from exc
    return CompiledVersion(
        category,
        base,
        per_locale,
        digests=digests,
        locale_digests=per_locale_digests,
        offline=offline,
        layout=layout,
    )


def compile_stored(
    category: str, channels: Mapping[str, Mapping[str, Any]], locales: Mapping[str, Any]
) -> CompiledVersion:
    """Like :func:`compile_version`, for a version already stored: one that no longer
    compiles (the rules got stricter) renders as a template error on every channel."""
    try:
        return compile_version(category, channels, locales)
    except TemplateError as exc:
        unusable = CompiledTemplate(_Unusable(f"the stored template is refused: {exc.message}"))
        return CompiledVersion(category, dict.fromkeys(channels, unusable), {})
