"""The human review sample: a stratified share of the AI-labelled pairs, as ordinary tasks.

Humans review a `judge.review.share` of the pairs the judge labelled (at
least `min_pairs`), drawn per stratum (prompt source, topic, the judge's
confidence, or any prompt field) in proportion to its size (largest
remainder, seeded), so a judge that is good on easy billing questions and
poor on angry adversarial ones cannot hide behind the average. Pairs the
judge could not label (orders disagree under `flag`, unparseable, failed)
go to humans as well, but outside the sample: they measure nothing about
the judge's labels.

The sample goes out as `rlhfspec tasks` would make it: the sampled pairs'
responses are written to `review/responses.jsonl` and, with reviewers,
task generation runs on them (seeded pairing keeps the item ids, since the
two responses are a prompt's only ones), giving `tasks.jsonl`, the
unblinding key and the Label Studio import.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.common.jsonl import read_rows
from rlhfspec.runtime.annotation.judge.runner import Combined
from rlhfspec.runtime.project import Project


def stratum(entry: Combined, fields: Sequence[str]) -> tuple[str, ...]:
    return tuple(
        entry.confidence if f == "confidence" else entry.item.strata.get(f, "-") for f in fields
    )


def allocate(sizes: dict[tuple[str, ...], int], total: int) -> dict[tuple[str, ...], int]:
    """Proportional allocation with largest remainders (ties broken by stratum, for stability)."""
    population = sum(sizes.values())
    quotas = {k: total * n / population for k, n in sizes.items()}
    counts = {k: math.floor(q) for k, q in quotas.items()}
    left = total - sum(counts.values())
    for key in sorted(quotas, key=lambda k: (counts[k] - quotas[k], k))[:left]:
        counts[key] += 1
    return counts


def draw_sample(project: Project, combined: list[Combined]) -> dict[str, str]:
    """item id -> why it goes to human review (`sample`, or the judge's failure)."""
    review = project.spec["judge"]["review"]
    fields = list(review["stratify_by"])
    labelled = [c for c in combined if c.label is not None and not c.item.gold]
    total = min(
        len(labelled),
        max(int(review["min_pairs"]), math.ceil(float(review["share"]) * len(labelled))),
    )
    groups: dict[tuple[str, ...], list[Combined]] = {}
    for entry in sorted(labelled, key=lambda c: c.item.item_id):
        groups.setdefault(stratum(entry, fields), []).append(entry)
    chosen: dict[str, str] = {}
    if total:
        counts = allocate({k: len(v) for k, v in groups.items()}, total)
        for key in sorted(groups):
            rng = random.Random("\x1f".join([str(project.seed), "judge-review", *key]))
            for entry in rng.sample(groups[key], counts[key]):
                chosen[entry.item.item_id] = "sample"
    for entry in combined:
        if entry.label is None and not entry.item.gold:
            chosen[entry.item.item_id] = entry.status
    return chosen


def sample_rows(
    combined: list[Combined], chosen: dict[str, str], fields: Sequence[str]
) -> list[dict[str, Any]]:
    return [
        {
            "item_id": c.item.item_id,
            "prompt_id": c.item.prompt_id,
            "response_a": c.item.first,
            "response_b": c.item.second,
            "why": chosen[c.item.item_id],
            "stratum": dict(zip(fields, stratum(c, fields), strict=True)),
        }
        for c in combined
        if c.item.item_id in chosen
    ]


def export_review(
    project: Project,
    out_dir: Path,
    rows: list[dict[str, Any]],
    reviewers: Sequence[str],
    batch: str,
) -> list[Path]:
    """Write the sample, its responses, and (with reviewers) the ordinary tasks for it."""

    rel = project.spec["annotation"]["responses"]
    by_id = {
        str(r["id"]): r for r in read_rows(project.path(rel), rel, ("id", "prompt_id", "text"))
    }
    wanted = sorted({r["response_a"] for r in rows} | {r["response_b"] for r in rows})
    lines = [json.dumps(by_id[w], ensure_ascii=False) + "\n" for w in wanted if w in by_id]
    paths = [out_dir / "sample.jsonl", out_dir / "responses.jsonl"]
    atomic_write_text(paths[0], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(paths[1], "".join(lines))
    if reviewers and rows:
        from rlhfspec.runtime.annotation.tasks import generate_tasks

        responses_per_prompt = Counter(by_id[w]["prompt_id"] for w in wanted if w in by_id)
        # every pair of a prompt's written responses, so each sampled pair is among them
        combos = max(m * (m - 1) // 2 for m in responses_per_prompt.values())
        summary = generate_tasks(
            project, paths[1], out_dir, annotators=list(reviewers), pairs_per_prompt=combos,
            batch=batch, responses_display=str(paths[1]),
        )  # fmt: skip
        paths += summary.paths
    return paths
