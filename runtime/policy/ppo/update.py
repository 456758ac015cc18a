"""The optimisation half of a PPO update: minibatch passes over one rollout batch."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from rlhfspec.runtime.policy.distributed import SINGLE, Group
from rlhfspec.runtime.policy.ppo.rollout import Rollout
from rlhfspec.runtime.policy.ppo.settings import PPOSettings, minibatch_order
from rlhfspec.runtime.policy.ppo_math import policy_loss, response_logprobs, value_loss
from rlhfspec.runtime.train.precision import autocast


def ppo_update(
    *,
    model: nn.Module,
    optimizer: Any,
    accelerator: Any,
    rollout: Rollout,
    settings: PPOSettings,
    update: int,
    group: Group = SINGLE,
    scaler: Any = None,
) -> tuple[dict[str, float], int]:
    """``ppo_epochs`` passes of minibatch PPO over one rollout; returns (mean stats, steps).

    Each minibatch is ``gradient_accumulation_steps`` micro-batches of equal size. The loss of
    a minibatch is the per-token mean over all of its real tokens, on every process together:
    each micro-batch contributes its token *sum* divided by the minibatch's global token
    count, so the gradient does not depend on how the minibatch is split into micro-batches or
    processes (a mean of micro-batch means would weigh a short micro-batch's tokens more, and
    make the step size depend on the split). Gradients are clipped and the optimizer steps
    once per minibatch.

    With several processes (`group`) the rollout is this process's shard: sizes are the
    shard's (``rollout_batch_size / N`` episodes, split the same way), the order is seeded per
    rank, and gradients are synchronised only on the last micro-batch of each minibatch (DDP's
    ``no_sync``). DDP *averages* gradients over processes, so each process's loss is
    multiplied by N to make the synchronised gradient the sum of the processes' shares. The
    statistics returned are this process's shares times N, so that their mean over processes
    (the caller's `Group.mean_of`) is the global minibatch mean, averaged over minibatches.

    Forward passes run under autocast in ``settings.mixed_precision``; `scaler` (a
    ``torch.amp.GradScaler``, for fp16) scales the loss and unscales before clipping.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    device = rollout.input_ids.device
    sums: dict[str, float] = {}
    grad_norms: list[float] = []
    batch = rollout.input_ids.shape[0]  # rollout_batch_size with one process
    minibatch_size = batch // settings.mini_batches
    micro_batch_size = minibatch_size // settings.gradient_accumulation_steps
    for epoch in range(settings.ppo_epochs):
        order = minibatch_order(batch, settings.seed, update, epoch, group)
        for start in range(0, batch, minibatch_size):
            minibatch = order[start : start + minibatch_size].to(rollout.input_ids.device)
            # the token count of the global minibatch: the denominator of every share
            tokens = group.sum(rollout.response_mask[minibatch].sum().double()).float()
            micro_starts = range(0, minibatch_size, micro_batch_size)
            for micro_start in micro_starts:
                rows = minibatch[micro_start : micro_start + micro_batch_size]
                last_micro = micro_start == micro_starts[-1]
                sync = (
                    contextlib.nullcontext()
                    if group.single or last_micro
                    else accelerator.no_sync(model)
                )
                with sync:  # forward and backward both: DDP decides at forward time
                    with autocast(settings.mixed_precision, device):
                        shares = _micro_batch_losses(model, rollout, rows, tokens, settings)
                    loss = shares["policy_loss"] + settings.vf_coef * shares["value_loss"]
                    loss = loss * group.world
                    accelerator.backward(loss if scaler is None else scaler.scale(loss))
                for key, value in shares.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
            if scaler is not None:
                scaler.unscale_(optimizer)
            norm = accelerator.clip_grad_norm_(trainable, settings.max_grad_norm)
            grad_norms.append(float(norm))
            if scaler is None:
                optimizer.step()
            else:
                scaler.step(optimizer)
                scaler.update()
            optimizer.zero_grad(set_to_none=True)
    steps = settings.ppo_epochs * settings.mini_batches
    stats = {key: total * group.world / steps for key, total in sums.items()}
    stats["grad_norm"] = sum(grad_norms) / len(grad_norms)
    return stats, steps


def _micro_batch_losses(
    model: nn.Module,
    rollout: Rollout,
    rows: torch.Tensor,
    tokens: torch.Tensor,
    settings: PPOSettings,
) -> dict[str, torch.Tensor]:
    """This micro-batch's shares of the minibatch's token-mean losses and diagnostics."""
    mask = rollout.response_mask[rows]
    logits, values = model(
        rollout.input_ids[rows], rollout.attention_mask[rows], rollout.context_length
    )
    response_ids = rollout.input_ids[rows][:, rollout.context_length :]
    logp, _ = response_logprobs(logits, response_ids, settings.temperature)
    pg_loss, pg_clipfrac, approx_kl = policy_loss(
        logp, rollout.logp[rows], rollout.advantages[rows], mask, settings.cliprange, tokens
    )
    vf_loss, vf_clipfrac = value_loss(
        values.float(),
        rollout.values[rows],
        rollout.returns[rows],
        mask,
        settings.cliprange_value,
        tokens,
    )
    return {
        "policy_loss": pg_loss,
        "value_loss": vf_loss,
        "policy_clipfrac": pg_clipfrac,
        "value_clipfrac": vf_clipfrac,
        "approx_kl": approx_kl,
    }
