"""How each training stage runs: its resolved compute settings and the commands that start it.

The spec's `compute` section holds the defaults for every training stage and `compute.stages`
the exceptions; `stage_compute` merges the two into the one dictionary a stage entry of the
plan carries, so the runtime never merges anything. `launch_command` turns it into a
``torchrun`` command line (one node, or many with ``$NODE_RANK`` read from the environment of
each machine). torchrun rather than ``accelerate launch``: it ships with torch, behaves the
same on CPU (gloo) and CUDA (NCCL), and needs no accelerate config file; strategy, precision and
sharding travel in the plan, which every process reads.

Commands are run from the plan's folder, in plan order: the first stage starts a run
directory and every later command continues the latest one (``--resume``).
"""

from __future__ import annotations

import copy
import shlex
from typing import Any

TRAINING_STAGES = ("sft", "reward_model", "policy")

#: Keys of `compute` that a stage inherits (and may override under compute.stages.<stage>).
STAGE_KEYS = (
    "device",
    "num_processes",
    "strategy",
    "fsdp",
    "mixed_precision",
    "gradient_checkpointing",
    "lora",
)

#: The module every multi-process launch runs (rank 0 runs the stage, the others train).
LAUNCH_MODULE = "rlhfspec.cli.launch"


def stage_compute(spec: dict[str, Any], stage: str) -> dict[str, Any]:
    """The compute settings `stage` runs with: the section's, then the stage's overrides
    (the `lora` and `fsdp` blocks merge key by key), plus the node layout."""
    section = spec["compute"]
    out = {key: copy.deepcopy(section[key]) for key in STAGE_KEYS}
    for key, value in section["stages"].get(stage, {}).items():
        if isinstance(value, dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    out["nodes"] = dict(section["nodes"])
    out["world_size"] = out["num_processes"] * out["nodes"]["count"]
    return out


def run_command(stage: str, first: bool) -> str:
    """The single-process command of a stage (the first stage opens a run directory)."""
    argv = ["rlhfspec", "run", "plan.json", "--stage", stage]
    return shlex.join(argv if first else [*argv, "--resume"])


def launch_command(stage: str, compute: dict[str, Any]) -> str:
    """The torchrun command of a training stage, for its processes per node and nodes."""
    module = ["-m", LAUNCH_MODULE, "plan.json", "--stage", stage, "--resume"]
    per_node = ["--nproc_per_node", str(compute["num_processes"])]
    nodes = compute["nodes"]
    if nodes["count"] == 1:
        # --standalone: a local rendezvous on a free port, so two runs on one machine never clash
        return shlex.join(["torchrun", "--standalone", *per_node, *module])
    head = shlex.join(["torchrun", "--nnodes", str(nodes["count"]), *per_node])
    rendezvous = shlex.join(
        ["--master_addr", nodes["main_address"], "--master_port", str(nodes["main_port"])]
    )
    # each machine sets NODE_RANK (0 on the main one); the shell refuses to start without it
    rank = '--node_rank "${NODE_RANK:?set NODE_RANK to this machine\'s rank, 0 on the main one}"'
    return f"{head} {rank} {rendezvous} {shlex.join(module)}"
