"""Validation pipeline: load with positions, check the schema, then semantics.

Semantic checks only run on a schema-valid spec: they rely on types and
required keys the schema guarantees, and their findings would be noise on
top of a structural error the user must fix first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import CompilerError
from rlhfspec.compiler import schema_check
from rlhfspec.compiler.diagnostics import Diagnostic, count, make, strictify
from rlhfspec.compiler.schemas import SPEC_SCHEMA, load_schema, with_defaults
from rlhfspec.compiler.semantic import Checker
from rlhfspec.compiler.yaml_loader import LoadedYaml, YamlLoadError, load_yaml


@dataclass
class ValidationResult:
    file: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    loaded: LoadedYaml | None = None
    resolved: dict[str, Any] | None = None

    @property
    def errors(self) -> int:
        return count(self.diagnostics)[0]

    @property
    def warnings(self) -> int:
        return count(self.diagnostics)[1]

    @property
    def ok(self) -> bool:
        return self.errors == 0


def validate_text(
    text: str | bytes,
    *,
    file: str = "<string>",
    spec_path: Path | None = None,
    strict: bool = False,
) -> ValidationResult:
    """Validate spec text; `spec_path` anchors relative paths and the lock file."""
    result = ValidationResult(file=file)
    try:
        loaded = load_yaml(text, filename=file)
    except YamlLoadError as exc:
        result.diagnostics = sorted(
            (
                make(p.code, p.message, file=file, line=p.line, col=p.col, hint=p.hint)
                for p in exc.problems
            ),
            key=Diagnostic.sort_key,
        )
        return result
    result.loaded = loaded
    if not isinstance(loaded.data, dict):
        what = "empty" if loaded.data is None else f"a {type(loaded.data).__name__}, not a mapping"
        result.diagnostics = [
            make(
                "Y007",
                f"the spec is {what}",
                file=file,
                line=1,
                col=1,
                hint="start from specs/minimal.yaml",
            )
        ]
        return result
    schema = load_schema(SPEC_SCHEMA)
    locator = schema_check.Locator(loaded.positions, loaded.key_positions)
    diags = schema_check.check(loaded.data, schema, locator, file=file)
    if not diags:
        resolved = with_defaults(schema, loaded.data)
        diags = Checker(
            resolved, loaded.data, schema, locator, file=file, spec_path=spec_path
        ).run()
        result.resolved = resolved
    if strict:
        diags = strictify(diags)
    result.diagnostics = sorted(diags, key=Diagnostic.sort_key)
    return result


def validate_file(
    path: Path, *, strict: bool = False, display: str | None = None
) -> ValidationResult:
    """Validate a spec file; one that cannot be read is a CompilerError (exit 1)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CompilerError(f"{display or path}: cannot read: {exc.strerror or exc}") from None
    return validate_text(data, file=display or str(path), spec_path=path, strict=strict)
