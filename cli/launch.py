"""Entry point for ``accelerate launch`` / ``torchrun ... -m rlhfspec.cli.launch plan.json --stage NAME``.

The plan gives every training stage this multi-process form next to its single-process command.
With one process (``WORLD_SIZE`` unset or 1) it is exactly ``rlhfspec run`` with the same
arguments.

With several processes the run directory still has one owner. Rank 0 runs the ordinary `run`
(lock, lineage, skip-if-unchanged, the stage's outputs), and the other ranks run only the
stage's *training*: they load the same plan, build the stage's `StageContext` on the same run
directory with a private log, and call the stage's `worker` from the runner's registry
(`rlhfspec.runtime.run.STAGES`), which shards the work and writes nothing (see
`rlhfspec.runtime.policy.distributed`). They never touch ``run.lock`` or ``lineage.json``.

The ranks must agree on whether training happens at all: a worker that starts training while
rank 0 skipped the stage (unchanged on ``--resume``), found an upstream stage missing, or could
not take the lock would wait forever in a collective. So the workers first wait for rank 0's
word, and rank 0 gives it at the last possible moment: `run`'s `on_stage_start` hook broadcasts
the word "train" (with the run directory and the resume flag `run` chose) right before `run`
calls the stage, after every check; if `run` ends without calling it (skipped, refused,
failed), rank 0 broadcasts "stop" and the workers exit quietly.

Only stages with a `worker` in the registry run in several processes: SFT, the reward model
and the policy stage (PPO or DPO). SFT's and the reward model's worker is the stage function
itself, which writes only from the main process (`rlhfspec.runtime.train.scale`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from rlhfspec.cli.main import main as cli_main
from rlhfspec.cli.output import echo
from rlhfspec.common.errors import RunError
from rlhfspec.common.fileio import display_path
from rlhfspec.runtime.policy.distributed import Group, launched_rank, launched_world_size
from rlhfspec.runtime.run import STAGES
from rlhfspec.runtime.stage_api import StageContext

#: Stages that run in several processes: those with a worker part in the registry.
MULTI_PROCESS_STAGES = tuple(name for name, impl in STAGES.items() if impl.worker)
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
            echo(f"error: {refusal}", err=True)
        return EXIT_USAGE
    try:
        group = _join(Path(known.target), known.stage)
    except RunError as exc:  # every rank fails alike (same plan); one says so
        if launched_rank() == 0:
            echo(f"error: {exc.message}", err=True)
        return exc.exit_code
    try:
        if group.is_main:
            return _rank0(args, known.stage, group)
        return _worker(Path(known.target), known.stage, group)
    finally:
        import torch

        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _join(target: Path, stage_name: str) -> Group:
    """Join the process group exactly as the trainers' accelerate state will (gloo on CPU,
    NCCL on CUDA: the plan's ``compute.device`` decides), so that they reuse it."""
    import torch
    from accelerate import PartialState

    from rlhfspec.runtime.run import load_plan, select_stages

    plan = load_plan(target, display_path(target)).plan
    stage = select_stages(plan, stage_name, None)[0]
    device = stage["settings"]["compute"]["device"]
    PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
    group = Group.current()
    if group.single:
        raise RunError(
            f"WORLD_SIZE is {world_size()} but no process group formed; launch with torchrun "
            "or accelerate launch"
        )
    return group


# rank 0 -------------------------------------------------------------------------------------


def _rank0(args: list[str], stage: str, group: Group) -> int:
    """`rlhfspec run ARGS` that tells the workers to train when `run` starts the stage; "stop"
    to them if it never got that far."""
    announced = False

    def announce(ctx: StageContext) -> None:
        nonlocal announced
        if ctx.stage["name"] != stage:
            return
        group.broadcast(
            {
                "action": "train",
                "run_dir": str(ctx.run_dir),
                "resume": ctx.resume,
                "fingerprint": ctx.plan["fingerprint"],
            }
        )
        announced = True

    code = 0
    try:
        # click's standalone mode ends with SystemExit, carrying run's exit status
        cli_main(["run", *args], prog_name="rlhfspec", obj={"on_stage_start": announce})
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if not announced:
            group.broadcast({"action": "stop"})
    return code


# workers ------------------------------------------------------------------------------------


def _worker(target: Path, stage_name: str, group: Group) -> int:
    """Wait for rank 0's word; on "train", run the stage's worker on rank 0's run directory."""
    from rlhfspec.runtime.run import implementation, load_plan, select_stages, stage_context

    word = group.broadcast(None)
    if word["action"] != "train":
        return 0  # rank 0 reports why (skipped, refused, failed)
    log = _worker_log(group.rank, stage_name)
    try:
        loaded = load_plan(target, display_path(target))
        run_dir = Path(word["run_dir"])
        loaded = loaded.in_folder(run_dir / "plan")
        if loaded.plan["fingerprint"] != word["fingerprint"]:
            raise RunError(
                f"rank {group.rank} loaded a different plan from rank 0's ({target}); launch every "
                "process from the same working directory"
            )
        stage = select_stages(loaded.plan, stage_name, None)[0]
        ctx = stage_context(
            loaded,
            stage,
            run_dir,
            display=str(target),
            resume=bool(word["resume"]),
            overrides=frozenset(),
            log=log,
        )
        implementation(stage_name, worker=True)(ctx)
    except RunError as exc:
        log(f"error: {exc.message}")
        return exc.exit_code
    return 0


def _worker_log(rank: int, stage: str) -> Callable[[str], None]:
    """A worker's own log: stderr, never the run directory (rank 0's log is the run's)."""

    def emit(message: str) -> None:
        print(f"[{stage} rank {rank}] {message}", file=sys.stderr, flush=True)

    return emit


if __name__ == "__main__":
    main()
