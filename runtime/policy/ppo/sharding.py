"""FSDP2 for PPO: the policy and the value model sharded with torch's ``fully_shard``.

With ``compute.strategy: fsdp`` and more than one process, each trained model's transformer
blocks are wrapped one by one, then the model around them, so every process holds 1/N of
every parameter, gradient and AdamW moment, and a block is gathered only while it computes
(full sharding, FSDP2's default ``reshard_after_forward=True``). The frozen models (the
reference and the reward model) stay replicated: they have no gradients or optimizer state,
and the compile-time memory plan (`rlhfspec.compiler.memory`) counts them whole on every device.
With LoRA the reference is the policy itself with its adapters off, so it is sharded with it.

`Sharding` stands in for accelerate's ``Accelerator`` in `ppo_update` (``no_sync``,
``backward``, ``clip_grad_norm_``): FSDP reduce-scatters gradients as their *mean* over the
processes, exactly as DDP all-reduces their mean, so the update's loss scaling (each process's
share times N, see `ppo_update`) is the same for both strategies.

The value model is read as its backbone and its score head separately (`models.token_values`),
so those two are the value model's FSDP roots; the policy is called whole and is its own root.

Rollouts call the policy once per generated token: `Sharding.gathered` keeps the gathered
blocks for the whole rollout (one all-gather per block instead of one per token), at the cost
of one full copy of the policy and value model per process while sampling, as verl and
OpenRLHF do for their rollout engines. With CPU offload they are gathered per forward instead
(device memory is what offload saves). Checkpoints gather full state dicts on the main process
(`torch.distributed.checkpoint.state_dict`, ``full_state_dict`` and ``cpu_offload``), written in
the same layout as a DDP run's; a resume loads the full weights in every process and shards
them again.

``compute.fsdp.cpu_offload`` (``CPUOffloadPolicy``) moves the shards to host memory between
uses; it needs an accelerator (FSDP2 refuses it on a CPU device, where everything already
lives in host memory), so on the CPU it is not applied and the run's record says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.policy.ppo.models import PolicyAndValue, backbone_and_head


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's repeated decoder layers: the modules transformers will not split across
    devices (``_no_split_modules``), or its ``GradientCheckpointingLayer``s."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    blocks = [
        m
        for m in model.modules()
        if type(m).__name__ in names or isinstance(m, GradientCheckpointingLayer)
    ]
    if not blocks:
        raise RunError(
            f"{type(model).__name__} has no transformer blocks FSDP can wrap one by one; "
            "use compute.strategy: ddp for this model"
        )
    return blocks


@dataclass
class Sharding:
    """The sharded pair's FSDP modules, and the steps `ppo_update` takes through them."""

    device: torch.device
    offload: bool
    blocks: list[Any] = field(default_factory=list)
    roots: list[Any] = field(default_factory=list)

    @property
    def modules(self) -> list[Any]:
        return [*self.blocks, *self.roots]

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        """Accumulate this micro-batch's gradients unreduced (DDP's ``no_sync``)."""
        for module in self.modules:
            module.set_requires_gradient_sync(False, recurse=False)
        try:
            yield
        finally:
            for module in self.modules:
                module.set_requires_gradient_sync(True, recurse=False)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()  # type: ignore[no-untyped-call]

    def clip_grad_norm_(self, parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
        """Clip by the norm of the *whole* gradient (every process's shards together)."""
        from torch.distributed.tensor import DTensor

        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """Keep each block gathered after its first forward until the rollout ends."""
        for module in self.blocks:
            module.set_reshard_after_forward(False, recurse=False)
        try:
            yield
        finally:
            for module in self.modules:
                module.reshard()
            for module in self.blocks:
                module.set_reshard_after_forward(True, recurse=False)


def shard_pair(
    pair: PolicyAndValue, world: int, device: torch.device, cpu_offload: bool
) -> Sharding:
    """Shard the policy and the value model over `world` processes (every process calls this
    with the same full weights, and keeps its shards)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard
    from torch.distributed.tensor import DTensor

    offload = cpu_offload and device.type != "cpu"
    sharding = Sharding(device=device, offload=offload)
    options: dict[str, Any] = {
        "mesh": init_device_mesh(device.type, (world,)),
        "offload_policy": CPUOffloadPolicy() if offload else OffloadPolicy(),
    }
    for model in (pair.policy, pair.value_model):
        for block in transformer_blocks(model):
            sharding.blocks.append(fully_shard(block, **options))
    backbone, head = backbone_and_head(pair.value_model)
    for root in (pair.policy, backbone, head):
        sharding.roots.append(fully_shard(root, **options))
    left = [name for name, p in pair.named_parameters() if not isinstance(p, DTensor)]
    if left:  # their gradients would never be reduced across processes
        raise RunError(f"FSDP left parameters unsharded: {', '.join(left[:5])}")
    return sharding


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's full state dict on the main process (empty elsewhere); every process
    must call this, in the same order."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state: dict[str, torch.Tensor] = dict(get_model_state_dict(module, options=options))  # type: ignore[arg-type]
    # tied parameters (embeddings and LM head) come back as two copies: share them again, so
    # that save_pretrained writes the tied weight once, as it does for the unsharded model
    first: dict[int, str] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        kept = first.setdefault(id(param), name)
        if kept != name and kept in state and name in state:
            state[name] = state[kept]
    return state


def write_full(
    model: nn.Module, state: dict[str, torch.Tensor], folder: Path, base: Callable[[], Any]
) -> None:
    """The main process's half of saving a sharded model: `state` (`full_model_state`) as a
    Hugging Face folder, laid out as `checkpoint.save_models` lays out an unsharded one. With
    LoRA the adapters go under adapter/ and the merged weights beside them: merged by PEFT on
    a fresh copy of the base (`base()`), since the sharded model cannot merge in place."""
    save = getattr(model, "save_pretrained")  # noqa: B009 (transformers and PEFT alike)
    if not hasattr(model, "merge_and_unload"):
        save(folder, state_dict=state, safe_serialization=True)
        return
    from peft import PeftModel

    save(folder / "adapter", state_dict=state, safe_serialization=True)
    merged = PeftModel.from_pretrained(base(), str(folder / "adapter")).merge_and_unload()
    merged.save_pretrained(folder, safe_serialization=True)


def _trainable_names(pair: nn.Module) -> list[str]:
    """The optimizer's parameters by name, in its order (it was built from this list)."""
    return [name for name, p in pair.named_parameters() if p.requires_grad]


def full_optimizer_state(pair: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state on the main process, keyed by parameter index exactly as
    ``optimizer.state_dict()`` of an unsharded run (so a checkpoint does not depend on the
    strategy); empty on the others. Every process must call this."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    named: dict[str, Any] = dict(get_optimizer_state_dict(pair, optimizer, options=options))
    if not named.get("state"):
        return {}
    index = {name: i for i, name in enumerate(_trainable_names(pair))}
    return {
        "state": {index[name]: value for name, value in named["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]}
            for group in named["param_groups"]
        ],
    }


def load_optimizer_state(
    pair: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a full, index-keyed optimizer state (`full_optimizer_state`'s or an unsharded
    run's) into the sharded optimizer: every process keeps its shards of it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    names = _trainable_names(pair)
    named: dict[str, Any] = {
        "state": {names[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[int(i)] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    options = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(pair, optimizer, named, options=options)
