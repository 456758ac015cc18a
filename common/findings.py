"""What every report made of findings shares: errors, warnings and a verdict."""

from __future__ import annotations

from typing import Any


class FindingsReport:
    """Mixin for report dataclasses with a `findings` list of objects that have a `severity`."""

    findings: list[Any]

    @property
    def errors(self) -> list[Any]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Any]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors
