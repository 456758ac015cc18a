"""The policy stage from an external engine's checkpoints (a verl job this run exported).

`rlhfspec run SPEC --run-dir RUN --stage evaluate --policy-checkpoints JOB` runs
this in place of training: it checks that the job was exported from this plan
and trained against this run's reward model, takes every checkpoint verl saved
in Hugging Face layout (`checkpoints/global_step_N/actor/huggingface/`), and
writes the same outputs our PPO writes (`models/policy/checkpoints.json`,
`eval/prompt_sets.json`), so evaluate, select and handoff run unchanged. The
checkpoint index and the stage's lineage entry say which engine trained the
policy, its version, the exported config's sha256 and the job's own Hydra
config when it is there; copies of those files sit in `models/policy/engine/`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.fileio import atomic_write_text
from rlhfspec.common.hashing import sha256_file
from rlhfspec.common.plan_types import StageEntry
from rlhfspec.runtime.evaluation.files import PROMPT_SETS, prompt_sets_text, read_prompt_sets
from rlhfspec.runtime.stage_api import StageContext, StageOutcome

MANIFEST = "rlhfspec_export.json"
EXPORT_FORMAT = "rlhfspec.verl_export/1"
LAUNCH_RECORD = "launch.json"
# Hydra writes the composed job config here (the launch scripts set hydra.run.dir=outputs)
JOB_CONFIG = ("outputs/.hydra/config.yaml", "outputs/.hydra/overrides.yaml")
ENGINE_DIR = "models/policy/engine"
STEP = re.compile(r"^global_step_(\d+)$")


def find_job(source: Path) -> Path:
    """The exported job folder: `source` itself, or its parent when it is the checkpoints."""
    for folder in (source, source.parent):
        if (folder / MANIFEST).is_file():
            return folder
    raise RunError(
        f"{source} is not a job exported by rlhfspec (no {MANIFEST} there or one level up); "
        "pass the folder `rlhfspec compile SPEC --target verl -o DIR` wrote"
    )


def read_manifest(job: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((job / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"{job / MANIFEST}: not readable: {exc}") from None
    if manifest.get("format") != EXPORT_FORMAT:
        raise RunError(f"{job / MANIFEST}: format {manifest.get('format')!r}, not {EXPORT_FORMAT}")
    return manifest


def verl_checkpoints(job: Path) -> list[tuple[int, Path]]:
    """(step, HF folder) of every global_step_N the job saved, in step order."""
    root = job / "checkpoints"
    found = []
    for folder in sorted(root.glob("global_step_*")) if root.is_dir() else []:
        match = STEP.match(folder.name)
        if not match or not folder.is_dir():
            continue
        hf = folder / "actor" / "huggingface"
        if not (hf / "config.json").is_file() or not any(hf.glob("*.safetensors")):
            raise RunError(
                f"{hf} holds no Hugging Face weights: save them with "
                "actor_rollout_ref.actor.checkpoint.save_contents including hf_model (the "
                "export sets it), or merge the shards with `python -m verl.model_merger merge "
                f"--backend fsdp --local_dir {folder / 'actor'} --target_dir {hf}`"
            )
        found.append((int(match.group(1)), hf))
    if not found:
        raise RunError(
            f"no checkpoints in {root}: expected global_step_N/actor/huggingface/ folders "
            "(verl's trainer.default_local_dir, which the export points there)"
        )
    return sorted(found)


def files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


def _copy_model(src: Path, dst: Path) -> None:
    from rlhfspec.runtime.export.verl_job import link_or_copy_tree

    if dst.exists():
        shutil.rmtree(dst)
    link_or_copy_tree(src, dst)


def check_job(ctx: StageContext, job: Path, manifest: dict[str, Any]) -> None:
    """Refuse a job from another plan, trained on another reward model, or edited since."""
    problems = []
    if manifest.get("spec_sha256") != ctx.plan["spec"]["sha256"]:
        problems.append(
            f"it was exported from spec {str(manifest.get('spec_sha256'))[:12]}, this run "
            f"uses spec {ctx.plan['spec']['sha256'][:12]}"
        )
    reward = sha256_file(ctx.upstream("models/reward_model") / "model.safetensors")
    if manifest.get("reward_model_sha256") != reward:
        problems.append(
            f"it trained against reward model {str(manifest.get('reward_model_sha256'))[:12]}, "
            f"this run's is {reward[:12]}"
        )
    overrides = job / str(manifest.get("overrides_file", "overrides.txt"))
    if not overrides.is_file() or sha256_file(overrides) != manifest.get("overrides_sha256"):
        problems.append(f"{overrides.name} was changed after the export")
    if problems:
        raise RunError(
            f"the job in {job} does not belong to this run: " + "; ".join(problems) + ". "
            "Export the job from this spec and run (`rlhfspec compile SPEC --target verl "
            "--run-dir RUN -o DIR`) and train it again"
        )


def engine_record(job: Path, manifest: dict[str, Any], source: Path) -> dict[str, Any]:
    """Which engine trained the policy, as lineage, the index and the handoff report it."""
    launch = job / "outputs" / LAUNCH_RECORD
    launched = json.loads(launch.read_text(encoding="utf-8")) if launch.is_file() else {}
    configs = {rel: sha256_file(job / rel) for rel in JOB_CONFIG if (job / rel).is_file()}
    return {
        "name": str(manifest.get("engine", "verl")),
        "version": launched.get("version"),
        "version_exported_for": manifest.get("verl_supported"),
        "exported_config": "engine/overrides.txt",
        "exported_config_sha256": manifest.get("overrides_sha256"),
        "job_config": {Path(rel).name: sha for rel, sha in configs.items()} or None,
        "source": str(source),
        "acknowledged": manifest.get("acknowledged", {}),
        "mapping": manifest.get("mapping", {}),
    }


def copy_engine_files(ctx: StageContext, job: Path) -> None:
    out = ctx.path(ENGINE_DIR)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for rel in ("overrides.txt", "MAPPING.md", MANIFEST, *JOB_CONFIG, f"outputs/{LAUNCH_RECORD}"):
        if (job / rel).is_file():
            shutil.copy2(job / rel, out / Path(rel).name)


def import_policy_stage(ctx: StageContext) -> StageOutcome:
    """The policy stage's outputs from the exported job's checkpoints."""
    from rlhfspec.runtime.policy.stages import (
        CHECKPOINT_INDEX,
        CHECKPOINT_INDEX_FORMAT,
        evaluation_prompts,
        prompt_pool,
        reward_model_version,
        start_model,
    )

    source = Path(ctx.stage["external"]["source"])
    job = find_job(source)
    manifest = read_manifest(job)
    check_job(ctx, job, manifest)
    eval_sets = evaluation_prompts(ctx, prompt_pool(ctx))
    exported = read_prompt_sets(
        json.loads((job / PROMPT_SETS).read_text(encoding="utf-8")), str(job / PROMPT_SETS)
    )
    if exported != eval_sets:
        raise RunError(
            f"{job / PROMPT_SETS} differs from this run's evaluation sets; the job trained on "
            "another split of the prompts: export it again"
        )
    atomic_write_text(ctx.path(PROMPT_SETS), prompt_sets_text(eval_sets))
    checkpoints = []
    for step, folder in verl_checkpoints(job):
        label = f"global_step_{step}"
        rel = f"models/policy/checkpoints/{label}"
        _copy_model(folder, ctx.path(rel))
        checkpoints.append({"label": label, "step": step, "path": rel})
    copy_engine_files(ctx, job)
    engine = engine_record(job, manifest, source)
    policy = ctx.settings["policy"]
    metadata: dict[str, Any] = {
        "kl": policy["kl"],
        "method": policy["method"],
        "start": "sft" if policy["start_from_sft"] else policy["base_model"],
        "plan_fingerprint": ctx.plan["fingerprint"],
        "reward_model": reward_model_version(ctx),
        "engine": engine,
    }
    index = {
        "format": CHECKPOINT_INDEX_FORMAT,
        "start": str(start_model(ctx)),
        "checkpoints": checkpoints,
        "metadata": metadata,
    }
    atomic_write_text(ctx.path(CHECKPOINT_INDEX), json.dumps(index, indent=2) + "\n")
    ctx.log(
        f"imported {len(checkpoints)} checkpoint(s) trained by {engine['name']} "
        f"{engine['version'] or '(version not recorded)'} from {job}"
    )
    return StageOutcome(
        ["models/policy", PROMPT_SETS],
        {"engine": engine, "checkpoints": len(checkpoints)},
        summary=f"{len(checkpoints)} {engine['name']} checkpoints imported from {job}",
    )


def with_external_policy(
    stages: list[StageEntry], chosen: list[StageEntry], source: Path
) -> list[StageEntry]:
    """The stages to run when the policy comes from `source`: the policy entry marked as an
    import (the mark enters its resume signature, so a changed job imports again) and run
    first when the chosen stages come after it."""
    names = [s["name"] for s in stages]
    if "policy" not in names:
        raise RunError("--policy-checkpoints: this plan has no policy stage")
    position = names.index("policy")
    picked = [s["name"] for s in chosen]
    if picked and all(names.index(n) < position for n in picked):
        raise RunError(
            "--policy-checkpoints imports the policy stage; run it with --stage evaluate "
            "(or a later stage), or with no --stage/--until"
        )
    job = find_job(source)
    manifest = read_manifest(job)
    marked: StageEntry = {
        **stages[position],
        "external": {
            "engine": manifest.get("engine", "verl"),
            "source": str(source.resolve()),
            "manifest_sha256": sha256_file(job / MANIFEST),
            "files": {
                rel: sha256_file(job / rel)
                for rel in ("overrides.txt", *JOB_CONFIG, f"outputs/{LAUNCH_RECORD}")
                if (job / rel).is_file()
            },
            # sizes and times are enough to notice a new or rewritten checkpoint here; the
            # imported files themselves are hashed in lineage
            "checkpoints": [
                [step, *[(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in files(folder)]]
                for step, folder in verl_checkpoints(job)
            ],
        },
    }
    out = [marked if s["name"] == "policy" else s for s in chosen]
    if "policy" not in picked:
        out.insert(0, marked)
    return out
