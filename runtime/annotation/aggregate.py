"""Votes to preference pairs: majority vote, the criteria's tie-breaking, provenance.

Reward models and DPO learn from pairs, not from votes; how votes become
pairs is where annotation quality turns into training signal. Items whose
votes split are dropped when the spec says so (they are ambiguity, not
preference), the votes of annotators who failed QC are left out, and the
production holdout never reaches training. Each pair keeps its provenance
(batches, votes, agreement) in a file aligned line by line with the pairs,
which stay in the plain `prompt`/`chosen`/`rejected` form TRL's
RewardTrainer and DPOTrainer read.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.common.jsonl import read_rows
from rlhfspec.runtime.annotation.records import read_batches
from rlhfspec.runtime.project import Project

LO, HI, TIE = 0, 1, 2


@dataclass
class Pair:
    item_id: str
    prompt_id: str
    prompt: str
    chosen_id: str
    rejected_id: str
    chosen: str
    rejected: str
    votes: dict[str, int]
    agreement: float
    batches: list[str]
    annotators: list[str]
    decided_by: str
    dimensions: dict[str, str | None] = field(default_factory=dict)


# the seed: "5,000-20,000 preference pairs" for a reward model on a narrow use case;
# "even 1,000-2,000 carefully designed pairs" for an evaluation framework
VOLUME_GUIDANCE = ((1000, "an evaluation framework"), (5000, "training a narrow-use reward model"))


def volume_warnings(pairs: int) -> list[str]:
    """A warning when the pairs fall short of the seed's data-volume guidance."""
    for minimum, purpose in VOLUME_GUIDANCE:
        if pairs < minimum:
            return [
                f"{pairs:,} preference pairs is fewer than the {minimum:,} the guidance gives for "
                f"{purpose}; results rest on little data"
            ]
    return []


@dataclass
class AggregateResult:
    pairs: list[Pair] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    excluded_annotators: list[str] = field(default_factory=list)
    criteria_versions: list[str] = field(default_factory=list)
    truth: dict[str, Any] | None = None

    @property
    def warnings(self) -> list[str]:
        """Settings or data weaker than the seed's guidance, said plainly."""
        return volume_warnings(len(self.pairs))

    def summary(self) -> dict[str, Any]:
        return {
            "pairs": len(self.pairs),
            "warnings": self.warnings,
            "counts": dict(sorted(self.counts.items())),
            "excluded_annotators": self.excluded_annotators,
            "criteria_versions": self.criteria_versions,
            "truth": self.truth,
        }


def read_jsonl_rows(path: Path, display: str, required: Iterable[str]) -> list[dict[str, Any]]:
    """Rows of a JSONL file; bad rows refuse it, naming the file, line and field."""
    return read_rows(path, display, required)


def load_records(project: Project, *, skip_bad_rows: bool = False) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    batches = project.spec["annotation"]["batches"]
    for read in read_batches(batches, project.folder, skip_bad=skip_bad_rows):
        records.extend(read.records)
    return records


def _winner(votes: Counter[int]) -> int | None:
    """Strict plurality: the label with more votes than each other label, else None."""
    ranked = votes.most_common()
    if not ranked:
        return None
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None
    return ranked[0][0]


def _canonical(choice: str, shown_a: str, shown_b: str) -> int:
    if choice == "tie":
        return TIE
    picked = shown_a if choice == "A" else shown_b
    return LO if picked == min(shown_a, shown_b) else HI


def aggregate(
    project: Project,
    records: list[dict[str, Any]],
    *,
    failed_annotators: Iterable[str] = (),
    holdout_prompts: Iterable[str] = (),
) -> AggregateResult:
    """Majority vote per item with the spec's tie-breaking; gold items are QC, not data."""
    spec = project.spec
    agg = spec["annotation"]["aggregation"]
    tie_rule = spec["criteria"]["tie_breaking"]
    ranked_dims = [d["id"] for d in spec["criteria"]["dimensions"]]
    responses_path = spec["annotation"].get("responses")
    if responses_path is None:
        raise RunError(
            "annotation.responses is not set, so votes cannot be joined to response texts"
        )
    responses = {
        r["id"]: r
        for r in read_jsonl_rows(
            project.path(responses_path), responses_path, ("id", "prompt_id", "text")
        )
    }
    prompts: dict[str, str] = {}
    for source in spec["prompts"]["sources"]:
        for row in read_jsonl_rows(project.path(source["path"]), source["path"], ("id", "text")):
            prompts[row["id"]] = row["text"]
    excluded = set(agg["exclude_annotators"])
    if agg["exclude_failed_annotators"]:
        excluded |= set(failed_annotators)
    holdout = set(holdout_prompts)

    counts: Counter[str] = Counter()
    by_item: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record["gold"]:
            counts["gold_records_skipped"] += 1
            continue
        if record["annotator"] in excluded:
            counts["votes_excluded"] += 1
            continue
        by_item.setdefault(record["item_id"], []).append(record)

    all_items = {r["item_id"] for r in records if not r["gold"]}
    counts["items_without_votes"] = len(all_items - by_item.keys())
    result = AggregateResult(excluded_annotators=sorted(excluded))
    versions: set[str] = set()
    for item_id in sorted(by_item):
        votes_rows = by_item[item_id]
        first = votes_rows[0]
        lo, hi = sorted((first["response_a"], first["response_b"]))
        prompt_id = first["prompt_id"]
        counts["items"] += 1
        if prompt_id in holdout:
            counts["holdout_items_dropped"] += 1
            continue
        if lo not in responses or hi not in responses:
            counts["items_with_unknown_response"] += 1
            continue
        if prompt_id not in prompts:
            counts["items_with_unknown_prompt"] += 1
            continue
        votes = Counter(
            _canonical(r["choice"], r["response_a"], r["response_b"]) for r in votes_rows
        )
        winner = _winner(votes)
        decided_by = "majority"
        if winner is None:
            counts["split_votes"] += 1
            if agg["drop_split_votes"]:
                continue
            winner, decided_by = _break_tie(
                votes_rows, tie_rule, ranked_dims, responses[lo]["text"], responses[hi]["text"]
            )
        if winner == TIE:
            counts["ties"] += 1
            continue
        chosen, rejected = (lo, hi) if winner == LO else (hi, lo)
        total = sum(votes.values())
        dimensions = {dim: _dimension_verdict(votes_rows, dim, winner) for dim in ranked_dims}
        versions.update(r["criteria_version"] for r in votes_rows)
        result.pairs.append(
            Pair(
                item_id=item_id,
                prompt_id=prompt_id,
                prompt=prompts[prompt_id],
                chosen_id=chosen,
                rejected_id=rejected,
                chosen=responses[chosen]["text"],
                rejected=responses[rejected]["text"],
                votes={"chosen": votes[winner], "rejected": votes[1 - winner], "tie": votes[TIE]},
                agreement=round(votes[winner] / total, 6),
                batches=sorted({r["batch"] for r in votes_rows}),
                annotators=sorted(r["annotator"] for r in votes_rows),
                decided_by=decided_by,
                dimensions=dimensions,
            )
        )
    result.counts = dict(counts)
    result.criteria_versions = sorted(versions)
    return result


