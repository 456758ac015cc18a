"""`rlhfspec run`: execute a plan's stages in a run directory, with lineage and resume.

A run directory `runs/<name>/<run-id>/` holds the plan it ran (`plan/`),
every stage's outputs, and `lineage.json`. Stages run in the plan's order;
each records its input signature (settings, input files, upstream outputs),
so `--resume` skips finished stages whose inputs are unchanged and lets a
killed training stage continue from its last checkpoint. One process owns a
run directory at a time (`run.lock`); a second is refused.
"""

from __future__ import annotations

import fcntl
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

from rlhfspec.common.errors import CompilerError, RunError
from rlhfspec.common.hashing import sha256_file
from rlhfspec.common.plan_types import StageEntry
from rlhfspec.common.terminal import terminal_safe
from rlhfspec.common.version import __version__ as rlhfspec_version
from rlhfspec.compiler.compile import CompileResult, compile_spec, write_outputs
from rlhfspec.compiler.diagnostics import format_text
from rlhfspec.compiler.plan_check import load_compiled_plan
from rlhfspec.runtime.lineage import (
    LINEAGE_FILE,
    InputRecord,
    Lineage,
    StageRecord,
    describe,
    signature,
)
from rlhfspec.runtime.project import Project
from rlhfspec.runtime.stage_api import GateFailure, StageContext, StageOutcome, covers

EXIT_BUSY = 4
LOCK_FILE = "run.lock"
# files the runner itself writes in a run directory (never a stage's)
RUNNER_FILES = (LINEAGE_FILE, LOCK_FILE, "plan")


@dataclass(frozen=True)
class StageImpl:
    """Where a stage's implementation lives; imported only when the stage runs.

    `worker` is what the other processes run when the stage is launched on several
    (`rlhfspec.cli.launch`): the training only, on rank 0's run directory, writing nothing.
    """

    run: str
    worker: str | None = None


STAGES: dict[str, StageImpl] = {
    "prompts": StageImpl("rlhfspec.runtime.annotation.stages:prompts_stage"),
    "annotation_qc": StageImpl("rlhfspec.runtime.annotation.stages:annotation_qc_stage"),
    "aggregate": StageImpl("rlhfspec.runtime.annotation.stages:aggregate_stage"),
    # SFT and the reward model: every process runs the stage; only the main one writes
    "sft": StageImpl(
        "rlhfspec.runtime.train.stages:sft_stage", worker="rlhfspec.runtime.train.stages:sft_stage"
    ),
    "reward_model": StageImpl(
        "rlhfspec.runtime.train.stages:reward_model_stage",
        worker="rlhfspec.runtime.train.stages:reward_model_stage",
    ),
    "policy": StageImpl(
        "rlhfspec.runtime.policy.stages:policy_stage",
        worker="rlhfspec.runtime.policy.stages:policy_training",
    ),
    "evaluate": StageImpl("rlhfspec.runtime.policy.stages:evaluate_stage"),
    "select": StageImpl("rlhfspec.runtime.policy.stages:select_stage"),
    "handoff": StageImpl("rlhfspec.runtime.handoff.package:handoff_stage"),
}


# the policy stage when its checkpoints come from an exported job (--policy-checkpoints)
EXTERNAL_POLICY = "rlhfspec.runtime.policy.external:import_policy_stage"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class LoadedPlan:
    plan: dict[str, Any]
    spec_dir: Path
    plan_files: dict[str, bytes] = field(default_factory=dict)  # to write into the run dir
    compiled: CompileResult | None = None  # a spec compiled in memory (re-anchored, not redone)

    def in_folder(self, plan_dir: Path) -> LoadedPlan:
        """The plan as it reads from `plan_dir` (a compiled spec's `spec.dir` is relative to
        the folder its plan.json lives in); a plan.json given by the user stays as it is."""
        if self.compiled is None:
            return self
        result = self.compiled.for_folder(plan_dir)
        assert result.plan is not None
        return LoadedPlan(result.plan, self.spec_dir, result.files, result)


