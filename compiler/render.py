"""Render the generated documents from Jinja templates.

Every environment is sandboxed (users may override templates with their
own) and uses StrictUndefined, so a typo in a template fails the compile
instead of silently printing nothing. HTML templates autoescape, so text
from a spec (or later from prompts and justifications) cannot inject markup.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import TemplateError, TemplateNotFound

from rlhfspec.common.errors import CompilerError
from rlhfspec.common.templating import environment

DOCUMENTS = ("criteria", "playbook", "sampling")
FORMATS = ("md", "html")


def render_all(context: Mapping[str, Any], user_templates: Path | None = None) -> dict[str, str]:
    """Render every document in every format; keys are output file names."""
    env = environment(user_templates)
    rendered: dict[str, str] = {}
    for doc in DOCUMENTS:
        for fmt in FORMATS:
            name = f"{doc}.{fmt}.j2"
            try:
                rendered[f"{doc}.{fmt}"] = env.get_template(name).render(**context)
            except TemplateNotFound as exc:
                raise CompilerError(
                    f"template {exc.name} not found in the shipped templates"
                    + (f" or {user_templates}" if user_templates else "")
                ) from None
            except TemplateError as exc:
                lineno = getattr(exc, "lineno", None)
                where = f" (line {lineno})" if lineno else ""
                raise CompilerError(f"template {name}{where}: {exc}", exit_code=1) from None
    return rendered
