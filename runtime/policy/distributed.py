"""Several training processes (torchrun / ``accelerate launch``): who writes, and global statistics.

Data-parallel training runs the same code in N processes that each hold a full copy of the
models and work on 1/N of every batch. Three things then need care, and this module is where
they live so that the trainers stay readable:

* *One writer.* The run directory (metrics, checkpoints, logs) has a single owner, the main
  process (global rank 0); the others compute the same numbers and write nothing, and wait at a
  barrier where they would otherwise read what the main process is still writing.
* *Global statistics.* Whitening and the logged metrics must describe the whole rollout batch,
  not one process's shard, or the result would depend on how many processes ran it. The masked
  mean/variance helpers here all-reduce sums and counts, and reproduce `ppo_math`'s formulas
  (token-weighted means, unbiased variance) over the union of the shards.
* *Agreement.* Every collective call must be made by every process, in the same order, or the
  job hangs instead of failing. `agree` compares a fingerprint of what each process is about to
  train and raises the same `RunError` everywhere when they differ.

With a single process (no initialised process group) every helper is the identity or delegates
to `ppo_math`, so single-process results are bit for bit what they were before.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import torch

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.policy.ppo_math import (
    explained_variance,
    masked_mean,
    masked_var,
    masked_whiten,
)


def launched_world_size() -> int:
    """Processes the launcher started (``WORLD_SIZE``, set by torchrun and accelerate launch);
    readable before any process group exists, which is when the launch entry point decides."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's global rank as the launcher set it (``RANK``; 0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def initialized() -> bool:
    return bool(torch.distributed.is_available() and torch.distributed.is_initialized())


@dataclass(frozen=True)
class Group:
    """Where this process stands among the training processes: ``rank`` of ``world``.

    ``Group(0, 1)`` (`SINGLE`) is a plain single-process run: every method is then a no-op, so
    code written against a `Group` behaves exactly as it did before processes existed.
    """

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Group:
        """The initialised process group (after accelerate or the launcher set it up)."""
        if not initialized():
            return SINGLE
        return cls(torch.distributed.get_rank(), torch.distributed.get_world_size())

    @property
    def is_main(self) -> bool:
        """Only the main process writes to the run directory."""
        return self.rank == 0

    @property
    def single(self) -> bool:
        return self.world == 1

    def barrier(self) -> None:
        """Wait for every process (e.g. until the main one has finished writing a checkpoint)."""
        if not self.single:
            torch.distributed.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over processes (a new tensor; the argument is left alone)."""
        if self.single:
            return tensor
        total = tensor.detach().clone()
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        return total

    def mean_of(self, values: dict[str, float]) -> dict[str, float]:
        """Per key, the mean of the processes' values: the global mean when every process
        averaged over the same number of items (equal shards, equal micro-batch counts)."""
        if self.single or not values:
            return dict(values)
        keys = sorted(values)
        device = _collective_device()
        local = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
        total = self.sum(local) / self.world
        return {k: float(v) for k, v in zip(keys, total.tolist(), strict=True)}

    def broadcast(self, value: Any) -> Any:
        """The main process's `value` (a picklable object), on every process."""
        if self.single:
            return value
        box = [value if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, what: str, fingerprint: Any) -> None:
        """Raise the same `RunError` on every process if their `fingerprint`s differ.

        Processes that train on different settings, data or starting checkpoints would not fail
        on their own: DDP would average unrelated gradients, or one process would wait forever
        in a collective the others never reach.
        """
        if self.single:
            return
        digest = hashlib.sha256(
            json.dumps(fingerprint, sort_keys=True, default=str).encode()
        ).hexdigest()
        seen: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(seen, digest)
        if len(set(seen)) > 1:
            ranks = [r for r, d in enumerate(seen) if d != seen[0]]
            raise RunError(
                f"the {self.world} training processes disagree on {what} (ranks "
                f"{', '.join(map(str, ranks))} differ from rank 0); launch them all with the "
                "same plan, run directory and inputs"
            )


SINGLE = Group(0, 1)


def _collective_device() -> torch.device:
    """NCCL only reduces CUDA tensors; gloo (CPU) only CPU ones."""
    if initialized() and torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# Masked statistics over the union of every process's shard


def global_masked_mean(values: torch.Tensor, mask: torch.Tensor, group: Group) -> torch.Tensor:
    """`ppo_math.masked_mean` over every process's tokens: ``sum(x * m) / sum(m)`` globally."""
    if group.single:
        return masked_mean(values, mask)
    mask_f = mask.to(values.dtype)
    totals = group.sum(torch.stack([(values * mask_f).sum(), mask_f.sum()]))
    return totals[0] / totals[1]


def global_masked_var(values: torch.Tensor, mask: torch.Tensor, group: Group) -> torch.Tensor:
    """`ppo_math.masked_var` (unbiased) over every process's tokens, in two passes like it
    (global mean first, then squared deviations from it), so no precision is lost to
    ``E[x^2] - E[x]^2`` cancellation."""
    if group.single:
        return masked_var(values, mask)
    mask_f = mask.to(values.dtype)
    mean = global_masked_mean(values, mask_f, group)
    totals = group.sum(torch.stack([((values - mean).square() * mask_f).sum(), mask_f.sum()]))
    var = totals[0] / totals[1]
    n = totals[1]
    if n > 1:
        var = var * n / (n - 1)
    return var


def global_masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    group: Group,
    *,
    shift_mean: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """`ppo_math.masked_whiten` with the mean and variance of the whole (all-process) batch,
    so that each process's advantages are scaled exactly as in one big batch."""
    if group.single:
        return masked_whiten(values, mask, shift_mean=shift_mean, eps=eps)
    mask_f = mask.to(values.dtype)
    mean = global_masked_mean(values, mask_f, group)
    var = global_masked_var(values, mask_f, group)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask_f


def global_explained_variance(
    values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, group: Group
) -> float:
    """`ppo_math.explained_variance` over every process's tokens."""
    if group.single:
        return explained_variance(values, returns, mask)
    var_returns = global_masked_var(returns, mask, group)
    if float(var_returns) == 0.0:
        return float("nan")
    return float(1.0 - global_masked_var(returns - values, mask, group) / var_returns)
