"""The handoff package: completeness, verification, reproducibility, escaping, the model card.

The run directory here is synthetic: the example spec compiled for real (so the plan, its
fingerprint, the documents and the gold items are the genuine article), the QC report and the
selection computed by the real code on small inputs, and small fake files where training would
have written models. Nothing is trained, so the suite stays fast; a real run under
/tmp/scratch/full/run is packaged too when one exists.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlhfspec.common.errors import RunError
from rlhfspec.common.hashing import sha256_file
from rlhfspec.compiler.compile import compile_spec, write_outputs
from rlhfspec.compiler.plan import stage_graph
from rlhfspec.runtime.annotation.judge.review import ai_judge_lineage, review_judges
from rlhfspec.runtime.annotation.judge.use import records_for_aggregation
from rlhfspec.runtime.annotation.qc import QcInputs, QcSettings, analyse
from rlhfspec.runtime.annotation.table import AnnotationTable
from rlhfspec.runtime.evaluation.evaluate import eval_json, trajectory_svg
from rlhfspec.runtime.evaluation.selection import (
    export_human_eval,
    import_human_eval,
    select_checkpoint,
)
from rlhfspec.runtime.handoff import (
    CHECKSUMS_FILE,
    MANIFEST_FILE,
    PARTS,
    build_package,
    handoff_stage,
    verify_package,
)
from rlhfspec.runtime.handoff.context import inline_svg
from rlhfspec.runtime.lineage import describe
from rlhfspec.runtime.project import Project
from rlhfspec.runtime.report.qc_report import write_qc_reports
from rlhfspec.runtime.run import check_outputs, snapshot
from rlhfspec.runtime.stage_api import StageContext
from tests.annotation.test_judge import ai_record, human_record, with_judge
from tests.conftest import SPECS

SPEC = SPECS / "support-assistant.yaml"
HOSTILE = "<script>alert(1)</script>"
TEMPLATE_TEXT = "{{ 7*7 }}"
LONG_LINE = "L" * 10_000
REAL_RUN = Path("/tmp/scratch/full/run")
SETS = ("validation", "adversarial", "production_holdout")
# label, step, reward, KL: the last checkpoint drifts past the KL guard (8.0) and is refused
CHECKPOINTS = (("start", 0, 0.10, 0.0), ("update-000002", 2, 0.40, 0.5), ("update-000004", 4, 0.90, 20.0))  # fmt: skip
T0 = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def _stamp(minutes: int) -> str:
    return (T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(run: Path, rel: str, content: str | bytes) -> None:
    path = run / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")


def _json(run: Path, rel: str, value: Any) -> None:
    _write(run, rel, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _qc_report(spec: dict[str, Any]) -> Any:
    """A real QC report on a tiny table: three annotators, one who always picks the first."""
    records = []
    for k in range(30):
        for name in ("ann-01", "ann-02", "ann-03"):
            choice = "A" if name == "ann-03" else "AB"[k % 2]
            start = T0 + timedelta(minutes=k)
            records.append({
                "item_id": f"i{k}", "prompt_id": f"p{k}", "response_a": f"r-{k}a",
                "response_b": f"r-{k}b", "choice": choice, "annotator": name,
                "session": f"{name}-s1", "started_at": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "submitted_at": (start + timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "justification": None, "criteria_version": "1.2.0", "batch": "2026-11-w1",
                "gold": False,
            })  # fmt: skip
    settings = QcSettings(
        min_pair_overlap=2,
        min_fatigue_sample=2,
        batches=(("2026-11-w1", "1.2.0"),),
        has_gold=False,
        annotators_per_item=3,
    )
    meta = {
        "name": spec["name"],
        "spec_file": SPEC.name,
        "criteria_version": spec["criteria"]["version"],
        "criteria_sha256": "0" * 64,
        "generator": "rlhfspec test",
    }
    report = analyse(AnnotationTable.from_records(records), {}, settings, inputs=QcInputs(meta))
    report.samples = [
        {
            "annotator": "ann-03", "batch": "2026-11-w1", "item_id": "i1",
            "shown_first": "r-1a", "shown_second": "r-1b", "chose": "r-1a",
            "reference": "r-1b", "reference_kind": "consensus",
            "justification": f"{HOSTILE} {TEMPLATE_TEXT} " + "J" * 3000,
        }
    ]  # fmt: skip
    return report


def _evaluation(label: str, step: int, reward: float, kl: float, hostile: bool) -> dict[str, Any]:
    def block(offset: float) -> dict[str, Any]:
        samples = [
            {"prompt": f"Where is my order {i}?", "response": f"Track it in Orders ({label}).",
             "score": reward + offset, "flags": []}
            for i in range(2)
        ]  # fmt: skip
        if hostile:
            samples.append(
                {
                    "prompt": f"{HOSTILE} {TEMPLATE_TEXT} ignore your rules",
                    "response": f"{LONG_LINE} {HOSTILE} </div></main> {TEMPLATE_TEXT}",
                    "score": reward,
                    "flags": ["fabricated_citation"],
                }
            )
        return {
            "n": 4,
            "reward": {"mean": reward + offset, "std": 1.0, "p10": -1.0, "p50": 0.0, "p90": 1.0},
            "kl": {"mean": kl, "std": 0.1, "per_token": kl / 30, "temperature": 0.7},
            "length": {"words_mean": 20.0 + step, "tokens_mean": 26.0 + step},
            "length_reward_correlation": 0.2,
            "disqualifier_rate": 0.0,
            "disqualifier_rates": {"fabricated_citation": 0.0},
            "eos_rate": 0.75,
            "win_rate_vs_start": None if label == "start" else 0.5 + step / 20,
            "samples": samples,
        }

    sets = {name: block(i / 10) for i, name in enumerate(SETS)}
    overall = {k: v for k, v in block(0.0).items() if k != "samples"}
    overall["n"] = 12
    overall["sets"] = list(SETS)
    return {
        "format": "rlhfspec.checkpoint_eval/1",
        "label": label,
        "step": step,
        "models": {
            "policy": label,
            "reference": "models/sft",
            "reward_model": "models/reward_model",
        },
        "settings": {"seed": 1, "max_new_tokens": 48, "temperature": 0.7, "samples_shown": 2},
        "kl_method": "mean over prompts of the per-token k1 estimator",
        "sets": sets,
        "overall": overall,
        "responses": {n: [f"{label} says {i}" for i in range(4)] for n in SETS},
        "scores": {n: [reward] * 4 for n in SETS},
    }


def make_run(root: Path, *, hostile: bool = False, human: bool = False) -> Path:
    """A finished run directory in the real layout, built without training anything."""
    run = root / "run"
    compiled = compile_spec(SPEC, run / "plan")
    assert compiled.plan is not None
    plan = compiled.plan
    write_outputs(run / "plan", compiled.files)
    spec = plan["resolved"]
    outputs: dict[str, list[str]] = {}

    _json(run, "prompts/report.json", {"errors": 0, "warnings": 0, "mix": {"usage_logs": 0.65}})
    _write(run, "prompts/report.md", "# Prompt check\n\nNo findings.\n")
    _write(run, "prompts/holdout.jsonl", '{"id": "u-1", "text": "Where is my parcel?"}\n')
    outputs["prompts"] = ["prompts/report.json", "prompts/report.md", "prompts/holdout.jsonl"]
    write_qc_reports(_qc_report(spec), run / "qc")
    outputs["annotation_qc"] = ["qc/report.json", "qc/report.md", "qc/report.html"]
    _write(run, "preferences/pairs.jsonl", '{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    _write(run, "preferences/provenance.jsonl", '{"item_id": "i1"}\n')
    _json(run, "preferences/summary.json", {"pairs": 1, "split_votes": 0})
    outputs["aggregate"] = [f"preferences/{n}" for n in ("pairs.jsonl", "provenance.jsonl", "summary.json")]  # fmt: skip
    for name in ("config.json", "tokenizer.json"):
        _write(run, f"models/sft/{name}", "{}\n")
    _write(run, "models/sft/model.safetensors", b"sft-weights")
    outputs["sft"] = ["models/sft"]

    batches = [b["id"] for b in spec["annotation"]["batches"]]
    _write(run, "models/reward_model/model.safetensors", b"reward-model-weights")
    _write(run, "models/reward_model/config.json", "{}\n")
    gates = [
        {"name": "min_validation_accuracy", "passed": True, "value": 0.72, "threshold": 0.65,
         "message": "holdout accuracy 0.72", "overridden": False},
        {"name": "max_length_correlation", "passed": True, "value": -0.15, "threshold": 0.3,
         "message": "length correlation -0.15", "overridden": False},
    ]  # fmt: skip
    rm_meta = {
        "stage": "reward_model",
        "base_model": "builtin:tiny",
        "criteria_version": spec["criteria"]["version"],
        "annotation_batches": batches,
        "gates": gates,
        "holdout": {"accuracy": 0.72, "pairs": 100},
    }
    _json(run, "models/reward_model/rlhfspec_reward_model.json", rm_meta)
    per_dimension = {
        "tone": {"accuracy": 0.52, "pairs": 40},
        "accuracy": {"accuracy": 0.61, "pairs": 30},
    }
    _json(
        run,
        "reward_model/eval.json",
        {
            "metadata": rm_meta,
            "holdout": {
                "pairs": 100,
                "accuracy": 0.72,
                "per_dimension": per_dimension,
                "length": {
                    "preferred_shorter": {"accuracy": 0.78, "pairs": 60},
                    "preferred_longer": {"accuracy": 0.64, "pairs": 40},
                    "pearson_reward_length": -0.15,
                },
            },
        },
    )
    _write(run, "reward_model/eval.md", "# Reward model evaluation\n")
    _write(run, "reward_model/holdout_scores.jsonl", '{"score": 1.0}\n')
    outputs["reward_model"] = ["models/reward_model", "reward_model/eval.json", "reward_model/eval.md", "reward_model/holdout_scores.jsonl"]  # fmt: skip

    metadata = {
        "kl": spec["policy"]["kl"],
        "method": "ppo",
        "start": "sft",
        "plan_fingerprint": plan["fingerprint"],
        "reward_model": {
            "path": "models/reward_model",
            "sha256": sha256_file(run / "models/reward_model/model.safetensors"),
            "criteria_version": spec["criteria"]["version"],
            "annotation_batches": batches,
        },
    }
    index = []
    for label, step, _, _ in CHECKPOINTS[1:]:
        folder = f"models/policy/checkpoints/{label}"
        _write(run, f"{folder}/policy/model.safetensors", f"policy-weights-{label}".encode())
        _write(run, f"{folder}/policy/config.json", '{"model_type": "llama"}\n')
        _write(run, f"{folder}/policy/tokenizer.json", "{}\n")
        _write(run, f"{folder}/policy/rng_state.pth", b"training state, never packaged")
        _write(run, f"{folder}/value/model.safetensors", b"value-head")
        _write(run, f"{folder}/optimizer.pt", b"optimizer state")
        _json(run, f"{folder}/checkpoint.json", {"update": step, "kl_coef": 0.049, "metadata": metadata})  # fmt: skip
        index.append({"label": label, "step": step, "path": f"{folder}/policy"})
    _json(run, "models/policy/checkpoints.json", {"start": "models/sft", "checkpoints": index, "metadata": metadata})  # fmt: skip
    _write(run, "models/policy/metrics.jsonl", '{"update": 1, "kl": 0.1}\n{"update": 2, "kl": 0.2}\n')  # fmt: skip
    _json(run, "eval/prompt_sets.json", {n: [{"id": f"{n}-1", "text": "Where is my order?"}] for n in SETS})  # fmt: skip
    outputs["policy"] = ["models/policy", "eval/prompt_sets.json"]

    results = [_evaluation(label, step, r, kl, hostile) for label, step, r, kl in CHECKPOINTS]
    for result in results:
        _write(run, f"eval/{result['label']}.json", eval_json(result))
    guards = spec["evaluation"]["select"]["guards"]
    _write(run, "eval/trajectory.svg", trajectory_svg(results, guards=guards))
    summary = [
        {"label": r["label"], "step": r["step"], "reward_mean": r["overall"]["reward"]["mean"],
         "kl_mean": r["overall"]["kl"]["mean"], "words_mean": r["overall"]["length"]["words_mean"],
         "length_reward_correlation": 0.2, "disqualifier_rate": 0.0,
         "win_rate_vs_start": r["overall"]["win_rate_vs_start"]}
        for r in results
    ]  # fmt: skip
    outputs["evaluate"] = [f"eval/{r['label']}.json" for r in results] + ["eval/trajectory.svg"]
    human_results = None
    if human:
        baseline = [(f"prompt {i}", f"start says {i}") for i in range(6)]
        by_label = {r["label"]: [(p, f"{r['label']} says {i}") for i, (p, _) in enumerate(baseline)] for r in results[1:]}  # fmt: skip
        written = export_human_eval(
            by_label, baseline, run / "eval", seed=1, per_checkpoint=6, criteria_version="1.2.0"
        )
        outputs["evaluate"] += [p.relative_to(run).as_posix() for p in written]
        tasks = (run / "eval/human_eval/tasks.jsonl").read_text(encoding="utf-8").splitlines()
        judgements = [json.dumps({"task_id": json.loads(t)["task_id"], "choice": "A"}) for t in tasks]  # fmt: skip
        _write(run, "eval/human_eval/judgements.jsonl", "\n".join(judgements) + "\n")
        human_results = import_human_eval(
            run / "eval/human_eval/judgements.jsonl", run / "eval/human_eval/key.json"
        )
    _json(run, "eval/summary.json", summary)  # the bare list older runs wrote: still read
    outputs["evaluate"].append("eval/summary.json")
    decision = select_checkpoint(results[1:], maximize="reward_mean", guards=guards, human=human_results)  # fmt: skip
    _json(run, "selection.json", decision)
    outputs["select"] = ["selection.json"]

    stages = {}
    for minute, (name, outs) in enumerate(outputs.items()):
        stages[name] = {
            "status": "done",
            "started": _stamp(minute),
            "finished": _stamp(minute + 1),
            "seconds": 60.0,
            "signature": "0" * 64,
            "inputs": [],
            "outputs": [describe(run / rel, rel) for rel in outs],
            "metrics": {},
            "gates": [],
        }
    lineage = {
        "lineage_version": 1,
        "run_id": "20261127-100000",
        "started": _stamp(0),
        "plan": {
            "fingerprint": plan["fingerprint"],
            "name": plan["spec"]["name"],
            "spec_sha256": plan["spec"]["sha256"],
            "criteria_version": plan["criteria"]["version"],
            "criteria_sha256": plan["criteria"]["sha256"],
        },
        "seed": spec["seed"],
        "libraries": {"python": "3.11", "rlhfspec": "0.1.0"},
        "stages": stages,
    }
    _json(run, "lineage.json", lineage)
    return run


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("base"))


@pytest.fixture
def run_copy(base_run: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic run, for tests that edit it."""
    target = tmp_path / "run"
    shutil.copytree(base_run, target)
    return target


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------------------------
# Completeness and verification


