"""GPU check: real-size training on one GPU, with the compile-time memory estimate beside the
measured peak. One command; fits in 10 minutes on one H200.

Run (from the repository root, on the GPU machine):
    bash benchmarks/gpu_check.sh                  # installs trl/datasets from benchmarks/wheels
    python benchmarks/gpu_check.py [--dry-run] [--updates 3] [--rollout 64] [--new-tokens 128]

What it does. A Qwen2-style model of Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads,
2 KV heads, intermediate 4864, vocabulary 151936; 494M parameters) is initialised at random
(no hub access needed) and saved with safetensors beside a tokenizer built by builtin:tiny's
recipe (its ids fit the vocabulary), together with a reward model of the same shape. Then:

* PPO (`train_ppo`), ``--updates`` updates of ``--rollout`` episodes, bf16 autocast (trained
  weights float32), full fine-tuning, then the same with LoRA (r 16) on policy and value;
* PPO under FSDP2 (``strategy: fsdp``, `rlhfspec.runtime.policy.ppo.sharding`), full
  fine-tuning, in ``min(2, GPUs)`` processes under torchrun (NCCL), then the same with
  ``fsdp.cpu_offload`` (CPUOffloadPolicy, which FSDP2 allows only on accelerators). On a
  machine with one GPU that is one process: FSDP's code path on CUDA (sharded parameters, NCCL
  collectives, bf16 autocast, the full-state checkpoint, CPU offload) with nothing to shard
  across, and the memory estimate of one process;
* SFT, reward model and DPO: a few optimizer steps each through TRL's trainers as the stages
  configure them (`trainer_args`' scale arguments), then the same under ``torchrun`` with
  accelerate's FSDP2 plugin as ``strategy: fsdp`` configures it (`scale.fsdp_args`); on CUDA
  the check fails unless the trainer really sharded (FSDP2 modules counted), since on the CPU
  accelerate drops the plugin and CI can only run these rows unsharded (docs/scale.md);

and prints, per run, episodes/s and generated tokens/s (PPO) or steps/s, the peak GPU memory
(``torch.cuda.max_memory_allocated``) and the compile-time estimate for the same stage
(`rlhfspec.compiler.memory.stage_memory`, from the saved config.json alone). The TRL 1.12
PPOTrainer side-by-side runs through benchmarks/bench_ppo.py (gpu_check.sh starts it with the
same episodes, rollout batch and response length, on builtin:tiny).

``--dry-run`` builds the same configs at a tiny size (hidden 64, 2 layers, vocabulary 512)
and runs every step on the CPU in about a minute (FSDP in 2 processes over gloo, without CPU
offload): what CI checks (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QWEN2_05B = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}
PROMPTS = [
    "My parcel is late. What should I do?",
    "How do I change the email address on my account?",
    "Can I return a gift without the receipt?",
    "The app crashes when I open settings.",
    "Why was I charged twice this month?",
    "How do I reset my password?",
    "Is there a discount for students?",
    "Where can I download my invoices?",
]
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["all-linear"]}


def build_models(work: Path, shape: dict[str, Any], device: str) -> tuple[Path, Path]:
    """A random Qwen2 policy and reward model of `shape`, saved like hub checkpoints."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

    from rlhfspec.runtime.train.models import build_tiny, load_tokenizer

    tok_dir = build_tiny(PROMPTS * 8, seed=0, out_dir=work / "tok", vocab_size=400)
    tokenizer = load_tokenizer(tok_dir)
    config = Qwen2Config(
        **shape,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="bfloat16",
    )
    out = []
    for name, cls in (("policy", Qwen2ForCausalLM), ("reward", Qwen2ForSequenceClassification)):
        torch.manual_seed(0)
        kwargs = {"num_labels": 1} if name == "reward" else {}
        with torch.device(device):
            model = cls(Qwen2Config(**config.to_dict(), **kwargs)).to(torch.bfloat16)
        model.save_pretrained(work / name, safe_serialization=True)
        tokenizer.save_pretrained(work / name)
        del model
        out.append(work / name)
    return out[0], out[1]