def load_plan(path: Path, display: str, plan_dir: Path = Path("plan")) -> LoadedPlan:
    """A spec is compiled in memory; a plan.json is re-validated as the compiler would
    (compiler/plan_check.py), since anyone can write a plan with a matching fingerprint."""
    if path.suffix == ".json":
        try:
            plan, spec_path = load_compiled_plan(path, display)
        except CompilerError as exc:
            raise RunError(exc.message) from None
        return LoadedPlan(plan, spec_path.parent, {"plan.json": path.read_bytes()})
    # plan_dir is where plan.json will live: its `spec.dir` is relative to it
    result = compile_spec(path, plan_dir, display=display)
    if result.plan is None:
        raise RunError(f"{display} is not valid; fix it first:\n" + format_text(result.diagnostics))
    return LoadedPlan(result.plan, path.parent.resolve(), result.files, result)


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


def _owner(fd: int) -> dict[str, Any]:
    """What the lock file says about its owner ({} when unreadable)."""
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _busy(run_dir: Path, lock: Path, owner: dict[str, Any]) -> RunError:
    return RunError(
        f"{run_dir} is in use by another run (pid {owner.get('pid', '?')} on "
        f"{owner.get('host', '?')}, since {owner.get('since', '?')}); wait for it, or remove "
        f"{lock} if that run is gone",
        exit_code=EXIT_BUSY,
    )


def _acquire(run_dir: Path, lock: Path, log: Callable[[str], None]) -> int:
    """An fd holding an exclusive flock on the lock file that is at `lock` right now.

    The kernel drops a flock when its process dies, so a dead run's lock is
    taken over by whoever locks first, atomically: no check-then-unlink race
    (two of four runners used to become owners at once). The owner unlinks
    the file before releasing it, so a runner that locked an unlinked file
    (the inode check) starts again.
    """
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _owner(fd)
            os.close(fd)
            raise _busy(run_dir, lock, owner) from None
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if not current:
            os.close(fd)
            continue
        owner = _owner(fd)
        pid = owner.get("pid")
        if isinstance(pid, int):
            if owner.get("host") == socket.gethostname() and _pid_alive(pid):
                os.close(fd)  # a live owner from a version that did not flock
                raise _busy(run_dir, lock, owner)
            log(f"taking over the lock of a run that died (pid {pid})")
        mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now()})
        os.ftruncate(fd, 0)
        os.pwrite(fd, mine.encode("utf-8"), 0)
        return fd


