"""Checks on the committed support-assistant example data and its seeded generator."""

from __future__ import annotations

import collections
import importlib.util
import itertools
import json
import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "specs" / "support-assistant"
DATA = EXAMPLE / "data"
SCHEMA = ROOT / "schemas" / "annotation-record.v1.schema.json"
DIMENSIONS = ("accuracy", "helpfulness", "tone", "conciseness")
DETECTORS = {
    "fabricated_citation": re.compile(r"\[\d+\]|§\s?\d"),
    "credential_request": re.compile(r"(?i)\b(your|the) (password|full card number)\b"),
}
SWAP = {"A": "B", "B": "A", "tie": "tie"}


def _load(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _ts(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def generator() -> Any:
    spec = importlib.util.spec_from_file_location("support_generate", EXAMPLE / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prompts() -> dict[str, dict[str, Any]]:
    rows = [
        r
        for src in ("usage", "synthetic", "adversarial")
        for r in _load(DATA / "prompts" / f"{src}.jsonl")
    ]
    return {r["id"]: r for r in rows}


@pytest.fixture(scope="module")
def records() -> list[dict[str, Any]]:
    return [r for f in sorted((DATA / "annotations").glob("*.jsonl")) for r in _load(f)]


@pytest.fixture(scope="module")
def truth_pairs() -> dict[str, dict[str, Any]]:
    return {r["item_id"]: r for r in _load(DATA / "truth" / "pairs.jsonl")}


@pytest.fixture(scope="module")
def truth_responses() -> dict[str, dict[str, Any]]:
    return {r["response_id"]: r for r in _load(DATA / "truth" / "responses.jsonl")}


def _truth_shown(record: dict[str, Any], pairs: dict[str, dict[str, Any]]) -> str:
    pair = pairs[record["item_id"]]
    if record["response_a"] == pair["response_a"]:
        return str(pair["preferred"])
    return SWAP[pair["preferred"]]


def _holdout(prompt_id: str, n_usage: int) -> bool:
    source, num = prompt_id.rsplit("-", 1)
    return source == "usage" and int(num) > math.floor(0.9 * n_usage)


def test_regeneration_is_byte_identical(generator: Any, tmp_path: Path) -> None:
    generator.generate(tmp_path)
    fresh = sorted(
        p.relative_to(tmp_path / "data") for p in (tmp_path / "data").rglob("*") if p.is_file()
    )
    committed = sorted(p.relative_to(DATA) for p in DATA.rglob("*") if p.is_file())
    assert fresh == committed
    for rel in committed:
        assert (tmp_path / "data" / rel).read_bytes() == (DATA / rel).read_bytes(), rel


def test_prompt_coverage(prompts: dict[str, dict[str, Any]]) -> None:
    by_source = collections.defaultdict(list)
    for p in prompts.values():
        assert set(p) == {"id", "text", "topic", "complexity", "source"}
        assert p["id"].startswith(p["source"] + "-")
        by_source[p["source"]].append(p)
    assert set(by_source) == {"usage", "synthetic", "adversarial"}
    for rows in by_source.values():
        words = [len(p["text"].split()) for p in rows]
        bins = {"short" if w < 15 else "medium" if w <= 40 else "long" for w in words}
        assert bins == {"short", "medium", "long"}
        assert {p["topic"] for p in rows} == {
            "billing",
            "shipping",
            "returns",
            "account",
            "technical",
        }
        assert {p["complexity"] for p in rows} == {"simple", "moderate", "complex"}


def test_annotation_records_validate() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    for path in sorted((DATA / "annotations").glob("*.jsonl")):
        for row in _load(path):
            errors = list(validator.iter_errors(row))
            assert not errors, (path.name, row, errors[0].message)
            assert row["batch"] == path.stem
            assert row["response_a"] != row["response_b"]
            assert row["submitted_at"] > row["started_at"]
            assert list(row) == [
                "item_id", "prompt_id", "response_a", "response_b", "choice", "annotator",
                "session", "started_at", "submitted_at", "justification", "criteria_version",
                "batch", "gold", "dimension_choices",
            ]  # fmt: skip


def test_assignment(records: list[dict[str, Any]], truth_pairs: dict[str, dict[str, Any]]) -> None:
    seen: set[tuple[str, str]] = set()
    per_item: dict[str, set[str]] = collections.defaultdict(set)
    gold_ids = {g["item_id"] for g in _load(DATA / "gold.jsonl")}
    for r in records:
        key = (r["item_id"], r["annotator"])
        assert key not in seen, key
        seen.add(key)
        assert r["gold"] == (r["item_id"] in gold_ids)
        pair = truth_pairs[r["item_id"]]
        assert {r["response_a"], r["response_b"]} == {pair["response_a"], pair["response_b"]}
        assert r["prompt_id"] == pair["prompt_id"]
        if not r["gold"]:
            per_item[r["item_id"]].add(r["annotator"])
    assert all(len(a) == 3 for a in per_item.values())
    assert len(per_item) >= 1500
    overlap: collections.Counter[tuple[str, str]] = collections.Counter()
    for annotators in per_item.values():
        overlap.update(itertools.combinations(sorted(annotators), 2))
    assert len(overlap) == 15 and min(overlap.values()) >= 200
    by_annotator = collections.Counter(r["annotator"] for r in records)
    gold_share = collections.Counter(r["annotator"] for r in records if r["gold"])
    for name, n in by_annotator.items():
        assert 0.04 < gold_share[name] / n < 0.10


def test_production_holdout_is_never_used(
    prompts: dict[str, dict[str, Any]], records: list[dict[str, Any]]
) -> None:
    n_usage = sum(1 for p in prompts if p.startswith("usage-"))
    holdout = {p for p in prompts if _holdout(p, n_usage)}
    assert len(holdout) == n_usage - math.floor(0.9 * n_usage)
    used = {r["prompt_id"] for r in records}
    used |= {d["prompt_id"] for d in _load(DATA / "demonstrations.jsonl")}
    used |= {g["prompt_id"] for g in _load(DATA / "gold.jsonl")}
    assert used and not used & holdout


def test_shown_order_is_balanced(
    records: list[dict[str, Any]], truth_pairs: dict[str, dict[str, Any]]
) -> None:
    n = len(records)
    canonical_first = sum(
        r["response_a"] == truth_pairs[r["item_id"]]["response_a"] for r in records
    )
    assert abs(canonical_first - n / 2) < 4 * math.sqrt(n / 4)  # binomial, 4 sigma


def test_ground_truth_rule(
    truth_pairs: dict[str, dict[str, Any]], truth_responses: dict[str, dict[str, Any]]
) -> None:
    """Recompute every truth label from the hidden attributes, and tie them to the texts."""
    texts = {r["id"]: r["text"] for r in _load(DATA / "responses.jsonl")}
    for rid, t in truth_responses.items():
        found = [d for d in DETECTORS if DETECTORS[d].search(texts[rid])]
        assert found == t["disqualifiers"], rid
        assert t["word_count"] == len(texts[rid].split())
    for pair in truth_pairs.values():
        a, b = truth_responses[pair["response_a"]], truth_responses[pair["response_b"]]
        assert a["prompt_id"] == b["prompt_id"] == pair["prompt_id"] and a["system"] != b["system"]
        expected: tuple[str, str] | None = None
        if bool(a["disqualifiers"]) != bool(b["disqualifiers"]):
            expected = (
                ("B", a["disqualifiers"][0]) if a["disqualifiers"] else ("A", b["disqualifiers"][0])
            )
        else:
            for dim in DIMENSIONS:
                if a["scores"][dim] != b["scores"][dim]:
                    expected = ("A" if a["scores"][dim] > b["scores"][dim] else "B", dim)
                    break
        if expected is None:
            if a["word_count"] != b["word_count"]:
                expected = ("A" if a["word_count"] < b["word_count"] else "B", "length")
            else:
                expected = ("tie", "tie")
        assert (pair["preferred"], pair["decided_by"]) == expected, pair


def test_gold_matches_truth(truth_pairs: dict[str, dict[str, Any]]) -> None:
    gold = _load(DATA / "gold.jsonl")
    assert 50 <= len(gold) <= 70
    texts = {r["id"]: r["text"] for r in _load(DATA / "responses.jsonl")}
    for g in gold:
        pair = truth_pairs[g["item_id"]]
        assert (g["response_a"], g["response_b"], g["preferred"]) == (
            pair["response_a"], pair["response_b"], pair["preferred"],
        )  # fmt: skip
        assert g["text_a"] == texts[g["response_a"]] and g["text_b"] == texts[g["response_b"]]
        decided = str(pair["decided_by"])
        assert decided in g["rationale"], g
    assert {truth_pairs[g["item_id"]]["decided_by"] for g in gold} >= {
        "fabricated_citation", "credential_request", *DIMENSIONS,
    }  # fmt: skip


def test_demonstrations_are_clean() -> None:
    demos = _load(DATA / "demonstrations.jsonl")
    assert len(demos) >= 250
    for d in demos:
        assert not any(rx.search(d["response"]) for rx in DETECTORS.values())
        assert not re.search(r"(?i)obviously|as i already said|not my problem", d["response"])


def _agreement(rows: list[dict[str, Any]], pairs: dict[str, dict[str, Any]]) -> float:
    return sum(r["choice"] == _truth_shown(r, pairs) for r in rows) / len(rows)


def test_planted_annotator_profiles(
    records: list[dict[str, Any]], truth_pairs: dict[str, dict[str, Any]]
) -> None:
    profiles = json.loads((DATA / "truth" / "annotators.json").read_text(encoding="utf-8"))
    assert {k: v["profile"] for k, v in profiles.items()} == {
        "ann-01": "careful", "ann-02": "careful", "ann-03": "careful",
        "ann-04": "noisy", "ann-05": "position_biased", "ann-06": "fatigued",
    }  # fmt: skip
    by: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in records:
        by[r["annotator"]].append(r)
    for name in ("ann-01", "ann-02", "ann-03"):
        assert _agreement(by[name], truth_pairs) > 0.85
    assert _agreement(by["ann-04"], truth_pairs) < 0.75
    assert sum(r["choice"] == "A" for r in by["ann-05"]) / len(by["ann-05"]) > 0.7
    for name in ("ann-01", "ann-02", "ann-03", "ann-04", "ann-06"):
        assert 0.35 < sum(r["choice"] == "A" for r in by[name]) / len(by[name]) < 0.6

    sessions: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in records:
        sessions[r["session"]].append(r)
    start = {s: min(_ts(r["started_at"]) for r in rows) for s, rows in sessions.items()}
    length = {
        s: (max(_ts(r["submitted_at"]) for r in rows) - start[s]).total_seconds() / 60
        for s, rows in sessions.items()
    }
    for s, minutes in length.items():
        assert s.startswith(sessions[s][0]["annotator"] + "-s")
        assert minutes <= (155 if s.startswith("ann-06") else 90), s
    assert max(m for s, m in length.items() if s.startswith("ann-06")) >= 120

    def minutes_in(r: dict[str, Any]) -> float:
        return (_ts(r["started_at"]) - start[r["session"]]).total_seconds() / 60

    early = [r for r in by["ann-06"] if minutes_in(r) < 45]
    late = [r for r in by["ann-06"] if minutes_in(r) >= 60]
    assert len(early) > 100 and len(late) > 100
    assert _agreement(early, truth_pairs) > 0.85
    assert _agreement(late, truth_pairs) < _agreement(early, truth_pairs) - 0.2
    for r in records:
        assert _ts(r["started_at"]).weekday() < 5 and _ts(r["started_at"]).month == 11


def test_length_is_a_poor_proxy(
    truth_pairs: dict[str, dict[str, Any]], truth_responses: dict[str, dict[str, Any]]
) -> None:
    hits = total = 0
    for pair in truth_pairs.values():
        a, b = truth_responses[pair["response_a"]], truth_responses[pair["response_b"]]
        if pair["preferred"] == "tie" or a["word_count"] == b["word_count"]:
            continue
        total += 1
        hits += ("A" if a["word_count"] > b["word_count"] else "B") == pair["preferred"]
    assert total > 1000
    assert hits / total < 0.65