def _dimension_verdict(rows: list[dict[str, Any]], dim: str, winner: int) -> str | None:
    """The majority dimension-level vote, relative to the pair: chosen, rejected or tie.

    None when no annotator gave a dimension-level answer or the votes split;
    per-dimension reward-model accuracy is measured on the pairs that have one.
    """
    votes = Counter(
        _canonical(r["dimension_choices"][dim], r["response_a"], r["response_b"])
        for r in rows
        if isinstance(r.get("dimension_choices"), dict) and dim in r["dimension_choices"]
    )
    dim_winner = _winner(votes)
    if dim_winner is None:
        return None
    if dim_winner == TIE:
        return "tie"
    return "chosen" if dim_winner == winner else "rejected"


def _break_tie(
    rows: list[dict[str, Any]], rule: dict[str, str], ranked: list[str], lo_text: str, hi_text: str
) -> tuple[int, str]:
    """Apply the criteria's tie-breaking to a split vote."""
    steps = [rule["rule"], rule["then"]]
    for step in steps:
        if step == "prefer_higher_ranked_dimension":
            for dim in ranked:
                dim_votes = Counter(
                    _canonical(r["dimension_choices"][dim], r["response_a"], r["response_b"])
                    for r in rows
                    if isinstance(r.get("dimension_choices"), dict)
                    and dim in r["dimension_choices"]
                )
                winner = _winner(dim_votes)
                if winner is not None and winner != TIE:
                    return winner, f"dimension:{dim}"
        elif step == "prefer_shorter":
            lo_len, hi_len = len(lo_text.split()), len(hi_text.split())
            if lo_len != hi_len:
                return (LO if lo_len < hi_len else HI), "shorter"
        elif step == "tie":
            return TIE, "tie"
    return TIE, "tie"


def compare_with_truth(pairs: list[Pair], truth_path: Path, display: str) -> dict[str, Any]:
    """How often aggregated pairs agree with known labels (e.g. a simulation's ground truth)."""
    truth: dict[str, str | None] = {}
    for row in read_jsonl_rows(
        truth_path, display, ("item_id", "response_a", "response_b", "preferred")
    ):
        pref = row["preferred"]
        truth[row["item_id"]] = (
            row["response_a"] if pref == "A" else row["response_b"] if pref == "B" else None
        )
    known = [p for p in pairs if p.item_id in truth]
    matched = sum(1 for p in known if truth[p.item_id] == p.chosen_id)
    return {
        "file": display,
        "pairs_with_truth": len(known),
        "matches": matched,
        "accuracy": round(matched / len(known), 6) if known else None,
    }


def write_pairs(result: AggregateResult, out_dir: Path) -> list[Path]:
    """pairs.jsonl (TRL's prompt/chosen/rejected), provenance.jsonl (same order), summary.json."""
    pairs_lines = []
    prov_lines = []
    for pair in result.pairs:
        pairs_lines.append(
            json.dumps(
                {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected},
                ensure_ascii=False,
            )
        )
        prov = {k: v for k, v in pair.__dict__.items() if k not in ("prompt", "chosen", "rejected")}
        prov_lines.append(json.dumps(prov, ensure_ascii=False))
    written = []
    for name, lines in (("pairs.jsonl", pairs_lines), ("provenance.jsonl", prov_lines)):
        atomic_write_text(out_dir / name, "".join(line + "\n" for line in lines))
        written.append(out_dir / name)
    atomic_write_text(
        out_dir / "summary.json", json.dumps(result.summary(), indent=2, ensure_ascii=False) + "\n"
    )
    written.append(out_dir / "summary.json")
    return written
