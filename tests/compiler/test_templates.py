"""The shipped document templates: criteria, annotator playbook, sampling procedure.

The context is built by hand here (the example spec with schema defaults
filled, plus made-up file fingerprints and lock history), so these tests pin
the templates alone, not the compiler that feeds them.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jinja2 import UndefinedError
from markupsafe import escape

from rlhfspec.common.errors import CompilerError
from rlhfspec.common.templating import environment
from rlhfspec.compiler.render import render_all
from rlhfspec.compiler.schemas import SPEC_SCHEMA, load_schema, with_defaults
from rlhfspec.compiler.yaml_loader import load_yaml_file

SPEC_FILE = Path(__file__).resolve().parents[2] / "specs" / "support-assistant.yaml"
DOCUMENTS = {
    f"{doc}.{fmt}"
    for doc in ("criteria", "playbook", "playbook.auditor", "sampling")
    for fmt in ("md", "html")
}
ROWS = {"usage": 640, "synthetic": 260, "red-team": 100}
CRITERIA_SHA = "c0ffee" + "1" * 58
LONG_WORD = "W" * 5000
HOSTILE = "<script>alert(1)</script> {{ 7*7 }} " + LONG_WORD


def _spec_data() -> dict[str, Any]:
    # The project's loader, not yaml.safe_load: YAML 1.1 would read the
    # `on:` key of the privacy review as the boolean True.
    data = load_yaml_file(SPEC_FILE).data
    assert isinstance(data, dict)
    return data


BASE_DATA = _spec_data()


def make_context(
    mutate: Callable[[dict[str, Any]], None] | None = None,
    *,
    history: bool = True,
    rows: dict[str, int | None] | None = None,
) -> dict[str, Any]:
    data = copy.deepcopy(BASE_DATA)
    if mutate is not None:
        mutate(data)
    spec = with_defaults(load_schema(SPEC_SCHEMA), data)
    rows = ROWS if rows is None else rows
    version = spec["criteria"]["version"]
    lock_history = [
        {"version": "1.1.0", "locked_on": "2026-10-01", "sha256": "ab" * 32},
        {"version": version, "locked_on": "2026-10-20", "sha256": CRITERIA_SHA},
    ]
    return {
        "spec": spec,
        "meta": {
            "name": spec["name"],
            "spec_file": SPEC_FILE.name,
            "spec_sha256": "5" * 64,
            "criteria_version": version,
            "criteria_sha256": CRITERIA_SHA,
            "generator": "rlhfspec 0.1.0",
            "lock_history": lock_history if history else [],
            "changes": {"since": None, "first": history, "items": []},
        },
        "sources": [
            {
                "id": s["id"],
                "kind": s["kind"],
                "path": s["path"],
                "description": s["description"],
                "rows": rows.get(s["id"]),
                "sha256": None if rows.get(s["id"]) is None else "d" * 64,
                "privacy_review": s.get("privacy_review"),
            }
            for s in spec["prompts"]["sources"]
        ],
    }


@pytest.fixture(scope="module")
def docs() -> dict[str, str]:
    return render_all(make_context())


def _label(item: dict[str, Any]) -> str:
    return item.get("name") or item["id"].replace("_", " ").replace("-", " ").capitalize()


def _plain(html: str) -> str:
    return re.sub(r"</?strong>", "", html)


def _sections(markdown: str) -> list[str]:
    """The preamble, then each top-level (##) section of a Markdown document."""
    return re.split(r"^(?=## )", markdown, flags=re.MULTILINE)


def test_renders_all_eight_documents(docs: dict[str, str]) -> None:
    assert set(docs) == DOCUMENTS
    for name, text in docs.items():
        assert text.strip(), name


def test_criteria_version_in_every_document() -> None:
    def bump(data: dict[str, Any]) -> None:
        data["criteria"]["version"] = "7.3.1-rc.2"

    for name, text in render_all(make_context(bump)).items():
        assert "Criteria version 7.3.1-rc.2" in text, name


def test_playbook_markdown_repeats_version_after_every_top_level_section(
    docs: dict[str, str],
) -> None:
    marker = "_Criteria version 1.3.0_"
    lines = docs["playbook.md"].splitlines()
    assert lines[0].startswith("# ")
    assert marker in lines[:4], "version line at the top"
    sections = _sections(docs["playbook.md"])
    assert len(sections) >= 10
    for section in sections[1:]:
        heading = section.splitlines()[0]
        last = [line for line in section.splitlines() if line.strip()][-1]
        assert last == marker, f"section {heading!r} does not end with the version"


def test_playbook_html_has_header_and_footer_that_repeat_in_print(docs: dict[str, str]) -> None:
    html = docs["playbook.html"]
    header = re.search(r'<header class="page-header">(.*?)</header>', html, re.S)
    footer = re.search(r'<footer class="page-footer">(.*?)</footer>', html, re.S)
    assert header and "Criteria version 1.3.0" in header.group(1)
    assert footer and "Criteria version 1.3.0" in footer.group(1)
    assert "@page" in html and "@media print" in html
    print_css = html[html.index("@media print") :]
    assert re.search(r"\.page-header[^{]*\{[^}]*position: fixed", print_css)
    assert "overflow-wrap: anywhere" in html


def test_every_dimension_and_disqualifier_appears(docs: dict[str, str]) -> None:
    criteria = BASE_DATA["criteria"]
    for name in ("criteria.md", "criteria.html", "playbook.auditor.md", "playbook.auditor.html"):
        text = docs[name]
        for d in criteria["dimensions"]:
            assert d["id"] in text and _label(d) in text, (name, d["id"])
            assert d["description"] in text, (name, d["id"])
        for q in criteria["disqualifiers"]:
            assert q["id"] in text and _label(q) in text, (name, q["id"])
            assert q["description"] in text, (name, q["id"])
    # the regex detectors are shown as code, unescaped
    assert "`(?i)\\b(your|the) (password|full card number)\\b`" in docs["criteria.md"]
    assert (
        "<pre><code>(?i)\\b(your|the) (password|full card number)\\b</code></pre>"
        in docs["criteria.html"]
    )


def test_dimensions_are_ranked_in_order(docs: dict[str, str]) -> None:
    md = docs["criteria.md"]
    positions = [
        md.index(f"### {i}. {_label(d)}")
        for i, d in enumerate(BASE_DATA["criteria"]["dimensions"], 1)
    ]
    assert positions == sorted(positions)


def _hostile(data: dict[str, Any]) -> None:
    criteria = data["criteria"]
    criteria["summary"] = HOSTILE
    criteria["dimensions"][0]["description"] = HOSTILE
    criteria["dimensions"][0]["good"] = [HOSTILE]
    criteria["disqualifiers"][0]["description"] = HOSTILE
    criteria["disqualifiers"][0]["detect"] = {"regex": "a`b``c|</pre><script>"}
    criteria["tie_breaking"]["note"] = HOSTILE
    criteria["scope"]["out_of_scope"] = [HOSTILE]
    criteria["examples"][0]["prompt"] = HOSTILE
    criteria["examples"][0]["why"] = HOSTILE
    data["prompts"]["sources"][0]["description"] = HOSTILE


def test_hostile_text_is_escaped_in_html() -> None:
    docs = render_all(make_context(_hostile))
    for name in ("criteria.html", "playbook.html", "playbook.auditor.html", "sampling.html"):
        html = docs[name]
        assert "<script" not in html, name
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, name
        assert "{{ 7*7 }}" in html, name
        assert LONG_WORD in html, name
    assert "a`b``c|&lt;/pre&gt;&lt;script&gt;" in docs["criteria.html"]


def test_hostile_text_is_escaped_in_markdown() -> None:
    docs = render_all(make_context(_hostile))
    # inside a code span the regex stays literal (Markdown escapes code itself)
    span = "``` a`b``c|</pre><script> ```"
    assert span in docs["criteria.md"]
    for name in ("criteria.md", "playbook.md", "playbook.auditor.md", "sampling.md"):
        md = docs[name].replace(span, "")
        assert "<script>" not in md, name
        assert "\\<script\\>alert(1)\\</script\\>" in md, name
        assert "{{ 7\\*7 }}" in md, name
        assert not re.search(r"(?<![\d.])49(?!\d)", md.replace("2026", "")), name
        assert LONG_WORD in md, name


def test_html_loads_nothing_from_the_network(docs: dict[str, str]) -> None:
    for name in ("criteria.html", "playbook.html", "playbook.auditor.html", "sampling.html"):
        html = docs[name]
        assert "http://" not in html and "https://" not in html, name
        assert "@import" not in html and "url(" not in html, name
        assert not re.search(r"<(script|img|link|iframe|object|embed)\b", html), name
        assert not re.search(r"\ssrc\s*=", html), name
        for target in re.findall(r'\shref\s*=\s*"([^"]*)"', html):
            assert target.startswith("#"), (name, target)
        assert '<meta charset="utf-8">' in html, name
        assert "default-src 'none'" in html, name


def test_template_typo_raises() -> None:
    env = environment()
    with pytest.raises(UndefinedError):
        env.from_string("{{ spec.criteria.versoin }}").render(spec={"criteria": {}})
    with pytest.raises(UndefinedError):
        env.from_string("{{ nope|md }}").render()


def test_user_template_typo_fails_the_render(tmp_path: Path) -> None:
    (tmp_path / "criteria.md.j2").write_text("# {{ meta.criteria_verison }}\n", encoding="utf-8")
    with pytest.raises(CompilerError, match="criteria.md.j2"):
        render_all(make_context(), tmp_path)


def test_rendering_is_deterministic() -> None:
    first = render_all(make_context())
    second = render_all(make_context())
    assert first == second
    assert {k: v.encode("utf-8") for k, v in first.items()} == {
        k: v.encode("utf-8") for k, v in second.items()
    }


def test_markdown_is_clean(docs: dict[str, str]) -> None:
    for name in ("criteria.md", "playbook.md", "playbook.auditor.md", "sampling.md"):
        md = docs[name]
        assert md.endswith("\n") and not md.endswith("\n\n"), name
        assert "\n\n\n" not in md, f"{name}: two blank lines in a row"
        for number, line in enumerate(md.splitlines(), 1):
            assert line == line.rstrip(), f"{name}:{number}: trailing whitespace"
        assert md.startswith("# "), name


def test_markdown_stays_clean_with_messy_text() -> None:
    def messy(data: dict[str, Any]) -> None:
        data["criteria"]["dimensions"][0]["description"] = "  line one  \n\nline two \n"
        data["criteria"]["tie_breaking"]["note"] = "trailing  \n"

    for name, md in render_all(make_context(messy)).items():
        if name.endswith(".md"):
            assert all(line == line.rstrip() for line in md.splitlines()), name
            assert "\n\n\n" not in md, name


def test_version_history_table_and_missing_lock_file(docs: dict[str, str]) -> None:
    md = docs["criteria.md"]
    assert "| Version | Locked on | SHA-256 (short) |" in md
    assert "| 1.1.0 | 2026-10-01 | `abababababab` |" in md
    assert "| 1.3.0 (this version) | 2026-10-20 | `c0ffee111111` |" in md
    assert "<code>c0ffee111111</code>" in docs["criteria.html"]
    without = render_all(make_context(history=False))
    for name in ("criteria.md", "criteria.html"):
        assert "No lock file exists" in without[name], name


def test_tie_breaking_and_scope_are_explained(docs: dict[str, str]) -> None:
    for name in ("criteria.md", "criteria.html", "playbook.md", "playbook.html"):
        text = docs[name]
        assert "The first dimension on which the two responses differ decides" in text, name
        assert "choose the shorter response" in text, name
        assert "choose tie only when they are practically the same" in text, name
        assert "say in the justification that the task is out of scope" in text, name
        assert "multi-turn conversations" in text, name


def test_worked_examples_show_the_reasoning(docs: dict[str, str]) -> None:
    for name in ("criteria.md", "playbook.md", "criteria.html", "playbook.html"):
        text = docs[name]
        for example in BASE_DATA["criteria"]["examples"]:
            why = str(escape(example["why"])) if name.endswith(".html") else example["why"]
            assert why in text, name
    assert "**Decided by:** Helpfulness (dimension 2, `helpfulness`)" in docs["playbook.auditor.md"]
    assert '<a href="#dim-helpfulness">Helpfulness</a>' in docs["playbook.auditor.html"]
    # the annotator's edition names the dimension and anchors it by rank, not by id
    assert "**Decided by:** Helpfulness (dimension 2)\n" in docs["playbook.md"]
    assert '<a href="#dim-2">Helpfulness</a>' in docs["playbook.html"]


def test_playbook_annotation_rules(docs: dict[str, str]) -> None:
    for name in ("playbook.md", "playbook.html", "playbook.auditor.md", "playbook.auditor.html"):
        text = docs[name]
        assert "Work at most 90 minutes in one session, then take a break" in _plain(text), name
        assert "randomised" in text and "which system produced which response" in text, name
        assert "retrained" in text, name
        if "auditor" in name:  # the exact cutoffs only in the auditor's edition
            assert "between 5% and 10% of your tasks" in text, name
            assert "falls below 80%" in text and "labelled by 3 different annotators" in text, name
        else:
            assert "A small share of your tasks have a known answer" in text, name
            assert "labelled by several different annotators" in text, name
        assert "justification is optional" in text, name
        assert "Tie" in text, name


def test_playbook_follows_the_annotation_settings() -> None:
    def strict(data: dict[str, Any]) -> None:
        annotation = data["annotation"]
        annotation.update(
            allow_tie=False, justification="required", randomize_order=False, blind=False
        )
        annotation["annotators_per_item"] = 1
        del annotation["gold"]
        del data["criteria"]["dimensions"][0]["name"]
        del data["criteria"]["disqualifiers"][0]["detect"]
        del data["criteria"]["examples"][0]["decided_by"]

    docs = render_all(make_context(strict))
    for name in ("playbook.md", "playbook.html"):
        text = docs[name]
        assert "there is no tie answer" in text, name
        assert "Write a short justification for every task" in text, name
        assert "randomised" not in text and "which system produced" not in text, name
        assert "Gold items" not in text, name
        assert "labelled by one annotator only" in text, name
        assert "Accuracy" in text, name  # the id, title-cased, stands in for the name


def test_sampling_shows_sources_shares_strata_and_holdout(docs: dict[str, str]) -> None:
    for name in ("sampling.md", "sampling.html"):
        text = docs[name]
        for source in BASE_DATA["prompts"]["sources"]:
            assert source["id"] in text and source["path"] in text, name
            assert source["description"] in text, name
        assert "dddddddddddd" in text and "d" * 13 not in text, name
        assert "privacy@example.com on 2026-10-28" in text and "PRIV-2231" in text, name
        # 640 / 260 / 100 of 1,000 rows against the mix ranges
        for share, allowed in (("64%", "55% to 70%"), ("26%", "18% to 30%"), ("10%", "5% to 15%")):
            assert share in text and allowed in text, name
        assert (
            "0 to 14 words" in text and "15 to 39 words" in text and "40 to 99,999 words" in text
        ), name
        assert "topic" in text and "complexity" in text, name
        assert "never annotated and never trained on" in _plain(text), name
        assert "20261101" in text and "file order" in text, name
        assert "about 64 of the 640 usage-log rows" in text, name
    md = docs["sampling.md"]
    assert "| Real usage logs | `usage` | 640 | 64% | 55% to 70% | yes |" in md


def test_sampling_with_unknown_row_counts() -> None:
    docs = render_all(make_context(rows={"usage": 640, "synthetic": None, "red-team": 100}))
    for name in ("sampling.md", "sampling.html"):
        text = docs[name]
        assert "unknown (the file could not be read)" in text, name
        assert "shares are unknown" in text, name
        assert "64%" not in text, name
