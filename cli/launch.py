"""Entry point for ``accelerate launch`` / ``torchrun ... -m rlhfspec.cli.launch plan.json --stage NAME``.

The plan gives every training stage this multi-process form next to its single-process command.
With one process (``WORLD_SIZE`` unset or 1) it is exactly ``rlhfspec run`` with the same
arguments.

With several processes the run directory still has one owner. Rank 0 runs the ordinary `run`
(lock, lineage, skip-if-unchanged, the stage's outputs), and the other ranks run only the
stage's *training*: they load the same plan, build a `StageContext` on the same run directory
with a private log, and call the trainer, which shards the work and writes nothing (see
`rlhfspec.runtime.policy.distributed`). They never touch ``run.lock`` or ``lineage.json``.

The ranks must agree on whether training happens at all: a worker that starts training while
rank 0 skipped the stage (unchanged on ``--resume``), found an upstream stage missing, or could
not take the lock would wait forever in a collective. So the workers first wait for rank 0's
word, and rank 0 gives it at the last possible moment: its stage implementation is wrapped so
that the word "train" (with the run directory and the resume flag `run` chose) is broadcast
only when `run` actually calls the stage, after every check; if `run` ends without calling it
(skipped, refused, failed), rank 0 broadcasts "stop" and the workers exit quietly.

Only the policy stage (PPO or DPO) runs in several processes so far; SFT and the reward model
write their models from every process and are refused with a clear message.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from rlhfspec.cli.main import main as cli_main
from rlhfspec.common.errors import RunError
from rlhfspec.common.fileio import display_path
from rlhfspec.runtime.policy.distributed import Group, launched_rank, launched_world_size
from rlhfspec.runtime.stage_api import StageContext, StageOutcome

#: Stages that run in several processes, and how a worker (rank > 0) trains for each.
MULTI_PROCESS_STAGES = ("policy",)
#: Exit status of a refused launch (as click's usage errors).
EXIT_USAGE = 2


def world_size() -> int:
    return int(launched_world_size())


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if world_size() <= 1:
        cli_main(["run", *args], prog_name="rlhfspec")
        return
    sys.exit(_several_processes(args))


# ---------------------------------------------------------------------------------------------
# Several processes


def _parse(args: list[str]) -> argparse.Namespace:
    """What the workers need from `rlhfspec run`'s arguments; rank 0 hands the full list to
    the real command, which validates it (an unknown option there stops every rank)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("target", nargs="?")
    parser.add_argument("--stage")
    parser.add_argument("--until")
    known, _ = parser.parse_known_args(args)
    return known


def _refusal(known: argparse.Namespace) -> str | None:
    if known.target is None:
        return "launch needs a plan: ... -m rlhfspec.cli.launch plan.json --stage policy"
    if known.stage not in MULTI_PROCESS_STAGES or known.until is not None:
        stages = ", ".join(f"--stage {s}" for s in MULTI_PROCESS_STAGES)
        return (
            f"with {world_size()} processes, launch runs one training stage that supports them "
            f"({stages}, with --run-dir DIR or --resume); run the other stages first with "
            "`rlhfspec run` or --num_processes 1"
        )
    return None


def _several_processes(args: list[str]) -> int:
    known = _parse(args)
    refusal = _refusal(known)
    if refusal is not None:
        if launched_rank() == 0:
            click.echo(f"error: {refusal}", err=True)
        return EXIT_USAGE
    try:
        group = _join(Path(known.target))
    except RunError as exc:  # every rank fails alike (same plan); one says so
        if launched_rank() == 0:
            click.echo(f"error: {exc.message}", err=True)
        return exc.exit_code
    try:
        if group.is_main:
            return _rank0(args, known.stage, group)
        return _worker(Path(known.target), known.stage, group)
    finally:
        import torch

        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _join(target: Path) -> Group:
    """Join the process group exactly as the trainers' accelerate state will (gloo on CPU,
    NCCL on CUDA: the plan's ``compute.device`` decides), so that they reuse it."""
    import torch
    from accelerate import PartialState

    from rlhfspec.runtime.run import load_plan

    plan = load_plan(target, display_path(target)).plan
    device = plan["resolved"]["compute"]["device"]
    PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    group = Group.current()
    if group.single:
        raise RunError(
            f"WORLD_SIZE is {world_size()} but no process group formed; launch with torchrun "
            "or accelerate launch"
        )
    return group


# rank 0 -------------------------------------------------------------------------------------

