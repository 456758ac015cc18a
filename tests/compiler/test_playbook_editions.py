"""The playbook for paid annotators: guidance slots, two editions, "changes since", safety.

The annotator's edition (playbook.md/.html) is what annotators are given: it must not show the
ids, detector regexes or exact QC cutoffs that the auditor's edition (playbook.auditor.*) and
the criteria document keep. Each leak check is paired with a check that the auditor's edition
does show the same string, so the test cannot pass by rendering nothing.
"""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from rlhfspec.common.markdown import markdown_block, markdown_html
from rlhfspec.compiler.compile import compile_spec
from rlhfspec.compiler.lock_command import lock_spec
from rlhfspec.compiler.lockfile import criteria_hash, read_lock
from rlhfspec.compiler.validate import validate_file

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "specs" / "support-assistant.yaml"


def _pct(share: float) -> str:
    return f"{share * 100:g}%"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    result = compile_spec(EXAMPLE, tmp_path_factory.mktemp("out"))
    assert result.plan is not None, result.diagnostics
    return {name: data.decode("utf-8") for name, data in result.files.items()}


def _secrets(spec: dict[str, Any]) -> list[str]:
    """What only the auditor may read: ids in code, regexes, rule ids and QC cutoffs."""
    c, a = spec["criteria"], spec["annotation"]
    out = [f"`{d['id']}`" for d in c["dimensions"]]
    out += [f'id="dim-{d["id"]}"' for d in c["dimensions"]]
    out += [q["id"] for q in c["disqualifiers"]]
    out += [q["detect"]["regex"] for q in c["disqualifiers"] if "detect" in q]
    out += [c["tie_breaking"]["rule"], "Identifier:", "Automatic detector"]
    out += [f"falls below {_pct(a['gold']['min_accuracy'])}"]
    out += [f"between {_pct(a['gold']['share'][0])} and {_pct(a['gold']['share'][1])}"]
    out += [f"more than {_pct(a['position_bias']['max_first_share'])}"]
    out += [f"{a['fatigue']['max_drop'] * 100:g} percentage points"]
    out += [f"target of {a['agreement']['target']:g}", f"below {a['agreement']['floor']:g}"]
    out += [f"at most {_pct(a['gaming']['max_longer_excess'])} above"]
    out += [f"at least {_pct(a['calibration']['pass_mark'])} of your answers"]
    return out


def test_annotator_edition_leaks_no_ids_regexes_or_cutoffs(example: dict[str, str]) -> None:
    spec = validate_file(EXAMPLE).resolved
    assert spec is not None
    secrets = _secrets(spec)
    for fmt in ("md", "html"):
        annotator, auditor = example[f"playbook.{fmt}"], example[f"playbook.auditor.{fmt}"]
        for secret in secrets:
            shown = html.escape(secret, quote=False) if fmt == "html" else secret
            if fmt == "html" and secret.startswith("`"):
                shown = f'<code class="id">{secret.strip("`")}</code>'
            assert shown not in annotator, (fmt, secret)
            if not (fmt == "md" and secret.startswith("id=")) and not (
                fmt == "html" and secret == "Identifier:"
            ):
                assert shown in auditor, (fmt, secret)
        # nothing that names a gold item or a prompt's source either
        assert not re.search(r"gold-\d|adversarial-\d|usage-\d", annotator), fmt


def test_example_playbook_has_the_hard_cases_guidance_and_contacts(example: dict[str, str]) -> None:
    md = example["playbook.md"]
    for heading in (
        "## When refusing is the right answer",
        "## Harmful content",
        "### What counts as a tie",
        "## Hard cases",
        "## Facts you need",
        "### Looking after yourself",
        "## Questions and escalation",
        "## Changes since the previous version",
    ):
        assert f"\n{heading}\n" in md, heading
    for title in (
        "Refusing is the right answer",
        "Both responses are bad",
        "Both responses are disqualified",
        "A real tie",
        "An out-of-scope prompt",
    ):
        assert re.search(rf"^### Example \d+: {re.escape(title)}$", md, re.MULTILINE), title
    assert "**support-quality@example.com**" in md
    assert "- **Preferred:** Tie" in md
    # the team's Markdown is rendered as HTML in the HTML edition
    assert "<strong>support-quality@example.com</strong>" in example["playbook.html"]
    assert "<h3>" not in md


