"""Choosing the deployment checkpoint, and blinded human evaluation of checkpoints.

The reward model is a proxy that a policy learns to exploit, so the checkpoint with the highest
reward is not automatically the best one. Selection therefore has two steps:

1. Guards. A checkpoint is eligible only if it passes every reward-hacking guard of the spec
   (``evaluation.select.guards``): mean KL to the reference at most ``max_kl`` (it has not
   drifted far from the supervised model), length-reward correlation at most
   ``max_length_correlation`` (its reward is not bought with length), and disqualifier rate at
   most ``max_disqualifier_rate``, and share of responses cut at ``max_new_tokens`` without
   EOS at most ``max_no_eos_rate`` (a checkpoint that rambles to the limit). Guards read the
   ``overall`` block of each checkpoint's evaluation (`runtime/evaluation/evaluate.py`), i.e.
   all prompt sets pooled, and fail closed: a missing, NaN or infinite value fails its guard
   (a diverged checkpoint has a NaN KL, and must never be selected). One documented
   exception: a length-reward correlation that is *undefined* because the lengths or the
   rewards are constant (the evaluation says so in ``length_reward_correlation_undefined``)
   cannot show length hacking and passes.
2. Ranking. Among eligible checkpoints the spec's metric (``reward_mean`` or
   ``win_rate_vs_start``) is maximised; but when human judgements exist and the spec prefers
   them, the checkpoint human evaluators rate highest wins, because that is the quantity the
   reward model only approximates. Checkpoints without human judgements are then not ranked.
   If human judgements exist only for checkpoints that failed a guard, the metric is used and
   the decision says so.

Ties are broken towards the earlier step (then the label, for a total order): with equal
evidence, the checkpoint with fewer updates is closer to the reference and has had less
opportunity to over-optimise the proxy.

Human evaluation compares each checkpoint with the starting policy on the same prompts. Tasks
are blinded (no checkpoint name, opaque task ids, tasks of all checkpoints shuffled together)
and order-randomised (the checkpoint is response A in half of each checkpoint's tasks, exactly
when the count is even), and the key that unblinds them is written to a separate file. Pairs
whose two responses are identical are not shown to anyone; they count as ties on import, so
that a checkpoint that changed few responses is not judged on those alone.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.common.jsonl import MAX_LISTED
from rlhfspec.compiler.schemas import default_of
from rlhfspec.runtime.annotation.label_studio import labeling_config

METRICS = ("reward_mean", "win_rate_vs_start")
HUMAN_RULE = "human win rate"
TIE_BREAK = "earlier step, then label"
#: The schema's defaults, used for a guard the caller leaves out.
DEFAULT_GUARDS: dict[str, float] = default_of("evaluation.select.guards")
KEY_FORMAT = "rlhfspec.human_eval_key/1"


# ---------------------------------------------------------------------------------------------
# Selection


def _metric_value(evaluation: dict[str, Any], metric: str) -> float | None:
    overall = evaluation["overall"]
    if metric == "reward_mean":
        value = overall["reward"]["mean"]
    else:
        value = overall.get("win_rate_vs_start")
    return None if value is None else float(value)


def _guard_values(evaluation: dict[str, Any]) -> dict[str, Any]:
    overall = evaluation["overall"]
    eos_rate = overall.get("eos_rate")
    return {
        "max_kl": overall["kl"]["mean"],
        "max_length_correlation": overall["length_reward_correlation"],
        "max_disqualifier_rate": overall["disqualifier_rate"],
        "max_no_eos_rate": overall.get(
            "no_eos_rate", None if eos_rate is None else 1.0 - float(eos_rate)
        ),
    }


def _passes(name: str, value: Any, threshold: float, overall: dict[str, Any]) -> bool:
    """Fail closed: only a finite number at most the threshold passes, except an undefined
    length-reward correlation (constant lengths or rewards), which cannot show hacking."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return name == "max_length_correlation" and bool(
            overall.get("length_reward_correlation_undefined")
        )
    return math.isfinite(float(value)) and float(value) <= float(threshold)


