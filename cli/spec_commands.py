"""The spec commands: `validate`, `compile`, `lock` and `schema`.

They never import the runtime (and so never torch): `compile --target` hands its
export to cli/export.py, which does.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rlhfspec.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    default_format,
    emit_diagnostics,
    format_option,
    guarded,
    spec_argument,
    strict_option,
)
from rlhfspec.cli.output import echo
from rlhfspec.common.fileio import display_path


@click.command("validate")
@click.argument(
    "specs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@strict_option
@format_option
@guarded
def validate(specs: tuple[Path, ...], strict: bool, fmt: str | None) -> None:
    """Check SPECS against the schema and the semantic rules; report every problem at once."""
    from rlhfspec.compiler.validate import validate_file

    fmt = fmt or default_format()
    failed = False
    for spec in specs:
        result = validate_file(spec, strict=strict, display=display_path(spec))
        emit_diagnostics(result.diagnostics, fmt, result.file)
        failed |= not result.ok
    sys.exit(EXIT_INVALID if failed else EXIT_OK)


@click.command("compile")
@spec_argument
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (default: build/<name>).",
)
@click.option(
    "--check", is_flag=True, help="Write nothing; exit 1 when the output folder is stale."
)
@click.option(
    "--templates",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of templates that override the shipped ones (rendered in a sandbox).",
)
@click.option("--target", help="Export the policy stage as another engine's job (verl).")
@click.option(
    "--run-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="With --target: the run whose reward model (and SFT model) the job uses.",
)
@strict_option
@format_option
@guarded
def compile_command(
    spec: Path,
    out_dir: Path | None,
    check: bool,
    templates: Path | None,
    target: str | None,
    run_dir: Path | None,
    strict: bool,
    fmt: str | None,
) -> None:
    """Compile SPEC into a fingerprinted plan.json and its documents."""
    if target is not None:
        from rlhfspec.cli.export import export_command

        return export_command(spec, target, out_dir, run_dir)
    from rlhfspec.compiler.compile import compile_spec, stale_outputs, write_outputs
    from rlhfspec.compiler.yaml_loader import load_yaml_file

    fmt = fmt or default_format()
    if out_dir is None:
        name = _spec_name(spec, load_yaml_file)
        out_dir = Path("build") / name
    result = compile_spec(
        spec, out_dir, strict=strict, templates=templates, display=display_path(spec)
    )
    if result.plan is None:
        emit_diagnostics(result.diagnostics, fmt, display_path(spec))
        sys.exit(EXIT_INVALID)
    if result.diagnostics and fmt != "json":
        emit_diagnostics(result.diagnostics, fmt, display_path(spec))
    if check:
        stale = stale_outputs(out_dir, result.files)
        if stale:
            echo(
                f"{out_dir} is stale; run `rlhfspec compile {display_path(spec)} -o {out_dir}`:",
                err=True,
            )
            for item in stale:
                echo(f"  {item}", err=True)
            sys.exit(EXIT_INVALID)
        echo(f"{out_dir} is up to date (plan {result.plan['fingerprint'][:12]})")
        return
    write_outputs(out_dir, result.files)
    if fmt == "json":
        echo(
            json.dumps(
                {
                    "out": str(out_dir),
                    "fingerprint": result.plan["fingerprint"],
                    "files": sorted(result.files),
                },
                indent=2,
            )
        )
    else:
        echo(
            f"compiled {display_path(spec)} -> {out_dir}/ (plan {result.plan['fingerprint'][:12]})"
        )
        for name in sorted(result.files):
            echo(f"  {out_dir / name}")


def _spec_name(spec: Path, loader: Callable[[Path], Any]) -> str:
    try:
        data = loader(spec).data
    except Exception:  # noqa: BLE001 - validation reports the real problem
        return spec.stem
    name = data.get("name") if isinstance(data, dict) else None
    return (
        name
        if isinstance(name, str)
        and name.replace("-", "").replace("_", "").replace(".", "").isalnum()
        else spec.stem
    )


@click.command("lock")
@spec_argument
@guarded
def lock(spec: Path) -> None:
    """Record SPEC's criteria version and content hash in the lock file beside it."""
    from rlhfspec.compiler.lock_command import lock_spec

    message = lock_spec(spec, display=display_path(spec))
    echo(message)


@click.command("schema")
@click.option(
    "--which",
    type=click.Choice(["spec", "plan", "annotation"]),
    default="spec",
    help="Which schema to print.",
)
@guarded
def schema(which: str) -> None:
    """Print a JSON Schema (the spec's by default), for editors and other tools."""
    from rlhfspec.compiler.schemas import ANNOTATION_SCHEMA, PLAN_SCHEMA, SPEC_SCHEMA, schema_text

    name = {"spec": SPEC_SCHEMA, "plan": PLAN_SCHEMA, "annotation": ANNOTATION_SCHEMA}[which]
    echo(schema_text(name), nl=False)
