"""The data stages: prompt checks, annotation QC and aggregation, inside a run."""

from __future__ import annotations

import json

from rlhfspec.runtime.annotation.aggregate import (
    aggregate,
    load_records,
    require_pairs,
    write_pairs,
)
from rlhfspec.runtime.annotation.judge.review import ai_judge_gate, ai_judge_lineage
from rlhfspec.runtime.annotation.judge.use import gate_state, records_for_aggregation
from rlhfspec.runtime.annotation.qc import QC_CODES, QcReport, run_qc
from rlhfspec.runtime.prompts.check import check_prompts, write_prompt_report
from rlhfspec.runtime.prompts.pool import HOLDOUT_FILE, pool_with_holdout, read_holdout
from rlhfspec.runtime.report.qc_report import write_qc_reports
from rlhfspec.runtime.stage_api import Gate, StageContext, StageOutcome, apply_gates

# annotator-level findings that excluding the annotator resolves (Q006, sessions over the
# limit, does not exclude by itself but no longer matters once the annotator is left out)
RESOLVED_BY_EXCLUSION = {code for code, entry in QC_CODES.items() if entry.excludes} | {"Q006"}


def prompts_stage(ctx: StageContext) -> StageOutcome:
    report = check_prompts(ctx.project)
    write_prompt_report(report, ctx.path("prompts"))
    errors, warnings = len(report.errors), len(report.warnings)
    gate = Gate(
        "prompt_distribution",
        errors == 0,
        float(errors),
        0.0,
        "; ".join(f"[{f.code}] {f.message}" for f in report.errors) or "no error findings",
    )
    outcome = StageOutcome(
        ["prompts/report.json", "prompts/report.md", "prompts/holdout.jsonl"],
        {"errors": errors, "warnings": warnings},
        [gate],
        f"{errors} error(s), {warnings} warning(s)",
    )
    return apply_gates(ctx, outcome)


def blocking_findings(report: QcReport, exclude_failed: bool) -> list[str]:
    """QC errors that still stand after the spec's remedy (excluding failed annotators)."""
    excluded = set(report.excluded_annotators) if exclude_failed else set()
    agreement = report.metrics.get("agreement", {})
    blocking = []
    for finding in report.findings:
        if finding.severity != "error" or finding.code.startswith("J"):  # J: the AI judge's gate
            continue
        if finding.code in RESOLVED_BY_EXCLUSION and finding.annotator in excluded:
            continue
        if finding.code == "Q001" and excluded:
            kept = agreement.get("value_without_excluded")
            if kept is not None and kept >= agreement.get("floor", 0):
                continue
        blocking.append(f"[{finding.code}] {finding.subject}: {finding.message}")
    return blocking


def annotation_qc_stage(ctx: StageContext) -> StageOutcome:
    report = run_qc(ctx.project)
    write_qc_reports(report, ctx.path("qc"))
    exclude = ctx.settings["annotation"]["aggregation"]["exclude_failed_annotators"]
    blocking = blocking_findings(report, exclude)
    excluded = report.excluded_annotators if exclude else []
    gate = Gate(
        "annotation_quality",
        not blocking,
        float(len(blocking)),
        0.0,
        "; ".join(blocking) if blocking else "no error remains after excluding failed annotators",
    )
    gates = [gate]
    ai = report.metrics.get("ai_judge")
    if ai:
        gates.append(ai_judge_gate(ai))
    outcome = StageOutcome(
        ["qc/report.json", "qc/report.md", "qc/report.html"],
        {
            "errors": len(report.errors),
            "warnings": len(report.warnings),
            "excluded_annotators": excluded,
            "agreement": report.metrics.get("agreement", {}).get("value"),
            "agreement_without_excluded": report.metrics.get("agreement", {}).get(
                "value_without_excluded"
            ),
            **({"ai_judge": ai_judge_lineage(ai)} if ai else {}),
        },
        gates,
        f"{len(report.errors)} error(s), {len(report.warnings)} warning(s); excluded: {', '.join(excluded) or 'none'}",
    )
    return apply_gates(ctx, outcome)


def aggregate_stage(ctx: StageContext) -> StageOutcome:
    qc = json.loads(ctx.upstream("qc/report.json").read_text(encoding="utf-8"))
    holdout_rows = read_holdout(ctx.upstream(HOLDOUT_FILE))
    holdout = [row["id"] for row in holdout_rows]
    focused, outside = pool_with_holdout(ctx.project, holdout_rows).keep_in_focus(
        load_records(ctx.project)
    )
    records, ai_use = records_for_aggregation(focused, gate_state(qc, ctx.overrides))
    result = aggregate(
        ctx.project,
        records,
        failed_annotators=qc.get("excluded_annotators", []),
        holdout_prompts=holdout,
    )
    require_pairs(result, ctx.project.display)
    write_pairs(result, ctx.path("preferences"))
    for warning in result.warnings:
        ctx.log(f"warning: {warning}")
    return StageOutcome(
        [
            "preferences/pairs.jsonl",
            "preferences/provenance.jsonl",
            "preferences/requeue.jsonl",
            "preferences/split_items.jsonl",
            "preferences/summary.json",
        ],
        {
            **result.summary(),
            "outside_focus_records": outside,
            **({"ai_labels": ai_use} if ai_use else {}),
        },
        summary=f"{len(result.pairs)} preference pairs"
        + (
            f" ({ai_use['ai_labels_used']} AI labels used, gate {ai_use['gate']})" if ai_use else ""
        ),
    )
