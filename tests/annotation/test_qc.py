"""Annotation QC: the planted problems of the example, hand-checked statistics, the reports."""

from __future__ import annotations

import json
import math
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
import pytest

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.annotation.qc import (
    QC_CODES,
    QcReport,
    QcSettings,
    _reference_labels,
    analyse,
    canonical_gold_label,
    run_qc,
)
from rlhfspec.runtime.annotation.table import AnnotationTable
from rlhfspec.runtime.project import load_project
from rlhfspec.runtime.report.qc_report import format_text, render_html, write_qc_reports
from rlhfspec.runtime.report.svg import bar_chart, heatmap, line_chart
from tests.conftest import ROOT, SPECS

SPEC = SPECS / "support-assistant.yaml"
EXAMPLE = SPECS / "support-assistant"
CAREFUL = {"ann-01", "ann-02", "ann-03"}
CAREFUL_RATE = 0.92  # the generator's p for careful annotators (generate.py, README)
HOSTILE = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def report() -> QcReport:
    return run_qc(load_project(SPEC))


def _copy_project(tmp_path: Path) -> Path:
    """The example spec, its lock file and data folder, in tmp_path (data may then be edited)."""
    shutil.copy(SPEC, tmp_path / SPEC.name)
    shutil.copy(SPECS / "support-assistant.lock.json", tmp_path / "support-assistant.lock.json")
    shutil.copytree(EXAMPLE, tmp_path / EXAMPLE.name, ignore=shutil.ignore_patterns("truth"))
    return tmp_path / SPEC.name


def _edit_batch(spec: Path, batch: str, edit: Any) -> None:
    path = spec.parent / "support-assistant" / "data" / "annotations" / f"{batch}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [json.dumps(r, ensure_ascii=False) for r in (edit(r) for r in rows) if r is not None]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# The example data: noisy, biased and tired annotators flagged, careful ones not
# ---------------------------------------------------------------------------------------------


def test_example_flags_exactly_the_planted_annotators(report: QcReport) -> None:
    with_errors = {f.annotator for f in report.errors if f.annotator}
    assert with_errors == {"ann-04", "ann-05", "ann-06"}
    about_annotators = {f.annotator for f in report.findings if f.annotator}
    assert not about_annotators & CAREFUL
    assert report.excluded_annotators == ["ann-04", "ann-05", "ann-06"]

    codes = {(f.code, f.annotator) for f in report.errors if f.annotator}
    assert {("Q003", "ann-04"), ("Q007", "ann-04")} & codes  # noisy: gold and/or agreement
    assert ("Q004", "ann-05") in codes  # position bias
    assert ("Q005", "ann-06") in codes  # fatigue
    assert ("Q006", "ann-06") in codes  # sessions over 90 minutes
    assert {a for c, a in codes if c == "Q004"} == {"ann-05"}
    assert {a for c, a in codes if c in ("Q005", "Q006")} == {"ann-06"}
    assert report.exit_code == 1
    assert not [f for f in report.findings if f.code == "Q014"]


def test_example_metrics_match_the_planted_profiles(report: QcReport) -> None:
    people = report.metrics["annotators"]
    for name in CAREFUL:
        gold = people[name]["gold"]
        assert gold["scored"] == 60
        assert gold["ci_low"] <= CAREFUL_RATE <= gold["ci_high"], (name, gold)
        assert people[name]["sessions"]["over_limit"] == 0
    assert people["ann-05"]["position"]["first_share"] > 0.75
    assert people["ann-06"]["sessions"]["max_minutes"] > 120
    assert people["ann-06"]["fatigue"]["drop"] > 0.15
    overview = report.metrics["overview"]
    assert overview["records"] == 1224 + 1356 + 1290 + 1290
    assert overview["non_gold_items"] == 1600 and overview["gold_items"] == 60
    assert [b["id"] for b in report.metrics["batches"]] == [
        "2026-11-w1", "2026-11-w2", "2026-11-w3", "2026-11-w4",
    ]  # fmt: skip
    agreement = report.metrics["agreement"]
    assert agreement["band"] == "fair"
    assert agreement["value_without_excluded"] > agreement["value"]


