"""Judge a spec's pairs and write annotation records, the review sample and a usage summary.

The records are ordinary annotation records (schemas/annotation-record.v1),
annotator `ai:<model>`, so the readers, QC, aggregation and the handoff take
them as they take a person's; their `judge` object carries the judge's
identity (backend, model, prompt sha256), both orders' answers, the pair's
word counts, whether it is in the human review sample, and the run's order
agreement and first-shown picks, which QC needs to measure position bias
over every pair judged (including those the judge could not label).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from rlhfspec.common.errors import RunError
from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.runtime.annotation.judge.backends import Backend
from rlhfspec.runtime.annotation.judge.items import AI_PREFIX, load_items
from rlhfspec.runtime.annotation.judge.prompt import build_prompt
from rlhfspec.runtime.annotation.judge.runner import (
    JOURNAL,
    SUMMARY_FORMAT,
    Combined,
    Journal,
    check_folder,
    combine,
    judge_pairs,
    make_backend,
    manifest,
    run_stats,
    usage,
)
from rlhfspec.runtime.annotation.judge.sample import draw_sample, export_review, sample_rows
from rlhfspec.runtime.project import Project

CHOICE = {"first": "A", "second": "B", "tie": "tie"}


@dataclass
class JudgeResult:
    summary: dict[str, Any]
    paths: list[Path]

    def format_text(self) -> str:
        s = self.summary
        u, c = s["usage"], s["counts"]
        agree = s["order_agreement"]
        lines = [
            f"judge {s['annotator']} ({s['judge']['backend']}), criteria {s['criteria_version']}, "
            f"prompt sha256 {s['prompt_sha256'][:16]}...",
            f"{s['items']} pairs x 2 orders: {c.get('labelled', 0)} labelled, "
            f"{c.get('tie_by_rule', 0)} tie by rule, {c.get('flagged', 0)} flagged, "
            f"{c.get('unparseable', 0)} unparseable, {c.get('failed', 0)} failed",
            "order agreement: "
            + (
                f"{agree['share']:.3f} ({agree['agree']}/{agree['pairs']})"
                if agree["pairs"]
                else "n/a"
            )
            + f"; first-shown picks {s['position']['first_shown_share']}",
            f"usage: {u['requests']} requests ({u['retries']} retries: "
            + (", ".join(f"{k} {v}" for k, v in u["events"].items()) or "none")
            + f"), tokens in {u['tokens_in']}, out {u['tokens_out']}",
            f"human review: {s['review']['sample']} sampled + {s['review']['unlabelled']} the judge "
            "could not label",
        ]
        lines += [f"wrote {p}" for p in self.paths]
        return "\n".join(lines) + "\n"


def build_record(
    entry: Combined, identity: dict[str, Any], run: dict[str, Any], stats: dict[str, int],
    batch: str, review: bool,
) -> dict[str, Any]:  # fmt: skip
    """One annotation record in canonical order; the judge's evidence in `judge`."""
    item, rows = entry.item, entry.rows
    assert entry.label is not None
    record: dict[str, Any] = {
        "item_id": item.item_id,
        "prompt_id": item.prompt_id,
        "response_a": item.first,
        "response_b": item.second,
        "choice": CHOICE[entry.label],
        "annotator": run["annotator"],
        "session": f"{run['annotator']}-{run['id']}",
        "started_at": min(r["started_at"] for r in rows),
        "submitted_at": max(r["submitted_at"] for r in rows),
        "justification": rows[0].get("reason") or None,
        "criteria_version": run["criteria_version"],
        "batch": batch,
        "gold": item.gold,
    }
    if entry.dimensions:
        record["dimension_choices"] = {d: CHOICE[v] for d, v in entry.dimensions.items()}
    record["judge"] = {
        "backend": identity["backend"],
        "model": str(identity["model"]),
        "prompt_sha256": run["prompt_sha256"],
        "run": run["id"],
        "confidence": entry.confidence,
        "orders_agree": bool(entry.orders_agree),
        "orders": [{"first_shown": r["shown"][0], "choice": r["choice"]} for r in rows],
        "words": [len(item.text_first.split()), len(item.text_second.split())],
        "review": review,
        "run_stats": stats,
    }
    return record