@contextmanager
def run_lock(run_dir: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Exclusive ownership of a run directory; a lock left by a dead process is taken over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    fd = _acquire(run_dir, lock, log)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # still holding the flock: see _acquire
        os.close(fd)


def read_outputs(stage: StageEntry, lineage: Lineage) -> list[InputRecord]:
    """The recorded upstream outputs the stage reads (its entry's `reads`), with sha256."""
    read: list[InputRecord] = []
    for dep in stage["depends_on"]:
        record = lineage.stage(dep)
        for output in record.get("outputs", []) if record is not None else []:
            if any(covers(r, output["path"]) for r in stage["reads"]):
                read.append({"path": output["path"], "sha256": output["sha256"], "from": dep})
    return read


def stage_signature(stage: StageEntry, lineage: Lineage) -> str:
    """What a finished stage's outputs depend on: its plan entry (settings, input files with
    their sha256, reads, outputs), the upstream outputs it reads, the files a person added to
    the run directory for it, and this rlhfspec version."""
    run_dir = lineage.path.parent
    added = {
        rel: sha256_file(run_dir / rel)
        for rel in stage["human_inputs"]
        if (run_dir / rel).is_file()
    }
    upstream = [(o["path"], o["sha256"]) for o in read_outputs(stage, lineage)]
    return signature([rlhfspec_version, stage, upstream, added])


def _outputs_intact(run_dir: Path, entry: StageRecord) -> bool:
    for output in entry.get("outputs", []):
        path = run_dir / output["path"]
        if not path.exists() or describe(path, output["path"])["sha256"] != output["sha256"]:
            return False
    return True


def _import(target: str) -> Callable[[StageContext], Any]:
    module, func = target.split(":")
    impl: Callable[[StageContext], Any] = getattr(importlib.import_module(module), func)
    return impl


def implementation(name: str, *, worker: bool = False) -> Callable[[StageContext], Any]:
    """The stage's function from the registry (its worker part with `worker`)."""
    entry = STAGES.get(name)
    if entry is None:
        raise RunError(
            f"stage '{name}' is in the plan but this version of rlhfspec cannot run it yet; "
            f"stop before it with --until"
        )
    target = entry.worker if worker else entry.run
    if target is None:
        raise RunError(f"stage '{name}' does not run in several processes")
    return _import(target)


def stage_context(
    loaded: LoadedPlan,
    stage: StageEntry,
    run_dir: Path,
    *,
    display: str,
    resume: bool,
    overrides: frozenset[str],
    log: Callable[[str], None],
) -> StageContext:
    """What a stage receives: its plan entry, and the spec's folder with its settings only."""
    project = Project(stage["settings"], loaded.spec_dir / loaded.plan["spec"]["file"], display)
    return StageContext(loaded.plan, project, run_dir, stage, resume, overrides, log)


def select_stages(plan: dict[str, Any], only: str | None, until: str | None) -> list[StageEntry]:
    stages: list[StageEntry] = plan["stages"]
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
    on_stage_start: Callable[[StageContext], None] | None = None,
    policy_checkpoints: Path | None = None,
) -> Path:
    """Run the plan's stages; returns the run directory.

    `on_stage_start` is called with a stage's context right before the stage runs (after the
    lock, the dependency checks and the resume decision): the multi-process launch tells its
    other processes to train there. `policy_checkpoints` (a job exported with `compile
    --target verl`) makes the policy stage an import of that job's checkpoints.
    """
    loaded = load_plan(target, display)
    chosen = select_stages(loaded.plan, only, until)
    directory = run_dir or default_run_dir(loaded.plan["spec"]["name"], runs_root, resume=resume)
    loaded = loaded.in_folder(directory / "plan")
    plan = loaded.plan
    chosen = select_stages(plan, only, until)
    if policy_checkpoints is not None:
        from rlhfspec.runtime.policy.external import with_external_policy

        chosen = with_external_policy(plan["stages"], chosen, policy_checkpoints)
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
            ctx = stage_context(
                loaded,
                stage,
                directory,
                display=display,
                resume=resume or only is not None,
                overrides=overrides,
                log=_prefixed(stage["name"], log),
            )
            _run_stage(ctx, lineage, log=log, on_start=on_stage_start)
    return directory


def _run_stage(
    ctx: StageContext,
    lineage: Lineage,
    *,
    log: Callable[[str], None],
    on_start: Callable[[StageContext], None] | None,
) -> None:
    stage, run_dir = ctx.stage, ctx.run_dir
    name = stage["name"]
    for dep in stage["depends_on"]:
        if lineage.status(dep) != "done":
            raise RunError(
                f"stage '{name}' needs '{dep}' to have finished in {run_dir}; run it first"
            )
    sig = stage_signature(stage, lineage)
    previous = lineage.stage(name)
    if (
        ctx.resume
        and previous is not None
        and previous["status"] == "done"
        and previous.get("signature") == sig
        and _outputs_intact(run_dir, previous)
    ):
        log(f"[{name}] unchanged since {previous.get('finished')}; skipped")
        return
    impl = implementation(name) if "external" not in stage else _import(EXTERNAL_POLICY)
    started = now()
    inputs = _describe_inputs(stage, lineage)
    lineage.record(
        name, {"status": "running", "started": started, "signature": sig, "inputs": inputs}
    )
    ctx.resume = ctx.resume and previous is not None and previous["status"] == "running"
    before = snapshot(run_dir)
    clock = time.perf_counter()
    record = _Record(lineage, name, run_dir, started, sig, inputs, clock)
    try:
        if on_start is not None:
            on_start(ctx)
        outcome = impl(ctx)
        check_outputs(stage, before, snapshot(run_dir), run_dir)
    except GateFailure as exc:
        record.finish(exc.outcome, "failed", exc.message)
        raise
    except RunError as exc:
        record.fail("failed", exc.message)
        raise
    except KeyboardInterrupt:
        record.fail("interrupted", None)
        raise
    except Exception as exc:
        record.fail("failed", f"{type(exc).__name__}: {exc}")
        raise
    record.finish(outcome, "done", None)
    ctx.log(f"done in {time.perf_counter() - clock:.1f}s: {outcome.summary}")


@dataclass
class _Record:
    """Writes a stage's lineage entry when it ends."""

    lineage: Lineage
    name: str
    run_dir: Path
    started: str
    sig: str
    inputs: list[InputRecord]
    clock: float

    def fail(self, status: str, message: str | None) -> None:
        entry: StageRecord = {
            **(self.lineage.stage(self.name) or StageRecord(status=status)),
            "status": status,
            "finished": now(),
        }
        if message:
            entry["message"] = message
        self.lineage.record(self.name, entry)

    def finish(self, outcome: StageOutcome, status: str, message: str | None) -> None:
        entry: StageRecord = {
            "status": status,
            "started": self.started,
            "finished": now(),
            "seconds": round(time.perf_counter() - self.clock, 3),
            "signature": self.sig,
            "inputs": self.inputs,
            "outputs": [
                describe(self.run_dir / rel, rel)
                for rel in outcome.outputs
                if (self.run_dir / rel).exists()
            ],
            "metrics": outcome.metrics,
            "gates": [g.to_dict() for g in outcome.gates],
        }
        if message:
            entry["message"] = message
        self.lineage.record(self.name, entry)


Snapshot = dict[str, tuple[int, int, int]]


def snapshot(run_dir: Path) -> Snapshot:
    """Every file of the run directory but the runner's own, with (size, mtime, inode): enough
    to see what a stage created, changed (atomic writes replace the inode) or removed."""
    found: Snapshot = {}
    for folder, dirs, files in os.walk(run_dir):
        rel_dir = Path(folder).relative_to(run_dir)
        if rel_dir == Path("."):
            dirs[:] = [d for d in dirs if d not in RUNNER_FILES]
        for file in files:
            rel = (rel_dir / file).as_posix()
            if rel in RUNNER_FILES:
                continue
            st = os.stat(os.path.join(folder, file))
            found[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return found


def check_outputs(stage: StageEntry, before: Snapshot, after: Snapshot, run_dir: Path) -> None:
    """Fail the stage unless it wrote exactly its declared outputs (and scratch under `work`)."""
    allowed = [*stage["outputs"], *stage["work"]]
    touched = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    undeclared = [p for p in touched if not any(covers(a, p) for a in allowed)]
    missing = [o for o in stage["outputs"] if not (run_dir / o).exists()]
    problems = []
    if undeclared:
        problems.append(
            "wrote files its plan entry does not declare: " + ", ".join(undeclared[:10])
        )
    if missing:
        problems.append("did not write its declared outputs: " + ", ".join(missing))
    if problems:
        raise RunError(
            f"stage '{stage['name']}' " + "; ".join(problems) + " (this is a bug in rlhfspec: the "
            "plan entry's `outputs` and the stage must agree)"
        )


def _describe_inputs(stage: StageEntry, lineage: Lineage) -> list[InputRecord]:
    described: list[InputRecord] = [
        {"path": i["path"], "sha256": i["sha256"], "from": "spec"} for i in stage["inputs"]
    ]
    return described + read_outputs(stage, lineage)


def _prefixed(name: str, log: Callable[[str], None]) -> Callable[[str], None]:
    def emit(message: str) -> None:
        log(f"[{name}] {message}")

    return emit


def stderr_log(message: str) -> None:
    print(terminal_safe(message), file=sys.stderr, flush=True)
