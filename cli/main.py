"""The `rlhfspec` command line.

Exit codes (documented in the README): 0 success, 1 the spec or data is
invalid (or outputs are stale under --check), 2 usage error, 3 internal
error. Runtime commands import their modules lazily so that `validate` and
`compile` never pull in torch, transformers or trl.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from rlhfspec.cli.output import echo
from rlhfspec.common.errors import CompilerError, RunError
from rlhfspec.common.fileio import display_path
from rlhfspec.common.version import __version__
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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="rlhfspec")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
def main(debug: bool) -> None:
    """Validate, compile, run and audit RLHF specs."""


@main.command()
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


@main.command("compile")
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


@main.command()
@spec_argument
@guarded
def lock(spec: Path) -> None:
    """Record SPEC's criteria version and content hash in the lock file beside it."""
    from rlhfspec.compiler.lock_command import lock_spec

    message = lock_spec(spec, display=display_path(spec))
    echo(message)


@main.command()
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


@main.command()
@spec_argument
@out_option
@report_format_option
@strict_option
@guarded
def prompts(spec: Path, out_dir: Path | None, fmt: str, strict: bool) -> None:
    """Check the prompt mix, strata coverage and privacy reviews; reserve the production holdout."""
    from rlhfspec.runtime.prompts.check import check_prompts, write_prompt_report

    project = _project(spec)
    report = check_prompts(project)
    target = _out(out_dir, project, "prompts")
    written = write_prompt_report(report, target)
    echo(report.to_json() if fmt == "json" else report.format_text())
    if fmt == "text":
        echo(f"reports: {', '.join(str(p) for p in written)}")
    sys.exit(report.exit_code(strict=strict))


@main.command()
@spec_argument
@click.option(
    "--responses",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="JSONL of candidate responses: id, prompt_id, system, text.",
)
@click.option(
    "--annotators", required=True, help="Comma-separated annotator ids, e.g. ann-01,ann-02,ann-03."
)
@click.option(
    "--batch", help="Batch id written into every task (default: tasks-<criteria version>)."
)
@click.option(
    "--limit", type=click.IntRange(min=1), help="Use a seeded sample of at most this many items."
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Output folder.",
)
@click.option(
    "--per-annotator",
    is_flag=True,
    help="Also write one Label Studio import per annotator (one project each: Label Studio "
    "Community cannot assign tasks).",
)
@click.option(
    "--requeue",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="aggregate's requeue.jsonl: send those items out again, to annotators who have not "
    "voted on them.",
)
@guarded
def tasks(
    spec: Path,
    responses: Path,
    annotators: str,
    batch: str | None,
    limit: int | None,
    out_dir: Path,
    per_annotator: bool,
    requeue: Path | None,
) -> None:
    """Generate annotation tasks: overlap, randomised order, blinding, gold items, sessions;
    and the calibration batch (calibration/) when the spec has a calibration set."""
    from rlhfspec.runtime.annotation.tasks import generate_tasks

    project = _project(spec)
    names = [a.strip() for a in annotators.split(",") if a.strip()]
    summary = generate_tasks(
        project,
        responses,
        out_dir,
        annotators=names,
        limit=limit,
        batch=batch,
        responses_display=display_path(responses),
        per_annotator=per_annotator,
        requeue=requeue,
    )
    echo(summary.format_text())
    if requeue is None:  # the calibration set goes out with the first tasks, not with requeues
        from rlhfspec.runtime.annotation import calibration

        cal = calibration.write_calibration(
            project, out_dir, annotators=names, per_annotator=per_annotator
        )
        if cal is not None:
            echo(calibration.format_text(cal))