def _human_value(entry: Any) -> tuple[float | None, int | None]:
    """A human result is a win rate or `import_human_eval`'s {"win_rate", "n"}."""
    if entry is None:
        return None, None
    if isinstance(entry, dict):
        rate = entry.get("win_rate")
        n = entry.get("n")
        return (None if rate is None else float(rate)), (None if n is None else int(n))
    return float(entry), None


def select_checkpoint(
    evals: Sequence[dict[str, Any]],
    *,
    maximize: str = "reward_mean",
    guards: dict[str, float] | None = None,
    human: dict[str, Any] | None = None,
    prefer_human: bool = True,
) -> dict[str, Any]:
    """Choose the deployment checkpoint among `evals` (`evaluate_checkpoint` results).

    `human` maps checkpoint labels to a human win rate against the start (a float, or the
    dicts `import_human_eval` returns). Returns the decision with its evidence: the rule used,
    the thresholds, one row per checkpoint (metric, human win rate, every guard's value,
    threshold and verdict), which guards each failing checkpoint broke, the ranking of the
    eligible ones and the chosen checkpoint (None, with the reason, when none qualifies).
    """
    thresholds = _thresholds(maximize, guards)
    labels = [str(e["label"]) for e in evals]
    if len(set(labels)) != len(labels):
        raise RunError(f"checkpoint labels must be unique, got {labels}")
    human = {str(k): v for k, v in (human or {}).items()}
    stray = sorted(set(human) - set(labels))
    rows = _candidate_rows(evals, thresholds, human, maximize)
    eligible = [r for r in rows if r["passed"]]

    human_present = any(r["human_win_rate"] is not None for r in rows)
    use_human = prefer_human and any(r["human_win_rate"] is not None for r in eligible)
    rule = HUMAN_RULE if use_human else maximize
    key = "human_win_rate" if use_human else "value"
    ranked = sorted(
        (r for r in eligible if r[key] is not None),
        key=lambda r: (-float(r[key]), r["step"], r["label"]),
    )
    notes: list[str] = []
    if stray:
        notes.append(
            f"human judgements for checkpoints not evaluated (ignored): {', '.join(stray)}"
        )
    if prefer_human and human_present and not use_human:
        notes.append(
            "human judgements exist only for checkpoints that failed a guard; "
            f"ranked by {maximize} instead"
        )
    unranked = [r["label"] for r in eligible if r[key] is None]
    if unranked:
        what = "no human judgements" if use_human else f"no {maximize} value"
        notes.append(f"not ranked ({what}): {', '.join(unranked)}")
    chosen, reason = _decide(rows, eligible, ranked, rule=rule, key=key)
    return {
        "rule": rule,
        "maximize": maximize,
        "prefer_human": prefer_human,
        "human_present": human_present,
        "guards": thresholds,
        "tie_break": TIE_BREAK,
        "candidates": rows,
        "failed": {r["label"]: r["failed_guards"] for r in rows if r["failed_guards"]},
        "ranking": [r["label"] for r in ranked],
        "chosen": chosen,
        "reason": reason,
        "notes": notes,
    }


def _thresholds(maximize: str, guards: dict[str, float] | None) -> dict[str, float]:
    """The guards in force: the defaults overridden by the spec's, after checking the names."""
    if maximize not in METRICS:
        raise RunError(f"unknown selection metric {maximize!r}; expected one of {METRICS}")
    thresholds = {**DEFAULT_GUARDS, **{k: v for k, v in (guards or {}).items() if v is not None}}
    unknown = sorted(set(thresholds) - set(DEFAULT_GUARDS))
    if unknown:
        raise RunError(f"unknown selection guard(s): {', '.join(unknown)}")
    return thresholds