EXPECTED = {
    "CHECKSUMS.sha256", "MODEL_CARD.md", "index.html", "index.md",
    "criteria/criteria.md", "criteria/criteria.html", "criteria/history.json",
    "sampling/sampling.md", "sampling/sampling.html", "sampling/prompt_check.json",
    "sampling/prompt_check.md",
    "playbook/playbook.md", "playbook/playbook.html", "playbook/gold_items.jsonl",
    "playbook/playbook.auditor.md", "playbook/playbook.auditor.html",
    "playbook/worked_examples.json",
    "annotation_qc/report.html", "annotation_qc/report.md", "annotation_qc/report.json",
    "annotation_qc/aggregation_summary.json",
    "reward_model/eval.json", "reward_model/eval.md",
    "evidence/start.json", "evidence/update-000002.json", "evidence/update-000004.json",
    "evidence/summary.json", "evidence/prompt_sets.json", "evidence/trajectory.svg",
    "evidence/selection.json", "evidence/checkpoints.json", "evidence/training_metrics.jsonl",
    "model/REFERENCE.json", "model/checkpoint.json",
    "lineage/lineage.json", "lineage/plan.json", "lineage/manifest.json",
}  # fmt: skip


def test_package_is_complete_and_verifies(base_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    result = build_package(base_run, out)
    files = _files(out)
    assert set(files) == EXPECTED
    assert result.files == len(EXPECTED) and result.checkpoint == "update-000002"
    assert result.index == str(out / "index.html")
    assert str(out) in result.describe() and "index.html" in result.describe()
    # the gold items are the spec's own file, and the plan documents are the compiled ones
    assert files["playbook/gold_items.jsonl"] == (SPECS / "support-assistant/data/gold.jsonl").read_bytes()  # fmt: skip
    assert files["criteria/criteria.md"] == (base_run / "plan/criteria.md").read_bytes()
    examples = json.loads(files["playbook/worked_examples.json"])
    assert examples["format"] == "rlhfspec.worked_examples/1" and examples["examples"]
    verified = verify_package(out)
    assert verified.ok and verified.checked == len(EXPECTED) - 1, verified.lines()
    assert verified.lines()[-1].endswith(f"OK, {len(EXPECTED) - 1} files match their checksums")

    # CHECKSUMS.sha256: sorted, every file but itself, in sha256sum's format
    lines = files[CHECKSUMS_FILE].decode().splitlines()
    names = [line.split("  ", 1)[1] for line in lines]
    assert names == sorted(EXPECTED - {CHECKSUMS_FILE})
    for line in lines:
        digest, name = line.split("  ", 1)
        assert hashlib.sha256(files[name]).hexdigest() == digest
    if shutil.which("sha256sum"):
        subprocess.run(["sha256sum", "--quiet", "-c", CHECKSUMS_FILE], cwd=out, check=True)


def test_manifest_says_what_produced_every_file(base_run: Path, tmp_path: Path) -> None:
    build_package(base_run, tmp_path / "pkg")
    manifest = json.loads((tmp_path / "pkg" / MANIFEST_FILE).read_text(encoding="utf-8"))
    files = {f["path"]: f for f in manifest["files"]}
    assert set(files) == EXPECTED - {CHECKSUMS_FILE, MANIFEST_FILE}
    stage = {path: f["produced_by"]["stage"] for path, f in files.items()}
    assert stage["evidence/update-000002.json"] == "evaluate"
    assert stage["evidence/selection.json"] == "select"
    assert stage["annotation_qc/report.html"] == "annotation_qc"
    assert stage["reward_model/eval.json"] == "reward_model"
    assert stage["criteria/criteria.md"] == "compile"
    assert stage["playbook/gold_items.jsonl"] == "spec"
    assert stage["model/checkpoint.json"] == "policy"
    assert stage["index.html"] == "handoff"
    rm_sha = sha256_file(base_run / "models/reward_model/model.safetensors")
    evidence = files["evidence/update-000002.json"]["produced_by"]
    assert evidence["criteria_version"] == "1.3.0"
    assert evidence["annotation_batches"] == ["2026-11-w1", "2026-11-w2", "2026-11-w3", "2026-11-w4"]  # fmt: skip
    assert evidence["reward_model"] == rm_sha
    assert evidence["kl"]["coef"] == 0.05
    assert files["evidence/update-000002.json"]["source"] == "eval/update-000002.json"
    for path, entry in files.items():
        data = (tmp_path / "pkg" / path).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert manifest["reward_model"]["version"] == rm_sha
    assert manifest["deployment_checkpoint"]["label"] == "update-000002"
    assert manifest["run"]["finished"] == _stamp(8)  # the select stage's time, not the clock
    history = json.loads((tmp_path / "pkg/criteria/history.json").read_text(encoding="utf-8"))
    assert [h["version"] for h in history["history"]] == ["1.2.0", "1.3.0"]
    assert history["history"][1]["content"]["version"] == "1.3.0"  # confirmed by the lock file
    assert history["history"][1]["content"]["guidance"]["hard_cases"]


def test_verify_reports_altered_missing_and_extra(base_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    build_package(base_run, out)
    (out / "evidence/selection.json").write_text('{"chosen": "update-000004"}\n')
    (out / "criteria/criteria.md").unlink()
    (out / "evidence/notes.txt").write_text("added later\n")
    result = verify_package(out)
    assert not result.ok and result.exit_code == 1
    assert result.altered == ["evidence/selection.json"]
    assert result.missing == ["criteria/criteria.md"]
    assert result.extra == ["evidence/notes.txt"]
    text = "\n".join(result.lines())
    assert "altered: evidence/selection.json" in text and "FAILED" in text


def test_editing_a_file_and_its_checksum_is_still_caught(base_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    build_package(base_run, out)
    target = out / "reward_model/eval.md"
    target.write_text("# Reward model evaluation\n\nAccuracy 0.99.\n")
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    sums = out / CHECKSUMS_FILE
    lines = [
        f"{digest}  reward_model/eval.md" if line.endswith("  reward_model/eval.md") else line
        for line in sums.read_text().splitlines()
    ]
    sums.write_text("\n".join(lines) + "\n")
    result = verify_package(out)
    assert not result.ok and result.altered == ["reward_model/eval.md"]
    assert any(MANIFEST_FILE in d for d in result.details)


def test_verify_refuses_what_is_not_a_package(tmp_path: Path) -> None:
    with pytest.raises(RunError) as missing:
        verify_package(tmp_path / "nothing-here")
    assert missing.value.exit_code == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="not a handoff package"):
        verify_package(tmp_path / "empty")
    (tmp_path / "junk.tar.gz").write_bytes(b"not gzip at all")
    with pytest.raises(RunError, match="not a readable tar.gz"):
        verify_package(tmp_path / "junk.tar.gz")


# ---------------------------------------------------------------------------------------------
# Tarballs and reproducibility


def test_tarball_is_reproducible_and_verifies(base_run: Path, tmp_path: Path) -> None:
    first = build_package(base_run, tmp_path / "a" / "handoff.tar.gz")
    second = build_package(base_run, tmp_path / "b" / "handoff.tar.gz")
    data = first.path.read_bytes()
    assert data == second.path.read_bytes()
    assert first.index.endswith("handoff.tar.gz:support-assistant-handoff/index.html")
    # gzip header: no modification time, no file name
    assert data[:3] == b"\x1f\x8b\x08" and data[3] & 0x08 == 0 and data[4:8] == b"\0\0\0\0"
    expected_mtime = int(datetime(2026, 11, 27, 10, 8, tzinfo=UTC).timestamp())
    with tarfile.open(first.path, "r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and names[0] == "support-assistant-handoff"
    assert {n.split("/", 1)[1] for n in names[1:] if "/" in n} >= EXPECTED
    for member in members:
        assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "", "")
        assert member.mtime == expected_mtime
        assert member.mode == (0o755 if member.isdir() else 0o644)
    assert verify_package(first.path).ok


def test_tampered_tarball_fails_verification(base_run: Path, tmp_path: Path) -> None:
    built = build_package(base_run, tmp_path / "handoff.tar.gz").path
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(built, "r:gz") as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src.getmembers():
            handle = src.extractfile(member) if member.isfile() else None
            data = handle.read() if handle else b""
            if member.name.endswith("/evidence/summary.json"):
                data = b"[]\n"
            if member.name.endswith("/index.md"):
                continue  # removed
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data) if member.isfile() else None)
        extra = tarfile.TarInfo("support-assistant-handoff/payload.bin")
        extra.size = 3
        dst.addfile(extra, io.BytesIO(b"abc"))
    result = verify_package(tampered)
    assert (result.altered, result.missing, result.extra) == (
        ["evidence/summary.json"],
        ["index.md"],
        ["payload.bin"],
    )


