"""The `rlhfspec` command line.

Exit codes (documented in the README): 0 success, 1 the spec or data is
invalid (or outputs are stale under --check), 2 usage error, 3 internal
error. Runtime commands import their modules lazily so that `validate` and
`compile` never pull in torch, transformers or trl.
"""

from __future__ import annotations

import click

from rlhfspec.cli.common import (  # re-exported: commands and tests import them from here
    EXIT_INTERNAL,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_USAGE,
    _out,
    _project,
    default_format,
    emit_diagnostics,
    format_option,
    guarded,
    out_option,
    report_format_option,
    skip_bad_option,
    spec_argument,
    strict_option,
)
from rlhfspec.cli.data_commands import aggregate, prompts, qc, tasks
from rlhfspec.cli.init import init
from rlhfspec.cli.judge import judge
from rlhfspec.cli.run_commands import handoff, run_command, score, verify
from rlhfspec.cli.spec_commands import compile_command, lock, schema, validate
from rlhfspec.common.version import __version__

__all__ = [
    "main",
    "EXIT_OK",
    "EXIT_INVALID",
    "EXIT_USAGE",
    "EXIT_INTERNAL",
    "default_format",
    "emit_diagnostics",
    "guarded",
    "spec_argument",
    "format_option",
    "strict_option",
    "_project",
    "_out",
    "out_option",
    "skip_bad_option",
    "report_format_option",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rlhfspec")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
def main(debug: bool) -> None:
    """Validate, compile, run and audit RLHF specs."""


# Commands live in their own modules; a new one is an import above and one line here.
main.add_command(validate)
main.add_command(compile_command)
main.add_command(lock)
main.add_command(schema)
main.add_command(prompts)
main.add_command(tasks)
main.add_command(qc)
main.add_command(aggregate)
main.add_command(run_command)
main.add_command(score)
main.add_command(handoff)
main.add_command(verify)
main.add_command(judge)
main.add_command(init)

if __name__ == "__main__":
    main()
