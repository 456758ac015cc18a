"""`prompts.chat_template` and the template record in the plan, read from plain files (no torch).

Every stage that formats text (sft, reward_model, policy, evaluate) records the template it
will format with: its sha256 enters the stage's resume signature, so a changed template reruns
the stage. See docs/real-checkpoints.md.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from rlhfspec.common.chat_templates import TINY_CHAT_TEMPLATE, folder_template
from rlhfspec.common.errors import RunError
from rlhfspec.common.hashing import sha256_text
from rlhfspec.compiler.compile import compile_spec
from rlhfspec.compiler.validate import validate_file
from tests.compiler.test_model_provenance import fake_model, with_sft_base

FORMATTING = ("sft", "reward_model", "policy", "evaluate")


def with_template(spec: Path, value: str) -> Path:
    text = spec.read_text(encoding="utf-8")
    old = "  production_holdout: {share: 0.10}\n"
    assert old in text
    spec.write_text(text.replace(old, old + f"  chat_template: {value}\n"), encoding="utf-8")
    return spec


def records(spec: Path) -> dict[str, Any]:
    result = compile_spec(spec, spec.parent / "build")
    assert result.plan is not None, [str(d) for d in result.diagnostics]
    return {s["name"]: s.get("chat_template") for s in result.plan["stages"]}


def test_the_default_records_builtin_tinys_template_for_every_formatting_stage(
    project: Path,
) -> None:
    got = records(project)
    for name in FORMATTING:
        assert got[name] == {
            "setting": "auto",
            "source": "builtin:tiny",
            "sha256": sha256_text(TINY_CHAT_TEMPLATE),
        }
    assert got["prompts"] is None and got["select"] is None


def test_none_and_a_jinja_file(project: Path) -> None:
    assert records(with_template(project, "none"))["sft"] == {
        "setting": "none",
        "source": "none (User:/Assistant: text)",
        "sha256": None,
    }
    jinja = project.parent / "support-assistant" / "chat.jinja"
    jinja.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    spec = with_template(project, "support-assistant/chat.jinja")
    spec.write_text(spec.read_text().replace("chat_template: none\n", ""))
    first = records(spec)
    assert first["policy"]["sha256"] == sha256_text(jinja.read_text())
    # the file is an input of the plan, and a changed file changes every formatting entry
    jinja.write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    second = records(spec)
    for name in FORMATTING:
        assert second[name]["sha256"] != first[name]["sha256"]


def test_a_missing_or_misnamed_template_file_is_a_located_error(project: Path) -> None:
    spec = with_template(project, "support-assistant/missing.jinja")
    found = {d.code: d for d in validate_file(spec).diagnostics}
    assert "F001" in found, found
    line = spec.read_text().splitlines().index("  chat_template: support-assistant/missing.jinja")
    assert found["F001"].line == line + 1
    spec.write_text(spec.read_text().replace("missing.jinja", "template.txt"))
    assert any(d.severity == "error" for d in validate_file(spec).diagnostics)


def test_a_local_models_template_is_read_from_its_files(project: Path) -> None:
    folder = fake_model(project.parent / "models" / "base")
    spec = with_sft_base(project, "models/base")
    assert records(spec)["sft"]["sha256"] is None  # no template: the plain format
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": [{"name": "default", "template": "A"}, {"name": "x"}]})
    )
    assert folder_template(folder) == "A"
    assert records(spec)["sft"] == {
        "setting": "auto",
        "source": "models/base",
        "sha256": sha256_text("A"),
    }
    (folder / "chat_template.jinja").write_text("B")  # transformers 5 prefers the file
    got = records(spec)
    assert got["sft"]["sha256"] == sha256_text("B")
    # the reward model starts from builtin:tiny, the policy from the SFT model
    assert got["reward_model"]["source"] == "builtin:tiny"
    assert got["policy"]["sha256"] == got["evaluate"]["sha256"] == sha256_text("B")


def test_a_hub_models_template_is_recorded_at_run_time(project: Path) -> None:
    spec = with_sft_base(project, "Qwen/Qwen2.5-0.5B-Instruct@7ae557604adf6")
    got = records(spec)["sft"]
    assert got["sha256"] is None and "recorded at run time" in got["source"]


def test_a_stage_refuses_a_template_other_than_the_planned_one() -> None:
    from rlhfspec.runtime.train.formatting import check_planned_template

    planned = {"setting": "auto", "source": "models/base", "sha256": "a" * 64}
    ctx: Any = types.SimpleNamespace(stage={"name": "sft", "chat_template": planned})
    check_planned_template(ctx, {"source": "tokenizer", "sha256": "a" * 64})
    with pytest.raises(RunError, match="compile the spec again"):
        check_planned_template(ctx, {"source": "tokenizer", "sha256": "b" * 64})
    hub: Any = types.SimpleNamespace(stage={"name": "sft", "chat_template": {"sha256": None}})
    check_planned_template(hub, {"source": "tokenizer", "sha256": "b" * 64})  # only the run knows