def test_changes_since_the_previous_locked_version(example: dict[str, str]) -> None:
    entries = read_lock(EXAMPLE.with_name("support-assistant.lock.json"))
    assert [e.version for e in entries] == ["1.2.0", "1.3.0"]
    for name in ("playbook.md", "playbook.auditor.md"):
        section = example[name].split("## Changes since the previous version")[1]
        section = section.split("\n## ")[0]
        assert "from criteria version 1.2.0 to 1.3.0" in section, name
        assert "- Worked examples: 6 added." in section, name
        assert '- Guidance "Hard cases": added.' in section, name
        assert "Dimension" not in section, name  # the dimensions did not change


def _tiny_spec(folder: Path, criteria: str) -> Path:
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    source = ROOT / "specs/support-assistant/data"
    shutil.copy(source / "prompts/usage.jsonl", data / "usage.jsonl")
    shutil.copy(source / "responses.jsonl", data / "responses.jsonl")
    shutil.copy(source / "annotations/2026-11-w1.jsonl", data / "w1.jsonl")
    spec = folder / "tiny.yaml"
    spec.write_text(
        "spec_version: 1\nname: tiny\ncriteria:\n"
        + criteria
        + "prompts:\n  sources:\n    - {id: u, kind: synthetic, path: data/usage.jsonl}\n"
        "annotation:\n  responses: data/responses.jsonl\n"
        "  batches: [{id: w1, path: data/w1.jsonl, criteria_version: 1.0.0}]\n"
        "policy: {method: ppo, kl: {coef: 0.05}}\n"
        "evaluation: {prompt_sets: [validation]}\n",
        encoding="utf-8",
    )
    return spec


V1 = """  version: 1.0.0
  dimensions:
    - {id: accuracy, description: Answers the question.}
    - {id: tone, name: Tone, description: Polite.}
  disqualifiers:
    - {id: leak, description: Shares data., detect: {regex: 'secret\\d+'}}
"""
V2 = """  version: 1.1.0
  dimensions:
    - {id: tone, name: Tone, description: Polite and warm.}
    - {id: accuracy, description: Answers the question.}
  disqualifiers:
    - {id: leak, description: Shares data., detect: {regex: 'secret\\d{2}'}}
    - {id: rude, description: Insults the customer.}
  guidance:
    tie_definition: Practically the same means the same facts and steps.
"""


def test_changes_come_from_the_lock_history_written_by_rlhfspec_lock(tmp_path: Path) -> None:
    spec = _tiny_spec(tmp_path, V1)
    lock_spec(spec, display="tiny.yaml")
    first = compile_spec(spec, tmp_path / "out1")
    assert "This is the first locked version" in first.files["playbook.md"].decode()
    _tiny_spec(tmp_path, V2)
    lock_spec(spec, display="tiny.yaml")
    result = compile_spec(spec, tmp_path / "out2")
    annotator = result.files["playbook.md"].decode()
    auditor = result.files["playbook.auditor.md"].decode()
    assert "from criteria version 1.0.0 to 1.1.0" in annotator
    assert "- Dimension Tone: changed (description)." in annotator
    assert "- Dimension Tone (`tone`): changed (description)." in auditor
    assert "- Dimension ranking: changed: was Accuracy, Tone; now Tone, Accuracy." in annotator
    assert "- Disqualifier Rude: added." in annotator
    assert '- Guidance "What counts as a tie": added.' in annotator
    # a detector-only change is the auditor's business
    assert "Disqualifier Leak" not in annotator
    assert "- Disqualifier Leak (`leak`): changed (automatic detector)." in auditor
    again = compile_spec(spec, tmp_path / "out2")
    assert again.files == result.files  # same spec and lock, same bytes