def _candidate_rows(
    evals: Sequence[dict[str, Any]],
    thresholds: dict[str, float],
    human: dict[str, Any],
    maximize: str,
) -> list[dict[str, Any]]:
    """One row per checkpoint, in step order: its metric, human win rate and guard verdicts."""
    rows: list[dict[str, Any]] = []
    for evaluation in sorted(evals, key=lambda e: (int(e["step"]), str(e["label"]))):
        values = _guard_values(evaluation)
        checks: dict[str, Any] = {}
        for name, threshold in thresholds.items():
            value = values[name]
            passed = _passes(name, value, threshold, evaluation["overall"])
            checks[name] = {"value": value, "threshold": threshold, "passed": passed}
        rate, n = _human_value(human.get(str(evaluation["label"])))
        rows.append(
            {
                "label": str(evaluation["label"]),
                "step": int(evaluation["step"]),
                "metric": maximize,
                "value": _metric_value(evaluation, maximize),
                "human_win_rate": rate,
                "human_n": n,
                "guards": checks,
                "failed_guards": [g for g, c in checks.items() if not c["passed"]],
            }
        )
    for row in rows:
        row["passed"] = not row["failed_guards"]
    return rows


def _decide(
    rows: list[dict[str, Any]],
    eligible: list[dict[str, Any]],
    ranked: list[dict[str, Any]],
    *,
    rule: str,
    key: str,
) -> tuple[dict[str, Any] | None, str]:
    """The chosen checkpoint (None when none qualifies) and the reason, in words."""
    chosen: dict[str, Any] | None = None
    if not rows:
        reason = "no checkpoints were evaluated"
    elif not eligible:
        reason = f"all {len(rows)} checkpoint(s) failed at least one guard: " + "; ".join(
            f"{r['label']} ({', '.join(r['failed_guards'])})" for r in rows
        )
    elif not ranked:
        reason = f"no checkpoint that passes every guard has a {rule} to rank by"
    else:
        best = ranked[0]
        chosen = {"label": best["label"], "step": best["step"], "value": best[key]}
        runner_up = [r for r in ranked[1:] if r[key] == best[key]]
        reason = (
            f"highest {rule} ({best[key]}) among the {len(eligible)} of {len(rows)} "
            "checkpoint(s) that pass every guard"
        )
        if runner_up:
            reason += f"; tied with {', '.join(r['label'] for r in runner_up)}, earlier step wins"
    return chosen, reason


# ---------------------------------------------------------------------------------------------
# Human evaluation: export


def _task_id(rng: random.Random, used: set[str]) -> str:
    """An opaque id: random, so it says nothing about the checkpoint or the prompt."""
    while True:
        ident = f"he-{rng.getrandbits(48):012x}"
        if ident not in used:
            used.add(ident)
            return ident