def run_judge(
    project: Project,
    out_dir: Path,
    *,
    items_from: str = "tasks",
    limit: int | None = None,
    reviewers: Sequence[str] = (),
    backend: Backend | None = None,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda _: None,
) -> JudgeResult:
    """Judge, combine, sample and write; resumable in `out_dir`."""
    settings = project.spec["judge"]
    prompt = build_prompt(project.spec, project.folder)
    items = load_items(project, items_from, limit=limit)
    backend = backend or make_backend(project)
    run = manifest(project, backend.identity, prompt, items)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_folder(out_dir, run)
    started = time.monotonic()
    done = judge_pairs(
        project, items, Journal(out_dir / JOURNAL), backend, prompt, sleep=sleep, log=log
    )
    combined = [
        combine(i, (done[(i.item_id, 0)], done[(i.item_id, 1)]), settings["order_disagreement"])
        for i in items
    ]
    stats = run_stats(combined)
    chosen = draw_sample(project, combined)
    fields = list(settings["review"]["stratify_by"])
    records = [
        build_record(c, backend.identity, run, stats, settings["batch"], chosen.get(c.item.item_id) == "sample")
        for c in combined
        if c.label is not None
    ]  # fmt: skip
    if not records:
        _refuse_empty(done, len(items), out_dir)
    paths = [out_dir / "records.jsonl"]
    atomic_write_text(paths[0], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    rows = sample_rows(combined, chosen, fields)
    paths += export_review(
        project, out_dir / "review", rows, reviewers, f"{settings['batch']}-review"
    )
    all_rows = [done[(i.item_id, o)] for i in items for o in (0, 1)]
    counts = Counter(c.status for c in combined)
    summary = {
        "format": SUMMARY_FORMAT,
        "run": run["id"],
        "annotator": run["annotator"],
        "judge": backend.identity,
        "criteria_version": run["criteria_version"],
        "prompt_sha256": prompt.sha256,
        "batch": settings["batch"],
        "items": len(items),
        "gold_items": sum(i.gold for i in items),
        "counts": dict(sorted(counts.items())),
        "records": len(records),
        "order_agreement": _order_agreement(stats, settings["order_disagreement"]),
        "position": _position(stats),
        "review": _review(settings["review"]["share"], fields, chosen, rows),
        "usage": usage(all_rows, time.monotonic() - started),
    }  # fmt: skip
    paths.append(out_dir / "summary.json")
    atomic_write_text(paths[-1], json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return JudgeResult(summary, paths)


def _refuse_empty(
    done: dict[tuple[str, int], dict[str, Any]], n_items: int, out_dir: Path
) -> NoReturn:
    """No labelled pair is an error that says why: the commonest failures, or order conflicts."""
    errors = Counter(str(r.get("error")) for r in done.values() if r["status"] != "ok")
    why = (
        "; ".join(f"{e} ({n}x)" for e, n in errors.most_common(3)) or "every pair's orders disagree"
    )
    raise RunError(f"the judge labelled none of {n_items} pairs (see {out_dir / JOURNAL}): {why}")


def _order_agreement(stats: dict[str, Any], on_disagreement: str) -> dict[str, Any]:
    """How often the two presentation orders gave the same answer."""
    return {
        "pairs": stats["pairs"], "agree": stats["orders_agree"],
        "share": round(stats["orders_agree"] / stats["pairs"], 6) if stats["pairs"] else None,
        "on_disagreement": on_disagreement,
    }  # fmt: skip


def _position(stats: dict[str, Any]) -> dict[str, Any]:
    """How often the judge picked the response shown first: its position bias."""
    return {
        "decided_answers": stats["decided_answers"],
        "first_shown_picks": stats["first_shown_picks"],
        "first_shown_share": round(stats["first_shown_picks"] / stats["decided_answers"], 6)
        if stats["decided_answers"] else None,
    }  # fmt: skip


def _review(
    share: float, fields: list[str], chosen: dict[str, str], rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The human review sample: its size, what was left unlabelled and the strata drawn."""
    return {
        "share": share, "stratify_by": fields,
        "sample": sum(v == "sample" for v in chosen.values()),
        "unlabelled": sum(v != "sample" for v in chosen.values()),
        "strata": dict(sorted(Counter("/".join(r["stratum"].values()) for r in rows if r["why"] == "sample").items())),
    }  # fmt: skip


__all__ = ["AI_PREFIX", "JudgeResult", "run_judge"]