def test_directory_builds_are_byte_identical(base_run: Path, tmp_path: Path) -> None:
    build_package(base_run, tmp_path / "a")
    build_package(base_run, tmp_path / "b")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    before = _files(tmp_path / "a")
    build_package(base_run, tmp_path / "a")  # replacing an existing package
    assert _files(tmp_path / "a") == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_the_handoff_stage_entry_does_not_change_the_bytes(run_copy: Path, tmp_path: Path) -> None:
    build_package(run_copy, tmp_path / "before")
    lineage = json.loads((run_copy / "lineage.json").read_text(encoding="utf-8"))
    lineage["stages"]["handoff"] = {"status": "running", "started": "2031-01-01T00:00:00Z"}
    (run_copy / "lineage.json").write_text(json.dumps(lineage, indent=2) + "\n")
    build_package(run_copy, tmp_path / "after")
    assert _files(tmp_path / "before") == _files(tmp_path / "after")


# ---------------------------------------------------------------------------------------------
# Escaping, model card, weights, parts


def test_hostile_text_shows_as_text(tmp_path: Path) -> None:
    run = make_run(tmp_path / "hostile", hostile=True)
    out = tmp_path / "pkg"
    build_package(run, out)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert HOSTILE not in page and "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert TEMPLATE_TEXT in page and ">49<" not in page  # shown, never evaluated
    assert LONG_LINE in page  # kept whole; the layout wraps it (overflow-wrap, pre-wrap)
    assert "&lt;/div&gt;&lt;/main&gt;" in page
    assert page.count("<main>") == 1 and page.count("</main>") == 1
    assert "http://" not in page and "https://" not in page
    for text_file in ("index.md", "MODEL_CARD.md"):
        assert HOSTILE not in (out / text_file).read_text(encoding="utf-8")
    # the QC audit keeps its own escaping
    qc = (out / "annotation_qc/report.html").read_text(encoding="utf-8")
    assert HOSTILE not in qc and "&lt;script&gt;alert(1)&lt;/script&gt;" in qc
    assert verify_package(out).ok


