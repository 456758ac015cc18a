"""The AI judge against a chat-completions server on 127.0.0.1 answering from the simulation.

Slow: each test starts an HTTP server (stdlib, in a thread) and judges
hundreds to thousands of requests. Nothing reaches beyond 127.0.0.1.

* a judge of known accuracy: its measured kappa with the simulated humans
  (the human majority on the review sample) contains the kappa that accuracy
  implies, computed from the ground truth; the gate passes;
* a planted position bias and a planted length bias: both caught, the gate
  fails, and `rlhfspec run` stops before aggregation with a finding that says
  how far off the judge is;
* timeouts, rate limits, server errors and malformed answers: retried,
  bounded by `max_attempts`, every event counted, exhausted pairs recorded
  and sent to human review;
* `rlhfspec judge` as a process, killed and resumed: no recorded pair asked
  again, the API key never written anywhere;
* a local Hugging Face model (builtin:tiny): answers constrained to the
  format, so never unparseable.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.annotation.agreement import wilson_interval
from rlhfspec.runtime.annotation.judge.output import run_judge
from rlhfspec.runtime.annotation.qc import run_qc
from rlhfspec.runtime.project import Project, load_project
from tests.annotation.judge_sim import DATA, Behaviour, JudgeServer, load_truth, preferred
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
W4 = "2026-11-w4.jsonl, criteria_version: 1.2.0}"


def configure(spec: Path, base_url: str, extra: str = "", ai_batch: str | None = None) -> Project:
    """The example spec with a judge block (and, once judged, the AI batch listed)."""
    text = spec.read_text(encoding="utf-8")
    text = re.sub(r"\njudge:\n(  .*\n)+", "\n", text)
    text = re.sub(r"\n    - \{id: ai-judge.*", "", text)
    concurrency = "" if "concurrency" in extra else "  concurrency: 8\n"
    block = f"judge:\n  base_url: {base_url}\n  model: sim-judge\n  backoff_seconds: 0.01\n{concurrency}{extra}"
    text = text.replace("\nsft:\n", f"\n{block}\nsft:\n", 1)
    if ai_batch:
        text = text.replace(
            W4, W4 + f"\n    - {{id: ai-judge, path: {ai_batch}, criteria_version: 1.3.0}}"
        )
    spec.write_text(text, encoding="utf-8")
    return load_project(spec)


def judge_and_qc(spec: Path, behaviour: Behaviour, extra: str = "") -> tuple[dict[str, Any], Any]:
    with JudgeServer(behaviour) as server:
        result = run_judge(
            configure(spec, server.base_url, extra), spec.parent / "ai", items_from="batches"
        )
        report = run_qc(configure(spec, server.base_url, extra, ai_batch="ai/records.jsonl"))
    return result.summary, report


def canonical_truth() -> dict[tuple[str, str], str]:
    """(lower id, higher id) -> first/second/tie, from the simulation's hidden labels."""
    out = {}
    for line in (DATA / "truth" / "pairs.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        low, high = sorted((row["response_a"], row["response_b"]))
        if row["preferred"] == "tie":
            out[(low, high)] = "tie"
        else:
            picked = row["response_a"] if row["preferred"] == "A" else row["response_b"]
            out[(low, high)] = "first" if picked == low else "second"
    return out


def canon(record: dict[str, Any]) -> str:
    if record["choice"] == "tie":
        return "tie"
    picked = record["response_a"] if record["choice"] == "A" else record["response_b"]
    return "first" if picked == min(record["response_a"], record["response_b"]) else "second"


def expected_kappa(p: float, truth: list[str], human: list[str]) -> float:
    """Kappa implied by a judge right with probability p, else one of the two other labels."""
    labels = ("first", "second", "tie")
    n = len(truth)
    agree = sum(p if h == t else (1 - p) / 2 for t, h in zip(truth, human, strict=True)) / n
    judge_share = {lab: sum(p if t == lab else (1 - p) / 2 for t in truth) / n for lab in labels}
    human_share = {lab: human.count(lab) / n for lab in labels}
    chance = sum(judge_share[lab] * human_share[lab] for lab in labels)
    return (agree - chance) / (1 - chance)


def test_known_accuracy_judge_matches_the_humans_within_its_interval(project: Path) -> None:
    p = 0.9
    summary, report = judge_and_qc(project, Behaviour(accuracy=p))
    judge = report.metrics["ai_judge"]["judges"]["ai:sim-judge"]
    assert judge["gate_passed"] and report.metrics["ai_judge"]["gate"]["passed"]
    records = [
        json.loads(x) for x in (project.parent / "ai" / "records.jsonl").read_text().splitlines()
    ]
    truth = canonical_truth()
    # the human majority on the review sample, computed here independently of review.py
    excluded = set(report.excluded_annotators)
    humans: dict[tuple[str, str], Counter[str]] = {}
    for batch in [f"2026-11-w{i}" for i in range(1, 5)]:
        for line in (DATA / "annotations" / f"{batch}.jsonl").read_text().splitlines():
            r = json.loads(line)
            if not r["gold"] and r["annotator"] not in excluded:
                key = tuple(sorted((r["response_a"], r["response_b"])))
                humans.setdefault(key, Counter())[canon(r)] += 1  # type: ignore[index]
    reviewed_truth, reviewed_human = [], []
    for record in records:
        key = (record["response_a"], record["response_b"])
        votes = humans.get(key)
        if record["judge"]["review"] and votes:
            top = votes.most_common()
            if len(top) == 1 or top[0][1] > top[1][1]:
                reviewed_truth.append(truth[key])
                reviewed_human.append(top[0][0])
    assert judge["agreement"]["n"] == len(reviewed_human) >= 100
    implied = expected_kappa(p, reviewed_truth, reviewed_human)
    assert judge["agreement"]["low"] <= implied <= judge["agreement"]["high"], (
        implied,
        judge["agreement"],
    )
    # and against the hidden truth: the judge's accuracy is the one planted
    right = sum(
        canon(r) == truth[(r["response_a"], r["response_b"])] for r in records if not r["gold"]
    )
    low, high = wilson_interval(right, sum(not r["gold"] for r in records))
    assert low <= p <= high
    assert summary["order_agreement"]["share"] == 1.0 and summary["counts"] == {"labelled": 1660}


def test_planted_position_bias_is_caught_and_the_run_stops(project: Path) -> None:
    with JudgeServer(Behaviour(accuracy=0.95, position_bias=0.5)) as server:
        summary = run_judge(
            configure(project, server.base_url), project.parent / "ai", items_from="batches"
        ).summary
        configure(project, server.base_url, ai_batch="ai/records.jsonl")
    assert summary["position"]["first_shown_share"] > 0.7
    assert summary["counts"]["flagged"] > 500  # orders disagree: flagged, not guessed
    run = subprocess.run(
        [sys.executable, "-m", "rlhfspec.cli.main", "run", str(project), "--until", "aggregate",
         "--run-dir", str(project.parent / "run")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "ai_judge_agreement" in run.stderr and "[J003]" in run.stderr and "[J006]" in run.stderr
    assert "first-shown response in 7" in run.stderr  # how far off: the share itself
    assert not (project.parent / "run" / "preferences").exists()
    lineage = json.loads((project.parent / "run" / "lineage.json").read_text())
    ai = lineage["stages"]["annotation_qc"]["metrics"]["ai_judge"]  # lineage says who labelled what
    records = [
        json.loads(x) for x in (project.parent / "ai" / "records.jsonl").read_text().splitlines()
    ]
    assert ai["ai_labelled_pairs"] == sum(not r["gold"] for r in records) > 0
    judge = ai["judges"]["ai:sim-judge"]
    assert judge["prompt_sha256"] == [summary["prompt_sha256"]] and judge["models"] == ["sim-judge"]
    assert judge["first_shown_share"] > 0.7 and not ai["gate_passed"]


def test_planted_length_bias_is_caught(project: Path) -> None:
    summary, report = judge_and_qc(project, Behaviour(accuracy=0.95, length_bias=0.8))
    judge = report.metrics["ai_judge"]["judges"]["ai:sim-judge"]
    codes = {f.code for f in report.findings if f.subject == "judge ai:sim-judge"}
    assert "J004" in codes and not judge["gate_passed"]
    assert judge["length"]["bias"] > 0.3 and judge["length"]["ai_longer_share"] > 0.8
    assert judge["position"]["first_shown_share"] == pytest.approx(0.5, abs=0.02)  # not position
    assert "J003" not in codes


def test_timeouts_rate_limits_and_malformed_answers_are_retried_bounded_and_recorded(
    project: Path,
) -> None:
    behaviour = Behaviour(
        accuracy=0.95, delay=2.0,
        fault_rate={"429": 0.1, "500": 0.05, "malformed": 0.05, "garbage": 0.03, "timeout": 0.03},
        persistent_rate={"malformed": 0.02, "500": 0.01},
    )  # fmt: skip
    extra = "  timeout_seconds: 0.6\n  max_attempts: 3\n"
    with JudgeServer(behaviour) as server:
        project_ = configure(project, server.base_url, extra)
        result = run_judge(project_, project.parent / "ai", items_from="batches", limit=300)
        log = list(server.sim.log)
    usage = result.summary["usage"]
    faults = Counter(entry["fault"] for entry in log if entry["fault"])
    assert set(faults) == {"429", "500", "malformed", "garbage", "timeout"}
    events = usage["events"]
    assert events["rate_limited"] == faults["429"] and events["malformed"] == faults["malformed"]
    assert events["server_error"] == faults["500"] and events["bad_response"] == faults["garbage"]
    assert events["timeout"] >= faults["timeout"]  # a slow ordinary answer on a busy machine too
    unseen = events.get("connection", 0)  # refused or reset before the server read it
    assert usage["requests"] == len(log) + unseen and usage["retries"] == usage["requests"] - 600, (
        events
    )
    assert max(Counter(entry["messages"] for entry in log).values()) <= 3  # bounded
    rows = [
        json.loads(x) for x in (project.parent / "ai" / "judgements.jsonl").read_text().splitlines()
    ]
    exhausted = [r for r in rows if r["status"] != "ok"]
    assert exhausted and all(r["attempts"] == 3 for r in exhausted)
    assert all(r["raw"].startswith("Sure!") for r in exhausted if r["status"] == "unparseable")
    review = [
        json.loads(x)
        for x in (project.parent / "ai" / "review" / "sample.jsonl").read_text().splitlines()
    ]
    sent = {r["item_id"] for r in review if r["why"] in ("unparseable", "failed")}
    gold = {r["item_id"] for r in rows if r["item_id"].startswith("gold-")}
    assert sent == {r["item_id"] for r in exhausted} - gold
    labelled = {
        json.loads(x)["item_id"]
        for x in (project.parent / "ai" / "records.jsonl").read_text().splitlines()
    }
    assert not labelled & {r["item_id"] for r in exhausted}  # never guessed


def test_cli_judge_killed_and_resumed_never_writes_the_key(project: Path) -> None:
    key = "sk-test-" + "7" * 24
    out = project.parent / "ai"
    env = {**os.environ, "SIM_JUDGE_KEY": key, "PYTHONPATH": str(ROOT)}
    with JudgeServer(Behaviour(accuracy=0.9)) as server:
        configure(project, server.base_url, "  api_key_env: SIM_JUDGE_KEY\n  concurrency: 2\n")
        argv = [sys.executable, "-m", "rlhfspec.cli.main", "judge", str(project), "--items", "batches",
                "--reviewers", "rev-1,rev-2,rev-3", "-o", str(out)]  # fmt: skip
        first = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        journal = out / "judgements.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            not journal.exists() or journal.read_bytes().count(b"\n") < 300
        ):
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=30)
        recorded = {
            json.loads(x)["request_sha256"]
            for x in journal.read_text().splitlines()
            if x.endswith("}")
        }
        asked_before = len(server.sim.log)
        second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        asked_again = [e["messages"] for e in server.sim.log[asked_before:]]
        assert server.sim.auth_seen == {f"Bearer {key}"}
    assert second.returncode == 0, second.stderr
    assert 300 <= len(recorded) < 3320 and not recorded & set(asked_again)
    assert len(asked_again) == 3320 - len(recorded)
    assert (
        "resuming" in second.stderr and "usage:" in second.stdout and "tokens in" in second.stdout
    )
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["usage"]["requests"] == 3320 and summary["judge"]["api_key_env"] == "SIM_JUDGE_KEY"
    )
    assert (out / "review" / "tasks.jsonl").exists() and (
        out / "review" / "label_studio" / "tasks.json"
    ).exists()
    for path in [*out.rglob("*"), *project.parent.rglob("*.json*")]:
        if path.is_file():
            assert key not in path.read_text(encoding="utf-8", errors="replace"), path
    assert key not in second.stdout + second.stderr


