"""`rlhfspec judge SPEC -o DIR`: label the spec's pairs with its AI judge (see docs/judge.md).

It imports `cli.main` only when it runs: main.py registers this command, so
a module-level import would be circular.
"""

from __future__ import annotations

from pathlib import Path

import click

from rlhfspec.cli.output import echo


@click.command("judge")
@click.argument("spec", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--items",
    "items_from",
    default="tasks",
    show_default=True,
    help="Which pairs: `tasks` (the items `rlhfspec tasks` gives humans), `batches` (the items "
    "of the spec's human batches) or a JSONL file of item_id, prompt_id, response_a, response_b.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), help="Judge a seeded sample of this many pairs."
)
@click.option(
    "--reviewers",
    default="",
    help="Comma-separated reviewer ids: write the human review sample as ordinary tasks "
    "(tasks.jsonl, Label Studio import) in DIR/review/.",
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Output folder; rerun with the same folder to resume a stopped run.",
)
def judge(spec: Path, items_from: str, limit: int | None, reviewers: str, out_dir: Path) -> None:
    """Label pairs with the spec's AI judge, both orders; records, review sample, usage."""
    from rlhfspec.cli.main import guarded

    if items_from not in ("tasks", "batches") and not Path(items_from).is_file():
        raise click.BadParameter(
            f"'{items_from}' is neither tasks, batches nor a file", param_hint="--items"
        )
    guarded(_judge)(spec, items_from, limit, reviewers, out_dir)


def _judge(spec: Path, items_from: str, limit: int | None, reviewers: str, out_dir: Path) -> None:
    from rlhfspec.cli.main import _project
    from rlhfspec.runtime.annotation.judge.output import run_judge

    project = _project(spec)
    names = [r.strip() for r in reviewers.split(",") if r.strip()]
    result = run_judge(
        project, out_dir, items_from=items_from, limit=limit, reviewers=names,
        log=lambda line: echo(line, err=True),
    )  # fmt: skip
    echo(result.format_text(), nl=False)
