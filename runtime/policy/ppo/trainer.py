"""`train_ppo`: where a run starts, which models it loads, and the loop over updates.

Each update is a rollout (`rlhfspec.runtime.policy.ppo.rollout.collect_rollout`) followed by
the optimisation passes (`rlhfspec.runtime.policy.ppo.update.ppo_update`); this module only
decides where training starts (fresh, or the newest complete checkpoint), checks that a resumed
run is the same run, loads the models, keeps the counters and the KL controller, and writes the
metrics and checkpoints. Both functions are looked up in this module at call time, so tests and
the benchmark can wrap them (``trainer.collect_rollout = ...``).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhfspec.common.chat_templates import AUTO
from rlhfspec.common.errors import RunError
from rlhfspec.runtime.policy.distributed import SINGLE, Group
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
    model_sha256,
    read_metrics,
    save_checkpoint,
    set_rng_state,
    write_metrics,
)
from rlhfspec.runtime.policy.ppo.models import PolicyAndValue, same_tokenizer
from rlhfspec.runtime.policy.ppo.rollout import collect_rollout
from rlhfspec.runtime.policy.ppo.settings import (
    METRIC_FIELDS,
    PPOResult,
    PPOSettings,
    RewardFn,
    prompt_indices,
)
from rlhfspec.runtime.policy.ppo.update import ppo_update
from rlhfspec.runtime.policy.ppo_math import AdaptiveKLController, FixedKLController
from rlhfspec.runtime.train.common import quiet_transformers, seed_everything
from rlhfspec.runtime.train.formatting import ChatFormat, PromptInput, chat_format
from rlhfspec.runtime.train.models import (
    corpus_sha256,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
)
from rlhfspec.runtime.train.precision import autocast_dtype

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
    its copy). `prompts` are raw prompts (a text, or chat messages), rendered by `chat` (the
    run's `ChatFormat`; None: the policy tokenizer's own, as ``prompts.chat_template: auto``).
    Writes ``out_dir/metrics.jsonl`` (one row per
    update, `METRIC_FIELDS`) and ``out_dir/checkpoints/update-NNNNNN`` every
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
    threads_before = torch.get_num_threads()
    try:
        return _train_ppo(
            _Inputs(
                Path(policy_dir),
                Path(reference_dir),
                Path(reward_model_dir),
                list(prompts),
                reward_fn,
                trust_remote_code,
                (chat or _model_format(Path(policy_dir), trust_remote_code)).prompt,
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


@dataclasses.dataclass(frozen=True)
class _Inputs:
    """What a run trains from: the three model folders, the prompts and the reward."""

    policy_dir: Path
    reference_dir: Path
    reward_model_dir: Path
    prompts: list[PromptInput]
    reward_fn: RewardFn | None
    trust_remote_code: bool
    render: Callable[[PromptInput], str]

    def sources(self) -> dict[str, Any]:
        """The models by path and weights hash: a resumed run must start from the same ones."""
        fn = self.reward_fn
        return {
            "policy": str(self.policy_dir),
            "policy_sha256": model_sha256(self.policy_dir),
            "reference": str(self.reference_dir),
            "reference_sha256": model_sha256(self.reference_dir),
            "reward_model": str(self.reward_model_dir),
            "reward_model_sha256": model_sha256(self.reward_model_dir),
            "reward_fn": None if fn is None else getattr(fn, "__name__", "custom"),
        }


@dataclasses.dataclass
class _Models:
    tokenizer: Any
    model: nn.Module  # PolicyAndValue, prepared by accelerate (DDP-wrapped with processes)
    unwrapped: PolicyAndValue
    optimizer: Any
    reference: nn.Module
    reward_model: nn.Module | None
    reward_fn: RewardFn | None
    scaler: Any  # torch.amp.GradScaler for fp16 autocast on CUDA, else None


@dataclasses.dataclass
class _State:
    """The counters a checkpoint records and a resume restores."""

    controller: KLController
    update: int = 0
    episodes: int = 0
    optimizer_steps: int = 0
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _train_ppo(
    inputs: _Inputs,
    settings: PPOSettings,
    out_dir: Path,
    *,
    resume: bool,
    log: Callable[[str], None],
    metadata: dict[str, Any],
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> PPOResult:
    from accelerate import Accelerator

    quiet_transformers()
    seed_everything(settings.seed)
    torch.set_num_threads(settings.threads)
    cpu = settings.cpu if settings.cpu is not None else not torch.cuda.is_available()
    # with several processes this joins their process group (gloo on CPU, NCCL on CUDA)
    # mixed precision is our own autocast (rollout and update), not accelerate's: its state is
    # one per process and refuses a second precision (SFT, the reward model or a test before)
    accelerator = Accelerator(cpu=cpu)
    # accelerate may pick its own CPU thread count for several processes; ours decides results
    torch.set_num_threads(settings.threads)
    group = Group.current() if accelerator.num_processes > 1 else SINGLE
    settings.per_process_batch(group.world)  # refuses a batch that does not split evenly
    if not group.is_main:
        log = _silent  # one process speaks for the run

    start = _starting_point(out_dir, resume, group)
    sources = inputs.sources()
    prompts_sha = corpus_sha256(inputs.render(p) for p in inputs.prompts)  # as the model sees them
    group.agree(
        "the PPO run (settings, prompts, models or starting checkpoint)",
        [settings.comparable(), prompts_sha, sources, None if start is None else start.name],
    )
    start_info = None
    if start is not None:
        start_info = _check_resume(start, settings, prompts_sha, sources, group.world, log)
    models = _load_models(inputs, start, settings, accelerator)
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
        return _checkpoint_info(state, settings, inputs, prompts_sha, sources, metadata, group)

    final = start if start is not None and state.update == settings.num_updates else None
    while state.update < settings.num_updates:
        row = _one_update(state, inputs, settings, models, accelerator, group)
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
            final = _save(out_dir, state.update, models, info, group, log)
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
    )


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
    processes: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Refuse a checkpoint of another run (settings, prompts, models); warn where the numbers
    will differ without being wrong (thread or process count). Returns its checkpoint.json."""
    info: dict[str, Any] = json.loads((start / CHECKPOINT_META).read_text(encoding="utf-8"))
    saved = {k: v for k, v in info["settings"].items() if k not in ("threads", "cpu")}
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
    return info