def test_model_card_has_hugging_face_front_matter(base_run: Path, tmp_path: Path) -> None:
    build_package(base_run, tmp_path / "pkg")
    card = (tmp_path / "pkg/MODEL_CARD.md").read_text(encoding="utf-8")
    assert card.startswith("---\n")
    front_text, body = card[4:].split("\n---\n", 1)
    front = yaml.safe_load(front_text)
    assert front["license"] == "other"
    assert front["tags"] == ["rlhf", "rlhfspec", "ppo"]
    assert front["base_model"] == "builtin:tiny"
    assert front["datasets"] == []
    assert front["pipeline_tag"] == "text-generation"
    (entry,) = front["model-index"]
    assert entry["name"] == "support-assistant-update-000002"
    splits = [r["dataset"]["split"] for r in entry["results"]]
    assert splits == list(SETS)
    for result in entry["results"]:
        assert result["task"]["type"] == "text-generation"
        types = [m["type"] for m in result["metrics"]]
        assert types == ["reward_mean", "kl", "win_rate"]
        assert all(isinstance(m["value"], float) for m in result["metrics"])
    for heading in (
        "## What it was optimised for",
        "## Training procedure",
        "## Evaluation and selection",
        "## Limitations",
    ):
        assert heading in body
    assert "`max_kl`" in body and "reward hacking" in body
    assert "**Accuracy** (`accuracy`)" in body  # ranked dimensions
    assert "`fabricated_citation`" in body  # disqualifiers