def estimate(stage: str, work: Path, compute: dict[str, Any], plan: dict[str, Any]) -> float:
    """The compiler's memory estimate (GiB per device) for `stage` with these models."""
    from rlhfspec.compiler.memory import GIB, stage_memory

    train = {
        "batch_size": plan["batch"],
        "gradient_accumulation_steps": 1,
        "max_length": plan["length"],
    }
    spec = {
        "sft": {"base_model": "policy", "train": train},
        "reward_model": {"base_model": "reward", "start_from_sft": False, "train": train},
        "policy": {
            "base_model": "policy",
            "start_from_sft": False,
            "method": plan.get("method", "ppo"),
            "ppo": {
                "rollout_batch_size": plan.get("rollout", 1),
                "mini_batches": plan.get("mini_batches", 1),
                "gradient_accumulation_steps": 1,
            },
            "dpo": {"train": train},
        },
    }
    spec["reward_model"]["train"] = {**train, "max_length": plan["length"]}
    full = {
        "device": compute["device"],
        "mixed_precision": compute["mixed_precision"],
        "gradient_checkpointing": False,
        "strategy": "fsdp" if compute.get("fsdp") else "ddp",
        "fsdp": {"cpu_offload": bool((compute.get("fsdp") or {}).get("cpu_offload"))},
        "world_size": (compute.get("fsdp") or {}).get("world", 1),
        "lora": {
            "enabled": compute.get("lora") is not None,
            "quantize": "none",
            **(compute.get("lora") or LORA),
        },
    }
    memory = stage_memory(spec, stage, full, work)
    return float(memory["estimate"]["total"]) / GIB if memory["estimate"] else float("nan")


