"""Assemble an export job folder atomically: everything goes into a temporary sibling
folder that replaces `out_dir` only once complete, so a failed export never leaves a
half-written job (nor destroys the previous one)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import CompilerError, RunError
from rlhfspec.common.fileio import atomic_write_bytes
from rlhfspec.compiler.compile import PLAN_FILE, compile_spec
from rlhfspec.compiler.diagnostics import Diagnostic, format_text
from rlhfspec.compiler.targets import get_target, spec_locator
from rlhfspec.runtime.project import Project


@dataclass
class ExportResult:
    out_dir: Path
    counts: dict[str, int]
    diagnostics: list[Diagnostic]
    manifest: dict[str, Any]


def check_export(
    spec_path: Path, target: str, display: str, out_dir: Path
) -> tuple[dict[str, Any], Any]:
    """Compile (the plan anchored in the job folder, where its copy goes) and map; a located
    error for every refused setting."""
    result = compile_spec(spec_path, out_dir, display=display)
    if result.plan is None:
        raise CompilerError(f"{display} is not valid:\n" + format_text(result.diagnostics))
    module = get_target(target)
    checked = module.check(result.plan, spec_locator(spec_path), display)
    if not checked.ok:
        raise CompilerError(
            f"{display} cannot be exported to {target}:\n" + format_text(checked.diagnostics)
        )
    return result.plan, checked


def export_job(
    spec_path: Path,
    target: str,
    out_dir: Path,
    run_dir: Path,
    *,
    display: str,
    log: Callable[[str], None] = print,
) -> ExportResult:
    plan, checked = check_export(spec_path, target, display, out_dir)
    module = get_target(target)
    manifest_name: str = module.MANIFEST
    if out_dir.exists() and not (out_dir / manifest_name).is_file():
        raise RunError(
            f"{out_dir} exists and is not an earlier export (no {manifest_name}); "
            "choose another folder"
        )
    project = Project(plan["resolved"], spec_path, display)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        from rlhfspec.runtime.export.verl_job import prepare_job

        facts, run = prepare_job(plan, project, run_dir.resolve(), tmp, log)
        files = module.render(plan, checked, facts, run)
        files[PLAN_FILE] = (json.dumps(plan, indent=2, ensure_ascii=False) + "\n").encode()
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data)
        for name in module.EXECUTABLE:
            (tmp / name).chmod(0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest = json.loads((out_dir / manifest_name).read_text(encoding="utf-8"))
    return ExportResult(out_dir, checked.counts(), checked.diagnostics, manifest)
