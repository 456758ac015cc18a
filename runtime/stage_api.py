"""What a stage receives and returns, shared by every stage implementation.

A stage receives its plan entry (`ctx.stage`): the resolved settings it reads
(`ctx.settings`), its input files, the upstream outputs it may read
(`ctx.upstream`, refused for anything the entry does not list under `reads`)
and the outputs it must write. It never sees the whole spec: `ctx.project` is
the spec's folder with the stage's settings only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.plan_types import StageEntry
from rlhfspec.runtime.lineage import GateRecord
from rlhfspec.runtime.project import Project


def covers(declared: str, relative: str) -> bool:
    """Whether the declared run-directory path (a file or a folder) covers `relative`."""
    root = declared.rstrip("/")
    return relative == root or relative.startswith(root + "/")


@dataclass
class StageContext:
    plan: dict[str, Any]
    project: Project  # the spec's folder, with `project.spec` = this stage's settings only
    run_dir: Path
    stage: StageEntry  # the stage's plan entry
    resume: bool
    overrides: frozenset[str]
    log: Callable[[str], None]

    @property
    def settings(self) -> dict[str, Any]:
        """The resolved settings this stage reads (nested as in the spec, defaults written out)."""
        return self.stage["settings"]

    def path(self, relative: str) -> Path:
        """A path inside the run directory."""
        return self.run_dir / relative

    def upstream(self, relative: str) -> Path:
        """An output of an earlier stage that the plan entry says this stage reads."""
        if not any(covers(read, relative) for read in self.stage["reads"]):
            raise RunError(
                f"stage '{self.stage['name']}' reads {relative}, which its plan entry does not "
                "list under `reads`; this is a bug in rlhfspec"
            )
        path = self.run_dir / relative
        if not path.exists():
            raise RunError(
                f"{relative} is missing from {self.run_dir}: run the stage that writes it first"
            )
        return path


@dataclass
class Gate:
    name: str
    passed: bool
    value: float | None
    threshold: float | None
    message: str
    overridden: bool = False

    def to_dict(self) -> GateRecord:
        return {
            "name": self.name,
            "passed": self.passed,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "overridden": self.overridden,
        }


@dataclass
class StageOutcome:
    outputs: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)
    gates: list[Gate] = field(default_factory=list)
    summary: str = ""


class GateFailure(RunError):
    """A stage's gate failed and was not overridden; its outputs are kept for inspection."""

    def __init__(self, message: str, outcome: StageOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


def apply_gates(ctx: StageContext, outcome: StageOutcome) -> StageOutcome:
    """Mark overridden gates; raise GateFailure when any other gate failed."""
    failed = []
    for gate in outcome.gates:
        if not gate.passed and gate.name in ctx.overrides:
            gate.overridden = True
            ctx.log(
                f"gate {gate.name} failed but is overridden (--override-gate); recorded in lineage"
            )
        elif not gate.passed:
            failed.append(gate)
    if failed:
        lines = "\n".join(f"  {g.name}: {g.message}" for g in failed)
        names = " ".join(f"--override-gate {g.name}" for g in failed)
        raise GateFailure(
            f"stage '{ctx.stage['name']}' failed its gates:\n{lines}\n"
            f"fix the cause, or rerun with {names} to proceed anyway (recorded in lineage.json)",
            outcome,
        )
    return outcome
