"""`--resume` reruns a stage whose local base model changed: its weights, or its chat template.

Before, the plan recorded neither the model's files nor its template, so a run resumed on a
changed base model kept the SFT model trained from the old one. The base model here is the
hub-like fixture (`tests.hub_model`) in a folder beside the spec; only the stages up to SFT run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")

from safetensors.torch import load_file, save_file  # noqa: E402

from rlhfspec.common.hashing import sha256_file, sha256_text  # noqa: E402
from rlhfspec.runtime.run import run  # noqa: E402
from tests.hub_model import HUB_CHAT_TEMPLATE, build_hub_like  # noqa: E402
from tests.policy.test_ppo import CORPUS  # noqa: E402
from tests.train.test_train_stages import small_project  # noqa: E402


def sft_run(spec: Path, run_dir: Path, *, resume: bool) -> tuple[list[str], dict[str, object]]:
    messages: list[str] = []
    run(spec, display="spec", run_dir=run_dir, until="sft", resume=resume, log=messages.append)
    lineage = json.loads((run_dir / "lineage.json").read_text())
    return messages, lineage["stages"]["sft"]


@pytest.mark.slow
def test_resume_reruns_sft_when_the_base_model_changes(tmp_path: Path) -> None:
    spec = small_project(tmp_path)
    base = build_hub_like(tmp_path / "models" / "hub", CORPUS)
    text = spec.read_text()
    old = "sft:\n  enabled: true\n  base_model: builtin:tiny"
    assert old in text
    spec.write_text(text.replace(old, "sft:\n  enabled: true\n  base_model: models/hub"))
    run_dir = tmp_path / "run"

    _, first = sft_run(spec, run_dir, resume=False)
    trained = sha256_file(run_dir / "models" / "sft" / "model.safetensors")
    assert first["metrics"]["chat_template"]["sha256"] == sha256_text(HUB_CHAT_TEMPLATE)  # type: ignore[index]

    messages, same = sft_run(spec, run_dir, resume=True)
    assert any(m.startswith("[sft] unchanged") for m in messages)
    assert same["signature"] == first["signature"]

    # new weights in the base model's folder: the plan entry changes, SFT trains again
    weights = load_file(str(base / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] * 2
    save_file(weights, str(base / "model.safetensors"), metadata={"format": "pt"})
    messages, second = sft_run(spec, run_dir, resume=True)
    assert not any(m.startswith("[sft] unchanged") for m in messages)
    assert second["signature"] != first["signature"] and second["status"] == "done"
    assert sha256_file(run_dir / "models" / "sft" / "model.safetensors") != trained

    # a new chat template in the folder: SFT reruns and records the new template
    assert (base / "chat_template.jinja").read_text() == HUB_CHAT_TEMPLATE
    template = "Conversation:\n" + HUB_CHAT_TEMPLATE
    (base / "chat_template.jinja").write_text(template)
    messages, third = sft_run(spec, run_dir, resume=True)
    assert not any(m.startswith("[sft] unchanged") for m in messages)
    assert third["signature"] != second["signature"]
    assert third["metrics"]["chat_template"]["sha256"] == sha256_text(template)  # type: ignore[index]
