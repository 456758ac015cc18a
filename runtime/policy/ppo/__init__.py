"""PPO for causal language models, on accelerate: rollouts, KL-shaped rewards, GAE, clipped losses.

TRL removed ``PPOTrainer``, and the version it had carried defects that bias training without
any error (several minibatches took half the optimizer steps and halved the averaged metrics;
gradient accumulation was switched off on the last batch of every pass; no adaptive KL; no
gradient clipping; numpy unseeded; with pad == eos the reward was read one token early and
EOS left the loss). This module is a small, explicit replacement; the arithmetic is in
`rlhfspec.runtime.policy.ppo_math`, tested against hand-computed values.

One PPO update (``rollout_batch_size`` episodes):

1. *Rollout.* Prompts (raw texts, formatted with `format_prompt`) are left-padded and sampled
   from ``softmax(logits / temperature)`` exactly, by our own Gumbel-max loop
   (`rlhfspec.runtime.train.sampling`): the model's generation_config.json never leaks in
   (hub checkpoints ship repetition penalties, min_p...). Noise comes from a generator seeded
   from (seed, update, rank). Responses are cut after their first EOS; the EOS stays in the mask.
2. *Scoring.* The reward model reads the truncated sequence exactly as generated (token ids,
   not re-tokenised text) at its last real token: the EOS when there is one (that is where
   `score_texts` and the reward-model trainer read it: they append EOS), else the last
   generated token, in which case ``missing_eos_penalty`` is subtracted. Evaluation scores its
   samples with the same function (`rollout.episode_scores`).
3. *Rewards.* Per-token ``-kl_coef * k1`` against the frozen reference (k1 whatever
   ``kl.estimator`` says: only k1 in the reward has the gradient of KL(pi || ref); the
   estimator is what is logged, controlled, evaluated and guarded; see `rollout`), plus the
   score at the last real token; optionally whitened (scale only); GAE with the value model's
   estimates; advantages optionally whitened over the whole rollout batch.
4. *Optimisation.* ``ppo_epochs`` passes over the batch in a seeded order; each pass is split
   into ``mini_batches`` minibatches, each minibatch into ``gradient_accumulation_steps``
   micro-batches. The losses are per-token means over the whole *global* minibatch (every
   micro-batch's token sum divided by the minibatch's token count over all processes), so a
   step is the same whatever the split into micro-batches and processes. Exactly one
   optimizer step per minibatch, always, so an update takes ``ppo_epochs * mini_batches``
   steps; gradients are clipped to ``max_grad_norm`` (policy and value together, one AdamW).
   Log-probabilities in training use the same ``logits / temperature`` as the rollout. The
   policy and value model are float32; ``mixed_precision`` is autocast only.
5. *KL coefficient.* Fixed, or the Ziegler et al. proportional controller, updated after each
   rollout with the mean per-response KL and ``n_steps = rollout_batch_size``.

The value model starts as a copy of the reward model (its score head read at every position)
and is trained; the reference and the reward model are frozen. Dropout is off in every model
(all are kept in eval mode): the PPO ratio must be exactly 1 on the first minibatch, and
dropout noise would make the old and new log-probabilities disagree.

Reproducibility: python, numpy and torch are seeded, the thread count is fixed, and every
random choice (prompt order, sampling, minibatch order) is derived from (seed, pass or update),
so a CPU run reproduces bit for bit, and a run resumed from a checkpoint ends with exactly
the weights of one that never stopped. Checkpoints (``checkpoints/update-NNNNNN``) are written
to a temporary folder and renamed, so a kill mid-save leaves no half checkpoint behind.

Several processes (``torchrun --nproc_per_node N`` or ``accelerate launch --num_processes N``):
data parallel, with `rlhfspec.runtime.policy.distributed` doing the bookkeeping. ``rollout_batch_size``
stays the *global* batch: each process takes a contiguous 1/N of the update's prompts (the
prompt stream and its cursor are global, so a resume is unaffected), samples them under its own
seed, and trains on its own episodes; DDP averages the gradients, so there are still exactly
``ppo_epochs * mini_batches`` optimizer steps per update, each over ``rollout_batch_size /
mini_batches`` episodes in all. Reward and advantage whitening use the mean and variance of the
whole global batch, the logged metrics are global means, and the KL controller sees the global
KL, so the numbers mean the same whatever N is. The batch must split evenly:
``rollout_batch_size`` divisible by ``N * mini_batches * gradient_accumulation_steps``. Every
process starts from the same weights (same seed, same files; DDP also broadcasts rank 0's), and
only the main process writes metrics, checkpoints and log lines. With one process nothing of
this runs and results are bit for bit those of the single-process trainer. With
``strategy="fsdp"`` the policy and value model are sharded with FSDP2 instead of replicated
(`sharding`); the arithmetic is the same. CUDA (NCCL) goes through the same code as CPU (gloo)
but is only tested on CPU here.

Modules: `settings` (settings, result, seeded streams), `models` (logits, values, scores),
`rollout` (one rollout batch), `update` (the minibatch passes), `checkpoint` (checkpoints and
metrics file), `loading` (the models a run loads and prepares), `sharding` (FSDP2), `trainer`
(`train_ppo`).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rlhfspec.runtime.policy.ppo.checkpoint import (  # noqa: E402
    CHECKPOINT_META,
    CHECKPOINTS,
    METRICS_FILE,
    checkpoint_name,
    latest_checkpoint,
)
from rlhfspec.runtime.policy.ppo.models import (  # noqa: E402
    PolicyAndValue,
    policy_logits,
    sequence_scores,
    token_values,
)
from rlhfspec.runtime.policy.ppo.rollout import Rollout, collect_rollout  # noqa: E402
from rlhfspec.runtime.policy.ppo.settings import (  # noqa: E402
    METRIC_FIELDS,
    PPOResult,
    PPOSettings,
    RewardFn,
    derived_seed,
    minibatch_order,
    prompt_indices,
)
from rlhfspec.runtime.policy.ppo.trainer import train_ppo  # noqa: E402
from rlhfspec.runtime.policy.ppo.update import ppo_update  # noqa: E402

__all__ = [
    "CHECKPOINTS",
    "CHECKPOINT_META",
    "METRICS_FILE",
    "METRIC_FIELDS",
    "PPOResult",
    "PPOSettings",
    "PolicyAndValue",
    "RewardFn",
    "Rollout",
    "checkpoint_name",
    "collect_rollout",
    "derived_seed",
    "latest_checkpoint",
    "minibatch_order",
    "policy_logits",
    "ppo_update",
    "prompt_indices",
    "sequence_scores",
    "token_values",
    "train_ppo",
]