@main.command()
@spec_argument
@out_option
@report_format_option
@skip_bad_option
@guarded
def qc(spec: Path, out_dir: Path | None, fmt: str, skip_bad_rows: bool) -> None:
    """Annotation quality: agreement, gold accuracy, position bias, fatigue, drift, versions."""
    from rlhfspec.runtime.annotation.qc import run_qc
    from rlhfspec.runtime.report.qc_report import format_text as qc_text
    from rlhfspec.runtime.report.qc_report import write_qc_reports

    project = _project(spec)
    report = run_qc(project, skip_bad_rows=skip_bad_rows)
    written = write_qc_reports(report, _out(out_dir, project, "qc"))
    echo(report.to_json() if fmt == "json" else qc_text(report))
    if fmt == "text":
        echo(f"reports: {', '.join(str(p) for p in written)}")
    sys.exit(EXIT_INVALID if report.errors else EXIT_OK)


@main.command()
@spec_argument
@out_option
@click.option(
    "--truth",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSONL of known labels (item_id, response_a, response_b, preferred) to score the pairs against.",
)
@skip_bad_option
@guarded
def aggregate(spec: Path, out_dir: Path | None, truth: Path | None, skip_bad_rows: bool) -> None:
    """Turn votes into preference pairs (TRL format) with provenance; QC failures left out."""
    from rlhfspec.runtime.annotation.aggregate import aggregate as run_aggregate
    from rlhfspec.runtime.annotation.aggregate import (
        compare_with_truth,
        load_records,
        require_pairs,
        write_pairs,
    )
    from rlhfspec.runtime.annotation.judge.use import gate_state, records_for_aggregation
    from rlhfspec.runtime.annotation.qc import run_qc
    from rlhfspec.runtime.prompts.pool import load_prompt_pool, production_holdout

    project = _project(spec)
    report = run_qc(project, skip_bad_rows=skip_bad_rows)
    failed = report.excluded_annotators
    holdout = [row["id"] for row in production_holdout(project)]
    focused, outside = load_prompt_pool(project).keep_in_focus(
        load_records(project, skip_bad_rows=skip_bad_rows)
    )
    if outside:
        click.echo(f"prompts.focus: {outside} record(s) of prompts outside the focus left out")
    records, ai_use = records_for_aggregation(focused, gate_state(report.to_dict()))
    if ai_use:
        echo(
            f"AI labels: {ai_use['ai_labels_used']} of {ai_use['ai_labels']} used "
            f"(agreement gate {ai_use['gate']}; pairs people labelled are theirs)"
        )
    result = run_aggregate(
        project,
        records,
        failed_annotators=failed,
        holdout_prompts=holdout,
    )
    require_pairs(result, project.display)
    if truth is not None:
        result.truth = compare_with_truth(result.pairs, truth, display_path(truth))
    target = _out(out_dir, project, "preferences")
    write_pairs(result, target)
    counts = result.counts
    echo(
        f"{len(result.pairs)} preference pairs from {counts.get('items', 0)} items -> {target}/pairs.jsonl"
    )
    echo(
        f"  left out: {counts.get('split_votes', 0)} split votes, {counts.get('ties', 0)} ties, "
        f"{counts.get('holdout_items_dropped', 0)} holdout items, "
        f"{counts.get('items_without_votes', 0)} items labelled only by excluded annotators, "
        f"{counts.get('votes_excluded', 0)} votes of excluded annotators "
        f"({', '.join(result.excluded_annotators) or 'none'})"
    )
    for warning in result.warnings:
        echo(f"  warning: {warning}")
    if result.truth is not None:
        acc = result.truth["accuracy"]
        echo(
            f"  agreement with {result.truth['file']}: {result.truth['matches']}/"
            f"{result.truth['pairs_with_truth']}" + (f" = {acc:.3f}" if acc is not None else "")
        )


@main.command("run")
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


@main.command()
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


@main.command()
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


@main.command()
@click.argument("package", type=click.Path(exists=True, path_type=Path))
@guarded
def verify(package: Path) -> None:
    """Re-check every checksum of a handoff package: missing, extra or altered files exit 1."""
    from rlhfspec.runtime.handoff.verify import verify_package

    result = verify_package(package)
    for line in result.lines():
        echo(line)
    sys.exit(result.exit_code)


from rlhfspec.cli.judge import judge  # noqa: E402

main.add_command(judge)
from rlhfspec.cli.init import init  # noqa: E402

main.add_command(init)

if __name__ == "__main__":
    main()