def test_weights_include_or_reference(base_run: Path, tmp_path: Path) -> None:
    folder = base_run / "models/policy/checkpoints/update-000002"
    included = tmp_path / "inc"
    build_package(base_run, included, weights="include")
    model = sorted(p.name for p in (included / "model").iterdir())
    assert model == ["checkpoint.json", "config.json", "model.safetensors", "tokenizer.json"]
    assert (included / "model/model.safetensors").read_bytes() == (folder / "policy/model.safetensors").read_bytes()  # fmt: skip
    assert verify_package(included).ok

    referenced = tmp_path / "ref"
    build_package(base_run, referenced, weights="reference")
    assert not (referenced / "model/model.safetensors").exists()
    reference = json.loads((referenced / "model/REFERENCE.json").read_text(encoding="utf-8"))
    assert reference["checkpoint"] == "update-000002" and reference["weights"] == "reference"
    listed = {f["path"]: f["sha256"] for f in reference["files"]}
    assert set(listed) == {
        f"models/policy/checkpoints/update-000002/policy/{n}"
        for n in ("config.json", "model.safetensors", "tokenizer.json")
    }
    for rel, digest in listed.items():
        assert sha256_file(base_run / rel) == digest
    assert verify_package(referenced, run_dir=base_run).ok
    with pytest.raises(RunError, match="weights must be"):
        build_package(base_run, tmp_path / "x", weights="copy")


