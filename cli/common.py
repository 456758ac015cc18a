"""What every command shares: exit codes, diagnostics output, the error guard, options."""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from rlhfspec.cli.output import echo
from rlhfspec.common.errors import CompilerError, RunError
from rlhfspec.common.fileio import display_path
from rlhfspec.compiler.diagnostics import Diagnostic, format_github, format_json, format_text

EXIT_OK = 0


EXIT_INVALID = 1


EXIT_USAGE = 2


EXIT_INTERNAL = 3


F = TypeVar("F", bound=Callable[..., Any])


def default_format() -> str:
    return "github" if os.environ.get("GITHUB_ACTIONS") == "true" else "text"


def emit_diagnostics(diags: list[Diagnostic], fmt: str, file: str) -> None:
    if fmt == "json":
        echo(format_json(diags, file=file))
    elif fmt == "github":
        echo(format_github(diags))
    else:
        echo(format_text(diags), err=False)


def guarded(func: F) -> F:
    """Turn user errors into messages and crashes into a short internal-error note."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        debug = bool(ctx.find_root().params.get("debug"))
        try:
            return func(*args, **kwargs)
        except (CompilerError, RunError) as exc:
            echo(f"error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if debug:
                traceback.print_exc()
            else:
                echo(
                    f"internal error: {type(exc).__name__}: {exc}\n"
                    "This is a bug in rlhfspec; rerun with --debug for the traceback and report it.",
                    err=True,
                )
            ctx.exit(EXIT_INTERNAL)

    return wrapper  # type: ignore[return-value]


spec_argument = click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))


format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "github"]),
    default=None,
    help="Output format; defaults to github under GitHub Actions, else text.",
)


strict_option = click.option("--strict", is_flag=True, help="Treat warnings as errors.")


def _project(spec: Path) -> Any:
    from rlhfspec.runtime.project import load_project

    return load_project(spec, display=display_path(spec))


def _out(out_dir: Path | None, project: Any, stage: str) -> Path:
    return out_dir if out_dir is not None else Path("build") / project.name / stage


out_option = click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (default: build/<name>/<stage>).",
)


skip_bad_option = click.option(
    "--skip-bad-rows",
    is_flag=True,
    help="Skip and list bad annotation rows instead of refusing the batch.",
)


report_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    help="Report on stdout as text or JSON.",
)