def test_local_hugging_face_judge_is_constrained_to_the_format(
    project: Path, tmp_path: Path
) -> None:
    os.environ.setdefault("RLHFSPEC_CACHE", str(tmp_path / "cache"))
    extra = "  backend: huggingface\n  per_dimension: false\n  order_disagreement: tie\n"
    spec = configure(project, "http://127.0.0.1:9/v1", extra)
    spec.spec["judge"]["model"] = "builtin:tiny"
    with pytest.raises(
        RunError, match="the model takes at most 512"
    ):  # the full prompt is too long
        run_judge(spec, project.parent / "hf-long", items_from="batches", limit=1)
    short = project.parent / "short"
    short.mkdir()
    (short / "judge_system.md.j2").write_text(
        "Criteria {{ criteria.version }}: {% for d in criteria.dimensions %}{{ d.id }} {% endfor %}"
        'Answer {"choice": "A" or "B" or "tie", "confidence": "low" or "medium" or "high"}.'
    )
    spec.spec["judge"]["templates"] = "short"
    result = run_judge(spec, project.parent / "hf", items_from="batches", limit=4)
    assert result.summary["judge"] == {"backend": "huggingface", "model": "builtin:tiny"}
    assert (
        result.summary["counts"].get("unparseable", 0) == 0
        and result.summary["usage"]["tokens_in"] > 0
    )
    rows = [
        json.loads(x) for x in (project.parent / "hf" / "judgements.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 8 and all(r["status"] == "ok" and r["attempts"] == 1 for r in rows)
    assert all(r["confidence"] in ("low", "medium", "high") for r in rows)


def answer_review_tasks(tasks_path: Path, key_path: Path, out: Path, accuracy: float) -> None:
    """Simulated reviewers: each review task answered from the truth with `accuracy`, unblinded."""
    key = json.loads(key_path.read_text())["responses"]
    _, hidden = load_truth()
    rows = []
    clock: dict[str, float] = {}
    for line in tasks_path.read_text().splitlines():
        task = json.loads(line)
        a, b = key[task["response_a"]]["response_id"], key[task["response_b"]]["response_id"]
        right = preferred(hidden[a], hidden[b])
        rng = random.Random(f"{task['task_id']}")
        choice = (
            right
            if rng.random() < accuracy
            else rng.choice([c for c in ("A", "B", "tie") if c != right])
        )
        start = clock.get(task["session"], 1_795_000_000.0 + 86_400 * len(clock))
        clock[task["session"]] = start + 100
        stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
        rows.append({
            "item_id": task["item_id"], "prompt_id": task["prompt_id"], "response_a": a, "response_b": b,
            "choice": choice, "annotator": task["annotator"], "session": task["session"],
            "started_at": stamp(start), "submitted_at": stamp(start + 90), "justification": None,
            "criteria_version": task["criteria_version"], "batch": "ai-review", "gold": task["gold"],
        })  # fmt: skip
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_round_the_loop_ai_labels_used_after_the_gate(project: Path) -> None:
    """judge (the items `tasks` gives) -> review tasks -> reviewers -> QC gate -> pairs."""
    out = project.parent / "ai"
    with JudgeServer(Behaviour(accuracy=0.9)) as server:
        spec = configure(project, server.base_url)
        summary = run_judge(spec, out, reviewers=["rev-1", "rev-2", "rev-3"]).summary
    answer_review_tasks(out / "review" / "tasks.jsonl", out / "review" / "unblinding_key.json",
                        out / "review" / "answers.jsonl", accuracy=0.95)  # fmt: skip
    text = project.read_text()
    start = text.index("  batches:\n")
    end = text.index("\n\n", start)
    text = (
        text[:start]
        + (
            "  batches:\n"
            "    - {id: ai-judge, path: ai/records.jsonl, criteria_version: 1.3.0}\n"
            "    - {id: ai-review, path: ai/review/answers.jsonl, criteria_version: 1.3.0}"
        )
        + text[end:]
    )
    project.write_text(text)
    run = subprocess.run(
        [sys.executable, "-m", "rlhfspec.cli.main", "run", str(project), "--until", "aggregate",
         "--run-dir", str(project.parent / "run")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    lineage = json.loads((project.parent / "run" / "lineage.json").read_text())
    qc = lineage["stages"]["annotation_qc"]
    gates = {g["name"]: g for g in qc["gates"]}
    assert gates["ai_judge_agreement"]["passed"]
    judge = qc["metrics"]["ai_judge"]["judges"]["ai:sim-judge"]
    assert judge["prompt_sha256"] == [summary["prompt_sha256"]] and judge["kappa"] > 0.6
    agg = lineage["stages"]["aggregate"]["metrics"]["ai_labels"]
    labelled = summary["counts"]["labelled"] - summary["gold_items"]
    reviewed = summary["review"]["sample"]
    assert agg["gate"] == "passed" and agg["ai_labels"] == labelled
    assert (
        agg["ai_labels_used"] == labelled - reviewed and agg["ai_labels_left_to_humans"] == reviewed
    )
    report = (project.parent / "run" / "qc" / "report.md").read_text()
    assert "## AI judge" in report and "ai:sim-judge" in report.replace("\\", "")
    assert 'id="ai-judge"' in (project.parent / "run" / "qc" / "report.html").read_text()
    prov = [
        json.loads(x)
        for x in (project.parent / "run" / "preferences" / "provenance.jsonl")
        .read_text()
        .splitlines()
    ]
    by_ai = [p for p in prov if p["annotators"] == ["ai:sim-judge"]]
    assert by_ai and len(by_ai) <= agg["ai_labels_used"]
    assert all(p["annotators"] != ["ai:sim-judge"] or p["batches"] == ["ai-judge"] for p in prov)
