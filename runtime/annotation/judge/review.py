"""QC of an AI judge against its human review sample, and the gate before its labels are used.

For each judge (annotator `ai:<model>`) among the annotation records:

* agreement: Cohen's kappa, with its Fleiss-Cohen-Everitt 95% interval,
  between the judge's label and the human majority (annotators who failed
  QC left out; split majorities skipped and counted) on the reviewed pairs,
  and per dimension where both gave dimension choices;
* position bias: the share of first-shown picks over both orders of every
  pair judged (the run statistics in the records, which include the pairs
  the judge could not label), with an exact binomial test, and the share of
  pairs whose two orders agree;
* length bias: on reviewed pairs both decided and of unequal length, how
  much more often the judge picked the longer response than the humans did;
* gold accuracy, with a Wilson interval.

The gate (`judge.gate`) passes only when every threshold holds; QC reports
each breach as an error finding that says how far off the judge is, the
annotation-QC stage turns the result into the `ai_judge_agreement` gate, and
aggregation drops AI labels unless it passed (or was overridden).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from rlhfspec.common.findings import Finding
from rlhfspec.runtime.annotation.agreement import (
    AgreementError,
    binomial_test_two_sided,
    cohen_kappa_interval,
    landis_koch_band,
    wilson_interval,
)
from rlhfspec.runtime.annotation.judge.items import is_ai, pair_key
from rlhfspec.runtime.stage_api import Gate

LABELS = ("first", "second", "tie")
GATE_NAME = "ai_judge_agreement"


def split_ai(
    records: Iterable[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(human records, AI records)."""
    human: list[dict[str, Any]] = []
    ai: list[dict[str, Any]] = []
    for record in records:
        (ai if is_ai(record) else human).append(record)
    return human, ai


def canon(choice: str, record: dict[str, Any]) -> str:
    """A choice relative to the shown order -> first/second/tie in sorted-id order."""
    if choice == "tie":
        return "tie"
    picked = record["response_a"] if choice == "A" else record["response_b"]
    return "first" if picked == min(record["response_a"], record["response_b"]) else "second"


def human_majorities(
    human: Iterable[dict[str, Any]], excluded: Iterable[str]
) -> tuple[dict[tuple[str, str, str], dict[str, str | None]], int]:
    """Per pair: the human majority overall (key "") and per dimension; None when split."""
    skip = set(excluded)
    votes: dict[tuple[str, str, str], dict[str, Counter[str]]] = {}
    for record in human:
        if record["gold"] or record["annotator"] in skip:
            continue
        slot = votes.setdefault(pair_key(record), {})
        slot.setdefault("", Counter())[canon(record["choice"], record)] += 1
        for dim, choice in (record.get("dimension_choices") or {}).items():
            slot.setdefault(dim, Counter())[canon(choice, record)] += 1
    out: dict[tuple[str, str, str], dict[str, str | None]] = {}
    for key, per in votes.items():
        out[key] = {}
        for dim, counter in per.items():
            ranked = counter.most_common()
            tied = len(ranked) > 1 and ranked[0][1] == ranked[1][1]
            out[key][dim] = None if tied else ranked[0][0]
    return out, sum(1 for v in out.values() if v[""] is None)


def _kappa(ai: list[str], human: list[str]) -> dict[str, Any]:
    if len(ai) < 2:
        return {"n": len(ai), "kappa": None, "low": None, "high": None, "band": None}
    try:
        result = cohen_kappa_interval(ai, human)
    except AgreementError as exc:
        return {
            "n": len(ai),
            "kappa": None,
            "low": None,
            "high": None,
            "band": None,
            "error": exc.message,
        }
    return {
        "n": result.n, "kappa": result.kappa, "low": result.low, "high": result.high,
        "se": result.se, "band": landis_koch_band(result.kappa),
        "raw_agreement": sum(a == h for a, h in zip(ai, human, strict=True)) / len(ai),
    }  # fmt: skip


def _longer(label: str, words: list[int]) -> bool:
    return (label == "first") == (words[0] > words[1])