def test_referenced_weights_are_checked_against_the_run(run_copy: Path, tmp_path: Path) -> None:
    build_package(run_copy, tmp_path / "ref")
    (run_copy / "models/policy/checkpoints/update-000002/policy/model.safetensors").write_bytes(
        b"x"
    )
    result = verify_package(tmp_path / "ref", run_dir=run_copy)
    assert not result.ok and len(result.altered) == 1 and "model.safetensors" in result.altered[0]
    assert verify_package(tmp_path / "ref").ok  # the package itself is intact


def test_include_lists_the_parts(base_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    result = build_package(base_run, out, include=["criteria", "lineage"])
    assert result.parts == ("criteria", "lineage")
    tops = {p.relative_to(out).parts[0] for p in out.rglob("*") if p.is_file()}
    assert tops == {"criteria", "lineage", "index.html", "index.md", CHECKSUMS_FILE}
    page = (out / "index.html").read_text(encoding="utf-8")
    assert 'href="criteria/criteria.html"' in page and "evidence/" not in page
    assert verify_package(out).ok
    with pytest.raises(RunError, match="unknown handoff part"):
        build_package(base_run, tmp_path / "y", include=["criteria", "weights"])


def test_human_evaluation_results_are_packaged(tmp_path: Path) -> None:
    run = make_run(tmp_path / "human", human=True)
    out = tmp_path / "pkg"
    build_package(run, out)
    results = json.loads((out / "evidence/human_eval/results.json").read_text(encoding="utf-8"))
    assert results["format"] == "rlhfspec.human_eval_results/1"
    assert set(results["checkpoints"]) == {"update-000002", "update-000004"}
    assert (out / "evidence/human_eval/judgements.jsonl").is_file()
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "Human evaluation" in page
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Human evaluation (blinded" in card
    assert verify_package(out).ok


# ---------------------------------------------------------------------------------------------
# Refusals


def _edit_json(path: Path, edit: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text(encoding="utf-8")))) + "\n")


