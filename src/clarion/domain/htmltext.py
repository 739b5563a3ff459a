"""Plain text from an email's HTML, for the text part when a template gives only HTML.

Scripts, styles and the head are dropped; links keep their target as ``text (url)``;
block elements and ``<br>`` break lines, paragraphs and headings leave a blank line, list
items get a dash; whitespace is collapsed and entities are decoded.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_SKIPPED = frozenset({"script", "style", "head", "title", "template", "noscript"})
_PARAGRAPHS = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote", "pre", "hr"}
)
_BLOCKS = frozenset(
    {"div", "li", "tr", "section", "article", "header", "footer", "address", "dl", "dt", "dd",
     "figure", "figcaption", "main", "nav", "aside", "center", "tbody", "thead", "tfoot"}
)  # fmt: skip
_CELLS = frozenset({"td", "th"})
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
# Breaks are marked, then each run of breaks and blanks becomes one line break, or a blank
# line when a paragraph ends or starts in it: nested blocks don't pile up empty lines.
_LINE, _PARAGRAPH = "\x00", "\x01"
_BREAKS = re.compile(r"[ \n\x00\x01]*[\x00\x01][ \n\x00\x01]*")


class _Extractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0
        self._links: list[tuple[str | None, int]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skipping += 1
        elif self._skipping:
            return
        elif tag == "br":
            self.parts.append("\n")
        elif tag == "img":
            self.parts.append(dict(attrs).get("alt") or "")
        elif tag == "a":
            self._links.append((dict(attrs).get("href"), len(self.parts)))
        else:
            self._break(tag)
            if tag == "li":
                self.parts.append("- ")
            elif tag in _CELLS:
                self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _SKIPPED:  # a self-closed <script/> has no content to skip
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skipping = max(self._skipping - 1, 0)
        elif self._skipping:
            return
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            text = "".join(self.parts[start:]).strip(" \n" + _LINE + _PARAGRAPH)
            target = _shown_target(href, text)
            if target:
                self.parts.append(f" ({target})" if text else target)
        else:
            self._break(tag)

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            text = data.replace("\n", " ").replace(_LINE, "").replace(_PARAGRAPH, "")
            self.parts.append(_SPACES.sub(" ", text))

    def _break(self, tag: str) -> None:
        if tag in _PARAGRAPHS:
            self.parts.append(_PARAGRAPH)
        elif tag in _BLOCKS:
            self.parts.append(_LINE)


def _shown_target(href: str | None, text: str) -> str | None:
    """The link target worth showing next to its text, if any."""
    if not href:
        return None
    href = href.strip()
    if href.startswith("#") or href.lower().startswith("javascript:"):
        return None
    if href.lower().startswith("mailto:"):
        href = href[len("mailto:") :]
    return None if href == text else href


def _joined_break(match: re.Match[str]) -> str:
    run = match.group()
    if _PARAGRAPH in run:
        return "\n\n"
    return "\n" * max(run.count("\n"), 1)


def html_to_text(html: str) -> str:
    """The readable text of ``html``."""
    parser = _Extractor()
    parser.feed(html)
    parser.close()
    marked = _BREAKS.sub(_joined_break, "".join(parser.parts))
    lines = (line.strip() for line in marked.split("\n"))
    text = "\n".join(_SPACES.sub(" ", line) for line in lines)
    return _BLANK_LINES.sub("\n\n", text).strip()
