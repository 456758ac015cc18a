"""A validated spec and its folder, as the runtime commands see them.

Runtime commands that take a SPEC validate it first and work on the
resolved values (defaults written out), exactly what `compile` would put in
the plan, so the commands and the plan never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.compiler.diagnostics import format_text
from rlhfspec.compiler.validate import validate_file


@dataclass(frozen=True)
class Project:
    spec: dict[str, Any]
    spec_path: Path
    display: str

    @property
    def folder(self) -> Path:
        return self.spec_path.parent

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def path(self, relative: str) -> Path:
        return self.folder / relative

    @property
    def seed(self) -> int:
        return int(self.spec["seed"])


def load_project(spec_path: Path, *, display: str | None = None) -> Project:
    """Validate the spec; refuse to run on one with errors."""
    shown = display or str(spec_path)
    result = validate_file(spec_path, display=shown)
    if not result.ok or result.resolved is None:
        raise RunError(f"{shown} is not valid; fix it first:\n" + format_text(result.diagnostics))
    return Project(result.resolved, spec_path, shown)
