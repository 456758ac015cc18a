"""The optimisation half of a PPO update: minibatch passes over one rollout batch."""

from __future__ import annotations

import contextlib
from typing import Any

from torch import nn

from rlhfspec.runtime.policy.distributed import SINGLE, Group
from rlhfspec.runtime.policy.ppo.rollout import Rollout
from rlhfspec.runtime.policy.ppo.settings import PPOSettings, minibatch_order
from rlhfspec.runtime.policy.ppo_math import policy_loss, response_logprobs, value_loss


def ppo_update(
    *,
    model: nn.Module,
    optimizer: Any,
    accelerator: Any,
    rollout: Rollout,
    settings: PPOSettings,
    update: int,
    group: Group = SINGLE,
) -> tuple[dict[str, float], int]:
    """``ppo_epochs`` passes of minibatch PPO over one rollout; returns (mean stats, steps).

    Each minibatch is ``gradient_accumulation_steps`` micro-batches of equal size; each
    micro-batch's loss (a token mean) is divided by the number of micro-batches, gradients are
    clipped, and the optimizer steps once. The statistics are plain means over every
    micro-batch of every minibatch and epoch (all are the same size), so nothing is
    overwritten or double-counted whatever the split.

    With several processes (`group`) the rollout is this process's shard: sizes are the
    shard's (``rollout_batch_size / N`` episodes, split the same way), the order is seeded per
    rank, gradients are synchronised only on the last micro-batch of each minibatch (DDP's
    ``no_sync``; they are averaged over processes), and the statistics returned are this
    process's (the caller averages them over processes).
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, float] = {}
    micro_count = 0
    grad_norms: list[float] = []
    steps = 0
    accumulation = settings.gradient_accumulation_steps
    batch = rollout.input_ids.shape[0]  # rollout_batch_size with one process
    minibatch_size = batch // settings.mini_batches
    micro_batch_size = minibatch_size // accumulation
    for epoch in range(settings.ppo_epochs):
        order = minibatch_order(batch, settings.seed, update, epoch, group)
        for start in range(0, batch, minibatch_size):
            minibatch = order[start : start + minibatch_size]
            for micro_start in range(0, minibatch_size, micro_batch_size):
                rows = minibatch[micro_start : micro_start + micro_batch_size]
                rows = rows.to(rollout.input_ids.device)
                mask = rollout.response_mask[rows]
                last_micro = micro_start + micro_batch_size >= minibatch_size
                sync = (
                    contextlib.nullcontext()
                    if group.single or last_micro
                    else accelerator.no_sync(model)
                )
                with sync:  # forward and backward both: DDP decides at forward time
                    logits, values = model(
                        rollout.input_ids[rows],
                        rollout.attention_mask[rows],
                        rollout.context_length,
                    )
                    response_ids = rollout.input_ids[rows][:, rollout.context_length :]
                    logp, _ = response_logprobs(logits, response_ids, settings.temperature)
                    pg_loss, pg_clipfrac, approx_kl = policy_loss(
                        logp,
                        rollout.logp[rows],
                        rollout.advantages[rows],
                        mask,
                        settings.cliprange,
                    )
                    vf_loss, vf_clipfrac = value_loss(
                        values,
                        rollout.values[rows],
                        rollout.returns[rows],
                        mask,
                        settings.cliprange_value,
                    )
                    loss = pg_loss + settings.vf_coef * vf_loss
                    accelerator.backward(loss / accumulation)
                for key, value in (
                    ("policy_loss", pg_loss),
                    ("value_loss", vf_loss),
                    ("policy_clipfrac", pg_clipfrac),
                    ("value_clipfrac", vf_clipfrac),
                    ("approx_kl", approx_kl),
                ):
                    sums[key] = sums.get(key, 0.0) + float(value.detach())
                micro_count += 1
            norm = accelerator.clip_grad_norm_(trainable, settings.max_grad_norm)
            grad_norms.append(float(norm))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    stats = {key: total / micro_count for key, total in sums.items()}
    stats["grad_norm"] = sum(grad_norms) / len(grad_norms)
    return stats, steps
