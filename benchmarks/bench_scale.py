"""Scaling on the CPU: each training loop in 2 processes (torchrun, gloo, DDP) against 1 on the
same work, PPO with LoRA against full PPO, and PPO in 2 processes under DDP against FSDP2.

Run: python benchmarks/bench_scale.py [--episodes 64 --rollout 16 --rows 256]
     [--parts scale,lora,fsdp]   (e.g. ``--parts fsdp`` for the DDP/FSDP comparison alone)

The FSDP part runs the same PPO work in 2 processes under ``strategy: ddp``, ``fsdp`` (blocks
gathered once per rollout, what the trainer does) and ``fsdp`` with one gather per forward
(``Sharding.gathered`` switched off), and prints episodes/s and each side's largest peak RSS
over its processes.

Every side runs in a fresh process (``python bench_scale.py --worker KIND``, under
``torchrun --nproc_per_node 2`` for two processes) on builtin:tiny's recipe (vocabulary 320),
with one thread per process, and reports the training time of the same global work: PPO
``--episodes`` episodes in global rollout batches of ``--rollout``; SFT ``--rows``
demonstrations in global batches of 16 (TRL's SFTTrainer, 8 per process with two). Peak memory
is the process's max RSS (imports included). On a machine whose cores are shared with other
work the 2-process figures swing; they are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CORPUS = [
    "My parcel is late. What should I do?",
    "How do I change the email address on my account?",
    "Thanks! Open Settings, choose Account, then Email.",
    "Can I return a gift without the receipt?",
] * 20


def models(work: Path) -> tuple[Path, Path]:
    from rlhfspec.runtime.train.models import build_tiny, load_reward_model, load_tokenizer

    tiny = work / "tiny"
    if not (tiny / "model.safetensors").exists():
        build_tiny(CORPUS, seed=0, out_dir=tiny, vocab_size=320)
        tokenizer = load_tokenizer(tiny)
        reward = load_reward_model(tiny, tokenizer=tokenizer, seed=0)
        reward.save_pretrained(work / "reward", safe_serialization=True)
        tokenizer.save_pretrained(work / "reward")
    return tiny, work / "reward"


def worker(kind: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    tiny, reward = models(work)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    began = time.perf_counter()
    if kind.startswith("ppo"):
        from rlhfspec.runtime.policy.ppo import PPOSettings, train_ppo

        lora = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["all-linear"]}
        settings = PPOSettings(
            total_episodes=args.episodes,
            rollout_batch_size=args.rollout,
            mini_batches=2,
            ppo_epochs=1,
            max_new_tokens=16,
            learning_rate=1e-4,
            kl_coef=0.05,
            checkpoint_every=10**6,
            seed=0,
            threads=1,
            cpu=True,
            lora=lora if kind == "ppo-lora" else None,
            strategy="fsdp" if kind.startswith("ppo-fsdp") else "ddp",
        )
        if kind == "ppo-fsdp-per-forward":  # one all-gather per block and generated token
            import contextlib

            from rlhfspec.runtime.policy.ppo.sharding import Sharding

            Sharding.gathered = lambda self: contextlib.nullcontext()  # type: ignore[method-assign]
        result = train_ppo(
            tiny, tiny, reward, CORPUS, settings, work / f"out-{kind}-{world}", log=lambda m: None
        )
        seconds = sum(float(r["seconds"]) for r in result.metrics)
        rate = {
            "episodes/s": result.episodes / seconds,
            "last score": result.metrics[-1]["score"],
            "strategy": result.strategy,
        }
    else:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        from rlhfspec.runtime.train.models import load_causal_lm, load_tokenizer

        tokenizer = load_tokenizer(tiny)
        rows = [
            {"prompt": CORPUS[i % len(CORPUS)], "completion": " Sure."} for i in range(args.rows)
        ]
        trainer = SFTTrainer(
            model=load_causal_lm(tiny, tokenizer=tokenizer),
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(rows),
            args=SFTConfig(
                output_dir=str(work / f"sft-{world}"),
                per_device_train_batch_size=16 // world,
                num_train_epochs=1,
                use_cpu=True,
                report_to=[],
                save_strategy="no",
                disable_tqdm=True,
                seed=0,
                max_length=64,
            ),
        )
        start = time.perf_counter()
        out = trainer.train()
        seconds = time.perf_counter() - start
        rate = {"rows/s": args.rows / seconds, "loss": out.training_loss}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "rank": rank,
        "seconds": seconds,
        "peak MiB": peak,
        "total s": time.perf_counter() - began,
        **rate,
    }


def launch(kind: str, processes: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = work / f"{kind}-{processes}.json"
    base = [
        __file__,
        "--worker",
        kind,
        "--work",
        str(work),
        "--out",
        str(out),
        "--episodes",
        str(args.episodes),
        "--rollout",
        str(args.rollout),
        "--rows",
        str(args.rows),
    ]
    command = (
        [sys.executable, *base]
        if processes == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            *base,
        ]
    )
    env = {**os.environ, "RLHFSPEC_THREADS": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--rollout", type=int, default=16)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--parts", default="scale,lora,fsdp")
    args = parser.parse_args()
    if args.worker:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        report = worker(args.worker, args.work, args)
        if args.worker.startswith("ppo") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch.distributed as dist

            peaks = [0.0] * dist.get_world_size()
            dist.all_gather_object(peaks, report["peak MiB"])
            report["peak MiB"] = max(peaks)  # the largest process
        if report["rank"] == 0:
            args.out.write_text(json.dumps(report))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        models(work)
        print(f"cores: {os.cpu_count()}; one thread per process; load {os.getloadavg()[0]:.1f}")
        parts = args.parts.split(",")
        if "fsdp" in parts:
            sides = {
                "DDP": launch("ppo-ddp", 2, work, args),
                "FSDP": launch("ppo-fsdp", 2, work, args),
                "FSDP, gather per forward": launch("ppo-fsdp-per-forward", 2, work, args),
            }
            assert sides["FSDP"]["strategy"] == "fsdp" and sides["DDP"]["strategy"] == "ddp"
            print(
                "PPO 2 processes: "
                + "; ".join(
                    f"{name} {r['episodes/s']:.2f} episodes/s, peak RSS {r['peak MiB']:.0f} MiB"
                    for name, r in sides.items()
                )
                + f" (FSDP/DDP {sides['FSDP']['episodes/s'] / sides['DDP']['episodes/s']:.2f}x)"
            )
        for kind, key in (("ppo", "episodes/s"), ("sft", "rows/s")):
            if "scale" not in parts:
                break
            one, two = launch(kind, 1, work, args), launch(kind, 2, work, args)
            print(
                f"{kind}: 1 process {one[key]:.2f} {key}, 2 processes {two[key]:.2f} "
                f"({two[key] / one[key]:.2f}x); peak RSS {one['peak MiB']:.0f} / "
                f"{two['peak MiB']:.0f} MiB per process"
            )
        if "lora" not in parts:
            return 0
        full, lora = launch("ppo", 1, work, args), launch("ppo-lora", 1, work, args)
        print(
            f"PPO full {full['episodes/s']:.2f} episodes/s, {full['peak MiB']:.0f} MiB; "
            f"LoRA r8 {lora['episodes/s']:.2f} episodes/s, {lora['peak MiB']:.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
