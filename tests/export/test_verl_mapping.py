"""The verl target's mapping: every setting accounted for, refusals located, acknowledgements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rlhfspec.common.errors import CompilerError
from rlhfspec.compiler.compile import compile_spec
from rlhfspec.compiler.plan import BUILTIN_CORPUS, STAGE_SETTINGS
from rlhfspec.compiler.schemas import SPEC_SCHEMA, load_schema
from rlhfspec.compiler.targets import get_target, spec_locator
from rlhfspec.compiler.targets import verl as target
from rlhfspec.compiler.targets.verl_rules import rule_for

ACKS = {
    "policy.kl.target": "per-token target is fine for this job",
    "policy.ppo.vf_coef": "critic has its own optimizer",
    "policy.ppo.missing_eos_penalty": "the EOS-rate guard catches rambling",
    "compute.mixed_precision": "bf16 on H100s",
}


def schema_leaves(schema: dict[str, Any], prefix: str) -> list[str]:
    props = schema.get("properties")
    if schema.get("type") != "object" or not props:
        return [prefix]
    out: list[str] = []
    for key, sub in props.items():
        out.extend(schema_leaves(sub, f"{prefix}.{key}"))
    return out


def test_every_policy_and_compute_setting_has_a_rule() -> None:
    """A setting added to the schema must get a row in compiler/targets/verl_rules/ (or the
    export refuses it); this test names the ones missing."""
    schema = load_schema(SPEC_SCHEMA)
    settings = []
    # every setting a policy stage entry can carry (builtin:tiny adds its tokenizer's corpus)
    for dotted in (*STAGE_SETTINGS["policy"], *BUILTIN_CORPUS):
        node = schema
        for key in dotted.split("."):
            node = node["properties"][key]
        settings += schema_leaves(node, dotted)
    assert {"seed", "policy.kl.coef", "compute.num_processes"} <= set(settings)
    missing = [s for s in settings if rule_for(s) is None]
    assert not missing, "add a rule in compiler/targets/verl_rules/ for: " + ", ".join(missing)


def with_export(spec: Path, acks: dict[str, str], extra: str = "") -> Path:
    text = spec.read_text(encoding="utf-8")
    lines = ["export:", "  verl:", "    acknowledge:"]
    lines += [f"      {k}: {v!r}" for k, v in acks.items()] or ["      {}"]
    if not acks:
        lines = ["export:", "  verl:", "    acknowledge: {}"]
    spec.write_text(text + extra + "\n".join(lines) + "\n", encoding="utf-8")
    return spec


def mapping(spec: Path) -> target.Check:
    result = compile_spec(spec, spec.parent / "build")
    assert result.plan is not None, result.diagnostics
    checked: target.Check = get_target("verl").check(result.plan, spec_locator(spec), spec.name)
    return checked


def test_example_refusals_are_located_errors(project: Path) -> None:
    checked = mapping(project)
    refused = {d.path: d for d in checked.diagnostics}
    assert set(refused) == set(ACKS)
    assert all(d.code == "X001" and d.severity == "error" for d in refused.values())
    lines = project.read_text(encoding="utf-8").splitlines()
    vf = refused["policy.kl.target"]
    assert "target: 6.0" in lines[vf.line - 1][vf.col - 1 :]
    assert "export.verl.acknowledge" in (vf.hint or "")


def test_acknowledged_refusals_pass_and_are_recorded(project: Path) -> None:
    checked = mapping(with_export(project, ACKS))
    assert checked.ok, checked.diagnostics
    acked = {r.setting: r.acknowledged for r in checked.rows if r.acknowledged}
    assert acked == ACKS
    counts = checked.counts()
    assert counts == {"exact": 30, "difference": 5, "refused": 4, "unused": 20}
    assert sum(counts.values()) == len(checked.rows)


def test_stale_and_unknown_acknowledgements_are_errors(project: Path) -> None:
    acks = {**ACKS, "policy.ppo.lam": "no reason", "policy.ppo.lamda": "typo"}
    checked = mapping(with_export(project, acks))
    stale = sorted(d.path for d in checked.diagnostics if d.code == "X002")
    assert stale == [
        "export.verl.acknowledge.policy.ppo.lam",
        "export.verl.acknowledge.policy.ppo.lamda",
    ]


def test_key_values_follow_the_spec(project: Path) -> None:
    checked = mapping(with_export(project, ACKS))
    keys = {k: v for r in checked.rows for k, v in r.keys.items()}
    assert keys["algorithm.use_kl_in_reward"] is True
    assert keys["algorithm.kl_ctrl.kl_coef"] == 0.05
    assert keys["algorithm.kl_ctrl.type"] == "adaptive"
    assert keys["algorithm.kl_ctrl.target_kl"] == pytest.approx(6.0 / 48)
    assert keys["algorithm.lam"] == 0.95
    assert keys["trainer.total_training_steps"] == 512 // 32
    assert keys["actor_rollout_ref.actor.ppo_mini_batch_size"] == 16
    assert keys["trainer.save_freq"] == 4


def test_dpo_cannot_be_acknowledged(root: Path) -> None:
    spec = root / "specs" / "support-assistant-dpo.yaml"
    result = compile_spec(spec, spec.parent / "build")
    assert result.plan is not None
    checked = get_target("verl").check(result.plan, spec_locator(spec), spec.name)
    assert [d.code for d in checked.diagnostics if d.path == "policy.method"] == ["X003"]


def test_unknown_target_is_a_usage_error() -> None:
    with pytest.raises(CompilerError) as err:
        get_target("openrlhf")
    assert err.value.exit_code == 2 and "verl" in err.value.message


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (None, "null"),
        (1e-05, "1e-05"),
        (2.0, "2.0"),
        ([1, "a b"], "[1,'a b']"),
        ("{job_dir}/data/train.parquet", "{job_dir}/data/train.parquet"),
        ("it's", "'it\\'s'"),
    ],
)
def test_hydra_values(value: Any, text: str) -> None:
    assert target.hydra_value(value) == text


@pytest.mark.parametrize(("mode", "status"), [("fixed", "difference"), ("adaptive", "refused")])
def test_k3_never_enters_verls_reward(project: Path, mode: str, status: str) -> None:
    """Our reward uses k1 whatever kl.estimator says; verl must get kl_penalty=kl, and an
    adaptive controller fed k3 is something verl cannot express."""
    text = project.read_text(encoding="utf-8")
    old = "kl: {coef: 0.05, estimator: k1, mode: adaptive, target: 6.0, horizon: 10000}"
    assert old in text
    target = ", target: 6.0" if mode == "adaptive" else ""
    new = f"kl: {{coef: 0.05, estimator: k3, mode: {mode}{target}, horizon: 10000}}"
    project.write_text(text.replace(old, new), encoding="utf-8")
    checked = mapping(project)
    row = next(r for r in checked.rows if r.setting == "policy.kl.estimator")
    assert row.status == status and row.keys == {"algorithm.kl_penalty": "kl"}
    codes = {d.path: d.code for d in checked.diagnostics}
    assert (codes.get("policy.kl.estimator") == "X001") == (status == "refused")


def test_cli_refuses_before_touching_the_run(project: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rlhfspec.cli.main import main

    out, run_dir = tmp_path / "job", tmp_path / "run"
    run_dir.mkdir()
    runner = CliRunner()
    args = ["compile", str(project), "--target", "verl", "-o", str(out), "--run-dir", str(run_dir)]
    result = runner.invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "error[X001]" in result.output and "policy.ppo.vf_coef" in result.output
    assert not out.exists()
    # acknowledged, it gets as far as the run, which has no reward model: still nothing written
    with_export(project, ACKS)
    result = runner.invoke(main, args)
    assert result.exit_code == 1 and "no lineage.json" in result.output, result.output
    assert not out.exists() and not list(tmp_path.glob(".job.tmp-*"))
    assert runner.invoke(main, args[:4] + ["openrlhf"]).exit_code == 2
    assert runner.invoke(main, args[:6]).exit_code == 2  # no --run-dir