def export_human_eval(
    responses_by_label: dict[str, list[tuple[str, str]]],
    baseline: list[tuple[str, str]],
    out_dir: Path,
    *,
    seed: int,
    per_checkpoint: int,
    criteria_version: str,
) -> list[Path]:
    """Write blinded, order-randomised checkpoint-vs-start pairs under ``out_dir/human_eval``.

    `responses_by_label` holds each checkpoint's (prompt, response) rows in the same prompt
    order as `baseline`, the starting policy's rows. Up to `per_checkpoint` prompts per
    checkpoint are drawn (seeded); pairs with identical responses are recorded in the key as
    automatic ties instead of being exported. Files: ``tasks.jsonl`` (task_id, prompt,
    text_a, text_b, criteria_version), ``label_studio.json`` (the same tasks as a Label Studio
    import), ``config.xml`` (the labeling config: choice A, B or tie) and ``key.json`` (which
    side holds which checkpoint; keep it from the evaluators). Returns the paths written.
    """
    if per_checkpoint < 1:
        raise RunError(f"per_checkpoint must be at least 1, got {per_checkpoint}")
    rng = random.Random(f"rlhfspec-human-eval:{seed}")
    used: set[str] = set()
    tasks: list[dict[str, Any]] = []
    key_tasks: dict[str, dict[str, Any]] = {}
    identical: dict[str, int] = {}
    exported: dict[str, int] = {}
    for label in sorted(responses_by_label):
        rows = responses_by_label[label]
        _check_aligned(label, rows, baseline)
        indices = sorted(rng.sample(range(len(rows)), min(per_checkpoint, len(rows))))
        shown = [i for i in indices if rows[i][1] != baseline[i][1]]
        identical[label] = len(indices) - len(shown)
        exported[label] = len(shown)
        # exactly half of the checkpoint's tasks put it on side A (one extra at random if odd)
        sides = ["A"] * (len(shown) // 2) + ["B"] * (len(shown) // 2)
        if len(shown) % 2:
            sides.append(rng.choice("AB"))
        rng.shuffle(sides)
        for index, side in zip(shown, sides, strict=True):
            prompt, response = rows[index]
            start = baseline[index][1]
            task_id = _task_id(rng, used)
            text_a, text_b = (response, start) if side == "A" else (start, response)
            tasks.append(
                {
                    "task_id": task_id,
                    "prompt": prompt,
                    "text_a": text_a,
                    "text_b": text_b,
                    "criteria_version": criteria_version,
                }
            )
            key_tasks[task_id] = {"label": label, "checkpoint_side": side, "prompt_index": index}
    rng.shuffle(tasks)  # interleave checkpoints: task order must not reveal them either
    key = {
        "format": KEY_FORMAT,
        "seed": seed,
        "criteria_version": criteria_version,
        "per_checkpoint": per_checkpoint,
        "exported": exported,
        "identical": identical,
        "tasks": {t["task_id"]: key_tasks[t["task_id"]] for t in tasks},
    }
    return _write_human_eval(Path(out_dir) / "human_eval", tasks, key, criteria_version)


def _check_aligned(
    label: str, rows: list[tuple[str, str]], baseline: list[tuple[str, str]]
) -> None:
    """A checkpoint's rows must answer the baseline's prompts, in the same order."""
    if len(rows) != len(baseline):
        raise RunError(
            f"checkpoint {label!r}: {len(rows)} responses, but the baseline has {len(baseline)}"
        )
    for index, ((prompt, _), (base_prompt, _)) in enumerate(zip(rows, baseline, strict=True)):
        if prompt != base_prompt:
            raise RunError(
                f"checkpoint {label!r}: prompt {index} differs from the baseline's; "
                "both must answer the same prompts in the same order"
            )


def _write_human_eval(
    folder: Path, tasks: list[dict[str, Any]], key: dict[str, Any], criteria_version: str
) -> list[Path]:
    """The evaluators' files (tasks, Label Studio import and config) and the key, kept apart."""
    paths = {
        name: folder / name
        for name in ("tasks.jsonl", "label_studio.json", "config.xml", "key.json")
    }
    atomic_write_text(
        paths["tasks.jsonl"], "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in tasks)
    )
    atomic_write_text(
        paths["label_studio.json"],
        json.dumps([{"data": t} for t in tasks], indent=1, ensure_ascii=False) + "\n",
    )
    atomic_write_text(
        paths["config.xml"],
        labeling_config(criteria_version=criteria_version, allow_tie=True, justification="none"),
    )
    atomic_write_text(paths["key.json"], json.dumps(key, indent=2, ensure_ascii=False) + "\n")
    return list(paths.values())


# ---------------------------------------------------------------------------------------------
# Human evaluation: import


def _normalise_choice(raw: Any) -> str | None:
    if not isinstance(raw, str):
        return None
    return {"a": "A", "b": "B", "tie": "tie"}.get(raw.strip().lower())


def _label_studio_choice(results: Any) -> str | None:
    """The A/B/tie choice of one Label Studio annotation (Choices, or the Pairwise tag)."""
    for result in results if isinstance(results, list) else []:
        if not isinstance(result, dict):
            continue
        value = result.get("value") or {}
        if result.get("type") == "choices" and value.get("choices"):
            return _normalise_choice(value["choices"][0])
        if result.get("type") == "pairwise" and value.get("selected") in ("left", "right"):
            return "A" if value["selected"] == "left" else "B"
    return None


def _read_judgements(path: Path) -> tuple[list[tuple[str, str, Any]], list[str]]:
    """(where, task_id, raw choice) per judgement, from JSONL rows or a Label Studio export."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: cannot read judgements: {exc}") from None
    out: list[tuple[str, str, Any]] = []
    problems: list[str] = []
    if text.lstrip().startswith("["):
        try:
            tasks = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RunError(f"{path}: not a Label Studio JSON export: {exc.msg}") from None
        for number, task in enumerate(tasks, start=1):
            data = task.get("data") if isinstance(task, dict) else None
            if not isinstance(data, dict):
                problems.append(f"{path}: task {number}: a task needs a 'data' object")
                continue
            for a_number, ann in enumerate(task.get("annotations") or [], start=1):
                if not isinstance(ann, dict) or ann.get("was_cancelled"):
                    continue
                choice = _label_studio_choice(ann.get("result"))
                out.append(
                    (f"task {number}, annotation {a_number}", str(data.get("task_id")), choice)
                )
        return out, problems
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}: line {number}: not valid JSON: {exc.msg}")
            continue
        if not isinstance(row, dict):
            problems.append(f"{path}: line {number}: expected a JSON object")
            continue
        out.append((f"line {number}", str(row.get("task_id")), row.get("choice")))
    return out, problems


def import_human_eval(judgements_path: Path, key_path: Path) -> dict[str, dict[str, Any]]:
    """Human win rate of each checkpoint against the start, from judgements and the key.

    Judgements are JSONL rows ``{"task_id", "choice": "A" | "B" | "tie"}`` or a Label Studio
    JSON export of ``label_studio.json``; every judgement counts (several annotators per task
    are several judgements). A tie counts half a win, and so does each identical pair the
    export left out. Returns ``{label: {"win_rate", "n", "wins", "ties", "losses",
    "identical"}}`` where n counts judgements plus identical pairs; checkpoints with neither
    are left out. Unknown task ids or choices are refused, all listed at once.
    """
    try:
        key = json.loads(Path(key_path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{key_path}: cannot read the human-evaluation key: {exc}") from None
    if not isinstance(key, dict) or key.get("format") != KEY_FORMAT:
        raise RunError(f"{key_path}: not a human-evaluation key ({KEY_FORMAT})")
    judgements, problems = _read_judgements(Path(judgements_path))
    counts: dict[str, dict[str, int]] = {}
    for where, task_id, raw in judgements:
        entry = key["tasks"].get(task_id)
        choice = _normalise_choice(raw)
        if entry is None:
            problems.append(f"{judgements_path}: {where}: unknown task_id {task_id!r}")
            continue
        if choice is None:
            problems.append(f"{judgements_path}: {where}: choice must be A, B or tie, got {raw!r}")
            continue
        tally = counts.setdefault(entry["label"], {"wins": 0, "ties": 0, "losses": 0})
        if choice == "tie":
            tally["ties"] += 1
        elif choice == entry["checkpoint_side"]:
            tally["wins"] += 1
        else:
            tally["losses"] += 1
    if problems:
        listed = problems[:MAX_LISTED]
        more = len(problems) - len(listed)
        raise RunError(
            f"{len(problems)} problem(s) in the human judgements:\n  "
            + "\n  ".join(listed)
            + (f"\n  ... and {more} more" if more else "")
        )
    out: dict[str, dict[str, Any]] = {}
    for label in sorted(set(counts) | set(key.get("identical", {}))):
        tally = counts.get(label, {"wins": 0, "ties": 0, "losses": 0})
        same = int(key.get("identical", {}).get(label, 0))
        n = tally["wins"] + tally["ties"] + tally["losses"] + same
        if n == 0:
            continue
        rate = (tally["wins"] + 0.5 * (tally["ties"] + same)) / n
        out[label] = {"win_rate": round(rate, 6), "n": n, **tally, "identical": same}
    return out
