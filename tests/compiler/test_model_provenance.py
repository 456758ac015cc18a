"""Base-model provenance: paths relative to the spec's folder, checked, and hashed into the plan.

Before, a relative ``base_model`` resolved against the current directory (elsewhere it was taken
for a hub id), validate accepted a typo, and neither the plan nor lineage recorded the model's
files, so ``--resume`` could not notice a changed base model.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from rlhfspec.compiler.compile import compile_spec
from rlhfspec.compiler.validate import validate_file


def with_sft_base(spec: Path, base: str) -> Path:
    text = spec.read_text(encoding="utf-8")
    old = "sft:\n  enabled: true\n  base_model: builtin:tiny\n"
    assert old in text
    spec.write_text(text.replace(old, f"sft:\n  enabled: true\n  base_model: {base}\n"))
    return spec


def fake_model(folder: Path, weights: bytes = b"weights") -> Path:
    """The files a hub checkpoint has (content does not matter to the compiler)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "dtype": "bfloat16",
        "hidden_size": 64,
        "intermediate_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 320,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "tokenizer.json").write_text("{}")
    (folder / "generation_config.json").write_text(json.dumps({"repetition_penalty": 1.05}))
    (folder / "README.md").write_text("not provenance")
    return folder


def codes(spec: Path) -> dict[str, Any]:
    result = validate_file(spec)
    return {d.code: d for d in result.diagnostics}


def test_a_missing_model_folder_is_a_located_error(project: Path) -> None:
    spec = with_sft_base(project, "./models/bsae")
    found = codes(spec)
    assert "F005" in found
    diagnostic = found["F005"]
    assert diagnostic.severity == "error" and "models/bsae" in diagnostic.message
    line = spec.read_text().splitlines().index("  base_model: ./models/bsae") + 1
    assert diagnostic.line == line


def test_a_folder_without_config_or_safetensors_is_refused(project: Path) -> None:
    folder = fake_model(project.parent / "models" / "base")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    found = codes(with_sft_base(project, "models/base"))
    assert "F006" in found and "safetensors" in found["F006"].message


def test_a_model_folder_outside_the_spec_folder_is_refused(project: Path) -> None:
    fake_model(project.parent.parent / "outside")
    found = codes(with_sft_base(project, "../outside"))
    assert "F002" in found


def test_hub_ids_may_pin_a_revision(project: Path) -> None:
    spec = with_sft_base(project, "Qwen/Qwen2.5-0.5B-Instruct")
    assert "O009" in codes(spec)
    text = spec.read_text().replace("Qwen2.5-0.5B-Instruct", "Qwen2.5-0.5B-Instruct@7ae557604adf6")
    spec.write_text(text)
    assert "O009" not in codes(spec)


def sft_entry(spec: Path) -> dict[str, Any]:
    result = compile_spec(spec, spec.parent / "build")
    assert result.plan is not None, [str(d) for d in result.diagnostics]
    (entry,) = [s for s in result.plan["stages"] if s["name"] == "sft"]
    return entry


def test_the_plan_records_the_model_files_and_a_change_reruns_the_stage(project: Path) -> None:
    folder = fake_model(project.parent / "models" / "base")
    spec = with_sft_base(project, "models/base")
    entry = sft_entry(spec)
    recorded = {i["path"]: i["sha256"] for i in entry["inputs"]}
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert f"models/base/{name}" in recorded
    assert "models/base/README.md" not in recorded
    # the resume signature hashes the entry: a changed model changes it, the rest stay
    (folder / "model.safetensors").write_bytes(b"other weights")
    changed = sft_entry(spec)
    assert changed != entry
    assert {i["path"]: i["sha256"] for i in changed["inputs"]}["models/base/config.json"] == (
        recorded["models/base/config.json"]
    )


def test_the_runtime_resolves_a_model_against_the_spec_folder(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")
    from rlhfspec.runtime.train.common import resolve

    fake_model(project.parent / "models" / "base")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a relative path must not depend on the current directory
    ctx: Any = types.SimpleNamespace(
        project=types.SimpleNamespace(folder=project.parent, path=lambda rel: project.parent / rel),
        settings={"seed": 0},
    )
    assert resolve(ctx, "models/base") == project.parent / "models" / "base"
    assert resolve(ctx, "Qwen/Qwen2.5-0.5B-Instruct@abc") == "Qwen/Qwen2.5-0.5B-Instruct@abc"
