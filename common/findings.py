"""One finding type for every diagnostic family, and what every report made of findings shares.

A finding is one problem with a registered code (common/codes.py): the compiler's located
diagnostics (file, line, col and the spec path in `subject`), the prompt check's findings and
QC's findings (about "overall", "annotator <id>" or "batch <id>", with the measured value and
the threshold it crossed). Severity, name and meaning come from the registry, so a code's
severity never varies between call sites; `--strict` escalates a warning without changing
its code. Each report keeps its own JSON shape (`to_dict` picks the keys), so the files users
already parse do not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlhfspec.common.codes import CODES, Severity


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    hint: str | None = None
    subject: str = ""
    """What it is about: a spec path (`a.b[2].c`), "overall", "annotator <id>", "batch <id>"."""
    value: float | None = None
    threshold: float | None = None
    file: str = ""
    line: int = 0
    col: int = 0
    escalated: bool = False
    """`--strict` made this warning an error."""

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"unregistered diagnostic code {self.code!r} (see common/codes.py)")

    @property
    def severity(self) -> Severity:
        return "error" if self.escalated else CODES[self.code].severity

    @property
    def name(self) -> str:
        return CODES[self.code].name

    @property
    def title(self) -> str:
        """The name, under the key the prompt report has always used."""
        return self.name

    @property
    def path(self) -> str:
        """The subject, under the compiler's word for it (a path in the spec)."""
        return self.subject

    @property
    def annotator(self) -> str | None:
        return self.subject[len("annotator ") :] if self.subject.startswith("annotator ") else None

    @property
    def batch(self) -> str | None:
        return self.subject[len("batch ") :] if self.subject.startswith("batch ") else None

    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.file, self.line, self.col, self.code, self.message)

    def to_dict(self, keys: Sequence[str]) -> dict[str, Any]:
        """The named attributes, in the given order: each report's own JSON shape."""
        return {key: getattr(self, key) for key in keys}


class FindingsReport:
    """Mixin for report dataclasses with a `findings` list."""

    findings: Sequence[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors
