"""The AI judge without a network: prompt, strict parsing, retries, orders, resume, sample, QC, use.

The simulated judge (`judge_sim.Simulator`) answers from the example's ground
truth; here it is called in-process as a backend. The same simulator behind
a real HTTP server on 127.0.0.1 is in test_judge_server.py (slow).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfspec.common.errors import RunError
from rlhfspec.common.hashing import canonical_json, sha256_text
from rlhfspec.runtime.annotation.agreement import cohen_kappa, cohen_kappa_interval
from rlhfspec.runtime.annotation.judge.backends import Completion, Permanent, Transient
from rlhfspec.runtime.annotation.judge.items import Item, load_items
from rlhfspec.runtime.annotation.judge.output import run_judge
from rlhfspec.runtime.annotation.judge.prompt import Answer, JudgePrompt, build_prompt, parse_answer
from rlhfspec.runtime.annotation.judge.review import review_judges
from rlhfspec.runtime.annotation.judge.runner import (
    Journal,
    Retry,
    combine,
    judge_order,
    judge_pairs,
)
from rlhfspec.runtime.annotation.judge.sample import allocate, draw_sample
from rlhfspec.runtime.annotation.judge.use import gate_state, records_for_aggregation
from rlhfspec.runtime.annotation.records import read_jsonl
from rlhfspec.runtime.project import Project, load_project
from tests.annotation.judge_sim import Behaviour, Simulator
from tests.conftest import ROOT

JUDGE_BLOCK = """
judge:
  base_url: http://127.0.0.1:9/v1
  model: sim-judge
  backoff_seconds: 0.5
  max_attempts: 3
  concurrency: 2
{extra}
"""


def with_judge(spec: Path, extra: str = "") -> Project:
    text = spec.read_text(encoding="utf-8")
    text = text.replace("\nsft:\n", JUDGE_BLOCK.format(extra=extra) + "\nsft:\n", 1)
    spec.write_text(text, encoding="utf-8")
    return load_project(spec)


@pytest.fixture
def judged(project: Path) -> Project:
    return with_judge(project)


def item(n: int = 1, gold: bool = False) -> Item:
    return Item(f"item-{n}", "usage-0001", "Where is my parcel?", f"r-{n}a", f"r-{n}b",
                "Short reply.", "A much longer reply with words.", gold, {"source": "usage_logs"})  # fmt: skip


# --------------------------------------------------------------------------------------------
# Prompt and parsing
# --------------------------------------------------------------------------------------------


def test_prompt_follows_the_criteria(judged: Project) -> None:
    prompt = build_prompt(judged.spec, judged.folder)
    criteria = judged.spec["criteria"]
    text = prompt.system
    assert f"version {criteria['version']}" in text
    positions = [text.index(f"{i}. {d['id']} (") for i, d in enumerate(criteria["dimensions"], 1)]
    assert positions == sorted(positions)  # ranked
    for q in criteria["disqualifiers"]:
        assert q["description"] in text
    for example in criteria["examples"]:
        assert example["why"] in text
    assert "the shorter response wins" in text  # tie_breaking.then: prefer_shorter
    assert criteria["scope"]["out_of_scope"][0] in text
    assert re.fullmatch(r"[0-9a-f]{64}", prompt.sha256)
    messages = prompt.messages("P?", "first text", "second text")
    assert messages[0]["content"] == text
    assert messages[1]["content"].index("first text") < messages[1]["content"].index("second text")


def test_prompt_sha_changes_with_the_criteria_and_the_template(
    judged: Project, tmp_path: Path
) -> None:
    base = build_prompt(judged.spec, judged.folder)
    spec = json.loads(json.dumps(judged.spec))
    spec["criteria"]["dimensions"][0]["description"] += " Really."
    assert build_prompt(spec, judged.folder).sha256 != base.sha256
    own = judged.folder / "my-templates"
    own.mkdir()
    user = (ROOT / "templates" / "judge_user.md.j2").read_text(encoding="utf-8")
    (own / "judge_user.md.j2").write_text(user + "Be careful.\n", encoding="utf-8")
    spec["criteria"] = judged.spec["criteria"]
    spec["judge"]["templates"] = "my-templates"
    changed = build_prompt(spec, judged.folder)
    assert changed.system == base.system and changed.sha256 != base.sha256


def test_user_templates_are_sandboxed_and_stay_inside(judged: Project) -> None:
    own = judged.folder / "evil"
    own.mkdir()
    (own / "judge_system.md.j2").write_text("{{ criteria.__class__.__mro__[1].__subclasses__() }}")
    spec = json.loads(json.dumps(judged.spec))
    spec["judge"]["templates"] = "evil"
    with pytest.raises(RunError, match="judge prompt template"):
        build_prompt(spec, judged.folder)
    spec["judge"]["templates"] = "../.."
    with pytest.raises(RunError, match="inside the spec's folder"):
        build_prompt(spec, judged.folder)


VALID = {"choice": "B", "dimensions": {"accuracy": "A", "helpfulness": "B", "tone": "tie", "conciseness": "B"},
         "confidence": "high", "reason": "B gives steps."}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("```json\n" + json.dumps(VALID) + "\n```", "not a JSON object"),
        ("The answer is B.", "not a JSON object"),
        (json.dumps({**VALID, "choice": "b"}), "choice must be one of"),
        (json.dumps({**VALID, "choice": "both"}), "choice must be one of"),
        (json.dumps({**VALID, "extra": 1}), "unexpected key"),
        (json.dumps({k: v for k, v in VALID.items() if k != "dimensions"}), "dimensions must give"),
        (
            json.dumps({**VALID, "dimensions": {**VALID["dimensions"], "tone": "C"}}),
            "dimension choice",
        ),
        (json.dumps({**VALID, "confidence": 0.9}), "confidence must be"),
        (json.dumps([VALID]), "expected a JSON object"),
        (json.dumps({**VALID, "reason": 3}), "reason must be a string"),
    ],
)
def test_answers_are_parsed_strictly(judged: Project, text: str, problem: str) -> None:
    prompt = build_prompt(judged.spec, judged.folder)
    result = parse_answer(text, prompt)
    assert isinstance(result, str) and problem in result


def test_valid_answer_and_tie_only_when_allowed(judged: Project) -> None:
    prompt = build_prompt(judged.spec, judged.folder)
    answer = parse_answer("  " + json.dumps(VALID) + "\n", prompt)
    assert answer == Answer("B", "high", VALID["dimensions"], "B gives steps.")
    spec = json.loads(json.dumps(judged.spec))
    spec["annotation"]["allow_tie"] = False
    strict = build_prompt(spec, judged.folder)
    assert '"tie"' not in strict.system.split("Answer with")[1].split('"dimensions"')[0]
    assert isinstance(parse_answer(json.dumps({**VALID, "choice": "tie"}), strict), str)
    schema = prompt.answer_schema()
    jsonschema.validate(VALID, schema)


@functools.cache
def example_prompt() -> JudgePrompt:
    spec = load_project(ROOT / "specs" / "support-assistant.yaml").spec
    spec["judge"]["per_dimension"] = False
    return build_prompt(spec, ROOT / "specs")


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(), st.recursive(st.none() | st.booleans() | st.text() | st.integers(),
                                         lambda c: st.lists(c) | st.dictionaries(st.text(), c)).map(json.dumps)))  # fmt: skip
def test_parse_never_guesses(text: str) -> None:
    """Any text: a valid answer only if it validates against the answer schema, never an exception."""
    prompt = example_prompt()
    result = parse_answer(text, prompt)
    if isinstance(result, Answer):
        jsonschema.validate(json.loads(text), prompt.answer_schema())


# --------------------------------------------------------------------------------------------
# Retries, orders, resume
# --------------------------------------------------------------------------------------------


class Scripted:
    """A backend that plays a script: exceptions to raise or texts to answer, in call order."""

    identity = {"backend": "openai_chat", "model": "scripted"}

    def __init__(self, script: list[Any]) -> None:
        self.script = list(script)
        self.calls = 0

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> Completion:
        self.calls += 1
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return Completion(step, 100, 10)


def test_retries_back_off_and_honour_retry_after(judged: Project) -> None:
    prompt = build_prompt(judged.spec, judged.folder)
    slept: list[float] = []
    backend = Scripted([Transient("timeout", "slow"), Transient("rate_limited", "429", 3.0),
                        Transient("server_error", "HTTP 503"), json.dumps(VALID)])  # fmt: skip
    row = judge_order(backend, prompt, item(), 0, Retry(4, 0.5, slept.append))
    assert row["status"] == "ok" and row["choice"] == "B" and row["attempts"] == 4
    assert row["events"] == ["timeout", "rate_limited", "server_error"]
    assert slept == [0.5, 3.0, 2.0]  # 0.5 * 2**k, Retry-After when longer
    assert (row["tokens_in"], row["tokens_out"]) == (100, 10)


def test_retries_are_bounded_and_failures_recorded(judged: Project) -> None:
    prompt = build_prompt(judged.spec, judged.folder)
    slept: list[float] = []
    backend = Scripted([Transient("rate_limited", "429")] * 5)
    row = judge_order(backend, prompt, item(), 1, Retry(3, 0.1, slept.append))
    assert (row["status"], row["attempts"], backend.calls, len(slept)) == ("failed", 3, 3, 2)
    backend = Scripted(["Sure, B!", "B", "still prose"])
    row = judge_order(backend, prompt, item(), 0, Retry(3, 0.0, slept.append))
    assert row["status"] == "unparseable" and row["events"] == ["malformed"] * 3
    assert row["raw"] == "still prose" and "not a JSON object" in row["error"]
    assert row["tokens_in"] == 300  # every attempt's tokens are counted
    backend = Scripted([Permanent("client_error", "HTTP 400"), json.dumps(VALID)])
    row = judge_order(backend, prompt, item(), 0, Retry(3, 0.0, slept.append))
    assert (row["status"], backend.calls) == ("failed", 1)  # a 400 is not retried


def order_rows(a: str, b: str, conf: str = "high") -> tuple[dict[str, Any], dict[str, Any]]:
    dims = {"tone": "A"}
    return (
        {"status": "ok", "order": 0, "choice": a, "confidence": conf, "dimensions": dims},
        {"status": "ok", "order": 1, "choice": b, "confidence": "medium", "dimensions": dims},
    )


def test_both_orders_combine_in_canonical_order() -> None:
    agree = combine(item(), order_rows("A", "B"), "flag")  # A first, then B = the same response
    assert (agree.status, agree.label, agree.orders_agree, agree.confidence) == (
        "labelled",
        "first",
        True,
        "medium",
    )
    assert agree.dimensions == {"tone": "tie"}  # A then A: the dimension flips with the order
    flagged = combine(item(), order_rows("A", "A"), "flag")  # always the first shown: position
    assert (flagged.status, flagged.label, flagged.orders_agree) == ("flagged", None, False)
    tie = combine(item(), order_rows("A", "A"), "tie")
    assert (tie.status, tie.label) == ("tie_by_rule", "tie")
    bad = combine(item(), ({"status": "unparseable", "order": 0}, order_rows("A", "B")[1]), "tie")
    assert (bad.status, bad.label) == ("unparseable", None)


class Interrupting(Simulator):
    def __init__(self, after: int) -> None:
        super().__init__(Behaviour(accuracy=0.9))
        self.after = after
        self.asked: list[str] = []

    def complete(self, messages: list[dict[str, str]], schema: dict[str, Any]) -> Any:
        with self.lock:
            self.asked.append(sha256_text(canonical_json(messages)))
            if len(self.asked) == self.after:
                raise KeyboardInterrupt
        return super().complete(messages, schema)


def test_a_killed_run_resumes_without_judging_a_pair_twice(judged: Project, tmp_path: Path) -> None:
    items = load_items(judged, "batches", limit=12)
    prompt = build_prompt(judged.spec, judged.folder)
    journal = Journal(tmp_path / "judgements.jsonl")
    first = Interrupting(after=9)
    with pytest.raises(KeyboardInterrupt):
        judge_pairs(judged, items, journal, first, prompt, sleep=lambda s: None)
    with journal.path.open("a", encoding="utf-8") as handle:
        handle.write('{"item_id": "torn')  # a kill in the middle of a write
    recorded = journal.read()
    assert 1 <= len(recorded) < 2 * len(items) and journal.path.read_bytes().endswith(b"\n")
    second = Interrupting(after=-1)
    done = judge_pairs(judged, items, journal, second, prompt, sleep=lambda s: None)
    assert len(done) == 2 * len(items)
    assert len(second.asked) == 2 * len(items) - len(recorded)
    assert not set(second.asked) & {row["request_sha256"] for row in recorded.values()}
    lines = journal.path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len({(json.loads(x)["item_id"], json.loads(x)["order"]) for x in lines})


def test_run_writes_valid_records_and_refuses_another_prompt(
    judged: Project, tmp_path: Path
) -> None:
    out = tmp_path / "judge"
    sim = Simulator(Behaviour(accuracy=0.9))
    result = run_judge(judged, out, items_from="batches", limit=60, backend=sim)
    schema = json.loads((ROOT / "schemas" / "annotation-record.v1.schema.json").read_text())
    read = read_jsonl(out / "records.jsonl", batch="ai-judge", display="records.jsonl")
    assert not read.problems and len(read.records) == result.summary["records"] == 60
    for record in read.records:
        jsonschema.validate(record, schema)
        assert record["annotator"] == "ai:sim-judge"
        assert record["judge"]["prompt_sha256"] == result.summary["prompt_sha256"]
    usage = result.summary["usage"]
    rows = [json.loads(x) for x in (out / "judgements.jsonl").read_text().splitlines()]
    assert usage["tokens_in"] == sum(r["tokens_in"] for r in rows) > 0
    assert usage["requests"] == 120 and usage["retries"] == 0
    # the same folder again: nothing is asked twice
    again = run_judge(judged, out, items_from="batches", limit=60, backend=Simulator(Behaviour()))
    assert again.summary["usage"] == {
        **usage,
        "seconds_this_run": again.summary["usage"]["seconds_this_run"],
    }
    changed = json.loads(json.dumps(judged.spec))
    changed["criteria"]["summary"] = "Something else."
    with pytest.raises(RunError, match="prompt_sha256"):
        run_judge(Project(changed, judged.spec_path, judged.display), out, items_from="batches",
                  limit=60, backend=sim)  # fmt: skip


def test_items_from_tasks_match_task_generation(judged: Project) -> None:
    items = load_items(judged, "tasks")
    ids = {i.item_id for i in items}
    assert len(ids) == len(items) and any(i.gold for i in items)
    assert all(i.first < i.second for i in items)
    assert not any(
        i.prompt_id.startswith("usage-03") and int(i.prompt_id[-4:]) > 351 for i in items
    )


# --------------------------------------------------------------------------------------------
# Review sample
# --------------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.tuples(st.sampled_from("abcde")), st.integers(1, 50), min_size=1),
       st.floats(0.01, 1.0))  # fmt: skip
def test_allocation_is_proportional(sizes: dict[tuple[str, ...], int], share: float) -> None:
    total = math.ceil(share * sum(sizes.values()))
    counts = allocate(sizes, total)
    assert sum(counts.values()) == total
    for key, n in sizes.items():
        assert abs(counts[key] - total * n / sum(sizes.values())) < 1 + 1e-9
        assert 0 <= counts[key] <= n


def test_sample_is_stratified_and_unlabelled_pairs_go_to_humans(judged: Project) -> None:
    items = load_items(judged, "batches")
    sim = Simulator(Behaviour(accuracy=0.9, position_bias=0.2))
    prompt = build_prompt(judged.spec, judged.folder)
    combined = []
    for it in items:
        rows = tuple(judge_order(sim, prompt, it, o, Retry(1, 0)) for o in (0, 1))
        combined.append(combine(it, rows, "flag"))  # type: ignore[arg-type]
    chosen = draw_sample(judged, combined)
    labelled = [c for c in combined if c.label is not None and not c.item.gold]
    sampled = [c for c in labelled if chosen.get(c.item.item_id) == "sample"]
    assert len(sampled) == max(30, math.ceil(0.1 * len(labelled)))
    for field in ("source", "topic"):
        population = Counter(c.item.strata[field] for c in labelled)
        got = Counter(c.item.strata[field] for c in sampled)
        for value, n in population.items():
            assert abs(got[value] - len(sampled) * n / len(labelled)) <= 6, (field, value)
    flagged = {c.item.item_id for c in combined if c.status == "flagged" and not c.item.gold}
    assert flagged and all(chosen[i] == "flagged" for i in flagged)
    assert draw_sample(judged, combined) == chosen  # seeded


# --------------------------------------------------------------------------------------------
# QC against humans, and what aggregation may use
# --------------------------------------------------------------------------------------------


def ai_record(n: int, choice: str, *, review: bool = True, words: tuple[int, int] = (10, 20),
              stats: dict[str, int] | None = None, gold: bool = False) -> dict[str, Any]:  # fmt: skip
    return {
        "item_id": f"i{n}", "prompt_id": f"p{n}", "response_a": f"r{n}-1", "response_b": f"r{n}-2",
        "choice": choice, "annotator": "ai:m", "gold": gold, "criteria_version": "1.2.0", "batch": "ai",
        "judge": {"backend": "openai_chat", "model": "m", "prompt_sha256": "0" * 64, "run": "x",
                  "orders": [], "words": list(words), "review": review,
                  "run_stats": stats or {"pairs": 10, "orders_agree": 10, "decided_answers": 20, "first_shown_picks": 10}},
    }  # fmt: skip


def human_record(n: int, who: str, choice: str, *, flip: bool = False) -> dict[str, Any]:
    a, b = (f"r{n}-2", f"r{n}-1") if flip else (f"r{n}-1", f"r{n}-2")
    if flip and choice != "tie":
        choice = "B" if choice == "A" else "A"
    return {"item_id": f"h{n}", "prompt_id": f"p{n}", "response_a": a, "response_b": b,
            "choice": choice, "annotator": who, "gold": False}  # fmt: skip


def test_review_metrics_against_hand_computation(judged: Project) -> None:
    rng = np.random.default_rng(3)
    truth = rng.choice(["A", "B", "tie"], size=80, p=[0.45, 0.45, 0.1])
    ai_choice = np.where(rng.random(80) < 0.8, truth, rng.choice(["A", "B", "tie"], size=80))
    ai = [
        ai_record(n, str(c), words=(10, 20) if n % 2 else (30, 5)) for n, c in enumerate(ai_choice)
    ]
    humans = []
    for n, t in enumerate(truth):
        humans += [human_record(n, "h1", str(t), flip=n % 3 == 0), human_record(n, "h2", str(t)),
                   human_record(n, "h3", "A" if n % 4 else str(t))]  # fmt: skip
    section, findings = review_judges(judged.spec, ai, humans, {})
    judge = section["judges"]["ai:m"]
    majority = [
        t if (n % 4 == 0 or t == "A") else t for n, t in enumerate(truth)
    ]  # h1 and h2 agree
    expected = cohen_kappa_interval([str(c) for c in ai_choice], [str(m) for m in majority])
    assert judge["agreement"]["kappa"] == pytest.approx(expected.kappa)
    assert (judge["agreement"]["low"], judge["agreement"]["high"]) == pytest.approx(
        (expected.low, expected.high)
    )
    assert judge["agreement"]["kappa"] == pytest.approx(
        cohen_kappa([str(c) for c in ai_choice], majority)
    )
    decided = [
        (a, m, n)
        for n, (a, m) in enumerate(zip(ai_choice, majority, strict=True))
        if a != "tie" and m != "tie"
    ]
    longer = lambda c, n: (c == "A") == (n % 2 == 0)  # noqa: E731 - words (30, 5) when n is even
    bias = sum(longer(a, n) for a, _, n in decided) / len(decided) - sum(
        longer(m, n) for _, m, n in decided
    ) / len(decided)
    assert judge["length"]["bias"] == pytest.approx(bias)
    assert judge["position"]["first_shown_share"] == 0.5 and judge["gate_passed"] == (
        expected.kappa >= 0.6
    )
    assert {f.code for f in findings} == ({"J001"} if expected.kappa < 0.6 else set())


def test_position_and_gold_and_small_samples_fail_the_gate(judged: Project) -> None:
    stats = {"pairs": 100, "orders_agree": 40, "decided_answers": 200, "first_shown_picks": 160}
    ai = [ai_record(n, "A", stats=stats) for n in range(10)] + [
        ai_record(99, "B", stats=stats, gold=True)
    ]
    humans = [human_record(n, who, "A") for n in range(10) for who in ("h1", "h2")]
    section, findings = review_judges(judged.spec, ai, humans, {"i99": 0})
    codes = {f.code: f for f in findings}
    assert set(codes) == {"J002", "J003", "J005", "J006"}
    assert "80.0%" in codes["J003"].message and codes["J003"].value == pytest.approx(0.3)
    assert "40.0%" in codes["J006"].message and "0/1" in codes["J005"].message
    assert not section["gate"]["passed"]


def test_aggregation_uses_ai_labels_only_after_the_gate() -> None:
    ai = [ai_record(n, "A") for n in range(4)]
    humans = [human_record(0, "h1", "B"), human_record(1, "h1", "A", flip=True)]
    report = {"metrics": {"ai_judge": {"gate": {"passed": False}}}}
    assert gate_state(report) == "failed" and gate_state({"metrics": {}}) == "none"
    assert gate_state(report, frozenset({"ai_judge_agreement"})) == "overridden"
    kept, info = records_for_aggregation(ai + humans, "failed")
    assert kept == humans and info["ai_labels_used"] == 0 and info["ai_labels"] == 4
    kept, info = records_for_aggregation(ai + humans, "passed")
    assert [r["item_id"] for r in kept if r["annotator"] == "ai:m"] == ["i2", "i3"]
    assert info["ai_labels_left_to_humans"] == 2 and info["judges"]["ai:m"]["used"] == 2


@pytest.mark.parametrize("seed", range(6))
def test_kappa_interval_matches_statsmodels(seed: int) -> None:
    inter_rater = pytest.importorskip("statsmodels.stats.inter_rater")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    a = rng.choice(["A", "B", "tie"], size=n, p=[0.45, 0.45, 0.1])
    b = np.where(rng.random(n) < rng.uniform(0.3, 0.95), a, rng.choice(["A", "B", "tie"], size=n))
    labels = sorted(set(a) | set(b))
    table = np.zeros((len(labels), len(labels)))
    for x, y in zip(a, b, strict=True):
        table[labels.index(x), labels.index(y)] += 1
    reference = inter_rater.cohens_kappa(table)  # its interval: 95% (alpha 0.025 per side)
    ours = cohen_kappa_interval(a, b, confidence=0.95)
    assert ours.kappa == pytest.approx(reference.kappa, abs=1e-12)
    assert ours.se == pytest.approx(reference.std_kappa, abs=1e-12)
    assert (ours.low, ours.high) == pytest.approx(
        (reference.kappa_low, reference.kappa_upp), abs=1e-12
    )
    assert ours.n == n


def test_kappa_interval_degenerate_and_bad_input() -> None:
    same = cohen_kappa_interval(["A"] * 5, ["A"] * 5)
    assert (same.kappa, same.low, same.high, same.se) == (1.0, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="confidence"):
        cohen_kappa_interval(["A", "B"], ["A", "B"], confidence=1.0)
    with pytest.raises(ValueError, match="same items"):
        cohen_kappa_interval(["A", "B"], ["A"])