def peak_reset(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 1024**3
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # CPU: process RSS


def run_ppo(
    work: Path,
    policy: Path,
    reward: Path,
    args: argparse.Namespace,
    lora: bool,
    fsdp: dict[str, Any] | None = None,
) -> dict:
    """A PPO run; `fsdp` (``world``, ``cpu_offload``) runs it sharded, in a torchrun worker."""
    from rlhfspec.runtime.policy.ppo import PPOSettings, train_ppo

    settings = PPOSettings(
        total_episodes=args.updates * args.rollout,
        rollout_batch_size=args.rollout,
        mini_batches=2,
        ppo_epochs=1,
        max_new_tokens=args.new_tokens,
        learning_rate=1e-5,
        kl_coef=0.05,
        checkpoint_every=args.updates,
        seed=0,
        cpu=args.device == "cpu",
        mixed_precision=args.precision,
        lora=LORA if lora else None,
        strategy="fsdp" if fsdp else "ddp",
        cpu_offload=bool(fsdp and fsdp["cpu_offload"]),
    )
    peak_reset(args.device)
    began = time.perf_counter()
    name = f"PPO {'LoRA r16' if lora else 'full'}"
    if fsdp:
        offload = ", cpu_offload" if fsdp["cpu_offload"] else ""
        name = f"PPO FSDP x{fsdp['world']}{offload}"
    result = train_ppo(
        policy,
        policy,
        reward,
        PROMPTS * 8,
        settings,
        work / name.replace(" ", "-"),
        log=lambda m: None,
    )
    if fsdp:
        assert result.strategy == "fsdp", result.strategy
    seconds = sum(float(r["seconds"]) for r in result.metrics)
    tokens = sum(float(r["response_length"]) * args.rollout for r in result.metrics)
    plan = {"batch": 1, "length": 64 + args.new_tokens, "rollout": args.rollout, "mini_batches": 2}
    compute = {
        "device": args.device,
        "mixed_precision": args.precision,
        "lora": LORA if lora else None,
        "fsdp": fsdp,
    }
    return {
        "run": name,
        "episodes/s": round(result.episodes / seconds, 3),
        "tokens/s": round(tokens / seconds, 1),
        "peak GiB": round(peak_gib(args.device), 3),
        "estimate GiB": round(estimate("policy", work, compute, plan), 3),
        "wall s": round(time.perf_counter() - began, 1),
    }


def run_trl(
    work: Path, policy: Path, reward: Path, args: argparse.Namespace, stage: str, fsdp: bool = False
) -> dict:
    """A few optimizer steps of a TRL stage as rlhfspec configures it; with `fsdp`, under
    accelerate's FSDP2 plugin (`scale.fsdp_args`, as ``strategy: fsdp`` configures it), which
    must then really shard on CUDA (accelerate ignores the plugin on the CPU: docs/scale.md)."""
    from datasets import Dataset

    from rlhfspec.runtime.train.models import load_causal_lm, load_reward_model, load_tokenizer
    from rlhfspec.runtime.train.scale import fsdp_args

    tokenizer = load_tokenizer(policy)
    bf16 = args.precision == "bf16" and args.device == "cuda"
    sharding = fsdp_args({"fsdp": {"cpu_offload": False}, "gradient_checkpointing": False})
    common = {
        **(sharding if fsdp else {}),
        "output_dir": str(work / f"trl-{stage}-{'fsdp' if fsdp else 'one'}"),
        "per_device_train_batch_size": args.batch,
        "max_steps": args.steps,
        "learning_rate": 1e-5,
        "use_cpu": args.device == "cpu",
        "bf16": bf16,
        "report_to": [],
        "save_strategy": "no",
        "disable_tqdm": True,
        "max_length": args.length,
    }
    rows = [{"prompt": p, "chosen": " Sure, here is how.", "rejected": " No."} for p in PROMPTS] * 8
    peak_reset(args.device)
    began = time.perf_counter()
    import torch

    if stage == "sft":
        from trl import SFTConfig, SFTTrainer

        model = load_causal_lm(policy, tokenizer=tokenizer, dtype=torch.float32)
        data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows])
        trainer = SFTTrainer(
            model=model, processing_class=tokenizer, train_dataset=data, args=SFTConfig(**common)
        )
    elif stage == "reward_model":
        from trl import RewardConfig, RewardTrainer

        model = load_reward_model(reward, tokenizer=tokenizer, dtype=torch.float32)
        trainer = RewardTrainer(
            model=model,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(rows),
            args=RewardConfig(**common),
        )
    else:
        from trl import DPOConfig, DPOTrainer

        model = load_causal_lm(policy, tokenizer=tokenizer, dtype=torch.float32)
        trainer = DPOTrainer(
            model=model,
            ref_model=load_causal_lm(policy, tokenizer=tokenizer),
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(rows),
            args=DPOConfig(**common, beta=0.1),
        )
    trainer.train()
    seconds = time.perf_counter() - began
    sharded = sharded_modules(trainer.model_wrapped)
    if fsdp and args.device == "cuda" and not (trainer.is_fsdp_enabled and sharded):
        raise SystemExit(f"{stage}: strategy fsdp did not shard on CUDA")
    plan = {"batch": args.batch, "length": args.length, "method": "dpo"}
    compute = {"device": args.device, "mixed_precision": args.precision, "lora": None}
    target = "policy" if stage == "dpo" else stage
    return {
        "run": f"{stage} ({args.steps} steps{', FSDP2' if fsdp else ''})",
        "sharded modules": sharded,
        "steps/s": round(args.steps / seconds, 3),
        "peak GiB": round(peak_gib(args.device), 3),
        "estimate GiB": round(estimate(target, work, compute, plan), 3),
        "wall s": round(seconds, 1),
    }


def run_fsdp(work: Path, args: argparse.Namespace, cpu_offload: bool) -> dict[str, Any]:
    """PPO under FSDP in ``min(2, GPUs)`` processes (2 on the CPU), through torchrun running
    this script's ``--fsdp-worker``; the row of its main process."""
    import subprocess

    import torch

    world = 2 if args.device == "cpu" else min(2, torch.cuda.device_count())
    out = work / f"fsdp-{cpu_offload}.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
        str(world), __file__, "--fsdp-worker", str(work), "--json", str(out),
        "--updates", str(args.updates), "--rollout", str(args.rollout),
        "--new-tokens", str(args.new_tokens),
    ]  # fmt: skip
    if args.dry_run:
        command.append("--dry-run")
    if cpu_offload:
        command.append("--cpu-offload")
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.device == "cpu" else None
    subprocess.run(command, check=True, env=env, timeout=300)
    row: dict[str, Any] = json.loads(out.read_text())
    return row


