"""Shipped specs validate and compile; the plan is explicit, deterministic and round-trips."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from rlhfspec.cli.main import main
from rlhfspec.common.hashing import canonical_json, sha256_file, sha256_text
from rlhfspec.compiler.compile import compile_spec
from rlhfspec.compiler.schemas import PLAN_SCHEMA, SPEC_SCHEMA, load_schema
from rlhfspec.compiler.validate import validate_file
from tests.conftest import CORPUS, ROOT, SHIPPED_SPECS

IDS = [s.stem for s in SHIPPED_SPECS]


def plan_validator() -> Draft202012Validator:
    spec_schema = load_schema(SPEC_SCHEMA)
    registry: Registry = Registry().with_resource(
        spec_schema["$id"], Resource.from_contents(spec_schema)
    )
    return Draft202012Validator(load_schema(PLAN_SCHEMA), registry=registry)


def test_there_are_shipped_specs() -> None:
    assert {"support-assistant", "minimal", "support-assistant-dpo"} <= set(IDS)


@pytest.mark.parametrize("spec", SHIPPED_SPECS, ids=IDS)
def test_shipped_spec_is_clean(spec: Path) -> None:
    result = validate_file(spec, strict=True)
    assert result.diagnostics == []
    assert spec.read_text(encoding="utf-8").startswith(
        "# yaml-language-server: $schema=../schemas/"
    )


@pytest.mark.parametrize("spec", SHIPPED_SPECS, ids=IDS)
def test_shipped_spec_compiles_to_a_valid_plan(spec: Path, tmp_path: Path) -> None:
    result = compile_spec(spec, tmp_path / "out")
    assert result.plan is not None
    plan = json.loads(result.files["plan.json"])
    errors = sorted(plan_validator().iter_errors(plan), key=str)
    assert not errors, errors[0].message
    # the fingerprint covers everything else in the plan
    body = {k: v for k, v in plan.items() if k != "fingerprint"}
    assert plan["fingerprint"] == sha256_text(canonical_json(body))
    assert plan["spec"]["sha256"] == sha256_file(spec)
    for item in plan["inputs"]:
        assert item["sha256"] == sha256_file(spec.parent / item["path"])
        if item["path"].endswith(".jsonl"):
            text = (spec.parent / item["path"]).read_text(encoding="utf-8")
            assert item["rows"] == sum(1 for line in text.splitlines() if line.strip())
    for doc in plan["documents"]:
        assert doc["sha256"] == sha256_text(result.files[doc["file"]].decode("utf-8"))
    # stages are in dependency order, and each entry is a whole contract
    seen: dict[str, dict[str, object]] = {}
    for stage in plan["stages"]:
        assert set(stage["depends_on"]) <= set(seen), stage["name"]
        assert stage["settings"] and _is_part_of(stage["settings"], plan["resolved"])
        for item in stage["inputs"]:
            assert item["sha256"] == sha256_file(spec.parent / item["path"])
        upstream = [o for dep in stage["depends_on"] for o in seen[dep]["outputs"]]  # type: ignore[attr-defined]
        for read in stage["reads"]:
            assert any(read == o or read.startswith(o + "/") for o in upstream), read
        seen[stage["name"]] = stage


def _is_part_of(part: object, whole: object) -> bool:
    """Whether `part` is `whole` with some keys of its mappings left out."""
    if isinstance(part, dict) and isinstance(whole, dict):
        return all(k in whole and _is_part_of(v, whole[k]) for k, v in part.items())
    return part == whole


def test_plan_round_trips(tmp_path: Path) -> None:
    spec = ROOT / "specs" / "support-assistant.yaml"
    result = compile_spec(spec, tmp_path)
    assert result.plan is not None
    plan = json.loads(result.files["plan.json"])
    assert plan == json.loads(json.dumps(plan))
    assert plan["resolved"] == validate_file(spec).resolved
    # no hidden defaults: every schema default is written into the plan
    resolved = plan["resolved"]
    assert resolved["policy"]["ppo"]["gamma"] == 1.0
    assert resolved["policy"]["kl"]["estimator"] == "k1"
    assert resolved["annotation"]["aggregation"]["method"] == "majority"
    assert resolved["compute"]["num_processes"] == 1
    stages = {s["name"]: s for s in plan["stages"]}
    assert stages["reward_model"]["launch"].startswith("torchrun --standalone --nproc_per_node 1")
    assert stages["policy"]["depends_on"] == ["prompts", "reward_model", "sft"]
    # a stage's entry carries the resolved settings it reads, with every default
    assert stages["policy"]["settings"]["policy"] == resolved["policy"]
    assert set(stages["policy"]["settings"]) == {
        "seed",
        "prompts",
        "policy",
        "evaluation",
        "compute",
        "tracking",
        "name",
    }
    assert stages["select"]["settings"] == {
        "evaluation": {"select": resolved["evaluation"]["select"]}
    }
    # SFT reads the reserved holdout the prompts stage wrote, and the prompt sources that
    # builtin:tiny's tokenizer learns from
    sft = stages["sft"]
    assert sft["depends_on"] == ["prompts"] and sft["reads"] == ["prompts/holdout.jsonl"]
    sources = {s["path"] for s in resolved["prompts"]["sources"]}
    assert sources <= {i["path"] for i in sft["inputs"]}
    assert stages["handoff"]["outputs"] == ["handoff"]
    assert stages["reward_model"]["work"] == [
        "reward_model/checkpoints",
        "tracking/reward_model",
        "tracking/trackio",
    ]


def test_compile_is_byte_identical(tmp_path: Path) -> None:
    spec = ROOT / "specs" / "support-assistant.yaml"
    runner = CliRunner()
    for name in ("a", "b"):
        result = runner.invoke(main, ["compile", str(spec), "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    files_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files_a == sorted(p.name for p in (tmp_path / "b").iterdir())
    assert {
        "plan.json",
        "playbook.md",
        "playbook.html",
        "criteria.md",
        "criteria.html",
        "sampling.md",
        "sampling.html",
    } <= set(files_a)
    for name in files_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_compile_check_detects_stale_output(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(CORPUS / "data", project / "data")
    spec = project / "spec.yaml"
    shutil.copy(CORPUS / "valid.yaml", spec)
    out = tmp_path / "build"
    runner = CliRunner()
    assert runner.invoke(main, ["compile", str(spec), "-o", str(out), "--check"]).exit_code == 1
    assert runner.invoke(main, ["compile", str(spec), "-o", str(out)]).exit_code == 0
    assert runner.invoke(main, ["compile", str(spec), "-o", str(out), "--check"]).exit_code == 0
    # a change to an input file makes the plan stale
    (project / "data" / "batch.jsonl").write_text('{"id": "x-2"}\n', encoding="utf-8")
    result = runner.invoke(main, ["compile", str(spec), "-o", str(out), "--check"])
    assert result.exit_code == 1 and "plan.json (out of date)" in result.output


def test_invalid_spec_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compile", str(CORPUS / "enum_typo.yaml"), "-o", str(out)])
    assert result.exit_code == 1 and "S004" in result.output
    assert not out.exists()


def test_user_templates_override_in_a_sandbox(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "criteria.md.j2").write_text("# {{ meta.name }} {{ meta.criteria_version }}\n")
    result = compile_spec(CORPUS / "valid.yaml", tmp_path / "out", templates=templates)
    assert result.files["criteria.md"] == b"# corpus 1.0.0\n"
    (templates / "criteria.md.j2").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}\n")
    result = CliRunner().invoke(
        main,
        [
            "compile",
            str(CORPUS / "valid.yaml"),
            "-o",
            str(tmp_path / "o2"),
            "--templates",
            str(templates),
        ],
    )
    assert result.exit_code == 1 and "unsafe" in result.output.lower()
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["validate", "compile"])
def test_light_commands_do_not_import_torch(command: str, tmp_path: Path) -> None:
    spec = ROOT / "specs" / "support-assistant.yaml"
    args = [str(spec)] + (["-o", str(tmp_path / "out")] if command == "compile" else [])
    code = (
        "import sys\n"
        "from rlhfspec.cli.main import main\n"
        f"try:\n    main([{command!r}, *{args!r}])\n"
        "except SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'trl', 'accelerate') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=tmp_path)


def test_stage_entry_type_says_what_the_plan_schema_says() -> None:
    """common/plan_types.StageEntry and the plan schema's stage item name the same keys,
    with the same ones required; `external` is the run-time mark, never in a compiled plan."""
    from rlhfspec.common.plan_types import InputFile, StageEntry

    item = load_schema(PLAN_SCHEMA)["properties"]["stages"]["items"]
    assert StageEntry.__required_keys__ == set(item["required"])
    assert set(StageEntry.__annotations__) == set(item["properties"]) | {"external"}
    assert set(InputFile.__annotations__) == set(item["properties"]["inputs"]["items"]["required"])


@pytest.mark.parametrize("spec", SHIPPED_SPECS, ids=IDS)
def test_compiled_stage_entries_hold_only_typed_keys(spec: Path, tmp_path: Path) -> None:
    from rlhfspec.common.plan_types import StageEntry

    result = compile_spec(spec, tmp_path)
    assert result.plan is not None
    for entry in result.plan["stages"]:
        assert StageEntry.__required_keys__ <= set(entry) <= set(StageEntry.__annotations__)
        assert "external" not in entry
