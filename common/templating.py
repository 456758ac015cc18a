"""The one Jinja environment for every document and report we render.

Every environment is sandboxed (users may override templates with their
own) and uses StrictUndefined, so a typo in a template fails instead of
silently printing nothing. HTML templates autoescape, so text from a spec,
prompts or justifications cannot inject markup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    TemplateError,
    select_autoescape,
)
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rlhfspec.common.errors import RunError
from rlhfspec.common.markdown import markdown_block, markdown_html


def environment(user_templates: Path | None = None) -> ImmutableSandboxedEnvironment:
    """A sandboxed environment; user templates, when given, shadow the shipped ones."""
    loaders: list[BaseLoader] = []
    if user_templates is not None:
        loaders.append(FileSystemLoader(str(user_templates)))
    loaders.append(PackageLoader("rlhfspec.templates", ""))
    env = ImmutableSandboxedEnvironment(
        loader=ChoiceLoader(loaders),
        undefined=StrictUndefined,
        autoescape=select_autoescape(
            enabled_extensions=("html", "html.j2"), default_for_string=False
        ),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = markdown_inline
    env.filters["md_block"] = markdown_block
    env.filters["md_html"] = markdown_html
    env.filters["title_id"] = lambda ident: (
        str(ident).replace("_", " ").replace("-", " ").capitalize()
    )
    return env


def markdown_inline(text: Any) -> str:
    """Escape characters that would turn user text into Markdown markup or HTML."""
    out = str(text)
    for char in ("\\", "`", "*", "_", "[", "]", "<", ">", "|", "#"):
        out = out.replace(char, "\\" + char)
    return " ".join(out.splitlines())


def render_template(name: str, values: dict[str, Any]) -> str:
    """Render one shipped report template; a template error is a located RunError (exit 1)."""
    try:
        return str(environment().get_template(name).render(**values))
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        where = f" (line {line})" if line else ""
        raise RunError(f"template {name}{where}: {exc}") from None