def judge_metrics(
    records: list[dict[str, Any]],
    majorities: Mapping[tuple[str, str, str], dict[str, str | None]],
    gold: Mapping[str, int],
) -> dict[str, Any]:
    """Every measurement of one judge's records (no thresholds)."""
    info = [r["judge"] for r in records if isinstance(r.get("judge"), dict)]
    runs = {i.get("run"): i.get("run_stats") or {} for i in info}
    stats = Counter[str]()
    for run_stats in runs.values():
        stats.update({k: int(v) for k, v in run_stats.items()})
    reviewed = [r for r in records if not r["gold"] and (r.get("judge") or {}).get("review")]
    pairs = [
        (r, majorities[pair_key(r)]) for r in reviewed if majorities.get(pair_key(r), {}).get("")
    ]
    ai = [canon(r["choice"], r) for r, _ in pairs]
    human = [str(m[""]) for _, m in pairs]
    dims: dict[str, Any] = {}
    for dim in sorted({d for r, _ in pairs for d in (r.get("dimension_choices") or {})}):
        both = [(canon(r["dimension_choices"][dim], r), m[dim]) for r, m in pairs
                if dim in (r.get("dimension_choices") or {}) and m.get(dim)]  # fmt: skip
        dims[dim] = _kappa([a for a, _ in both], [str(h) for _, h in both])
    sized = [(a, h, r["judge"]["words"]) for (r, _), a, h in zip(pairs, ai, human, strict=True)
             if a != "tie" and h != "tie" and "words" in r["judge"] and r["judge"]["words"][0] != r["judge"]["words"][1]]  # fmt: skip
    ai_longer = sum(_longer(a, w) for a, _, w in sized)
    human_longer = sum(_longer(h, w) for _, h, w in sized)
    golds = [
        (canon(r["choice"], r), LABELS[gold[r["item_id"]]])
        for r in records
        if r["gold"] and r["item_id"] in gold
    ]
    correct = sum(a == g for a, g in golds)
    decided = stats["decided_answers"]
    return {
        "models": sorted({str(i.get("model")) for i in info}),
        "backends": sorted({str(i.get("backend")) for i in info}),
        "prompt_sha256": sorted({str(i.get("prompt_sha256")) for i in info}),
        "runs": sorted(str(r) for r in runs),
        "criteria_versions": sorted({str(r["criteria_version"]) for r in records}),
        "ai_labelled_pairs": sum(not r["gold"] for r in records),
        "review_sample": len(reviewed),
        "reviewed_with_majority": len(pairs),
        "agreement": _kappa(ai, human),
        "per_dimension": dims,
        "order_agreement": {"pairs": stats["pairs"], "agree": stats["orders_agree"],
                            "share": stats["orders_agree"] / stats["pairs"] if stats["pairs"] else None},
        "position": {
            "decided_answers": decided, "first_shown_picks": stats["first_shown_picks"],
            "first_shown_share": stats["first_shown_picks"] / decided if decided else None,
            "p_value": binomial_test_two_sided(stats["first_shown_picks"], decided) if decided else None,
        },
        "length": {
            "pairs": len(sized),
            "ai_longer_share": ai_longer / len(sized) if sized else None,
            "human_longer_share": human_longer / len(sized) if sized else None,
            "bias": (ai_longer - human_longer) / len(sized) if sized else None,
        },
        "gold": {"items": len(golds), "correct": correct,
                 "accuracy": correct / len(golds) if golds else None,
                 "interval": list(wilson_interval(correct, len(golds))) if golds else None},
    }  # fmt: skip


def gate_checks(
    m: dict[str, Any], gate: Mapping[str, Any]
) -> list[tuple[str, float | None, float, bool, str]]:
    """(code, value, threshold, passed, message) per threshold of `judge.gate`."""
    checks: list[tuple[str, float | None, float, bool, str]] = []
    agreement = m["agreement"]
    n, need = m["reviewed_with_majority"], int(gate["min_reviewed_pairs"])
    checks.append(("J002", float(n), float(need), n >= need,
                   f"{n} reviewed pair(s) with a human majority; the gate needs {need}: review more pairs"))  # fmt: skip
    floor = float(gate["min_kappa"])
    use_low = bool(gate["use_lower_bound"])
    value = agreement["low"] if use_low else agreement["kappa"]
    what = "lower end of the 95% interval of kappa" if use_low else "kappa"
    shown = "undefined" if value is None else f"{value:.3f}"
    interval = (
        ""
        if agreement["kappa"] is None
        else f" (kappa {agreement['kappa']:.3f}, 95% CI [{agreement['low']:.3f}, {agreement['high']:.3f}], n={agreement['n']})"
    )
    checks.append(("J001", value, floor, value is not None and value >= floor,
                   f"{what} with the human majority is {shown}, {'below' if value is None or value < floor else 'at or above'} the gate's {floor:g}"
                   + (f" by {floor - value:.3f}" if value is not None and value < floor else "") + interval))  # fmt: skip
    pos = m["position"]["first_shown_share"]
    if pos is not None:
        limit = float(gate["max_position_bias"])
        off = abs(pos - 0.5)
        checks.append(("J003", off, limit, off <= limit,
                       f"picks the first-shown response in {pos:.1%} of decided answers "
                       f"({m['position']['first_shown_picks']}/{m['position']['decided_answers']}, p={m['position']['p_value']:.2g}); "
                       f"|share - 0.5| = {off:.3f}, limit {limit:g}"))  # fmt: skip
    order = m["order_agreement"]["share"]
    if order is not None:
        need_order = float(gate["min_order_agreement"])
        checks.append(("J006", order, need_order, order >= need_order,
                       f"both orders agree on {order:.1%} of {m['order_agreement']['pairs']} pairs; the gate needs {need_order:.0%}"))  # fmt: skip
    bias = m["length"]["bias"]
    if bias is not None:
        limit = float(gate["max_length_bias"])
        checks.append(("J004", bias, limit, bias <= limit,
                       f"picks the longer response in {m['length']['ai_longer_share']:.1%} of {m['length']['pairs']} reviewed pairs, "
                       f"the humans in {m['length']['human_longer_share']:.1%}: excess {bias:+.3f}, limit {limit:g}"))  # fmt: skip
    accuracy = m["gold"]["accuracy"]
    if accuracy is not None:
        need_gold = float(gate["min_gold_accuracy"])
        low, high = m["gold"]["interval"]
        checks.append(("J005", accuracy, need_gold, accuracy >= need_gold,
                       f"gold accuracy {accuracy:.3f} ({m['gold']['correct']}/{m['gold']['items']}, 95% CI [{low:.3f}, {high:.3f}]), minimum {need_gold:g}"))  # fmt: skip
    return checks


