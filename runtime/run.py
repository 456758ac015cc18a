"""`rlhfspec run`: execute a plan's stages in a run directory, with lineage and resume.

A run directory `runs/<name>/<run-id>/` holds the plan it ran (`plan/`),
every stage's outputs, and `lineage.json`. Stages run in the plan's order;
each records its input signature (settings, input files, upstream outputs),
so `--resume` skips finished stages whose inputs are unchanged and lets a
killed training stage continue from its last checkpoint. One process owns a
run directory at a time (`run.lock`); a second is refused.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.hashing import canonical_json, sha256_file, sha256_text
from rlhfspec.common.version import __version__ as rlhfspec_version
from rlhfspec.compiler.compile import compile_spec, write_outputs
from rlhfspec.compiler.diagnostics import format_text
from rlhfspec.runtime.lineage import Lineage, describe, signature
from rlhfspec.runtime.project import Project
from rlhfspec.runtime.stage_api import GateFailure, StageContext, StageOutcome

EXIT_BUSY = 4
LOCK_FILE = "run.lock"
# where each stage's implementation lives; imported only when the stage runs
STAGES: dict[str, str] = {
    "prompts": "rlhfspec.runtime.annotation.stages:prompts_stage",
    "annotation_qc": "rlhfspec.runtime.annotation.stages:annotation_qc_stage",
    "aggregate": "rlhfspec.runtime.annotation.stages:aggregate_stage",
    "sft": "rlhfspec.runtime.train.stages:sft_stage",
    "reward_model": "rlhfspec.runtime.train.stages:reward_model_stage",
    "policy": "rlhfspec.runtime.policy.stages:policy_stage",
    "evaluate": "rlhfspec.runtime.policy.stages:evaluate_stage",
    "select": "rlhfspec.runtime.policy.stages:select_stage",
    "handoff": "rlhfspec.runtime.handoff.package:handoff_stage",
}
# the spec sections whose values a stage depends on (beyond files and upstream outputs)
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "prompts": ("prompts",),
    "annotation_qc": ("criteria", "annotation"),
    "aggregate": ("criteria", "annotation", "prompts"),
    "sft": ("seed", "sft", "compute"),
    "reward_model": ("seed", "reward_model", "compute"),
    "policy": ("seed", "policy", "compute"),
    "evaluate": ("seed", "evaluation", "criteria", "policy"),
    "select": ("evaluation",),
    "handoff": ("handoff",),
}


# files a person adds to the run directory that a stage reads (human judgements)
STAGE_RUN_INPUTS: dict[str, tuple[str, ...]] = {"select": ("eval/human_eval/judgements.jsonl",)}


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class LoadedPlan:
    plan: dict[str, Any]
    spec_dir: Path
    plan_files: dict[str, bytes] = field(default_factory=dict)  # to write into the run dir


def load_plan(path: Path, display: str, plan_dir: Path = Path("plan")) -> LoadedPlan:
    """A spec is compiled in memory; a plan.json is checked against its fingerprint and inputs."""
    if path.suffix == ".json":
        try:
            plan = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RunError(f"{display}: not a readable plan: {exc}") from None
        if not isinstance(plan, dict) or plan.get("plan_version") != 1 or "fingerprint" not in plan:
            raise RunError(
                f"{display}: not an rlhfspec plan (compile a spec with `rlhfspec compile`)"
            )
        body = {k: v for k, v in plan.items() if k != "fingerprint"}
        if sha256_text(canonical_json(body)) != plan["fingerprint"]:
            raise RunError(
                f"{display}: the plan was edited after compiling (fingerprint mismatch); recompile it"
            )
        spec_dir = (path.parent / plan["spec"]["dir"]).resolve()
        for item in plan["inputs"]:
            file = spec_dir / item["path"]
            if not file.is_file() or sha256_file(file) != item["sha256"]:
                raise RunError(
                    f"input {item['path']} ({item['field']}) changed since {display} was compiled; "
                    "recompile the spec"
                )
        return LoadedPlan(plan, spec_dir, {"plan.json": path.read_bytes()})
    # plan_dir is where plan.json will live: its `spec.dir` is relative to it
    result = compile_spec(path, plan_dir, display=display)
    if result.plan is None:
        raise RunError(f"{display} is not valid; fix it first:\n" + format_text(result.diagnostics))
    return LoadedPlan(result.plan, path.parent.resolve(), result.files)


def default_run_dir(name: str, runs_root: Path, *, resume: bool) -> Path:
    base = runs_root / name
    if resume:
        existing = sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
        if not existing:
            raise RunError(f"--resume: no earlier run under {base}/")
        return existing[-1]
    run_id = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return base / run_id


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def run_lock(run_dir: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Exclusive ownership of a run directory; a lock left by a dead process is taken over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                owner = json.loads(lock.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                owner = {}
            pid = owner.get("pid")
            same_host = owner.get("host") == socket.gethostname()
            if isinstance(pid, int) and same_host and not _pid_alive(pid):
                log(f"taking over the lock of a run that died (pid {pid})")
                lock.unlink(missing_ok=True)
                continue
            raise RunError(
                f"{run_dir} is in use by another run (pid {pid} on {owner.get('host', '?')}, "
                f"since {owner.get('since', '?')}); wait for it, or remove {lock} if that run is gone",
                exit_code=EXIT_BUSY,
            ) from None
        with os.fdopen(fd, "w") as handle:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": now()}, handle)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def stage_signature(plan: dict[str, Any], stage: dict[str, Any], lineage: Lineage) -> str:
    resolved = plan["resolved"]
    settings = {key: resolved.get(key) for key in STAGE_SETTINGS.get(stage["name"], ())}
    inputs = {i["path"]: i["sha256"] for i in plan["inputs"]}
    upstream = {dep: lineage.stage(dep).get("outputs") for dep in stage["depends_on"]}
    run_dir = lineage.path.parent
    added = {
        rel: sha256_file(run_dir / rel)
        for rel in STAGE_RUN_INPUTS.get(stage["name"], ())
        if (run_dir / rel).is_file()
    }
    return signature(
        [
            stage["name"],
            rlhfspec_version,
            settings,
            sorted((p, inputs.get(p)) for p in stage["inputs"]),
            upstream,
            added,
        ]
    )


def _outputs_intact(run_dir: Path, entry: dict[str, Any]) -> bool:
    for output in entry.get("outputs", []):
        path = run_dir / output["path"]
        if not path.exists() or describe(path, output["path"])["sha256"] != output["sha256"]:
            return False
    return True


def _implementation(name: str) -> Callable[[StageContext], StageOutcome]:
    target = STAGES.get(name)
    if target is None:
        raise RunError(
            f"stage '{name}' is in the plan but this version of rlhfspec cannot run it yet; "
            f"stop before it with --until"
        )
    module, func = target.split(":")
    impl: Callable[[StageContext], StageOutcome] = getattr(importlib.import_module(module), func)
    return impl


def select_stages(
    plan: dict[str, Any], only: str | None, until: str | None
) -> list[dict[str, Any]]:
    stages: list[dict[str, Any]] = plan["stages"]
    names = [s["name"] for s in stages]
    for option, value in (("--stage", only), ("--until", until)):
        if value is not None and value not in names:
            raise RunError(
                f"{option} {value}: the plan has no such stage (stages: {', '.join(names)})",
                exit_code=2,
            )
    if only is not None:
        return [s for s in stages if s["name"] == only]
    if until is not None:
        return stages[: names.index(until) + 1]
    return stages


def run(
    target: Path,
    *,
    display: str,
    run_dir: Path | None = None,
    runs_root: Path = Path("runs"),
    only: str | None = None,
    until: str | None = None,
    resume: bool = False,
    overrides: frozenset[str] = frozenset(),
    log: Callable[[str], None] = print,
) -> Path:
    """Run the plan's stages; returns the run directory."""
    loaded = load_plan(target, display)
    plan = loaded.plan
    chosen = select_stages(plan, only, until)
    directory = run_dir or default_run_dir(plan["spec"]["name"], runs_root, resume=resume)
    if target.suffix != ".json":
        loaded = load_plan(target, display, directory / "plan")
        plan = loaded.plan
    project = Project(plan["resolved"], loaded.spec_dir / plan["spec"]["file"], display)
    with run_lock(directory, log):
        lineage = Lineage(directory)
        recorded = lineage.doc.get("plan", {}).get("fingerprint")
        if recorded and recorded != plan["fingerprint"]:
            log(
                f"the plan changed since this run directory was used ({recorded[:12]} -> "
                f"{plan['fingerprint'][:12]}); stages whose inputs changed run again"
            )
        write_outputs(directory / "plan", loaded.plan_files)
        lineage.start(run_id=directory.name, plan=plan, started=now())
        log(f"run {directory} (plan {plan['fingerprint'][:12]})")
        for stage in chosen:
            _run_stage(
                plan,
                stage,
                project,
                directory,
                lineage,
                resume=resume or only is not None,
                overrides=overrides,
                log=log,
            )
    return directory


def _run_stage(
    plan: dict[str, Any],
    stage: dict[str, Any],
    project: Project,
    run_dir: Path,
    lineage: Lineage,
    *,
    resume: bool,
    overrides: frozenset[str],
    log: Callable[[str], None],
) -> None:
    name = stage["name"]
    for dep in stage["depends_on"]:
        if lineage.stage(dep).get("status") != "done":
            raise RunError(
                f"stage '{name}' needs '{dep}' to have finished in {run_dir}; run it first"
            )
    sig = stage_signature(plan, stage, lineage)
    previous = lineage.stage(name)
    if (
        resume
        and previous.get("status") == "done"
        and previous.get("signature") == sig
        and _outputs_intact(run_dir, previous)
    ):
        log(f"[{name}] unchanged since {previous.get('finished')}; skipped")
        return
    impl = _implementation(name)
    started = now()
    lineage.record(
        name,
        {
            "status": "running",
            "started": started,
            "signature": sig,
            "inputs": _describe_inputs(plan, stage, lineage),
        },
    )
    stage_log = _prefixed(name, log)
    ctx = StageContext(
        plan,
        project,
        run_dir,
        stage,
        resume and previous.get("status") == "running",
        overrides,
        stage_log,
    )
    clock = time.perf_counter()
    try:
        outcome = impl(ctx)
    except GateFailure as exc:
        _finish(
            lineage,
            name,
            run_dir,
            started,
            sig,
            plan,
            stage,
            exc.outcome,
            "failed",
            exc.message,
            clock,
        )
        raise
    except RunError as exc:
        lineage.record(
            name,
            {**lineage.stage(name), "status": "failed", "finished": now(), "message": exc.message},
        )
        raise
    except KeyboardInterrupt:
        lineage.record(name, {**lineage.stage(name), "status": "interrupted", "finished": now()})
        raise
    except Exception as exc:
        lineage.record(
            name,
            {
                **lineage.stage(name),
                "status": "failed",
                "finished": now(),
                "message": f"{type(exc).__name__}: {exc}",
            },
        )
        raise
    _finish(lineage, name, run_dir, started, sig, plan, stage, outcome, "done", None, clock)
    stage_log(f"done in {time.perf_counter() - clock:.1f}s: {outcome.summary}")


def _finish(
    lineage: Lineage,
    name: str,
    run_dir: Path,
    started: str,
    sig: str,
    plan: dict[str, Any],
    stage: dict[str, Any],
    outcome: StageOutcome,
    status: str,
    message: str | None,
    clock: float,
) -> None:
    entry = {
        "status": status,
        "started": started,
        "finished": now(),
        "seconds": round(time.perf_counter() - clock, 3),
        "signature": sig,
        "inputs": _describe_inputs(plan, stage, lineage),
        "outputs": [
            describe(run_dir / rel, rel) for rel in outcome.outputs if (run_dir / rel).exists()
        ],
        "metrics": outcome.metrics,
        "gates": [g.to_dict() for g in outcome.gates],
    }
    if message:
        entry["message"] = message
    lineage.record(name, entry)


def _describe_inputs(
    plan: dict[str, Any], stage: dict[str, Any], lineage: Lineage
) -> list[dict[str, Any]]:
    by_path = {i["path"]: i for i in plan["inputs"]}
    described = [
        {"path": p, "sha256": by_path[p]["sha256"], "from": "spec"}
        for p in stage["inputs"]
        if p in by_path
    ]
    for dep in stage["depends_on"]:
        for output in lineage.stage(dep).get("outputs", []):
            described.append({"path": output["path"], "sha256": output["sha256"], "from": dep})
    return described


def _prefixed(name: str, log: Callable[[str], None]) -> Callable[[str], None]:
    def emit(message: str) -> None:
        log(f"[{name}] {message}")

    return emit


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