def test_empty_guidance_keeps_the_hash_of_criteria_locked_before_it_existed() -> None:
    criteria: dict[str, Any] = {"version": "1.0.0", "dimensions": [{"id": "a"}]}
    empty = {**criteria, "guidance": {"tie_definition": "", "refusals": "  \n"}}
    written = {**criteria, "guidance": {"tie_definition": "Same facts."}}
    assert criteria_hash(empty) == criteria_hash(criteria)
    assert criteria_hash(written) != criteria_hash(criteria)


def test_unknown_guidance_section_is_refused(tmp_path: Path) -> None:
    spec = _tiny_spec(tmp_path, V1 + "  guidance: {tie_defintion: typo}\n")
    result = validate_file(spec)
    assert not result.ok
    assert any("tie_defintion" in d.message for d in result.diagnostics)


HOSTILE_MD = """# Heading
Text with <script>alert(1)</script> and <img src=x onerror=alert(2)> and **bold**.
- [bad](javascript:alert(3)) and [good](https://example.com/policy)
![tracker](https://example.com/pixel.png)
[ref]: javascript:alert(4)

```
a < b inside code stays literal
```
"""


def test_guidance_markdown_is_rendered_safely() -> None:
    md = markdown_block(HOSTILE_MD, level=3)
    assert "<script" not in md and "<img" not in md
    assert "javascript:" not in md and "![tracker]" not in md
    assert md.startswith("### Heading\n")  # moved below the section it sits in
    assert "**bold**" in md and "[good](https://example.com/policy)" in md
    assert "a < b inside code stays literal" in md
    out = str(markdown_html(HOSTILE_MD, level=3))
    assert "<script" not in out and "<img" not in out and 'href="javascript' not in out
    assert "&lt;script&gt;" in out and "<strong>bold</strong>" in out
    assert "<h3>Heading</h3>" in out
    assert '<a href="https://example.com/policy">good</a>' in out
    assert "a &lt; b inside code stays literal" in out


def test_hostile_guidance_in_a_spec_stays_text_in_every_edition(tmp_path: Path) -> None:
    block = "\n".join("      " + line for line in HOSTILE_MD.splitlines())
    spec = _tiny_spec(tmp_path, V1 + "  guidance:\n    hard_cases: |\n" + block + "\n")
    result = compile_spec(spec, tmp_path / "out")
    assert result.plan is not None, result.diagnostics
    for name in ("playbook.md", "playbook.html", "playbook.auditor.md", "playbook.auditor.html"):
        text = result.files[name].decode()
        assert "<script" not in text and "<img" not in text, name
        assert "javascript:" not in text if name.endswith(".md") else 'href="javascript' not in text


def test_playbook_explains_the_per_dimension_judgements(example: dict[str, str]) -> None:
    for name in ("playbook.md", "playbook.html"):
        text = example[name]
        assert "compare the two responses on each of these dimensions on its own: " in text
        assert "Accuracy, Helpfulness, Tone, Conciseness." in text, name
        assert "leave one blank only if you cannot tell" in text, name  # mode: optional


def test_per_dimension_paragraph_follows_the_mode(tmp_path: Path) -> None:
    spec = _tiny_spec(tmp_path, V1)
    text = spec.read_text(encoding="utf-8").replace(
        "annotation:\n",
        "annotation:\n  dimension_judgements: {mode: required, dimensions: [tone]}\n",
    )
    spec.write_text(text, encoding="utf-8")
    required = compile_spec(spec, tmp_path / "a").files["playbook.md"].decode()
    assert "on this dimension on its own: Tone. " in required
    assert "answer every one of them on every task" in required
    spec.write_text(text.replace("mode: required", 'mode: "off"'), encoding="utf-8")
    off = compile_spec(spec, tmp_path / "b").files["playbook.md"].decode()
    assert "on its own" not in off
