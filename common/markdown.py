"""Team-written Markdown (the spec's guidance sections), made safe to embed in our documents.

Guidance is free Markdown on purpose: hard cases read better as lists, bold and headings than
as one escaped line. What it must not do is inject markup: raw HTML (a `<script>` or an
`<img onerror>` in a spec, or in a template override's data) or a `javascript:` link would
run in the reader's browser. Both outputs are parsed with markdown-it (CommonMark), so what
counts as code, a heading or a link is decided the way a renderer decides it, not by a regex:

* `markdown_block` (the .md documents): the text stays Markdown; every `<` outside code
  blocks becomes `&lt;`, so no renderer sees an HTML tag or an autolink; links whose scheme
  is not http(s)/mailto lose their target; headings are moved below the section they sit in.
* `markdown_html` (the .html documents): rendered by markdown-it with HTML off and images
  off (an image would load a remote URL when the page is opened), links validated by
  markdown-it's own scheme check; headings moved down the same way. The result is `Markup`,
  so autoescaping leaves it as rendered.
"""

from __future__ import annotations

import re
from typing import Any

from markdown_it import MarkdownIt
from markupsafe import Markup

_SAFE_SCHEMES = re.compile(r"^(https?:|mailto:|#|/|\.)", re.IGNORECASE)
_DEFINITION = re.compile(r"^( {0,3}\[[^\]]+\]:)\s*(\S+).*$")
_ATX = re.compile(r"^( {0,3})(#{1,6})(?=\s|$)")


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.disable("image")
    return md


def _code_lines(text: str) -> set[int]:
    """Line numbers (0-based) inside fenced or indented code blocks, where `<` is literal."""
    lines: set[int] = set()
    for token in _parser().parse(text):
        if token.type in ("fence", "code_block") and token.map:
            lines.update(range(token.map[0], token.map[1]))
    return lines


def _demote(line: str, level: int) -> str:
    """An ATX heading moved so that `#` becomes level `level` (at most 6)."""
    match = _ATX.match(line)
    if not match:
        return line
    new = min(6, len(match.group(2)) + level - 1)
    return match.group(1) + "#" * new + line[match.end() :]


def _neutralise_links(line: str) -> str:
    """`[text](javascript:...)` keeps its text and loses its target."""

    def fix(m: re.Match[str]) -> str:
        target = m.group(1).strip().lstrip("<")
        return m.group(0) if _SAFE_SCHEMES.match(target) else "]()"

    line = re.sub(r"\]\(([^)]*)\)", fix, line)
    definition = _DEFINITION.match(line)
    if definition and not _SAFE_SCHEMES.match(definition.group(2).lstrip("<")):
        line = definition.group(1) + " #"
    return line


def markdown_block(text: Any, level: int = 3) -> str:
    """Team Markdown for a .md document: no raw HTML, no unsafe link, headings from `level`.

    Lines keep their breaks (a list stays a list); trailing spaces and blank edges go, so the
    output is the same bytes for the same input.
    """
    source = str(text).replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    code = _code_lines(source)
    out = []
    for number, line in enumerate(source.split("\n")):
        line = line.rstrip()
        if number not in code:
            line = line.replace("<", "&lt;").replace("![", "!\\[")  # no tag, no remote image
            line = _neutralise_links(_demote(line, level))
        out.append(line)
    return "\n".join(out).strip()


def markdown_html(text: Any, level: int = 3) -> Markup:
    """Team Markdown as HTML: HTML and images off, links checked, headings from `level`."""
    md = _parser()
    tokens = md.parse(str(text))
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(6, int(token.tag[1]) + level - 1)}"
    return Markup(md.renderer.render(tokens, md.options, {}).strip())  # noqa: S704 - rendered with html off
