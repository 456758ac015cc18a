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
from rlhfspec.runtime.annotation.judge.items import is_ai
from rlhfspec.runtime.annotation.loading import load_annotations
from rlhfspec.runtime.project import Project
from rlhfspec.runtime.prompts.pool import prompt_texts

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
    #: a multi-turn prompt's conversation (`prompt` is then its transcript); None otherwise
    messages: list[dict[str, str]] | None = None


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
    held_back: list[dict[str, Any]] = field(default_factory=list)
    """Items with fewer votes than `min_votes`: what `tasks --requeue` sends back out."""
    split_items: list[dict[str, Any]] = field(default_factory=list)
    """Items whose votes split: for criteria review (and requeue when dropped)."""
    split_dropped: bool = True

    @property
    def warnings(self) -> list[str]:
        """Settings or data weaker than the seed's guidance, said plainly."""
        return volume_warnings(len(self.pairs))

    def summary(self) -> dict[str, Any]:
        return {
            "format": "rlhfspec.aggregate-summary/1",
            "pairs": len(self.pairs),
            "held_back": len(self.held_back),
            "split_items": len(self.split_items),
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
    """Every batch's records, un-blinded through the batches' keys (see `loading`)."""
    return load_annotations(project, skip_bad_rows=skip_bad_rows).records


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


@dataclass
class _Inputs:
    """What votes are joined to: response and prompt texts, and the spec's rules."""

    responses: dict[str, dict[str, Any]]
    prompts: dict[str, str]
    tie_rule: dict[str, str]
    ranked: list[str]
    drop_split: bool
    min_votes: int
    messages: dict[str, list[dict[str, str]]] = field(default_factory=dict)


def _inputs(project: Project) -> _Inputs:
    spec = project.spec
    agg = spec["annotation"]["aggregation"]
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
    messages: dict[str, list[dict[str, str]]] = {}
    for source in spec["prompts"]["sources"]:
        for prompt_id, prompt in prompt_texts(project, source["path"]).items():
            prompts[prompt_id] = prompt.text
            if prompt.messages is not None:
                messages[prompt_id] = prompt.messages
    return _Inputs(
        responses,
        prompts,
        spec["criteria"]["tie_breaking"],
        [d["id"] for d in spec["criteria"]["dimensions"]],
        bool(agg["drop_split_votes"]),
        int(agg["min_votes"]),
        messages,
    )


def _group(
    records: list[dict[str, Any]], excluded: set[str], counts: Counter[str]
) -> dict[str, list[dict[str, Any]]]:
    """Non-gold votes per item, without the excluded annotators' votes."""
    by_item: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record["gold"]:
            counts["gold_records_skipped"] += 1
        elif record["annotator"] in excluded:
            counts["votes_excluded"] += 1
        else:
            by_item.setdefault(record["item_id"], []).append(record)
    all_items = {r["item_id"] for r in records if not r["gold"]}
    counts["items_without_votes"] = len(all_items - by_item.keys())
    return by_item


def _held(
    item_id: str, rows: list[dict[str, Any]], reason: str, votes: Counter[int]
) -> dict[str, Any]:
    first = rows[0]
    lo, hi = sorted((first["response_a"], first["response_b"]))
    return {
        "item_id": item_id,
        "prompt_id": first["prompt_id"],
        "response_lo": lo,
        "response_hi": hi,
        "reason": reason,
        "votes": {"lo": votes[LO], "hi": votes[HI], "tie": votes[TIE]},
        "annotators": sorted(r["annotator"] for r in rows),
        "batches": sorted({r["batch"] for r in rows}),
    }


def _decide(
    item_id: str,
    rows: list[dict[str, Any]],
    inputs: _Inputs,
    counts: Counter[str],
    result: AggregateResult,
) -> Pair | None:
    """One item's pair, or None (counted, and listed in `held_back` when it needs more votes)."""
    first = rows[0]
    lo, hi = sorted((first["response_a"], first["response_b"]))
    votes = Counter(_canonical(r["choice"], r["response_a"], r["response_b"]) for r in rows)
    # an AI judge's label stands alone: its check is the agreement gate on the human review
    # sample (aggregation only sees AI records once that gate passed), not overlap
    if sum(votes.values()) < inputs.min_votes and not all(is_ai(r) for r in rows):
        counts["held_back_min_votes"] += 1
        result.held_back.append(_held(item_id, rows, "too_few_votes", votes))
        return None
    winner = _winner(votes)
    decided_by = "majority"
    if winner is None:
        counts["split_votes"] += 1
        result.split_items.append(_held(item_id, rows, "split", votes))
        if inputs.drop_split:
            return None
        winner, decided_by = _break_tie(
            rows,
            inputs.tie_rule,
            inputs.ranked,
            inputs.responses[lo]["text"],
            inputs.responses[hi]["text"],
        )
        counts[f"split_decided_by_{decided_by.split(':')[0]}"] += 1
    if winner == TIE:
        counts["ties"] += 1
        return None
    chosen, rejected = (lo, hi) if winner == LO else (hi, lo)
    return Pair(
        item_id=item_id,
        prompt_id=first["prompt_id"],
        prompt=inputs.prompts[first["prompt_id"]],
        messages=inputs.messages.get(first["prompt_id"]),
        chosen_id=chosen,
        rejected_id=rejected,
        chosen=inputs.responses[chosen]["text"],
        rejected=inputs.responses[rejected]["text"],
        votes={"chosen": votes[winner], "rejected": votes[1 - winner], "tie": votes[TIE]},
        agreement=round(votes[winner] / sum(votes.values()), 6),
        batches=sorted({r["batch"] for r in rows}),
        annotators=sorted(r["annotator"] for r in rows),
        decided_by=decided_by,
        dimensions={dim: _dimension_verdict(rows, dim, winner) for dim in inputs.ranked},
    )


def aggregate(
    project: Project,
    records: list[dict[str, Any]],
    *,
    failed_annotators: Iterable[str] = (),
    holdout_prompts: Iterable[str] = (),
) -> AggregateResult:
    """Majority vote per item with the spec's tie-breaking; gold items are QC, not data.

    Items with fewer than `aggregation.min_votes` votes are held back (listed for
    `tasks --requeue`), split items are listed for criteria review. Votes on responses or
    prompts nobody knows (typically blinded ids read without the batch's key) and a result
    without a single usable vote are errors: a quiet empty training set is worse than none.
    """
    inputs = _inputs(project)
    agg = project.spec["annotation"]["aggregation"]
    excluded = set(agg["exclude_annotators"])
    if agg["exclude_failed_annotators"]:
        excluded |= set(failed_annotators)
    holdout = set(holdout_prompts)
    counts: Counter[str] = Counter()
    by_item = _group(records, excluded, counts)
    result = AggregateResult(excluded_annotators=sorted(excluded), split_dropped=inputs.drop_split)
    unknown: list[str] = []
    versions: set[str] = set()
    for item_id in sorted(by_item):
        rows = by_item[item_id]
        lo, hi = sorted((rows[0]["response_a"], rows[0]["response_b"]))
        counts["items"] += 1
        counts[f"items_with_{min(len(rows), 9)}_votes"] += 1
        if rows[0]["prompt_id"] in holdout:
            counts["holdout_items_dropped"] += 1
            continue
        if lo not in inputs.responses or hi not in inputs.responses:
            unknown.append(
                f"{item_id} ({', '.join(r for r in (lo, hi) if r not in inputs.responses)})"
            )
            continue
        if rows[0]["prompt_id"] not in inputs.prompts:
            unknown.append(f"{item_id} (prompt {rows[0]['prompt_id']})")
            continue
        pair = _decide(item_id, rows, inputs, counts, result)
        if pair is not None:
            versions.update(r["criteria_version"] for r in rows)
            result.pairs.append(pair)
    _refuse_unusable(project, unknown, by_item)
    result.counts = dict(counts)
    result.criteria_versions = sorted(versions)
    return result


def _refuse_unusable(
    project: Project,
    unknown: list[str],
    by_item: dict[str, list[dict[str, Any]]],
) -> None:
    if unknown:
        blinded = any(u.split(" (", 1)[1].startswith("resp-") for u in unknown)
        raise RunError(
            f"{len(unknown)} item(s) vote on responses or prompts that are not in the spec's "
            f"responses and prompt files: {', '.join(unknown[:5])}"
            + (", ..." if len(unknown) > 5 else "")
            + (
                "; these are blinded ids: list the batch's unblinding_key.json as `key` in "
                "annotation.batches"
                if blinded
                else ""
            )
        )
    if not by_item:
        raise RunError(
            f"{project.display}: no usable votes: every record is a gold item or from an "
            "excluded annotator"
        )


def require_pairs(result: AggregateResult, display: str) -> None:
    """0 pairs is an error that says why (the CLI and the aggregate stage call this)."""
    if not result.pairs:
        c = Counter(result.counts)
        raise RunError(
            f"{display}: 0 preference pairs from {c['items']} items ({c['held_back_min_votes']} "
            f"below min_votes, {c['split_votes']} split, {c['ties']} ties, "
            f"{c['holdout_items_dropped']} holdout)"
        )


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
    """pairs.jsonl (TRL's prompt/chosen/rejected), provenance.jsonl (same order), summary.json,
    requeue.jsonl (items held back below min_votes, and split items when they are dropped: what
    `tasks --requeue` reads) and split_items.jsonl (for criteria review)."""
    pairs_lines = []
    prov_lines = []
    for pair in result.pairs:
        row: dict[str, Any] = {
            "prompt": pair.prompt,
            "chosen": pair.chosen,
            "rejected": pair.rejected,
        }
        if pair.messages is not None:  # a multi-turn prompt: what the model formatter reads
            row["messages"] = pair.messages
        pairs_lines.append(json.dumps(row, ensure_ascii=False))
        text_fields = ("prompt", "chosen", "rejected", "messages")
        prov = {k: v for k, v in pair.__dict__.items() if k not in text_fields}
        prov_lines.append(json.dumps(prov, ensure_ascii=False))
    held = [json.dumps(h, ensure_ascii=False) for h in result.held_back]
    split = [json.dumps(h, ensure_ascii=False) for h in result.split_items]
    written = []
    for name, lines in (
        ("pairs.jsonl", pairs_lines),
        ("provenance.jsonl", prov_lines),
        ("requeue.jsonl", held + (split if result.split_dropped else [])),
        ("split_items.jsonl", split),
    ):
        atomic_write_text(out_dir / name, "".join(line + "\n" for line in lines))
        written.append(out_dir / name)
    atomic_write_text(
        out_dir / "summary.json",
        json.dumps(result.summary(), indent=2, ensure_ascii=False) + "\n",
    )
    written.append(out_dir / "summary.json")
    return written
