"""`handoff.weights: merged`: a LoRA checkpoint (adapters under adapter/ beside the merged
weights) ships its merged model only; `include` ships both."""

from __future__ import annotations

from pathlib import Path

from rlhfspec.runtime.handoff import build_package, verify_package
from tests.handoff.test_handoff import base_run, run_copy  # noqa: F401


def test_merged_ships_the_merged_weights_without_the_adapters(
    run_copy: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    policy = run_copy / "models/policy/checkpoints/update-000002/policy"
    (policy / "adapter").mkdir()
    (policy / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}\n')
    (policy / "adapter" / "adapter_model.safetensors").write_bytes(b"adapters")
    merged = tmp_path / "merged"
    build_package(run_copy, merged, weights="merged")
    names = sorted(
        p.relative_to(merged / "model").as_posix() for p in (merged / "model").rglob("*")
    )
    assert names == ["checkpoint.json", "config.json", "model.safetensors", "tokenizer.json"]
    assert verify_package(merged).ok
    included = tmp_path / "included"
    build_package(run_copy, included, weights="include")
    assert (included / "model/adapter/adapter_config.json").is_file()
    assert verify_package(included).ok
