"""What every semantic check shares: the spec, its positions, and how a diagnostic is emitted.

The checks themselves live by stage: compiler/semantic_data.py (criteria, lock, prompts,
annotation), compiler/semantic_training.py (reward model, policy, evaluation, compute), and
compiler/semantic.py runs them all (and the file checks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhfspec.compiler.diagnostics import Diagnostic, json_path, make
from rlhfspec.compiler.schema_check import Locator
from rlhfspec.compiler.schemas import JsonPath

RECOMMENDED_VALIDATION_SHARE = (0.10, 0.15)
RECOMMENDED_GOLD_SHARE = (0.05, 0.10)
RECOMMENDED_SESSION_MINUTES = 90
# the seed: "kappa above 0.6 is a reasonable target; below 0.4, your criteria document
# likely has ambiguity that needs resolution before you continue"
GUIDANCE_AGREEMENT = {"target": 0.6, "floor": 0.4}
# a correlation limit this high never trips on real data: the guard is decorative
LOOSE_CORRELATION = 0.9


class CheckerBase:
    """The resolved spec, the raw one (what the user wrote), and the diagnostics so far."""

    def __init__(
        self,
        spec: dict[str, Any],
        raw: dict[str, Any],
        schema: dict[str, Any],
        locator: Locator,
        *,
        file: str,
        spec_path: Path | None,
    ) -> None:
        self.spec = spec
        self.raw = raw
        self.schema = schema
        self.locator = locator
        self.file = file
        self.spec_path = spec_path
        self.out: list[Diagnostic] = []

    def emit(
        self, code: str, message: str, path: JsonPath, *, hint: str | None = None, key: bool = False
    ) -> None:
        line, col = self.locator.key(path) if key else self.locator.value(path)
        self.out.append(
            make(code, message, file=self.file, line=line, col=col, path=json_path(path), hint=hint)
        )
