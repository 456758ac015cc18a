"""PPO, checkpoint evaluation and selection as stages of a run (tiny settings, CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("trl")

from rlhfspec.common.hashing import sha256_file  # noqa: E402
from rlhfspec.runtime.run import run  # noqa: E402
from tests.artifact_formats import assert_formats  # noqa: E402
from tests.train.test_train_stages import trained  # noqa: E402,F401


def test_policy_evaluate_select(trained: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: F811
    spec, base_run = trained
    run_dir = tmp_path / "run"
    shutil.copytree(base_run, run_dir)
    messages: list[str] = []
    run(spec, display="spec", run_dir=run_dir, until="select", resume=True, log=messages.append)
    assert any(m.startswith("[reward_model] unchanged") for m in messages)
    lineage = json.loads((run_dir / "lineage.json").read_text())
    for stage in ("policy", "evaluate", "select"):
        assert lineage["stages"][stage]["status"] == "done", stage
    index = json.loads((run_dir / "models" / "policy" / "checkpoints.json").read_text())
    assert [c["step"] for c in index["checkpoints"]] == [1, 2]
    reward = index["metadata"]["reward_model"]
    assert reward["sha256"] == sha256_file(
        run_dir / "models" / "reward_model" / "model.safetensors"
    )
    assert index["metadata"]["kl"]["mode"] == "adaptive"
    metrics = [
        json.loads(line)
        for line in (run_dir / "models" / "policy" / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(metrics) == 2 and {"kl", "kl_coef", "score", "entropy", "eos_rate"} <= set(
        metrics[0]
    )
    sets = json.loads((run_dir / "eval" / "prompt_sets.json").read_text())["sets"]
    assert set(sets) == {"validation", "adversarial", "production_holdout"}
    for label in ["start"] + [c["label"] for c in index["checkpoints"]]:
        evaluation = json.loads((run_dir / "eval" / f"{label}.json").read_text())
        assert set(evaluation["sets"]) == set(sets)
    start = json.loads((run_dir / "eval" / "start.json").read_text())
    assert (
        abs(start["overall"]["kl"]["mean"]) < 1e-6 and start["overall"]["win_rate_vs_start"] is None
    )
    assert (run_dir / "eval" / "trajectory.svg").read_text().startswith("<svg")
    assert (run_dir / "eval" / "human_eval" / "tasks.jsonl").exists()
    selection = json.loads((run_dir / "selection.json").read_text())
    assert selection["chosen"]["label"] in {c["label"] for c in index["checkpoints"]}
    assert {c["label"] for c in selection["candidates"]} == {
        c["label"] for c in index["checkpoints"]
    }

    # human judgements that favour the other checkpoint decide the rerun of select
    other = next(
        c["label"] for c in index["checkpoints"] if c["label"] != selection["chosen"]["label"]
    )
    key = json.loads((run_dir / "eval" / "human_eval" / "key.json").read_text())
    rows = []
    for task_id, entry in key["tasks"].items():
        wins = entry["label"] == other
        side = (
            entry["checkpoint_side"] if wins else ("B" if entry["checkpoint_side"] == "A" else "A")
        )
        rows.append(json.dumps({"task_id": task_id, "choice": side}))
    (run_dir / "eval" / "human_eval" / "judgements.jsonl").write_text("\n".join(rows) + "\n")
    run(spec, display="spec", run_dir=run_dir, only="select", log=messages.append)
    selection = json.loads((run_dir / "selection.json").read_text())
    assert selection["chosen"]["label"] == other and "human" in selection["rule"]

    # every JSON file the run wrote says its format, and so does every one the package holds
    run(spec, display="spec", run_dir=run_dir, only="handoff", log=messages.append)
    found = assert_formats(run_dir)
    for name in (
        "eval/summary.json",
        "eval/prompt_sets.json",
        "selection.json",
        "lineage.json",
        "handoff/playbook/worked_examples.json",
        "handoff/evidence/summary.json",
    ):
        assert any(f.startswith(name + ":") for f in found), name