def test_text_output_has_one_line_per_finding(report: QcReport) -> None:
    lines = format_text(report).splitlines()
    assert len(lines) == len(report.findings) + 1
    for line in lines[:-1]:
        assert re.match(r"^(error|warning)\[Q\d{3}\] (overall|annotator \S+|batch \S+): \S", line)
    assert any(
        re.match(
            r"error\[Q003\] annotator ann-04: gold accuracy 0\.67 \(95% CI 0\.\d\d-0\.\d\d", line
        )
        for line in lines
    )
    assert lines[-1].startswith("qc failed: ")
    assert "excluded annotators: ann-04, ann-05, ann-06" in lines[-1]


def test_json_is_deterministic_and_rounded(report: QcReport) -> None:
    text = report.to_json()
    assert text == run_qc(load_project(SPEC)).to_json()
    data = json.loads(text)
    assert data["verdict"] == "fail"
    assert data["summary"] == {"errors": len(report.errors), "warnings": len(report.warnings)}
    assert [f["code"] for f in data["findings"]] == [f.code for f in report.findings]

    def floats(value: Any) -> list[float]:
        if isinstance(value, dict):
            return [x for v in value.values() for x in floats(v)]
        if isinstance(value, list):
            return [x for v in value for x in floats(v)]
        return [value] if isinstance(value, float) else []

    assert all(x == round(x, 6) for x in floats(data["metrics"]))


def test_codes_are_registered_and_documented() -> None:
    diagnostics = (ROOT / "docs" / "diagnostics.md").read_text(encoding="utf-8")
    assert list(QC_CODES) == [f"Q{i:03d}" for i in range(1, len(QC_CODES) + 1)]
    assert len({c.name for c in QC_CODES.values()}) == len(QC_CODES)
    for code, entry in QC_CODES.items():
        assert entry.severity in ("error", "warning")
        assert f"| `{code}` | {entry.severity}" in diagnostics, code


