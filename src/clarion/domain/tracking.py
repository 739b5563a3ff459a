"""Open and click tracking of an email's HTML: its links sent through a redirect, an image
added to see it opened.

The HTML is read with the standard library's HTML parser, as the text part is made from it
(domain/htmltext.py): only the ``href`` of real ``<a>`` start tags is changed, never text
that looks like a tag inside a comment, a script, a style or an attribute. Each such tag is
written again from its parsed attributes (values escaped, order kept); everything else is
left byte for byte as it was. A link whose ``data-clarion-track`` is ``off`` stays as it is.

Only ``http`` and ``https`` links are candidates (:func:`trackable`): ``mailto:``,
``tel:``, anchors, relative links and ``javascript:`` never are.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from html.parser import HTMLParser
from urllib.parse import urlsplit

# A tracked link's target fits in its signed token (security/tracking.py): longer ones are
# left as they are.
MAX_URL = 2048
OPT_OUT = "data-clarion-track"
# What a browser drops from a URL written in an attribute: tabs and line breaks anywhere,
# spaces and control characters at either end.
_DROPPED = re.compile(r"[\t\n\r]")
_EDGES = "".join(chr(c) for c in range(0x21))

Attrs = list[tuple[str, str | None]]


def trackable(href: str | None) -> str | None:
    """The absolute http(s) URL ``href`` stands for, as a browser reads it; None for any
    other link (another scheme, relative, an anchor), and for one that is not printable
    ASCII or longer than ``MAX_URL``."""
    if not href:
        return None
    url = _DROPPED.sub("", href).strip(_EDGES)
    if not url or len(url) > MAX_URL or not url.isascii() or not url.isprintable():
        return None
    if " " in url or "\\" in url:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    return url


class _Tags(HTMLParser):
    """Where the ``<a>`` start tags and the last ``</body>`` are."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[tuple[tuple[int, int], str, Attrs]] = []
        self.body_end: tuple[int, int] | None = None

    def handle_starttag(self, tag: str, attrs: Attrs) -> None:
        if tag == "a":
            self.anchors.append((self.getpos(), self.get_starttag_text() or "", attrs))

    def handle_startendtag(self, tag: str, attrs: Attrs) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "body":
            self.body_end = self.getpos()


def _offsets(source: str) -> list[int]:
    """The offset of each line's start (the parser counts lines by ``\\n``)."""
    return [0, *(m.end() for m in re.finditer("\n", source))]


def _tag(raw: str, attrs: Attrs) -> str:
    written = "".join(
        f" {name}" if value is None else f' {name}="{html.escape(value, quote=True)}"'
        for name, value in attrs
    )
    return f"<a{written}{'/>' if raw.endswith('/>') else '>'}"


def _with_href(attrs: Attrs, link: Callable[[str], str | None]) -> Attrs | None:
    """The attributes with the (first) ``href`` replaced, or None to leave the tag alone."""
    if any(name == OPT_OUT and (value or "").strip().lower() == "off" for name, value in attrs):
        return None
    for index, (name, value) in enumerate(attrs):
        if name == "href":
            target = link(value) if value is not None else None
            if target is None:
                return None
            return [*attrs[:index], ("href", target), *attrs[index + 1 :]]
    return None


def rewrite(source: str, link: Callable[[str], str | None] | None, pixel: str | None) -> str:
    """``source`` with each ``<a href>`` replaced by ``link(href)`` (None: left alone) and,
    when ``pixel`` is given, that image URL added as a 1x1 image before the last
    ``</body>`` (at the end when there is none)."""
    tags = _Tags()
    tags.feed(source)
    tags.close()
    lines = _offsets(source)
    edits: list[tuple[int, int, str]] = []
    if link is not None:
        for (line, column), raw, attrs in tags.anchors:
            start = lines[line - 1] + column
            if not raw or source[start : start + len(raw)] != raw:
                continue  # not where the parser said: leave it rather than guess
            changed = _with_href(attrs, link)
            if changed is not None:
                edits.append((start, start + len(raw), _tag(raw, changed)))
    if pixel is not None:
        image = (
            f'<img src="{html.escape(pixel, quote=True)}" width="1" height="1" alt="" '
            'style="display:block;width:1px;height:1px;border:0" />'
        )
        at = len(source)
        if tags.body_end is not None:
            line, column = tags.body_end
            at = lines[line - 1] + column
        edits.append((at, at, image))
    out, done = [], 0
    for start, end, text in sorted(edits, key=lambda edit: edit[0]):
        out += [source[done:start], text]
        done = end
    out.append(source[done:])
    return "".join(out)
