"""The prompt pool: every prompt of every source, and the production holdout.

The prompts stage reserves the holdout by the spec's rule (`load_prompt_pool`:
the last `holdout_count(n, share)` rows of each usage-log source, the most
recent logs) and writes it to `HOLDOUT_FILE`; later stages read that file
(`read_holdout`, `pool_with_holdout`) instead of applying the rule again.
Unreadable prompt rows and duplicate prompt ids are refused with a `RunError`
naming file, line and field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfspec.common.jsonl import missing_strings, read_objects, read_rows, refusal
from rlhfspec.common.prompt_messages import row_messages, row_problems, row_text
from rlhfspec.runtime.project import Project

#: Where the prompts stage writes the reserved production holdout in a run directory.
HOLDOUT_FILE = "prompts/holdout.jsonl"


@dataclass(frozen=True)
class Prompt:
    """One prompt row and where it came from (file and line, for messages).

    `text` is the row's ``text``, or the transcript of its ``messages`` (a multi-turn prompt,
    `rlhfspec.common.prompt_messages`); `messages` is None for a one-turn prompt."""

    id: str
    text: str
    source: str
    kind: str
    file: str
    line: int
    row: dict[str, Any]

    @property
    def words(self) -> int:
        return len(self.text.split())

    @property
    def messages(self) -> list[dict[str, str]] | None:
        return row_messages(self.row)

    @property
    def chat(self) -> str | list[dict[str, str]]:
        """The prompt as the model formatter takes it: its messages, else its text."""
        return self.messages or self.text


OUTSIDE_FOCUS = "outside_focus"
"""The evaluation set of prompts `prompts.focus` leaves out: scored, reported, never pooled."""


@dataclass
class PromptPool:
    """Every prompt of every source, in source then file order, and the holdout."""

    prompts: list[Prompt]
    holdout_ids: frozenset[str]
    by_id: dict[str, Prompt] = field(default_factory=dict)
    focus: dict[str, list[str]] = field(default_factory=dict)
    """`prompts.focus`: field -> allowed values (narrow fine-tuning); empty keeps every prompt."""

    def __post_init__(self) -> None:
        self.by_id = {p.id: p for p in self.prompts}

    @property
    def available(self) -> list[Prompt]:
        """Prompts that may be annotated or trained on: everything but the holdout."""
        return [p for p in self.prompts if p.id not in self.holdout_ids]

    def in_focus(self, prompt: Prompt) -> bool:
        """Whether `prompts.focus` keeps the prompt: `source` is the source's id, `kind` its
        kind, any other key a field of the prompt's row; every key must match."""
        for key, allowed in self.focus.items():
            value = {"source": prompt.source, "kind": prompt.kind}.get(key, prompt.row.get(key))
            if str(value) not in allowed:
                return False
        return True

    @property
    def focused(self) -> list[Prompt]:
        """Available prompts inside the focus: what is annotated and trained on."""
        return [p for p in self.available if self.in_focus(p)]

    @property
    def outside_focus(self) -> list[Prompt]:
        """Available prompts the focus leaves out: still evaluated, never trained on."""
        return [p for p in self.available if not self.in_focus(p)]

    def keep_in_focus(self, rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """Rows (with a `prompt_id`) whose prompt the focus keeps, and how many it left out;
        rows of an unknown prompt are kept for their consumer to report."""
        kept = [
            r
            for r in rows
            if r["prompt_id"] not in self.by_id or self.in_focus(self.by_id[r["prompt_id"]])
        ]
        return kept, len(rows) - len(kept)

    @property
    def holdout(self) -> list[Prompt]:
        return [p for p in self.prompts if p.id in self.holdout_ids]


def holdout_count(n: int, share: float) -> int:
    """Rows of an n-row usage-log source held out: n - floor((1 - share) * n).

    The epsilon keeps float noise from flipping the floor (0.9 * 390 must be
    351, not 350.99999...), so the count matches the schema's formula
    exactly as a person would compute it.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    return n - math.floor((1.0 - share) * n + 1e-9)


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and value != ""


def _read_source(
    project: Project, source: dict[str, Any], fields: list[str], problems: list[str]
) -> list[Prompt]:
    display = source["path"]
    prompts: list[Prompt] = []
    for number, row in read_objects(project.path(source["path"]), display, problems):
        where = f"{display}: line {number}:"
        missing = missing_strings(row, ("id",)) + row_problems(row)
        problems.extend(f"{where} field '{f}': {m}" for f, m in missing)
        bad = bool(missing)
        for name in fields:
            if name not in row:
                problems.append(f"{where} field '{name}': missing (it is a strata field)")
                bad = True
            elif not _scalar(row[name]):
                problems.append(
                    f"{where} field '{name}': must be a string or number, got {row[name]!r}"
                )
                bad = True
        if not bad:
            prompts.append(
                Prompt(row["id"], row_text(row), source["id"], source["kind"], display, number, row)
            )
    return prompts


def _read_sources(
    project: Project, sources: list[dict[str, Any]], fields: list[str]
) -> list[list[Prompt]]:
    """Every source's prompts, in file order; bad rows and duplicate ids refuse them all."""
    problems: list[str] = []
    per_source = [_read_source(project, source, fields, problems) for source in sources]
    first: dict[str, Prompt] = {}
    for prompt in (p for rows in per_source for p in rows):
        if prompt.id in first:
            seen = first[prompt.id]
            problems.append(
                f"{prompt.file}: line {prompt.line}: field 'id': prompt id '{prompt.id}' "
                f"already used at {seen.file}: line {seen.line}"
            )
        else:
            first[prompt.id] = prompt
    if problems:
        raise refusal("prompt sources refused", problems)
    return per_source


def load_prompt_pool(project: Project) -> PromptPool:
    """Read every prompt source and reserve the production holdout by the spec's rule.

    Shared by the prompt check and task generation so both use one holdout
    rule and one notion of which prompts exist. Later stages read the holdout
    the prompts stage wrote instead (`pool_with_holdout`).
    """
    spec = project.spec["prompts"]
    share = float(spec["production_holdout"]["share"])
    per_source = _read_sources(project, spec["sources"], list(spec["strata"]["fields"]))
    holdout: set[str] = set()
    for source, rows in zip(spec["sources"], per_source, strict=True):
        if source["kind"] == "usage_logs":
            count = holdout_count(len(rows), share)
            holdout.update(p.id for p in rows[len(rows) - count :])
    return PromptPool(
        [p for rows in per_source for p in rows], frozenset(holdout), focus=dict(spec["focus"])
    )


def pool_with_holdout(project: Project, holdout: list[dict[str, Any]]) -> PromptPool:
    """The prompt sources with the holdout the prompts stage reserved (`read_holdout`)."""
    spec = project.spec["prompts"]
    per_source = _read_sources(project, spec["sources"], [])
    return PromptPool(
        [p for rows in per_source for p in rows],
        frozenset(r["id"] for r in holdout),
        focus=dict(spec["focus"]),
    )


def read_holdout(path: Path) -> list[dict[str, Any]]:
    """The reserved production holdout as the prompts stage wrote it (`HOLDOUT_FILE`)."""
    return read_rows(path, HOLDOUT_FILE, ("id", "text"))


def holdout_row(prompt: Prompt) -> dict[str, Any]:
    """A held-out prompt's row as in its file, with its `text` (a multi-turn prompt's
    transcript when the row has only `messages`)."""
    return {**prompt.row, "text": prompt.text}


def production_holdout(project: Project) -> list[dict[str, Any]]:
    """The held-out prompt rows (as in their files), in source then file order."""
    return [holdout_row(p) for p in load_prompt_pool(project).holdout]


def prompt_texts(project: Project, path: str) -> dict[str, Prompt]:
    """The prompts of one source file by id (text, and messages when multi-turn); bad rows
    refuse the file like every prompt read."""
    problems: list[str] = []
    source = {"id": "", "kind": "", "path": path}
    rows = _read_source(project, source, [], problems)
    if problems:
        raise refusal("prompt sources refused", problems)
    return {p.id: p for p in rows}