def test_a_run_file_changed_after_its_stage_is_refused(run_copy: Path, tmp_path: Path) -> None:
    _edit_json(run_copy / "selection.json", lambda d: {**d, "reason": "edited by hand"})
    with pytest.raises(RunError, match=r"selection.json changed after the select stage"):
        build_package(run_copy, tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists()


def test_an_unfinished_run_is_refused(run_copy: Path, tmp_path: Path) -> None:
    _edit_json(run_copy / "lineage.json", lambda d: {**d, "stages": {k: v for k, v in d["stages"].items() if k != "select"}})  # fmt: skip
    with pytest.raises(RunError, match="select stage has not run"):
        build_package(run_copy, tmp_path / "pkg")


def test_a_malformed_run_file_is_a_run_error(run_copy: Path, tmp_path: Path) -> None:
    index = run_copy / "models/policy/checkpoints.json"
    _edit_json(index, lambda d: {**d, "checkpoints": [{"label": "update-000002"}]})
    with pytest.raises(RunError, match="lacks what the handoff package needs"):
        build_package(run_copy, tmp_path / "pkg")
    (run_copy / "plan/plan.json").write_text("[]\n")
    with pytest.raises(RunError, match="not an rlhfspec plan"):
        build_package(run_copy, tmp_path / "pkg")


def test_a_folder_that_is_not_a_package_is_not_overwritten(base_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work\n")
    with pytest.raises(RunError, match="not a handoff package"):
        build_package(base_run, out)
    assert (out / "thesis.tex").read_text() == "years of work\n"


def test_gold_items_must_match_the_plan(base_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "spec"
    (other / "support-assistant/data").mkdir(parents=True)
    (other / "support-assistant/data/gold.jsonl").write_text('{"item_id": "forged"}\n')
    # an explicit spec folder with a different gold file: the plan's folder is tried next
    result = build_package(base_run, tmp_path / "pkg", spec_dir=other)
    assert verify_package(result.path).ok
    moved = tmp_path / "moved"
    shutil.copytree(base_run, moved / "a" / "b" / "run")  # the plan's relative spec path breaks
    with pytest.raises(RunError, match="gold.jsonl"):
        build_package(moved / "a" / "b" / "run", tmp_path / "pkg2", spec_dir=other)


# ---------------------------------------------------------------------------------------------
# The stage


@pytest.mark.parametrize("fmt", ["directory", "tar.gz"])
def test_handoff_stage_writes_the_package(run_copy: Path, tmp_path: Path, fmt: str) -> None:
    plan = json.loads((run_copy / "plan/plan.json").read_text(encoding="utf-8"))
    # the stage entry the compiler writes for this handoff block: it declares the right output
    resolved = {**plan["resolved"], "handoff": {"include": list(PARTS), "weights": "include", "format": fmt}}  # fmt: skip
    stage = next(s for s in stage_graph(resolved, plan["inputs"]) if s["name"] == "handoff")
    logged: list[str] = []
    ctx = StageContext(
        plan,
        Project(stage["settings"], SPEC, "spec"),
        run_copy,
        stage,
        False,
        frozenset(),
        logged.append,
    )
    before = snapshot(run_copy)
    outcome = handoff_stage(ctx)
    rel = "handoff" if fmt == "directory" else "handoff.tar.gz"
    assert outcome.outputs == [rel] == stage["outputs"]
    # the runner's check passes on the declared output, and fails the other declaration
    check_outputs(stage, before, snapshot(run_copy), run_copy)
    other = "handoff.tar.gz" if fmt == "directory" else "handoff"
    with pytest.raises(RunError, match=f"does not declare: {rel}.*declared outputs: {other}"):
        check_outputs({**stage, "outputs": [other]}, before, snapshot(run_copy), run_copy)
    assert outcome.metrics["weights"] == "include" and outcome.metrics["checkpoint"] == "update-000002"  # fmt: skip
    assert "index" in outcome.summary
    assert verify_package(run_copy / rel).ok
    # the command-line build of the same run gives the same bytes
    cli = tmp_path / ("cli" if fmt == "directory" else "cli.tar.gz")
    build_package(run_copy, cli, weights="include", spec_dir=SPECS)
    if fmt == "directory":
        assert _files(cli) == _files(run_copy / rel)
    else:
        assert cli.read_bytes() == (run_copy / rel).read_bytes()


# ---------------------------------------------------------------------------------------------
# The inline plot


def test_inline_svg_keeps_plots_and_drops_anything_active(base_run: Path) -> None:
    plot = (base_run / "eval/trajectory.svg").read_text(encoding="utf-8")
    kept = inline_svg(plot)
    assert kept is not None and str(kept).startswith("<svg ") and "polyline" in str(kept)
    svg = '<svg xmlns="http://www.w3.org/2000/svg">{}</svg>'
    for bad in (
        "<script>alert(1)</script>",
        '<rect onload="alert(1)"/>',
        '<a href="https://example.com"><text>x</text></a>',
        '<image href="https://example.com/x.png"/>',
        '<rect fill="url(https://example.com/x)"/>',
        "<foreignObject><div>x</div></foreignObject>",
        "<!-- x --><rect/>",
    ):
        assert inline_svg(svg.format(bad)) is None, bad
    # a processing instruction (which HTML would end at its first ">") is dropped by the parser
    dropped = inline_svg(svg.format('<?x a="> <script>alert(1)</script>" ?><rect/>'))
    assert dropped is not None and str(dropped) == "<svg><rect></rect></svg>"
    escaped = inline_svg(svg.format("<text>&lt;script&gt; &amp; {{ 7*7 }}</text>"))
    assert escaped is not None and "&lt;script&gt; &amp; {{ 7*7 }}" in str(escaped)


# ---------------------------------------------------------------------------------------------
# A real run, when this machine has one


def test_real_run_packages_and_verifies(tmp_path: Path) -> None:
    if not (REAL_RUN / "lineage.json").is_file() or not (REAL_RUN / "selection.json").is_file():
        pytest.skip(f"no finished run under {REAL_RUN}")
    try:
        result = build_package(REAL_RUN, tmp_path / "pkg", spec_dir=SPECS)
    except RunError as exc:  # the run may predate the current example data
        pytest.skip(f"{REAL_RUN} cannot be packaged here: {exc.message}")
    assert verify_package(result.path, run_dir=REAL_RUN).ok
    again = build_package(REAL_RUN, tmp_path / "again.tar.gz", spec_dir=SPECS)
    assert verify_package(again.path).ok
    with gzip.open(again.path) as handle:
        assert handle.read(1)


def test_ai_assisted_annotation_is_stated(run_copy: Path, tmp_path: Path, project: Path) -> None:
    """The QC and aggregate stages' lineage metrics, made by the real functions from AI-judge
    and human records, become the index's and the model card's AI-assisted annotation line."""
    ai = [ai_record(n, "A") for n in range(30)]
    humans = [human_record(n, who, "A") for n in range(20) for who in ("h1", "h2")]
    for row in humans:
        row["item_id"] = row["item_id"].replace("h", "i")  # the people reviewed i0..i19
    section, _ = review_judges(with_judge(project).spec, ai, humans, {})
    kept, used = records_for_aggregation(ai + humans, "passed")
    assert used["ai_labels_used"] == 10  # i20..i29: pairs no person labelled

    def edit(lineage: Any) -> Any:
        lineage["stages"]["annotation_qc"]["metrics"]["ai_judge"] = ai_judge_lineage(section)
        lineage["stages"]["aggregate"]["metrics"]["ai_labels"] = used
        return lineage

    plain = tmp_path / "plain"
    build_package(run_copy, plain)
    assert (
        "none (every vote in the preference data is a person's)" in (plain / "index.md").read_text()
    )
    _edit_json(run_copy / "lineage.json", edit)
    out = tmp_path / "pkg"
    build_package(run_copy, out)
    line = (
        "10 of 30 AI-judge labels used as votes (agreement gate passed), each for a pair no "
        "person labelled; 20 left to people's votes. ai:m: model m, prompt sha256 000000000000, "
        "10 of 30 labels used, kappa"
    )
    for page in ("index.md", "index.html", "MODEL_CARD.md"):
        text = (out / page).read_text(encoding="utf-8").replace("&#39;", "'")
        assert "AI-assisted annotation" in text and line in " ".join(text.split()), page
    assert verify_package(out).ok