def review_judges(
    spec: Mapping[str, Any],
    ai_records: list[dict[str, Any]],
    human_records: list[dict[str, Any]],
    gold: Mapping[str, int],
    excluded: Iterable[str] = (),
) -> tuple[dict[str, Any], list[Finding]]:
    """The `ai_judge` QC metrics and the findings of every gate breach."""
    majorities, split = human_majorities(human_records, excluded)
    judges: dict[str, Any] = {}
    findings: list[Finding] = []
    by_judge: dict[str, list[dict[str, Any]]] = {}
    for record in ai_records:
        by_judge.setdefault(record["annotator"], []).append(record)
    for name in sorted(by_judge):
        metrics = judge_metrics(by_judge[name], majorities, gold)
        checks = gate_checks(metrics, spec["judge"]["gate"])
        metrics["checks"] = [
            {"code": c, "value": v, "threshold": t, "passed": ok, "message": msg}
            for c, v, t, ok, msg in checks
        ]
        metrics["gate_passed"] = all(ok for _, _, _, ok, _ in checks)
        judges[name] = metrics
        findings += [
            Finding(c, msg, subject=f"judge {name}", value=v, threshold=t)
            for c, v, t, ok, msg in checks
            if not ok
        ]
    passed = all(j["gate_passed"] for j in judges.values())
    return {
        "judges": judges,
        "ai_labelled_pairs": sum(j["ai_labelled_pairs"] for j in judges.values()),
        "split_human_majorities": split,
        "gate": {"name": GATE_NAME, "passed": passed},
    }, findings


def ai_judge_gate(section: dict[str, Any]) -> Gate:
    """The annotation-QC stage's `ai_judge_agreement` gate, from the QC metrics."""
    failed = [
        f"{name}: [{c['code']}] {c['message']}"
        for name, judge in section["judges"].items()
        for c in judge["checks"]
        if not c["passed"]
    ]
    kappas = [j["agreement"]["kappa"] for j in section["judges"].values()]
    value = min((k for k in kappas if k is not None), default=None)
    return Gate(
        GATE_NAME,
        section["gate"]["passed"],
        value,
        None,
        "; ".join(failed)
        if failed
        else "every AI judge passes the agreement gate on its review sample",
    )


def ai_judge_lineage(section: dict[str, Any]) -> dict[str, Any]:
    """What lineage states about the AI labels: how many, by which judge and prompt, how good."""
    return {
        "ai_labelled_pairs": section["ai_labelled_pairs"],
        "gate_passed": section["gate"]["passed"],
        "judges": {
            name: {
                "models": j["models"],
                "backends": j["backends"],
                "prompt_sha256": j["prompt_sha256"],
                "criteria_versions": j["criteria_versions"],
                "ai_labelled_pairs": j["ai_labelled_pairs"],
                "reviewed_pairs": j["reviewed_with_majority"],
                "kappa": j["agreement"]["kappa"],
                "kappa_95ci": [j["agreement"]["low"], j["agreement"]["high"]],
                "order_agreement": j["order_agreement"]["share"],
                "first_shown_share": j["position"]["first_shown_share"],
                "length_bias": j["length"]["bias"],
                "gold_accuracy": j["gold"]["accuracy"],
            }
            for name, j in section["judges"].items()
        },
    }
