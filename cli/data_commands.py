"""The data commands: `prompts`, `tasks`, `qc` and `aggregate`, each a runtime module
imported when the command runs."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rlhfspec.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    _out,
    _project,
    guarded,
    out_option,
    report_format_option,
    skip_bad_option,
    spec_argument,
    strict_option,
)
from rlhfspec.cli.output import echo
from rlhfspec.common.fileio import display_path


@click.command("prompts")
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


@click.command("tasks")
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


@click.command("qc")
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


@click.command("aggregate")
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
