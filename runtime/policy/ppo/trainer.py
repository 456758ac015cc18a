"""`train_ppo`: where a run starts, which models it loads, and the loop over updates.

Each update is a rollout (`rlhfspec.runtime.policy.ppo.rollout.collect_rollout`) followed by
the optimisation passes (`rlhfspec.runtime.policy.ppo.update.ppo_update`); this module only
decides where training starts (fresh, or the newest complete checkpoint), checks that a resumed
run is the same run, loads the models, keeps the counters and the KL controller, and writes the
metrics and checkpoints. Both functions are looked up in this module at call time, so tests and
the benchmark can wrap them (``trainer.collect_rollout = ...``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rlhfspec.common.chat_templates import AUTO
from rlhfspec.common.errors import RunError
from rlhfspec.runtime.policy.distributed import SINGLE, Group, initialized
from rlhfspec.runtime.policy.ppo.checkpoint import (
    _CHECKPOINT_RE,
    CHECKPOINT_FORMAT,
    CHECKPOINT_META,
    CHECKPOINT_VERSION,
    CHECKPOINTS,
    METRICS_FILE,
    checkpoint_name,
    clean_float,
    latest_checkpoint,
    read_metrics,
    save_checkpoint,
    save_models,
    set_rng_state,
    write_metrics,
)
from rlhfspec.runtime.policy.ppo.loading import Inputs, Models, load_models, write_sharded
from rlhfspec.runtime.policy.ppo.rollout import collect_rollout
from rlhfspec.runtime.policy.ppo.settings import (
    METRIC_FIELDS,
    RUNS_ON,
    PPOResult,
    PPOSettings,
    RewardFn,
    prompt_indices,
)
from rlhfspec.runtime.policy.ppo.sharding import (
    full_model_state,
    full_optimizer_state,
)
from rlhfspec.runtime.policy.ppo.update import ppo_update
from rlhfspec.runtime.policy.ppo_math import AdaptiveKLController, FixedKLController
from rlhfspec.runtime.train.common import quiet_transformers, seed_everything
from rlhfspec.runtime.train.formatting import ChatFormat, PromptInput, chat_format
from rlhfspec.runtime.train.models import corpus_sha256, load_tokenizer

KLController = FixedKLController | AdaptiveKLController


def train_ppo(
    policy_dir: Path,
    reference_dir: Path,
    reward_model_dir: Path,
    prompts: Sequence[PromptInput],
    settings: PPOSettings,
    out_dir: Path,
    *,
    chat: ChatFormat | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
    metadata: dict[str, Any] | None = None,
    reward_fn: RewardFn | None = None,
    trust_remote_code: bool = False,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> PPOResult:
    """Train the policy in `policy_dir` with PPO against the reward model in `reward_model_dir`.

    The policy and the frozen `reference_dir` are causal LMs sharing one tokenizer (the reward
    model must use it too, since it scores the policy's token ids and the value model starts as
    its copy). `prompts` are raw prompts (a text, or chat messages), formatted by `chat` (the
    run's `ChatFormat`; None: the policy tokenizer's own, as ``prompts.chat_template: auto``).
    Writes ``out_dir/metrics.jsonl`` (one row per update, `METRIC_FIELDS`) and ``out_dir/checkpoints/update-NNNNNN`` every
    ``checkpoint_every`` updates and after the last one. `metadata` (e.g. the reward model's
    version and annotation batches) is copied into every ``checkpoint.json`` for lineage.

    With `resume`, training continues from the newest complete checkpoint (a fresh start when
    there is none) and ends with the same weights as an uninterrupted run; without it, any
    earlier checkpoints and metrics in `out_dir` are discarded. `reward_fn` replaces the reward
    model's scores (see `RewardFn`); the value model is still initialised from the reward model.

    Under torchrun / ``accelerate launch`` every process calls this with the same arguments
    and trains its shard of each rollout batch (see the package docstring); the main process
    decides where training starts (its choice is broadcast, so `resume` only matters there),
    and it alone writes `out_dir` and calls `log`. Every process returns the same
    `PPOResult` (the others' ``seconds`` are their own). `on_update` receives each update's
    metrics row on the main process (experiment tracking).
    """
    if not prompts:
        raise RunError("PPO needs at least one prompt")
    chat = chat or _model_format(Path(policy_dir), trust_remote_code)
    threads_before = torch.get_num_threads()
    try:
        return _train_ppo(
            Inputs(
                Path(policy_dir),
                Path(reference_dir),
                Path(reward_model_dir),
                [chat.prompt(p) for p in prompts],  # as the model sees them (and as hashed)
                reward_fn,
                trust_remote_code,
            ),
            settings,
            Path(out_dir),
            resume=resume,
            log=log,
            metadata=metadata or {},
            on_update=on_update,
        )
    finally:
        # the thread count is process-wide; leave it as the caller had it
        torch.set_num_threads(threads_before)


def _model_format(policy_dir: Path, trust_remote_code: bool) -> ChatFormat:
    """The policy tokenizer's own format (its chat template, else the plain one)."""
    return chat_format(load_tokenizer(policy_dir, trust_remote_code=trust_remote_code), AUTO)


def _formatted(prompt: PromptInput) -> str:
    """`Inputs.prompts` are formatted already (`train_ppo`): the rollout takes them as they are."""
    assert isinstance(prompt, str)
    return prompt


@dataclasses.dataclass
class _State:
    """The counters a checkpoint records and a resume restores."""

    controller: KLController
    update: int = 0
    episodes: int = 0
    optimizer_steps: int = 0
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _train_ppo(
    inputs: Inputs,
    settings: PPOSettings,
    out_dir: Path,
    *,
    resume: bool,
    log: Callable[[str], None],
    metadata: dict[str, Any],
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> PPOResult:
    accelerator = _accelerator(settings)
    group = Group.current() if accelerator.num_processes > 1 else SINGLE
    strategy = _strategy(settings, group)
    settings.per_process_batch(group.world)  # refuses a batch that does not split evenly
    if not group.is_main:
        log = _silent  # one process speaks for the run

    start = _starting_point(out_dir, resume, group)
    sources = inputs.sources()
    prompts_sha = corpus_sha256(inputs.prompts)
    group.agree(
        "the PPO run (settings, prompts, models or starting checkpoint)",
        [settings.comparable(), prompts_sha, sources, None if start is None else start.name],
    )
    start_info = None
    if start is not None:
        where = (group.world, strategy)
        start_info = _check_resume(start, settings, prompts_sha, sources, where, log)
    models = load_models(inputs, start, settings, accelerator, strategy)
    state = _State(controller=_controller(settings))
    metrics_path = out_dir / METRICS_FILE
    if start is not None and start_info is not None:
        _restore(state, start, start_info, metrics_path, group)
        log(
            f"resuming from {start.name} ({state.episodes} episodes, "
            f"kl_coef {state.controller.value:.6g})"
        )
    elif resume:
        log("no complete checkpoint to resume from; starting from the beginning")
    resumed_from = state.update if start is not None else None

    def info() -> dict[str, Any]:
        record = _checkpoint_info(state, settings, inputs, prompts_sha, sources, metadata, group)
        return {**record, "strategy": strategy}

    final = start if start is not None and state.update == settings.num_updates else None
    while state.update < settings.num_updates:
        row = _one_update(state, inputs.prompts, settings, models, accelerator, group)
        if group.is_main:
            write_metrics(metrics_path, state.rows)
            if on_update is not None:
                on_update(row)
        log(
            f"update {state.update}/{settings.num_updates} score {row['score']:.4f} "
            f"kl {row['kl']:.4f} kl_coef {row['kl_coef']:.4g} len {row['response_length']:.1f} "
            f"eos {row['eos_rate']:.2f} ({row['seconds']:.1f}s)"
        )
        if state.update % settings.checkpoint_every == 0 or state.update == settings.num_updates:
            final = _save(out_dir, state.update, models, inputs, info, group, log)
    assert final is not None
    return PPOResult(
        updates=state.update,
        episodes=state.episodes,
        optimizer_steps=state.optimizer_steps,
        kl_coef=state.controller.value,
        final_checkpoint=final,
        policy_dir=final / "policy",
        metrics_path=metrics_path,
        metrics=state.rows,
        resumed_from=resumed_from,
        strategy=strategy,
        cpu_offload=models.sharding is not None and models.sharding.offload,
    )


def _accelerator(settings: PPOSettings) -> Any:
    """accelerate's Accelerator, which with several processes joins their process group
    (gloo on CPU, NCCL on CUDA); the seeds and the thread count set."""
    from accelerate import Accelerator

    quiet_transformers()
    seed_everything(settings.seed)
    torch.set_num_threads(settings.threads)
    cpu = settings.cpu if settings.cpu is not None else not torch.cuda.is_available()
    # mixed precision is our own autocast (rollout and update), not accelerate's: its state is
    # one per process and refuses a second precision (SFT, the reward model or a test before)
    accelerator = Accelerator(cpu=cpu)
    # accelerate may pick its own CPU thread count for several processes; ours decides results
    torch.set_num_threads(settings.threads)
    return accelerator


def _strategy(settings: PPOSettings, group: Group) -> str:
    """How the trained pair runs: ``fsdp`` when asked for under a launcher (a process group
    exists; with one process FSDP shards nothing but runs the same code, which is how the GPU
    check runs it on one GPU), ``ddp`` with several processes, else ``single``."""
    if settings.strategy == "fsdp" and initialized():
        return "fsdp"
    return "single" if group.single else "ddp"


def _starting_point(out_dir: Path, resume: bool, group: Group) -> Path | None:
    """The main process clears leftovers (and, without `resume`, everything) and picks the
    newest complete checkpoint; every process gets its choice."""
    checkpoint_root = out_dir / CHECKPOINTS
    metrics_path = out_dir / METRICS_FILE
    start: Path | None = None
    if group.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if checkpoint_root.is_dir():
            # a kill mid-save leaves only a temporary folder; anything incomplete is not one
            for leftover in checkpoint_root.iterdir():
                incomplete = leftover.name.startswith(".update-") or (
                    _CHECKPOINT_RE.match(leftover.name)
                    and not (leftover / CHECKPOINT_META).is_file()
                )
                if leftover.is_dir() and incomplete:
                    shutil.rmtree(leftover)
        start = latest_checkpoint(out_dir) if resume else None
        if not resume:
            if checkpoint_root.exists():
                shutil.rmtree(checkpoint_root)
            if metrics_path.exists():
                metrics_path.unlink()
    if not group.single:
        # the main process's choice, after its clean-up: every process starts from the same place
        chosen = group.broadcast(None if start is None else str(start))
        start = None if chosen is None else Path(chosen)
    return start


def _check_resume(
    start: Path,
    settings: PPOSettings,
    prompts_sha: str,
    sources: dict[str, Any],
    where: tuple[int, str],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Refuse a checkpoint of another run (settings, prompts, models); warn where the numbers
    will differ without being wrong (thread or process count, strategy: `where` is this run's
    processes and strategy). Returns its checkpoint.json."""
    processes, strategy = where
    info: dict[str, Any] = json.loads((start / CHECKPOINT_META).read_text(encoding="utf-8"))
    saved = {k: v for k, v in info["settings"].items() if k not in RUNS_ON}
    if saved != settings.comparable():
        changed = sorted(k for k in saved if saved[k] != settings.comparable().get(k))
        raise RunError(
            f"cannot resume from {start}: its PPO settings differ ({', '.join(changed)}); "
            "run without --resume to start over"
        )
    if info["prompts"]["sha256"] != prompts_sha:
        raise RunError(f"cannot resume from {start}: the prompts differ from the run's")
    moved = [
        name
        for name in ("policy_sha256", "reference_sha256", "reward_model_sha256", "reward_fn")
        if info["sources"].get(name) != sources[name]
    ]
    if moved:
        raise RunError(
            f"cannot resume from {start}: the starting models differ from the run's "
            f"({', '.join(moved)})"
        )
    if info["settings"].get("threads") != settings.threads:
        log(
            f"resuming with {settings.threads} thread(s) where the run used "
            f"{info['settings'].get('threads')}: results will not match bit for bit"
        )
    if int(info.get("processes", 1)) != processes:
        # each process samples under its own seed, so the split changes the draws
        log(
            f"resuming with {processes} process(es) where the run used "
            f"{info.get('processes', 1)}: results will not match bit for bit"
        )
    if info.get("strategy", strategy) != strategy:
        log(
            f"resuming under {strategy} where the run used {info['strategy']}: results will "
            "not match bit for bit"
        )
    return info


def _controller(settings: PPOSettings) -> KLController:
    if settings.kl_mode == "adaptive":
        assert settings.kl_target is not None
        return AdaptiveKLController(settings.kl_coef, settings.kl_target, settings.kl_horizon)
    return FixedKLController(settings.kl_coef)


def _restore(
    state: _State, start: Path, info: dict[str, Any], metrics_path: Path, group: Group
) -> None:
    """Counters, controller, RNG and the metrics rows up to the checkpoint."""
    state.update = int(info["update"])
    state.episodes = int(info["episodes"])
    state.optimizer_steps = int(info["optimizer_steps"])
    state.controller.load_state_dict(info["kl_controller"])
    set_rng_state(torch.load(start / "rng_state.pt", weights_only=True))
    state.rows = read_metrics(metrics_path, state.update)
    if group.is_main:
        write_metrics(metrics_path, state.rows)


def _one_update(
    state: _State,
    prompts: list[str],
    settings: PPOSettings,
    models: Models,
    accelerator: Any,
    group: Group,
) -> dict[str, Any]:
    """Roll out this process's share of the next global batch, optimise, log; returns the row."""
    began = time.perf_counter()
    state.update += 1
    local_batch = settings.per_process_batch(group.world)
    indices = prompt_indices(
        len(prompts), settings.seed, state.episodes, settings.rollout_batch_size
    )
    # this process's contiguous share of the global batch (all of it with one process)
    shard = indices[group.rank * local_batch : (group.rank + 1) * local_batch]
    # under FSDP the blocks stay gathered for the whole rollout (see `Sharding.gathered`),
    # unless the shards live in host memory (CPU offload: device memory is what is short)
    sharding = models.sharding
    with sharding.gathered() if sharding and not sharding.offload else contextlib.nullcontext():
        rollout = collect_rollout(
            policy=models.pair.policy,
            value_model=models.pair.value_model,
            reference=models.reference,
            reward_model=models.reward_model,
            reward_fn=models.reward_fn,
            tokenizer=models.tokenizer,
            prompts=[prompts[i] for i in shard],
            settings=settings,
            kl_coef=state.controller.value,
            update=state.update,
            device=accelerator.device,
            group=group,
            render=_formatted,
        )
    train_stats, steps = ppo_update(
        model=models.model,
        optimizer=models.optimizer,
        accelerator=models.steps,
        rollout=rollout,
        settings=settings,
        update=state.update,
        group=group,
        scaler=models.scaler,
    )
    # every process ran as many micro-batches: the mean of the means is the global mean
    train_stats = group.mean_of(train_stats)
    state.optimizer_steps += steps
    state.episodes += settings.rollout_batch_size
    state.controller.update(rollout.stats["kl"], settings.rollout_batch_size)
    merged: dict[str, Any] = {
        **rollout.stats,
        **train_stats,
        "update": state.update,
        "episodes": state.episodes,
        "optimizer_steps": state.optimizer_steps,
        "learning_rate": settings.learning_rate,
        "seconds": time.perf_counter() - began,
    }
    row = {
        key: merged[key] if isinstance(merged[key], int) else clean_float(merged[key])
        for key in METRIC_FIELDS
    }
    state.rows.append(row)
    return row


def _checkpoint_info(
    state: _State,
    settings: PPOSettings,
    inputs: Inputs,
    prompts_sha: str,
    sources: dict[str, Any],
    metadata: dict[str, Any],
    group: Group,
) -> dict[str, Any]:
    """checkpoint.json: where the run stands and everything a resume must match."""
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "update": state.update,
        "updates_total": settings.num_updates,
        "episodes": state.episodes,
        "optimizer_steps": state.optimizer_steps,
        "prompt_cursor": state.episodes,
        "prompts": {"count": len(inputs.prompts), "sha256": prompts_sha},
        "kl_coef": state.controller.value,
        "kl_controller": state.controller.state_dict(),
        "settings": settings.to_dict(),
        "processes": group.world,
        "sources": sources,
        "metadata": metadata,
        "libraries": {"torch": torch.__version__, "transformers": _version("transformers")},
    }


def _save(
    out_dir: Path,
    update: int,
    models: Models,
    inputs: Inputs,
    info: Callable[[], dict[str, Any]],
    group: Group,
    log: Callable[[str], None],
) -> Path:
    """Main process: write the checkpoint; every process: gather the sharded state with it
    (FSDP), then wait until it is complete, so that no process returns (or resumes) a path
    that is still being written."""
    path = out_dir / CHECKPOINTS / checkpoint_name(update)
    pair, tokenizer = models.pair, models.tokenizer
    write: Callable[[Path], None] = functools.partial(
        save_models, pair.policy, pair.value_model, tokenizer
    )
    if models.sharding is not None:
        states = (full_model_state(pair.policy), full_model_state(pair.value_model))
        optimizer_state = full_optimizer_state(pair, models.optimizer)
        write = functools.partial(write_sharded, models, states, inputs)
    elif group.is_main:
        optimizer_state = models.optimizer.state_dict()
    if group.is_main:
        path = save_checkpoint(
            out_dir, update, write_models=write, optimizer_state=optimizer_state, info=info()
        )
        log(f"checkpoint {path.name}")
    group.barrier()
    return path


def _silent(message: str) -> None:
    """The log of a process that is not the main one."""


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
