"""The run commands: `run`, `score`, `handoff` and `verify`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from rlhfspec.cli.common import (
    guarded,
)
from rlhfspec.cli.output import echo
from rlhfspec.common.fileio import display_path


@click.command("run")
@click.argument(
    "target", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="SPEC|PLAN"
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory (default: runs/<name>/<UTC time>, or the latest one with --resume).",
)
@click.option("--stage", "only", help="Run only this stage (its dependencies must have finished).")
@click.option("--until", help="Stop after this stage.")
@click.option(
    "--resume",
    is_flag=True,
    help="Skip finished stages whose inputs are unchanged; continue a killed stage from its checkpoint.",
)
@click.option(
    "--override-gate",
    "overrides",
    multiple=True,
    help="Proceed although this gate failed; recorded in lineage.json. Repeatable.",
)
@click.option(
    "--policy-checkpoints",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Import the policy's checkpoints from a job exported with `compile --target verl`.",
)
@guarded
def run_command(
    target: Path,
    run_dir: Path | None,
    only: str | None,
    until: str | None,
    resume: bool,
    overrides: tuple[str, ...],
    policy_checkpoints: Path | None,
) -> None:
    """Run a spec's (or a compiled plan's) stages in a run directory with lineage."""
    from rlhfspec.runtime.run import run

    # the multi-process launch entry passes a hook through click's context object
    hooks = click.get_current_context().find_root().obj or {}
    directory = run(
        target,
        display=display_path(target),
        run_dir=run_dir,
        only=only,
        until=until,
        resume=resume,
        overrides=frozenset(overrides),
        log=lambda m: echo(m),
        on_stage_start=hooks.get("on_stage_start"),
        policy_checkpoints=policy_checkpoints,
    )
    echo(f"run directory: {directory}")
    echo(f"lineage: {directory / 'lineage.json'}")
    lineage = json.loads((directory / "lineage.json").read_text(encoding="utf-8"))
    handoff_entry = lineage.get("stages", {}).get("handoff", {})
    if handoff_entry.get("status") == "done":
        metrics = handoff_entry.get("metrics", {})
        outputs = handoff_entry.get("outputs", [{}])
        echo(
            f"handoff package: {directory / outputs[0].get('path', 'handoff')}; "
            f"index: {directory / str(metrics.get('index', 'handoff/index.html'))}"
        )
    selection = directory / "selection.json"
    if selection.exists():
        chosen = json.loads(selection.read_text(encoding="utf-8")).get("chosen")
        if chosen:
            echo(
                f"selected checkpoint: {chosen['label']} (step {chosen['step']}); "
                f"evidence: {selection}, {directory / 'eval' / (chosen['label'] + '.json')}, "
                f"{directory / 'eval' / 'trajectory.svg'}"
            )


@click.command("score")
@click.argument(
    "input_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="INPUT"
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    required=True,
    help="A trained reward model: runs/<name>/<run-id>/models/reward_model.",
)
@click.option(
    "-o",
    "--out",
    "output",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Scores JSONL; the summary goes beside it as <out>.summary.json.",
)
@click.option(
    "--history",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append the summary to this JSONL, to track quality over time.",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@click.option("--precision", type=click.Choice(["no", "bf16", "fp16"]), default="no")
@click.option("--batch-size", type=click.IntRange(min=1), default=32)
@guarded
def score(
    input_file: Path,
    model_dir: Path,
    output: Path,
    history: Path | None,
    device: str,
    precision: str,
    batch_size: int,
) -> None:
    """Score a JSONL of prompt/response/system rows with a reward model (evaluation only)."""
    from rlhfspec.runtime.train.scoring import score_file

    summary = score_file(
        model_dir,
        input_file,
        output,
        history=history,
        input_display=display_path(input_file),
        batch_size=batch_size,
        device=device,
        mixed_precision=precision,
    )
    echo(f"scored {summary['input']['rows']} rows -> {output}")
    for system, stats in summary["systems"].items():
        echo(
            f"  {system}: mean {stats['mean']:.4f} (n {stats['n']}, p10 {stats['p10']:.4f}, "
            f"p90 {stats['p90']:.4f}, length correlation {stats['length_correlation']})"
        )


@click.command("handoff")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(path_type=Path),
    required=True,
    help="Package folder, or a file ending in .tar.gz.",
)
@click.option(
    "--weights",
    type=click.Choice(["include", "reference", "merged"]),
    default=None,
    help="Copy the deployment weights (merged: LoRA adapters merged, without the adapters), or reference them by path and sha256 (default: the spec's).",
)
@guarded
def handoff(run_dir: Path, out: Path, weights: str | None) -> None:
    """Assemble the handoff package of a finished run, with checksums and a model card."""
    from rlhfspec.runtime.handoff.package import build_package

    result = build_package(run_dir, out, weights=weights)  # None: the plan's handoff.weights
    echo(result.describe())


@click.command("verify")
@click.argument("package", type=click.Path(exists=True, path_type=Path))
@guarded
def verify(package: Path) -> None:
    """Re-check every checksum of a handoff package: missing, extra or altered files exit 1."""
    from rlhfspec.runtime.handoff.verify import verify_package

    result = verify_package(package)
    for line in result.lines():
        echo(line)
    sys.exit(result.exit_code)
