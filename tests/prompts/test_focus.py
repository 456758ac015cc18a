"""Narrow fine-tuning: `prompts.focus` limits annotation, training and evaluation to a subset,
and evaluation still reports the excluded slice without selecting on it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from rlhfspec.cli.main import main
from rlhfspec.compiler.compile import compile_spec
from rlhfspec.runtime.annotation.judge.items import load_items
from rlhfspec.runtime.annotation.tasks import generate_tasks
from rlhfspec.runtime.policy.stages import evaluation_prompts, training_prompts
from rlhfspec.runtime.project import Project, load_project
from rlhfspec.runtime.prompts.pool import OUTSIDE_FOCUS, load_prompt_pool

FOCUS = "  focus:\n    topic: [billing, returns]\n    source: [usage, red-team]\n"


def focused(spec: Path, focus: str = FOCUS) -> Project:
    text = spec.read_text(encoding="utf-8")
    text = text.replace(
        "  production_holdout: {share: 0.10}\n", "  production_holdout: {share: 0.10}\n" + focus, 1
    )
    spec.write_text(text, encoding="utf-8")
    return load_project(spec)


def keeps(project: Project, prompt_id: str) -> bool:
    pool = load_prompt_pool(project)
    return pool.in_focus(pool.by_id[prompt_id])


def test_focus_matches_source_ids_kinds_and_fields(project: Path) -> None:
    p = focused(project)
    pool = load_prompt_pool(p)
    assert pool.focused and pool.outside_focus
    for prompt in pool.focused:
        assert prompt.row["topic"] in ("billing", "returns") and prompt.source in (
            "usage",
            "red-team",
        )
    for prompt in pool.outside_focus:
        assert prompt.row["topic"] not in ("billing", "returns") or prompt.source == "synthetic"
    assert not set(pool.holdout_ids) & {q.id for q in pool.focused + pool.outside_focus}
    assert len(pool.focused) + len(pool.outside_focus) == len(pool.available)
    # `source` is the spec's source id (red-team), not the row's own `source` field (adversarial)
    adversarial = [q for q in pool.focused if q.kind == "adversarial"]
    assert adversarial and all(q.row["source"] == "adversarial" for q in adversarial)


def test_no_focus_keeps_everything(project: Path) -> None:
    pool = load_prompt_pool(load_project(project))
    assert pool.focus == {} and pool.focused == pool.available and pool.outside_focus == []


def test_bad_focus_is_a_located_schema_error(project: Path) -> None:
    text = project.read_text().replace(
        "  production_holdout: {share: 0.10}\n",
        "  production_holdout: {share: 0.10}\n  focus: {topic: []}\n",
    )
    project.write_text(text)
    result = compile_spec(project, project.parent / "build", display="spec.yaml")
    assert result.plan is None
    assert any(
        d.code == "S005" and "prompts.focus.topic" in str(d.path) for d in result.diagnostics
    )


def test_plan_hands_the_focus_to_the_stages_that_use_it(project: Path) -> None:
    focused(project)
    plan = compile_spec(project, project.parent / "build", display="spec.yaml").plan
    assert plan is not None
    stages = {s["name"]: s["settings"] for s in plan["stages"]}
    for name in ("aggregate", "policy", "sft"):
        assert stages[name]["prompts"]["focus"] == {
            "topic": ["billing", "returns"],
            "source": ["usage", "red-team"],
        }


def test_tasks_and_the_judge_annotate_only_the_focus(project: Path, tmp_path: Path) -> None:
    p = focused(project)
    summary = generate_tasks(p, p.path(p.spec["annotation"]["responses"]), tmp_path / "t",
                             annotators=["a", "b", "c"])  # fmt: skip
    tasks = [json.loads(x) for x in (tmp_path / "t" / "tasks.jsonl").read_text().splitlines()]
    assert all(keeps(p, t["prompt_id"]) for t in tasks if not t["gold"])
    assert summary.data["skipped"]["outside_focus_prompts"] == len(
        load_prompt_pool(p).outside_focus
    )
    items = load_items(p, "batches")
    assert items and all(keeps(p, i.prompt_id) for i in items if not i.gold)


def test_aggregation_leaves_out_prompts_outside_the_focus(project: Path, tmp_path: Path) -> None:
    p = focused(project)
    result = CliRunner().invoke(main, ["aggregate", str(project), "-o", str(tmp_path / "pref")])
    assert result.exit_code == 0, result.output
    assert "outside the focus left out" in result.output
    prov = [
        json.loads(x) for x in (tmp_path / "pref" / "provenance.jsonl").read_text().splitlines()
    ]
    assert prov and all(keeps(p, row["prompt_id"]) for row in prov)


def test_policy_trains_on_the_focus_and_evaluates_the_excluded_slice(project: Path) -> None:
    p = focused(project)
    pool = load_prompt_pool(p)
    ctx: Any = SimpleNamespace(settings={"seed": 3, "evaluation": {"prompts_per_set": 12,
                               "prompt_sets": ["validation", "adversarial", "production_holdout"]}})  # fmt: skip
    sets = evaluation_prompts(ctx, pool)
    assert set(sets) == {"validation", "adversarial", "production_holdout", OUTSIDE_FOCUS}
    for name in ("validation", "adversarial"):
        assert all(keeps(p, row["id"]) for row in sets[name])
    assert not any(keeps(p, row["id"]) for row in sets[OUTSIDE_FOCUS])
    train = set(training_prompts(pool, sets))
    assert train and train <= {q.text for q in pool.focused}
    assert not train & {row["text"] for rows in sets.values() for row in rows}


@pytest.mark.slow
def test_the_excluded_slice_is_reported_but_not_pooled(tmp_path: Path) -> None:
    from rlhfspec.runtime.evaluation.evaluate import EvalSettings, evaluate_checkpoint
    from rlhfspec.runtime.train.models import build_tiny

    corpus = [
        f"User: question {i} about my order\nAssistant: refund parcel help {i}" for i in range(40)
    ]
    tiny = build_tiny(corpus, seed=0, out_dir=tmp_path / "tiny", vocab_size=300)
    settings = EvalSettings(seed=1, max_new_tokens=6, temperature=0.8, samples_shown=1,
                            kl_estimator="k1", disqualifiers=[], batch_size=4)  # fmt: skip
    inside = {"validation": ["Where is my order?", "Refund please", "Parcel late"]}
    both = {**inside, OUTSIDE_FOCUS: ["Change my password", "Delete my account"]}
    alone = evaluate_checkpoint(tiny, tiny, tiny, inside, settings, step=0, label="a")
    with_slice = evaluate_checkpoint(tiny, tiny, tiny, both, settings, step=0, label="a")
    assert with_slice["sets"][OUTSIDE_FOCUS]["reward"]["mean"] is not None
    assert with_slice["overall"] == alone["overall"]  # selection and guards read `overall`
    assert with_slice["sets"]["validation"] == alone["sets"]["validation"]


@pytest.mark.parametrize("key", ["kind"])
def test_kind_key_matches_the_source_kind(project: Path, key: str) -> None:
    p = focused(project, f"  focus:\n    {key}: [adversarial]\n")
    pool = load_prompt_pool(p)
    assert pool.focused and all(q.kind == "adversarial" for q in pool.focused)
