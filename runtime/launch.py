"""Entry point for `accelerate launch -m rlhfspec.runtime.launch plan.json --stage NAME`.

The plan gives every training stage this multi-process form next to its
single-process command. SFT and the reward model run on TRL's trainers,
which are accelerate-aware, but the run directory's lineage and lock have
one owner; until the multi-process runtime lands with the policy stages,
this entry point runs one process and refuses a larger world with a clear
message instead of letting several processes race on the run directory.
"""

from __future__ import annotations

import os
import sys

import click

from ..compiler.cli import main as cli_main


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if world_size() > 1:
        click.echo(
            "error: this version of rlhfspec runs training stages in one process; "
            "launch with --num_processes 1 (multi-process training arrives with the policy stages)",
            err=True,
        )
        sys.exit(2)
    cli_main(["run", *args], prog_name="rlhfspec")


if __name__ == "__main__":
    main()