#: Set on rank 0 while `run` runs: the group, and whether the workers were told to train.
_rank0_state: dict[str, Any] = {}


def _rank0(args: list[str], stage: str, group: Group) -> int:
    """`rlhfspec run ARGS` with the stage wrapped by `announced_stage`; "stop" to the workers
    if it never got that far."""
    _rank0_state.update(group=group, announced=False, stage=stage)
    code = 0
    try:
        with _stage_wrapped(stage):
            # click's standalone mode ends with SystemExit, carrying run's exit status
            cli_main(["run", *args], prog_name="rlhfspec")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if not _rank0_state["announced"]:
            group.broadcast({"action": "stop"})
    return code


@contextmanager
def _stage_wrapped(stage: str) -> Iterator[None]:
    """Point `run`'s registry entry for `stage` at `announced_stage` for the duration."""
    from rlhfspec.runtime import run as run_module

    original = run_module.STAGES[stage]
    _rank0_state["original"] = original
    run_module.STAGES[stage] = f"{__name__}:announced_stage"
    try:
        yield
    finally:
        run_module.STAGES[stage] = original


def announced_stage(ctx: StageContext) -> StageOutcome:
    """Rank 0's stage: tell the workers to train (now that `run` has taken the lock, checked
    the upstream stages and decided not to skip), then run the real stage implementation."""
    import importlib

    group: Group = _rank0_state["group"]
    group.broadcast(
        {
            "action": "train",
            "run_dir": str(ctx.run_dir),
            "resume": ctx.resume,
            "fingerprint": ctx.plan["fingerprint"],
        }
    )
    _rank0_state["announced"] = True
    module, func = _rank0_state["original"].split(":")
    impl: Callable[[StageContext], StageOutcome] = getattr(importlib.import_module(module), func)
    return impl(ctx)


# workers ------------------------------------------------------------------------------------


def _worker(target: Path, stage_name: str, group: Group) -> int:
    """Wait for rank 0's word; on "train", run the stage's training on rank 0's run directory."""
    from rlhfspec.runtime.project import Project
    from rlhfspec.runtime.run import load_plan, select_stages

    word = group.broadcast(None)
    if word["action"] != "train":
        return 0  # rank 0 reports why (skipped, refused, failed)
    log = _worker_log(group.rank, stage_name)
    try:
        loaded = load_plan(target, display_path(target))
        plan = loaded.plan
        if plan["fingerprint"] != word["fingerprint"]:
            raise RunError(
                f"rank {group.rank} loaded a different plan from rank 0's ({target}); launch every "
                "process from the same working directory"
            )
        stage = select_stages(plan, stage_name, None)[0]
        project = Project(plan["resolved"], loaded.spec_dir / plan["spec"]["file"], str(target))
        ctx = StageContext(
            plan, project, Path(word["run_dir"]), stage, bool(word["resume"]), frozenset(), log
        )
        WORKERS[stage_name](ctx)
    except RunError as exc:
        log(f"error: {exc.message}")
        return exc.exit_code
    return 0


def _worker_log(rank: int, stage: str) -> Callable[[str], None]:
    """A worker's own log: stderr, never the run directory (rank 0's log is the run's)."""

    def emit(message: str) -> None:
        print(f"[{stage} rank {rank}] {message}", file=sys.stderr, flush=True)

    return emit


def policy_training(ctx: StageContext) -> None:
    """The training part of `stages_policy.policy_stage`, through the same `train_policy`.

    Rank 0 runs the whole stage (evaluation prompt sets, the checkpoint index, lineage); a
    worker needs only the trainer call. The trainers still compare a fingerprint of their
    arguments across processes (`Group.agree`), so mismatched data fails with a clear error.
    """
    from rlhfspec.runtime.policy.stages import evaluation_prompts, start_model, train_policy
    from rlhfspec.runtime.train.common import quiet_transformers

    quiet_transformers()
    # metadata goes into checkpoints, which only rank 0 writes
    train_policy(ctx, evaluation_prompts(ctx), start_model(ctx), metadata={})


#: How a worker trains for each stage of `MULTI_PROCESS_STAGES`.
WORKERS: dict[str, Callable[[StageContext], None]] = {"policy": policy_training}


if __name__ == "__main__":
    # Run as the importable module rather than as __main__: `run` finds rank 0's wrapped stage
    # by module path, and it must share this module's state (`_rank0_state`).
    from rlhfspec.cli.launch import main as _main

    _main()
