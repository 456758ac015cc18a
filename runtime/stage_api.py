"""What a stage receives and returns, shared by every stage implementation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.project import Project


@dataclass
class StageContext:
    plan: dict[str, Any]
    project: Project
    run_dir: Path
    stage: dict[str, Any]
    resume: bool
    overrides: frozenset[str]
    log: Callable[[str], None]

    @property
    def spec(self) -> dict[str, Any]:
        return self.project.spec

    def path(self, relative: str) -> Path:
        """A path inside the run directory."""
        return self.run_dir / relative

    def upstream(self, relative: str) -> Path:
        """An output of an earlier stage; missing means the stage did not run here."""
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

    def to_dict(self) -> dict[str, Any]:
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