def fsdp_worker(args: argparse.Namespace) -> int:
    """One torchrun process of `run_fsdp`: the process group first (with one GPU nothing
    else would start one, and FSDP needs it), then the sharded PPO run."""
    import torch

    work = args.fsdp_worker
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    torch.distributed.init_process_group("nccl" if args.device == "cuda" else "gloo")
    world = torch.distributed.get_world_size()
    fsdp = {"world": world, "cpu_offload": args.cpu_offload}
    row = run_ppo(work, work / "policy", work / "reward", args, lora=False, fsdp=fsdp)
    row["peak GiB"] = max(_gathered(row["peak GiB"], world))  # the largest process
    if torch.distributed.get_rank() == 0:
        args.json.write_text(json.dumps(row))
    torch.distributed.destroy_process_group()
    return 0


def _gathered(value: float, world: int) -> list[float]:
    import torch

    values: list[Any] = [None] * world
    torch.distributed.all_gather_object(values, value)
    return [float(v) for v in values]


def sharded_modules(model: Any) -> int:
    """How many modules FSDP2's ``fully_shard`` wrapped (0: the model runs unsharded)."""
    from torch.distributed.fsdp import FSDPModule

    return sum(isinstance(m, FSDPModule) for m in model.modules())


def run_trl_fsdp(work: Path, args: argparse.Namespace, stage: str) -> dict:
    """`run_trl` with FSDP2 under ``torchrun`` (one process per GPU; one on the CPU): the
    trainer needs a process group, which only a launcher gives it."""
    import torch

    out = work / f"trl-fsdp-{stage}.json"
    procs = max(1, torch.cuda.device_count()) if args.device == "cuda" else 1
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(procs),
        __file__,
        "--trl-fsdp-worker",
        stage,
        "--work",
        str(work),
        "--json",
        str(out),
        *(["--dry-run"] if args.dry_run else []),
        *(f"--{k}={getattr(args, k)}" for k in ("steps", "batch", "length")),
    ]
    subprocess.run(command, check=True)
    row: dict = json.loads(out.read_text())
    row["processes"] = procs
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny configs on the CPU")
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--rollout", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--fsdp-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cpu-offload", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trl-fsdp-worker", help=argparse.SUPPRESS)  # run_trl_fsdp's processes
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    if args.dry_run:
        args.device, args.precision, shape = "cpu", "no", TINY
        args.updates, args.rollout, args.new_tokens = 1, 4, 8
        args.steps, args.batch, args.length = 2, 2, 64
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --dry-run on a CPU")
            return 2
        args.device, args.precision, shape = "cuda", "bf16", QWEN2_05B
    if args.trl_fsdp_worker:
        work = args.work
        row = run_trl(work, work / "policy", work / "reward", args, args.trl_fsdp_worker, True)
        if int(os.environ.get("RANK", "0")) == 0:
            args.json.write_text(json.dumps(row))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.fsdp_worker:
        return fsdp_worker(args)
    with tempfile.TemporaryDirectory(prefix="rlhfspec-gpu-check-") as tmp:
        work = Path(tmp)
        policy, reward = build_models(work, shape, args.device)
        from rlhfspec.compiler.memory import model_config, parameter_count

        config, _ = model_config("policy", work)
        assert config is not None
        print(
            f"device {args.device} ({torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}), "
            f"torch {torch.__version__}; Qwen2 policy {parameter_count(config) / 1e6:.1f}M parameters"
        )
        results = [
            run_ppo(work, policy, reward, args, lora=False),
            run_ppo(work, policy, reward, args, lora=True),
            run_fsdp(work, args, cpu_offload=False),
        ]
        if args.device == "cuda":  # FSDP2 refuses CPU offload on a CPU device
            results.append(run_fsdp(work, args, cpu_offload=True))
        for stage in ("sft", "reward_model", "dpo"):
            results.append(run_trl(work, policy, reward, args, stage))
        for stage in ("sft", "reward_model", "dpo"):
            results.append(run_trl_fsdp(work, args, stage))
    for row in results:
        print("  " + " | ".join(f"{k} {v}" for k, v in row.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