# ---------------------------------------------------------------------------------------------
# Hand-made tables: the statistics QC reports equal hand computations
# ---------------------------------------------------------------------------------------------

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def rec(
    item: str, annotator: str, choice: str, *, minute: float = 0.0, session: str = "s1",
    a: str = "r-1", b: str = "r-2", gold: bool = False, batch: str = "b1",
    version: str = "1.2.0", justification: str | None = None, seconds: float = 30.0,
) -> dict[str, Any]:  # fmt: skip
    start = T0 + timedelta(minutes=minute)
    return {
        "item_id": item,
        "prompt_id": "p",
        "response_a": a,
        "response_b": b,
        "choice": choice,
        "annotator": annotator,
        "session": f"{annotator}-{session}",
        "started_at": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "submitted_at": (start + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "justification": justification,
        "criteria_version": version,
        "batch": batch,
        "gold": gold,
    }


def loose(**changes: Any) -> QcSettings:
    """Settings for tiny tables: small minimum samples, one batch b1 tagged 1.2.0."""
    base: dict[str, Any] = {
        "min_pair_overlap": 2,
        "min_fatigue_sample": 2,
        "batches": (("b1", "1.2.0"),),
        "gold_share": (0.0, 1.0),
        "annotators_per_item": 1,
    }
    base.update(changes)
    return QcSettings(**base)


def test_position_bias_share_and_exact_p_value() -> None:
    # 8 of 10 non-tie answers pick the first-shown response (plus one tie, which is ignored)
    choices = ["A"] * 8 + ["B"] * 2 + ["tie"]
    records = [rec(f"i{k}", "ann-x", c, minute=k) for k, c in enumerate(choices)]
    table = AnnotationTable.from_records(records)
    result = analyse(table, {}, loose(significance=0.2))
    position = result.metrics["annotators"]["ann-x"]["position"]
    assert position["non_tie"] == 10 and position["first"] == 8
    assert position["first_share"] == 0.8
    # P(X <= 2) + P(X >= 8) for X ~ Bin(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert position["p_value"] == pytest.approx(2 * (1 + 10 + 45) / 1024) == 0.109375
    assert [f.code for f in result.findings if f.annotator == "ann-x"] == ["Q004"]
    # at the spec's default level (0.01) the same share is not significant: no finding
    strict = analyse(table, {}, loose())
    assert not [f for f in strict.findings if f.code == "Q004"]


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_gold_accuracy_uses_canonical_orientation_and_wilson_interval() -> None:
    # the gold file may list the pair in either order; the label is mapped to sorted ids
    assert canonical_gold_label("r-1", "r-2", "A") == 0
    assert canonical_gold_label("r-2", "r-1", "A") == 1
    assert canonical_gold_label("r-2", "r-1", "B") == 0
    assert canonical_gold_label("r-2", "r-1", "tie") == 2
    # g1..g4 prefer r-1 (canonical 0); the annotator sees some pairs swapped
    records = [
        rec("g1", "ann-x", "A", gold=True),  # r-1 first, picks it: right
        rec("g2", "ann-x", "B", a="r-2", b="r-1", gold=True, minute=1),  # picks r-1: right
        rec("g3", "ann-x", "A", a="r-2", b="r-1", gold=True, minute=2),  # picks r-2: wrong
        rec("g4", "ann-x", "A", gold=True, minute=3),  # right
        rec("i1", "ann-x", "A", minute=4),
    ]
    gold = {"g1": 0, "g2": 0, "g3": 0, "g4": 0}
    result = analyse(AnnotationTable.from_records(records), gold, loose(min_accuracy=0.8))
    person = result.metrics["annotators"]["ann-x"]["gold"]
    assert (person["correct"], person["scored"], person["tasks"]) == (3, 4, 4)
    assert person["accuracy"] == 0.75
    low, high = _wilson(3, 4, NormalDist().inv_cdf(0.975))
    assert person["ci_low"] == pytest.approx(low, abs=1e-6)
    assert person["ci_high"] == pytest.approx(high, abs=1e-6)
    assert (round(low, 4), round(high, 4)) == (0.3006, 0.9544)
    finding = next(f for f in result.findings if f.code == "Q003")
    assert finding.annotator == "ann-x" and finding.value == 0.75 and finding.threshold == 0.8
    assert "the interval still reaches it" in finding.message
    assert person["share"] == pytest.approx(0.8)


def test_fatigue_splits_early_and_late_at_the_threshold() -> None:
    # gold items as the reference; tasks at minutes 0, 20, 40 are right, 59.9 is right, and
    # from minute 60 on (inclusive) only one of four is right
    gold = {f"g{k}": 0 for k in range(8)}
    minutes = [0, 20, 40, 59.9, 60, 70, 80, 90]
    right = [True, True, True, True, True, False, False, False]
    records = [
        rec(f"g{k}", "ann-x", "A" if ok else "B", minute=m, gold=True)
        for k, (m, ok) in enumerate(zip(minutes, right, strict=True))
    ]
    # started_at has whole seconds: 59.9 minutes -> 59:54, still early
    result = analyse(AnnotationTable.from_records(records), gold, loose(min_accuracy=0.0))
    fatigue = result.metrics["annotators"]["ann-x"]["fatigue"]
    assert (fatigue["early_n"], fatigue["late_n"]) == (4, 4)
    assert fatigue["early_agreement"] == 1.0 and fatigue["late_agreement"] == 0.25
    assert fatigue["drop"] == 0.75
    assert [f.code for f in result.findings if f.code == "Q005"] == ["Q005"]
    # the session ran from 0:00 to 90:30: over the 90-minute limit
    sessions = result.metrics["annotators"]["ann-x"]["sessions"]
    assert sessions["max_minutes"] == 90.5 and sessions["over_limit"] == 1
    assert [f.code for f in result.findings if f.code == "Q006"] == ["Q006"]
    # the curve has 15-minute bins
    curve = result.metrics["fatigue_curve"]["annotators"]["ann-x"]
    assert [(p["start"], p["n"]) for p in curve] == [
        (0.0, 1), (15.0, 1), (30.0, 1), (45.0, 1), (60.0, 2), (75.0, 1), (90.0, 1)
    ]  # fmt: skip
    # with the default minimum sample (30 each side) the drop is not judged
    few = analyse(AnnotationTable.from_records(records), gold, loose(min_fatigue_sample=30))
    assert not [f for f in few.findings if f.code == "Q005"]


def test_agreement_consensus_and_split_votes_by_hand() -> None:
    # two annotators, four items: labels (canonical) x = 0,0,1,1 and y = 0,1,1,1
    # p_o = 3/4, p_e = 1/2 * 1/4 + 1/2 * 3/4 = 1/2, kappa = (3/4 - 1/2) / (1 - 1/2) = 1/2
    x = ["A", "A", "B", "B"]
    y = ["A", "B", "B", "B"]
    records = [rec(f"i{k}", "ann-x", c, minute=k) for k, c in enumerate(x)]
    records += [rec(f"i{k}", "ann-y", c, minute=k) for k, c in enumerate(y)]
    # a third item set with three votes that split three ways: A, B, tie
    records += [rec("s1", n, c, minute=9) for n, c in zip(("ann-x", "ann-y", "ann-z"), ("A", "B", "tie"), strict=True)]  # fmt: skip
    table = AnnotationTable.from_records(records)
    result = analyse(table, {}, loose(target=0.6, floor=0.4, max_split_vote_share=0.1))
    kappa = result.metrics["agreement"]["pairwise"]["kappa"]
    names = result.metrics["agreement"]["pairwise"]["annotators"]
    i, j = names.index("ann-x"), names.index("ann-y")
    # on the 5 shared items (the split item adds x=0, y=1): p_o = 3/5 and
    # p_e = P(x=0) P(y=0) + P(x=1) P(y=1) = 3/5 * 1/5 + 2/5 * 4/5
    p_o, p_e = 3 / 5, (3 / 5) * (1 / 5) + (2 / 5) * (4 / 5)
    assert kappa[i][j] == pytest.approx((p_o - p_e) / (1 - p_e), abs=1e-6)
    split = result.metrics["split_votes"]
    # i1 splits 1-1 and s1 three ways; i0, i2, i3 have a majority
    assert (split["items"], split["split"]) == (5, 2)
    assert split["share"] == 0.4
    assert any(f.code == "Q013" for f in result.warnings)

    # leave-one-out reference per record: the strict majority of the *other* votes
    item = np.array([0, 0, 0, 1, 1])
    label = np.array([0, 0, 1, 1, 0])
    reference = _reference_labels(item, label, np.full(2, -1, dtype=np.int8), 2)
    # item 0: others of record 0 are (0, 1) -> no majority; record 2's others are (0, 0) -> 0
    # item 1: one other vote each -> it is the consensus
    assert reference.tolist() == [-1, -1, 0, 0, 1]


def test_fleiss_falls_back_to_krippendorff_when_raters_vary() -> None:
    records = [
        rec(f"i{k}", n, "A" if k % 2 else "B", minute=k) for k in range(6) for n in ("a1", "a2")
    ]
    records += [rec("i0", "a3", "A", minute=20)]
    result = analyse(AnnotationTable.from_records(records), {}, loose(metric="fleiss_kappa"))
    agreement = result.metrics["agreement"]
    assert agreement["metric_used"] == "krippendorff_alpha"
    assert "Fleiss" in agreement["note"] and "Krippendorff" in agreement["note"]
    assert agreement["value"] == agreement["krippendorff_alpha"]


def test_settings_come_from_the_spec() -> None:
    settings = QcSettings.from_spec(load_project(SPEC).spec)
    assert (settings.metric, settings.target, settings.floor) == ("cohen_kappa", 0.6, 0.4)
    assert settings.gold_share == (0.05, 0.10) and settings.min_accuracy == 0.8
    assert (settings.max_first_share, settings.significance) == (0.65, 0.01)
    assert (settings.late_after_minutes, settings.max_drop) == (60.0, 0.15)
    assert settings.session_max_minutes == 90 and settings.max_split_vote_share == 0.2
    assert settings.batches[0] == ("2026-11-w1", "1.2.0") and len(settings.batches) == 4


# ---------------------------------------------------------------------------------------------
# Edited copies of the example: criteria version, bad rows, hostile text
# ---------------------------------------------------------------------------------------------


def test_criteria_version_mismatch_is_an_error(tmp_path: Path) -> None:
    spec = _copy_project(tmp_path)
    _edit_batch(spec, "2026-11-w2", lambda r: {**r, "criteria_version": "1.1.0"})
    result = run_qc(load_project(spec))
    mismatches = [f for f in result.findings if f.code == "Q014"]
    assert len(mismatches) == 1
    finding = mismatches[0]
    assert finding.severity == "error" and finding.batch == "2026-11-w2"
    assert "1356 of 1356 records" in finding.message
    assert "1.1.0" in finding.message and "tags the batch 1.2.0" in finding.message
    found = result.metrics["criteria_versions"]["found"]
    assert found["2026-11-w2"] == {"1.1.0": 1356} and found["2026-11-w1"] == {"1.2.0": 1224}


def test_bad_rows_refuse_the_run_unless_skipped(tmp_path: Path) -> None:
    spec = _copy_project(tmp_path)
    _edit_batch(spec, "2026-11-w1", lambda r: {**r, "choice": "C"} if r["item_id"] == "item-0285" and r["annotator"] == "ann-03" else r)  # fmt: skip
    with pytest.raises(RunError, match="2026-11-w1"):
        run_qc(load_project(spec))
    result = run_qc(load_project(spec), skip_bad_rows=True)
    skipped = [f for f in result.findings if f.code == "Q017"]
    assert len(skipped) == 1 and skipped[0].batch == "2026-11-w1"
    assert result.metrics["overview"]["skipped_rows"] == 1
    assert result.metrics["overview"]["records"] == 5160 - 1


def test_hostile_justification_is_escaped_everywhere(tmp_path: Path) -> None:
    spec = _copy_project(tmp_path)
    _edit_batch(spec, "2026-11-w1", lambda r: {**r, "justification": HOSTILE} if r["annotator"] == "ann-04" else r)  # fmt: skip
    result = run_qc(load_project(spec))
    assert any(s["justification"] == HOSTILE for s in result.samples)  # it is shown ...
    paths = write_qc_reports(result, tmp_path / "qc")
    for path in paths:
        text = path.read_text(encoding="utf-8")
        assert HOSTILE not in text, path.name  # ... but never as markup
        if path.suffix != ".md":  # Markdown shows it as \<script\>, literal text
            assert "<script" not in text, path.name
    html = (tmp_path / "qc" / "report.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "\\<script\\>" in (tmp_path / "qc" / "report.md").read_text(encoding="utf-8")
    data = json.loads((tmp_path / "qc" / "report.json").read_text(encoding="utf-8"))
    assert HOSTILE in [s["justification"] for s in data["samples"]]  # JSON keeps the data


# ---------------------------------------------------------------------------------------------
# Report files
# ---------------------------------------------------------------------------------------------


def test_reports_are_self_contained_and_reproducible(report: QcReport, tmp_path: Path) -> None:
    first = write_qc_reports(report, tmp_path / "a")
    assert [p.name for p in first] == ["report.json", "report.md", "report.html"]
    html = (tmp_path / "a" / "report.html").read_text(encoding="utf-8")
    assert html.count("<svg") >= 5  # heatmap, gold, position, fatigue, drift
    assert "<script" not in html.lower()
    assert "http://" not in html and "https://" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?[^"'#\s>]""", html)  # in-page links only
    assert "@import" not in html and "url(" not in html
    md = (tmp_path / "a" / "report.md").read_text(encoding="utf-8")
    assert "## Findings" in md and "ann-05" in md
    second = write_qc_reports(report, tmp_path / "b")
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes()
    again = write_qc_reports(report, tmp_path / "a")  # overwriting gives the same bytes
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in second]
    assert not [p for p in (tmp_path / "a").iterdir() if p.name not in {q.name for q in first}]


def test_plots_escape_their_text() -> None:
    evil = '<b onload="x">&'
    svgs = [
        heatmap([[1.0, None], [0.5, 1.0]], [evil, "b"], [evil, "b"], title=evil),
        bar_chart(
            [evil], [0.5], lower=[0.4], upper=[0.6], reference_lines=[(0.5, evil)], title=evil
        ),
        line_chart([evil, "x"], [(evil, [0.1, None])], title=evil, x_marker=(0.5, evil)),
    ]
    for svg in svgs:
        assert evil not in svg and "<b " not in svg
        assert "&lt;b onload=&quot;x&quot;&gt;&amp;" in svg
        assert svg.startswith("<svg ") and svg.endswith("</svg>")


def test_html_renders_without_gold_or_findings() -> None:
    # a clean two-annotator table: no gold, every check passes
    records = [rec(f"i{k}", n, "AB"[k % 2], minute=k) for k in range(40) for n in ("a1", "a2")]
    settings = loose(has_gold=False, annotators_per_item=2)
    result = analyse(AnnotationTable.from_records(records), {}, settings)
    assert result.findings == [] and result.exit_code == 0
    html = render_html(result)
    assert "No findings" in html and "<svg" in html
    assert format_text(result).startswith("qc passed: 0 error(s), 0 warning(s) in 80 records")
