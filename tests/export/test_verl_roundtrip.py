"""Spec -> run -> verl job -> checkpoints in verl's layout -> evaluate, select, handoff.

The run trains the small example's SFT and reward model; `compile --target verl` exports
the job; the checkpoints verl would save (`global_step_N/actor/huggingface`, bf16 weights,
tokenizer with the job's chat template) are built from the job's starting model with
seeded perturbations, since training with verl needs GPUs; then the policy stage imports
them and evaluate, select and handoff run as for our own PPO.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytest.importorskip("pyarrow")

from click.testing import CliRunner  # noqa: E402

from rlhfspec.cli.main import main  # noqa: E402
from rlhfspec.common.hashing import sha256_file  # noqa: E402
from rlhfspec.runtime.run import run  # noqa: E402
from tests.export.test_verl_mapping import ACKS, with_export  # noqa: E402
from tests.train.test_train_stages import small_project  # noqa: E402

pytestmark = pytest.mark.slow


def save_like_verl(start: Path, out: Path, step: int) -> None:
    """What verl's FSDP checkpoint manager writes with hf_model: the actor's full weights in
    bf16 via save_pretrained, plus the tokenizer and configs, under actor/huggingface."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(start, dtype=torch.float32)
    generator = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.02 * step)
    hf = out / f"global_step_{step}" / "actor" / "huggingface"
    model.to(torch.bfloat16).save_pretrained(hf, safe_serialization=True)
    AutoTokenizer.from_pretrained(start).save_pretrained(hf)
    (out / f"global_step_{step}" / "actor" / "model_world_size_1_rank_0.pt").write_bytes(b"")


def cli(*args: str) -> Any:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("roundtrip")
    spec = with_export(small_project(root), ACKS)
    run_dir = run(spec, display="spec", run_dir=root / "run", until="reward_model", log=print)
    job = root / "job"
    result = cli("compile", spec, "--target", "verl", "-o", job, "--run-dir", run_dir)
    assert result.exit_code == 0, result.output
    assert "4 refused and acknowledged" in result.output
    return spec, run_dir, job


def test_job_data_keeps_evaluation_and_holdout_prompts_out(
    exported: tuple[Path, Path, Path],
) -> None:
    import pyarrow.parquet as pq

    spec, run_dir, job = exported
    train = pq.read_table(job / "data" / "train.parquet").to_pylist()
    texts = [row["prompt"][0]["content"] for row in train]
    assert all(row["prompt"][0]["role"] == "user" and len(row["prompt"]) == 1 for row in train)
    sets = json.loads((job / "eval" / "prompt_sets.json").read_text())["sets"]
    held = {p["text"] for rows in sets.values() for p in rows}
    holdout = [
        json.loads(line)
        for line in (run_dir / "prompts" / "holdout.jsonl").read_text().splitlines()
        if line.strip()
    ]
    assert holdout and texts
    assert not held & set(texts)
    assert not {h.get("text") for h in holdout} & set(texts)
    val = pq.read_table(job / "data" / "val.parquet").to_pylist()
    assert [r["prompt"][0]["content"] for r in val] == [p["text"] for p in sets["validation"]]
    manifest = json.loads((job / "rlhfspec_export.json").read_text())
    assert manifest["format"] == "rlhfspec.verl_export/1"
    assert manifest["overrides_sha256"] == sha256_file(job / "overrides.txt")
    assert manifest["reward_model_sha256"] == sha256_file(
        run_dir / "models" / "reward_model" / "model.safetensors"
    )
    plan = json.loads((job / "plan.json").read_text())
    assert (job / plan["spec"]["dir"] / plan["spec"]["file"]).resolve() == spec.resolve()
    mapping = (job / "MAPPING.md").read_text()
    assert "`algorithm.use_kl_in_reward`" in mapping and "`policy.ppo.vf_coef`" in mapping


def test_job_composes_with_verl(exported: tuple[Path, Path, Path]) -> None:
    pytest.importorskip("verl")
    from rlhfspec.compiler.targets import verl as target
    from tests.export.verl_check import check_config, compose, launch_args

    _, _, job = exported
    cfg = compose(launch_args(job))
    expected = {
        line.split("=", 1)[0]: None
        for line in (job / "overrides.txt").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert set(expected) <= set(target.VERL_DEFAULTS)
    assert cfg.data.train_files == str(job / "data" / "train.parquet")
    assert check_config(cfg, {}, target.VERL_DEFAULTS) == []


def test_verl_checkpoints_come_back_for_evaluate_select_handoff(
    exported: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    spec, base_run, job = exported
    run_dir = tmp_path / "run"
    shutil.copytree(base_run, run_dir)
    for step in (1, 2):
        save_like_verl(job / "model", job / "checkpoints", step)
    hydra = job / "outputs" / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "config.yaml").write_text("algorithm:\n  lam: 0.95\n")
    (job / "outputs" / "launch.json").write_text(json.dumps({"engine": "verl", "version": "0.9.1"}))

    result = cli(
        "run", spec, "--run-dir", run_dir, "--stage", "evaluate", "--policy-checkpoints", job
    )
    assert result.exit_code == 0, result.output
    for stage in ("select", "handoff"):
        result = cli("run", spec, "--run-dir", run_dir, "--stage", stage)
        assert result.exit_code == 0, result.output

    lineage = json.loads((run_dir / "lineage.json").read_text())
    engine = lineage["stages"]["policy"]["metrics"]["engine"]
    assert engine["name"] == "verl" and engine["version"] == "0.9.1"
    assert engine["exported_config_sha256"] == sha256_file(job / "overrides.txt")
    assert engine["job_config"] == {"config.yaml": sha256_file(hydra / "config.yaml")}
    index = json.loads((run_dir / "models" / "policy" / "checkpoints.json").read_text())
    assert [c["label"] for c in index["checkpoints"]] == ["global_step_1", "global_step_2"]
    for label in ("start", "global_step_1", "global_step_2"):
        assert (run_dir / "eval" / f"{label}.json").is_file()
    chosen = json.loads((run_dir / "selection.json").read_text())["chosen"]
    assert chosen["label"] in {"global_step_1", "global_step_2"}

    package = run_dir / "handoff"
    card = (package / "MODEL_CARD.md").read_text()
    assert "Trained by: verl 0.9.1" in card and "evidence/engine/overrides.txt" in card
    assert (package / "evidence" / "engine" / "overrides.txt").read_bytes() == (
        job / "overrides.txt"
    ).read_bytes()
    assert (package / "evidence" / "engine" / "config.yaml").is_file()
    assert cli("verify", package).exit_code == 0

    # a job whose config was edited after the export is refused, and says why
    with (job / "overrides.txt").open("a") as handle:
        handle.write("algorithm.lam=1.0\n")
    result = cli(
        "run", spec, "--run-dir", run_dir, "--stage", "evaluate", "--policy-checkpoints", job
    )
    assert result.exit_code == 1 and "changed after the export" in result.output
