"""Compile a spec into plan.json and its documents, or check they are current.

Output is written only after everything rendered, each file atomically, so
a failed compile never leaves a half-updated build folder; `--check` lets CI
fail when someone edited the spec but forgot to recompile.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import CompilerError
from rlhfspec.common.fileio import atomic_write_bytes
from rlhfspec.common.hashing import sha256_bytes
from rlhfspec.compiler.diagnostics import Diagnostic
from rlhfspec.compiler.lockfile import changes_since, criteria_hash
from rlhfspec.compiler.plan import build_plan, generator, input_fingerprints, lock_history
from rlhfspec.compiler.render import render_all
from rlhfspec.compiler.validate import validate_file

PLAN_FILE = "plan.json"


@dataclass
class CompileResult:
    diagnostics: list[Diagnostic]
    files: dict[str, bytes] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    # what the plan was built from, so that `for_folder` re-anchors it without compiling again
    spec: dict[str, Any] | None = None
    spec_path: Path | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    documents: dict[str, str] = field(default_factory=dict)

    def for_folder(self, out_dir: Path) -> CompileResult:
        """The same compile with plan.json written for `out_dir` (its `spec.dir` is relative to
        it): validation and rendering are not repeated."""
        if self.spec is None or self.spec_path is None:
            return self
        plan = build_plan(self.spec, self.spec_path, out_dir, self.inputs, self.documents)
        files = dict(self.files)
        files[PLAN_FILE] = plan_bytes(plan)
        return CompileResult(
            self.diagnostics, files, plan, self.spec, self.spec_path, self.inputs, self.documents
        )


def plan_bytes(plan: dict[str, Any]) -> bytes:
    """plan.json as strict JSON: allow_nan=False, so no NaN or Infinity literal is ever written."""
    return (json.dumps(plan, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def document_context(
    spec: dict[str, Any], spec_path: Path, inputs: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the document templates see (documented in docs/templates.md)."""
    by_path = {i["path"]: i for i in inputs}
    sources = []
    for source in spec["prompts"]["sources"]:
        fp = by_path.get(source["path"], {})
        sources.append(
            {
                "id": source["id"],
                "kind": source["kind"],
                "path": source["path"],
                "description": source["description"],
                "rows": fp.get("rows"),
                "sha256": fp.get("sha256"),
                "privacy_review": source.get("privacy_review"),
            }
        )
    return {
        "spec": spec,
        "meta": {
            "name": spec["name"],
            "spec_file": spec_path.name,
            "spec_sha256": sha256_bytes(spec_path.read_bytes()),
            "criteria_version": spec["criteria"]["version"],
            "criteria_sha256": criteria_hash(spec["criteria"]),
            "generator": generator(),
            "lock_history": lock_history(spec_path),
            "changes": changes_since(spec_path, spec["criteria"]),
        },
        "sources": sources,
    }


def compile_spec(
    spec_path: Path,
    out_dir: Path,
    *,
    strict: bool = False,
    templates: Path | None = None,
    display: str | None = None,
) -> CompileResult:
    """Validate, then render documents and the plan in memory (nothing written)."""
    result = validate_file(spec_path, strict=strict, display=display)
    if not result.ok or result.resolved is None:
        return CompileResult(result.diagnostics)
    spec = result.resolved
    inputs = input_fingerprints(spec, spec_path.parent)
    documents = render_all(document_context(spec, spec_path, inputs), templates)
    plan = build_plan(spec, spec_path, out_dir, inputs, documents)
    files = {name: text.encode("utf-8") for name, text in sorted(documents.items())}
    files[PLAN_FILE] = plan_bytes(plan)
    return CompileResult(result.diagnostics, files, plan, spec, spec_path, inputs, documents)


def write_outputs(out_dir: Path, files: dict[str, bytes]) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            atomic_write_bytes(out_dir / name, data)
    except OSError as exc:
        raise CompilerError(
            f"cannot write to {out_dir}: {exc.strerror or exc}", exit_code=1
        ) from None


def stale_outputs(out_dir: Path, files: dict[str, bytes]) -> list[str]:
    """Files in `out_dir` that are missing or differ from a fresh compile."""
    stale = []
    for name, data in files.items():
        target = out_dir / name
        if not target.is_file():
            stale.append(f"{name} (missing)")
        elif target.read_bytes() != data:
            stale.append(f"{name} (out of date)")
    return stale