def _load_models(
    inputs: _Inputs, start: Path | None, settings: PPOSettings, accelerator: Any
) -> _Models:
    """One tokenizer for all (the reward and value models read the policy's token ids); the
    trained pair on the device before the optimizer exists, so restored state lands there."""
    remote = inputs.trust_remote_code
    tokenizer = load_tokenizer(inputs.policy_dir, trust_remote_code=remote)
    for other, what in (
        (inputs.reference_dir, "reference"),
        (inputs.reward_model_dir, "reward model"),
    ):
        if other != inputs.policy_dir and not same_tokenizer(
            tokenizer, load_tokenizer(other, trust_remote_code=remote)
        ):
            raise RunError(
                f"the {what} in {other} uses a different tokenizer from the policy in "
                f"{inputs.policy_dir}; PPO needs them to share one (train them from the same base)"
            )
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise RunError("the policy's tokenizer needs an EOS token distinct from its pad token")
    # the trained pair in float32 whatever the checkpoint's dtype (AdamW on bf16 weights rounds
    # most small updates away); mixed precision is autocast only. The frozen models keep theirs.
    lora = settings.lora
    # with LoRA a resumed run starts from the base weights plus the checkpoint's adapters
    resume_full = start is not None and lora is None
    policy = load_causal_lm(
        start / "policy" if resume_full and start else inputs.policy_dir,
        tokenizer=tokenizer,
        trust_remote_code=remote,
        dtype=torch.float32,
    )
    value_model = load_reward_model(
        start / "value" if resume_full and start else inputs.reward_model_dir,
        tokenizer=tokenizer,
        trust_remote_code=remote,
        dtype=torch.float32,
    )
    reference: nn.Module
    if lora is not None:
        from rlhfspec.runtime.train.scale import AdaptersOff, with_lora

        if inputs.reference_dir != inputs.policy_dir:
            raise RunError(
                "with LoRA the KL reference is the policy's base with its adapters disabled; "
                "the reference must be the policy's starting model"
            )
        adapters = (None, None) if start is None else (start / "policy", start / "value")
        policy = with_lora(policy, lora, "CAUSAL_LM", adapters[0] and adapters[0] / "adapter")
        value_model = with_lora(
            value_model, lora, "SEQ_CLS", adapters[1] and adapters[1] / "adapter"
        )
        reference = AdaptersOff(policy)
    else:
        reference = load_causal_lm(
            inputs.reference_dir, tokenizer=tokenizer, trust_remote_code=remote
        )
    reward_model = None
    if inputs.reward_fn is None:
        reward_model = load_reward_model(
            inputs.reward_model_dir, tokenizer=tokenizer, trust_remote_code=remote
        )
    device = accelerator.device
    for frozen in (reference, reward_model):
        if frozen is not None:
            frozen.requires_grad_(False)
            frozen.eval()
            frozen.to(device)
    if settings.gradient_checkpointing:
        from rlhfspec.runtime.train.scale import enable_checkpointing

        enable_checkpointing(policy)
        enable_checkpointing(value_model)
    # dropout off, also while training (see the package docstring)
    policy.eval()  # type: ignore[no-untyped-call]
    value_model.eval()  # type: ignore[no-untyped-call]
    pair = PolicyAndValue(policy, value_model).to(device)
    optimizer = torch.optim.AdamW(
        [p for p in pair.parameters() if p.requires_grad],
        lr=settings.learning_rate,
        weight_decay=0.0,
    )
    if start is not None:
        optimizer.load_state_dict(torch.load(start / "optimizer.pt", weights_only=True))
    model, optimizer = accelerator.prepare(pair, optimizer)
    model.eval()
    unwrapped = accelerator.unwrap_model(model)
    scaler = None
    if autocast_dtype(settings.mixed_precision, device) == torch.float16:
        scaler = torch.amp.GradScaler(device.type)  # fp16 gradients underflow without it
    return _Models(
        tokenizer, model, unwrapped, optimizer, reference, reward_model, inputs.reward_fn, scaler
    )


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
    inputs: _Inputs,
    settings: PPOSettings,
    models: _Models,
    accelerator: Any,
    group: Group,
) -> dict[str, Any]:
    """Roll out this process's share of the next global batch, optimise, log; returns the row."""
    began = time.perf_counter()
    state.update += 1
    local_batch = settings.per_process_batch(group.world)
    prompts = inputs.prompts
    indices = prompt_indices(
        len(prompts), settings.seed, state.episodes, settings.rollout_batch_size
    )
    # this process's contiguous share of the global batch (all of it with one process)
    shard = indices[group.rank * local_batch : (group.rank + 1) * local_batch]
    rollout = collect_rollout(
        policy=models.unwrapped.policy,
        value_model=models.unwrapped.value_model,
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
        render=inputs.render,
    )
    train_stats, steps = ppo_update(
        model=models.model,
        optimizer=models.optimizer,
        accelerator=accelerator,
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
    inputs: _Inputs,
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
    models: _Models,
    info: Callable[[], dict[str, Any]],
    group: Group,
    log: Callable[[str], None],
) -> Path:
    """Main process: write the checkpoint; every process: wait until it is complete, so that
    no process returns (or resumes) a path that is still being written."""
    path = out_dir / CHECKPOINTS / checkpoint_name(update)
    if group.is_main:
        path = save_checkpoint(
            out_dir,
            update,
            policy=models.unwrapped.policy,
            value_model=models.unwrapped.value_model,
            tokenizer=models.tokenizer,
            optimizer=models.optimizer,
            info=info(),
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
