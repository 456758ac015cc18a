"""SFT and reward-model stages on a small slice of the example (seconds, CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")
pytest.importorskip("trl")

from click.testing import CliRunner  # noqa: E402

from rlhfspec.cli.main import main  # noqa: E402
from rlhfspec.common.hashing import sha256_file  # noqa: E402
from rlhfspec.runtime.run import run  # noqa: E402
from rlhfspec.runtime.stage_api import GateFailure  # noqa: E402
from rlhfspec.runtime.train.stages import split_by_prompt  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

SPEC = ROOT / "specs" / "support-assistant.yaml"
PERMISSIVE = "gates: {min_validation_accuracy: 0.0, max_length_correlation: 1.0, min_shorter_preferred_accuracy: 0.0}"


def small_project(root: Path, *, records: int = 420, edit: Any = None) -> Path:
    """The example with one short batch, tiny training settings and permissive gates."""
    shutil.copytree(
        ROOT / "specs" / "support-assistant",
        root / "support-assistant",
        ignore=shutil.ignore_patterns("truth", "generate.py"),
    )
    batch = root / "support-assistant" / "data" / "annotations" / "2026-11-w1.jsonl"
    lines = batch.read_text().splitlines()[:records]
    if edit is not None:
        lines = edit(lines)
    batch.write_text("\n".join(lines) + "\n")
    text = SPEC.read_text()
    start = text.index("  batches:\n")
    end = text.index("\nsft:")
    text = (
        text[:start]
        + "  batches:\n    - {id: 2026-11-w1, path: support-assistant/data/annotations/2026-11-w1.jsonl, "
        "criteria_version: 1.2.0}\n" + text[end:]
    )
    text = text.replace(
        "  train: {epochs: 3, learning_rate: 3.0e-3, batch_size: 16, max_length: 192}",
        "  train: {epochs: 1, learning_rate: 3.0e-3, batch_size: 32, max_length: 128}",
    )
    rm_start = text.index("reward_model:\n")
    rm_end = text.index("\npolicy:")
    text = (
        text[:rm_start]
        + (
            "reward_model:\n  base_model: builtin:tiny\n  validation_share: 0.12\n"
            "  train: {epochs: 2, learning_rate: 2.0e-3, batch_size: 16, max_length: 256}\n"
            f"  {PERMISSIVE}\n"
        )
        + text[rm_end:]
    )
    pol_start = text.index("  ppo:\n")
    pol_end = text.index("\nevaluation:")
    text = (
        text[:pol_start]
        + (
            "  ppo: {total_episodes: 16, rollout_batch_size: 8, mini_batches: 2, ppo_epochs: 1,"
            " learning_rate: 1.0e-4, max_new_tokens: 8}\n  checkpoint_every: 1\n"
        )
        + text[pol_end:]
    )
    text = text.replace("  prompts_per_set: 32\n", "  prompts_per_set: 4\n  max_new_tokens: 8\n")
    text = text.replace(
        "max_disqualifier_rate: 0.0}", "max_disqualifier_rate: 1.0, max_no_eos_rate: 1.0}"
    )
    text = text.replace("per_checkpoint: 50", "per_checkpoint: 4")
    # one batch of the example: keep its single-vote items (min_votes 1) so the small reward
    # model sees enough pairs; holding items back is tested in tests/annotation
    text = text.replace(
        "exclude_failed_annotators: true}", "exclude_failed_annotators: true, min_votes: 1}"
    )
    spec = root / "support-assistant.yaml"
    spec.write_text(text)
    shutil.copy(SPEC.with_name("support-assistant.lock.json"), root)
    return spec


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("small")
    spec = small_project(root)
    run_dir = run(
        spec, display="spec", run_dir=root / "run", until="reward_model", log=lambda m: None
    )
    return spec, run_dir


def test_lineage_and_metadata_tie_the_reward_model_to_its_data(trained: tuple[Path, Path]) -> None:
    _, run_dir = trained
    lineage = json.loads((run_dir / "lineage.json").read_text())
    assert [s for s, e in lineage["stages"].items() if e["status"] == "done"] == [
        "prompts",
        "annotation_qc",
        "aggregate",
        "sft",
        "reward_model",
    ]
    outputs = {o["path"]: o for o in lineage["stages"]["reward_model"]["outputs"]}
    assert set(outputs) == {
        "models/reward_model",
        "reward_model/eval.json",
        "reward_model/eval.md",
        "reward_model/holdout_scores.jsonl",
    }
    scores = [
        json.loads(line)
        for line in (run_dir / "reward_model" / "holdout_scores.jsonl").read_text().splitlines()
    ]
    report_pairs = json.loads((run_dir / "reward_model" / "eval.json").read_text())["holdout"][
        "pairs"
    ]
    assert len(scores) == report_pairs
    accuracy = sum(s["chosen_score"] > s["rejected_score"] for s in scores) / len(scores)
    assert accuracy == pytest.approx(
        json.loads((run_dir / "reward_model" / "eval.json").read_text())["holdout"]["accuracy"],
        abs=1e-6,
    )
    meta = json.loads(
        (run_dir / "models" / "reward_model" / "rlhfspec_reward_model.json").read_text()
    )
    assert meta["annotation_batches"] == ["2026-11-w1"] and meta["criteria_version"] == "1.3.0"
    assert meta["data"]["pairs_sha256"] == sha256_file(run_dir / "preferences" / "pairs.jsonl")
    assert {g["name"] for g in meta["gates"]} == {
        "min_validation_accuracy",
        "max_length_correlation",
        "min_shorter_preferred_accuracy",
    }
    assert (run_dir / "models" / "reward_model" / "model.safetensors").exists()
    assert not list((run_dir / "models").rglob("*.bin"))
    report = json.loads((run_dir / "reward_model" / "eval.json").read_text())["holdout"]
    assert set(report["per_dimension"]) == {"accuracy", "helpfulness", "tone", "conciseness"}
    assert (
        report["length"]["preferred_shorter"]["pairs"]
        + report["length"]["preferred_longer"]["pairs"]
        + report["length"]["same_length"]["pairs"]
        == report["pairs"]
    )
    assert (run_dir / "models" / "sft" / "rlhfspec_sft.json").exists()


@pytest.mark.slow
def test_seeded_cpu_runs_reproduce(trained: tuple[Path, Path], tmp_path: Path) -> None:
    spec, run_dir = trained
    again = run(
        spec, display="spec", run_dir=tmp_path / "again", until="reward_model", log=lambda m: None
    )
    for model in ("sft", "reward_model"):
        assert sha256_file(again / "models" / model / "model.safetensors") == sha256_file(
            run_dir / "models" / model / "model.safetensors"
        ), model


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=2, max_size=200),
    st.floats(0.05, 0.5),
    st.integers(0, 10**6),
)
def test_split_never_puts_a_prompt_on_both_sides(
    prompt_ids: list[int], share: float, seed: int
) -> None:
    pairs = [{"prompt_id": f"p{i}", "n": n} for n, i in enumerate(prompt_ids)]
    train, validation = split_by_prompt(pairs, share, seed)
    assert len(train) + len(validation) == len(pairs)
    assert not {p["prompt_id"] for p in train} & {p["prompt_id"] for p in validation}
    if len(set(prompt_ids)) > 1:
        assert validation
    assert split_by_prompt(pairs, share, seed) == (train, validation)


def test_score_writes_rows_summary_and_history(trained: tuple[Path, Path], tmp_path: Path) -> None:
    _, run_dir = trained
    rows = [
        {
            "prompt": "Where is my order?",
            "response": "Thanks for reaching out! Track it here.",
            "system": "a",
        },
        {"prompt": "Where is my order?", "response": "Obviously it is late [2].", "system": "b"},
        {
            "prompt": "Refund?",
            "response": "I'm sorry. Send the receipt and we refund in 5 days.",
            "system": "a",
        },
    ]
    source = tmp_path / "outputs.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    history = tmp_path / "history.jsonl"
    model = run_dir / "models" / "reward_model"
    for _ in range(2):
        result = CliRunner().invoke(
            main,
            [
                "score",
                "--model",
                str(model),
                str(source),
                "-o",
                str(tmp_path / "scores.jsonl"),
                "--history",
                str(history),
            ],
        )
        assert result.exit_code == 0, result.output
    scored = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [r["system"] for r in scored] == ["a", "b", "a"] and all(
        isinstance(r["score"], float) for r in scored
    )
    summary = json.loads((tmp_path / "scores.summary.json").read_text())
    assert summary["systems"]["a"]["n"] == 2 and summary["systems"]["b"]["n"] == 1
    assert len(history.read_text().splitlines()) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    result = CliRunner().invoke(
        main, ["score", "--model", str(model), str(bad), "-o", str(tmp_path / "o.jsonl")]
    )
    assert result.exit_code == 1 and "line 1: field 'response'" in result.output


@pytest.mark.slow
def test_length_biased_preferences_trip_the_length_gate(tmp_path: Path) -> None:
    responses = {}
    for line in (ROOT / "specs/support-assistant/data/responses.jsonl").read_text().splitlines():
        row = json.loads(line)
        responses[row["id"]] = len(row["text"].split())

    def prefer_longer(lines: list[str]) -> list[str]:
        out = []
        for line in lines:
            record = json.loads(line)
            a, b = responses[record["response_a"]], responses[record["response_b"]]
            record["choice"] = "A" if a >= b else "B"
            out.append(json.dumps(record))
        return out

    spec = small_project(tmp_path, records=1224, edit=prefer_longer)
    text = spec.read_text().replace(PERMISSIVE, "gates: {max_length_correlation: 0.3}")
    text = text.replace("exclude_failed_annotators: true", "exclude_failed_annotators: false")
    spec.write_text(text)
    with pytest.raises(GateFailure) as failure:
        run(
            spec,
            display="spec",
            run_dir=tmp_path / "run",
            until="reward_model",
            only=None,
            overrides=frozenset({"annotation_quality"}),
            log=lambda m: None,
        )
    assert "max_length_correlation" in failure.value.message
    lineage = json.loads((tmp_path / "run" / "lineage.json").read_text())
    assert lineage["stages"]["reward_model"]["status"] == "failed"
