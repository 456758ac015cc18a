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
from rlhfspec.common.sandbox import LimitedError, run_limited, template_location
from rlhfspec.common.templating import environment

DOCUMENTS = ("criteria", "playbook", "sampling")
FORMATS = ("md", "html")
EDITIONS = {"playbook": {"playbook": "annotator", "playbook.auditor": "auditor"}}
"""Documents rendered twice from one template, with `edition` set: the annotator's edition
(what annotators are given: no internal ids, detector regexes, exact QC cutoffs) and the
auditor's (everything). The other documents are for the team and have one edition."""


def _render_documents(context: Mapping[str, Any], user_templates: Path | None) -> dict[str, str]:
    env = environment(user_templates)
    out: dict[str, str] = {}
    for doc in DOCUMENTS:
        for fmt in FORMATS:
            template = env.get_template(f"{doc}.{fmt}.j2")
            for name, edition in EDITIONS.get(doc, {doc: None}).items():
                extra = {} if edition is None else {"edition": edition}
                out[f"{name}.{fmt}"] = template.render(**context, **extra)
    return out


def render_all(context: Mapping[str, Any], user_templates: Path | None = None) -> dict[str, str]:
    """Render every document in every format; keys are output file names.

    User templates render in a child process with time and memory limits
    (common/sandbox.py): a template that loops, recurses or grows without
    bound fails with its file and line, exit 1.
    """
    if user_templates is not None:
        try:
            rendered: dict[str, str] = run_limited(
                lambda: _render_documents(context, user_templates),
                what=f"rendering the templates in {user_templates}",
            )
        except LimitedError as exc:
            raise CompilerError(f"template error: {exc}", exit_code=1) from None
        return rendered
    try:
        return _render_documents(context, None)
    except TemplateNotFound as exc:
        raise CompilerError(f"template {exc.name} not found in the shipped templates") from None
    except TemplateError as exc:
        where = template_location(exc)
        raise CompilerError(f"template error: {where or 'shipped template'}: {exc}") from None
