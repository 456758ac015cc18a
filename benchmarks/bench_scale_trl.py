"""Scaling of the TRL stages on the CPU: SFT, the reward model and DPO in 2 processes (torchrun,
gloo, DDP) against 1 on the same global work, side by side; and DPO with LoRA against full DPO
(peak memory, pairs/s).

Run: python benchmarks/bench_scale_trl.py [--rows 128 --batch 16 --wide-rows 16 --wide-batch 2]

Every side runs in a fresh process (``python bench_scale_trl.py --worker KIND``, under
``torchrun --nproc_per_node 2`` for two processes), one thread per process, and times
``trainer.train()`` only. The work is the same for 1 and 2 processes: ``--rows``
demonstrations (SFT) or preference pairs (reward model, DPO) in global batches of ``--batch``
(each of two processes takes half, as the stages do: `scale.per_device`). DPO runs through
rlhfspec's own `train_dpo` (its checkpoints included), SFT and the reward model through TRL's
trainers with the arguments the stages give them.

On the CPU accelerate cannot shard (docs/scale.md, FSDP on CPU): these are DDP figures.

LoRA against full DPO uses a wider random Qwen2 model (hidden 384, 6 layers, 9.6M parameters;
``benchmarks/gpu_check.py``'s builder) so that weights, gradients and AdamW state dominate the
process: full DPO holds the policy, its gradients, AdamW's two moments and a frozen reference
copy; LoRA r16 holds one base (the reference is the base with adapters disabled) and small
adapters. Memory is the peak of malloc's bytes in use during `train_dpo` (models loaded and
trained; and with the final checkpoint written) over those before it, sampled every millisecond (`PeakSampler`): RSS would
count the allocator's cached pages too.
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
TOPICS = ["order", "refund", "password", "invoice", "delivery", "account", "plan", "card"]
WIDE = {
    "hidden_size": 384,
    "intermediate_size": 1024,
    "num_hidden_layers": 6,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}


def pairs(n: int) -> list[dict[str, str]]:
    return [
        {
            "prompt": f"Can you help me with my {TOPICS[i % 8]}, reference {i}?",
            "chosen": f" Thank you for asking, I am glad to help with your {TOPICS[i % 8]}.",
            "rejected": f" No. Figure out your {TOPICS[i % 8]} yourself.",
        }
        for i in range(n)
    ]


def tiny_model(work: Path) -> Path:
    from rlhfspec.runtime.train.models import build_tiny

    tiny = work / "tiny"
    if not (tiny / "model.safetensors").exists():
        texts = [v for p in pairs(64) for v in p.values()]
        build_tiny(texts, seed=0, out_dir=tiny, vocab_size=320)
    return tiny


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def malloc_in_use() -> int:
    """Bytes malloc has handed out and not yet been given back (glibc's mallinfo2, all
    arenas plus mmapped blocks): torch's CPU tensors live there, and unlike RSS it falls
    when they are freed."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
            )
        ]  # fmt: skip

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


class PeakSampler:
    """The highest `malloc_in_use` seen while training, sampled every millisecond from a
    thread (torch releases the GIL inside its kernels, so the samples land mid-step)."""

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self) -> None:
        while not self.stop.wait(0.001):
            self.peak = max(self.peak, malloc_in_use())

    def __enter__(self) -> PeakSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def dpo_settings(batch: int) -> dict[str, Any]:
    train = {
        "epochs": 1,
        "learning_rate": 5e-4,
        "batch_size": batch,
        "gradient_accumulation_steps": 1,
        "max_length": 96,
        "weight_decay": 0.0,
        "warmup_ratio": 0.0,
    }
    return {
        "trust_remote_code": False,
        "checkpoint_every": 10**6,
        "dpo": {"beta": 0.1, "loss_type": "sigmoid", "train": train},
    }


def run_dpo(model: Path, work: Path, args: argparse.Namespace, lora: bool) -> dict[str, float]:
    from transformers import TrainerCallback

    from rlhfspec.compiler.schemas import default_of
    from rlhfspec.runtime.policy.dpo import train_dpo

    sampler = PeakSampler()

    class Timer(TrainerCallback):
        began = ended = 0.0
        peak = 0  # up to the end of training, before the final checkpoint is written

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            Timer.began = time.perf_counter()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            Timer.ended, Timer.peak = time.perf_counter(), sampler.peak

    compute = {**default_of("compute"), "device": "cpu"}
    compute["lora"] = {**compute["lora"], "enabled": lora, "r": 16, "alpha": 32}
    before = malloc_in_use()
    with sampler:
        summary = train_dpo(
            model,
            model,
            pairs(args.rows),
            dpo_settings(args.batch),
            seed=0,
            out_dir=work / f"dpo-{lora}-{os.environ.get('WORLD_SIZE', '1')}",
            resume=False,
            log=lambda m: None,
            metadata={},
            compute=compute,
            callbacks=[Timer()],
        )
    return {
        "seconds": Timer.ended - Timer.began,
        "loss": summary["train_loss"],
        "peak MiB over start": (Timer.peak - before) / 2**20,
        "peak MiB with saving": (sampler.peak - before) / 2**20,
    }


def run_trl(kind: str, tiny: Path, work: Path, args: argparse.Namespace) -> dict[str, float]:
    from datasets import Dataset

    from rlhfspec.runtime.train.models import load_causal_lm, load_reward_model, load_tokenizer
    from rlhfspec.runtime.train.scale import per_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    tokenizer = load_tokenizer(tiny)
    common = {
        "output_dir": str(work / f"{kind}-{world}"),
        "per_device_train_batch_size": per_device(args.batch, "batch", world),
        "num_train_epochs": 1,
        "use_cpu": True,
        "report_to": [],
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        "data_seed": 0,
        "max_length": 96,
    }
    rows = pairs(args.rows)
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        trainer: Any = SFTTrainer(
            model=load_causal_lm(tiny, tokenizer=tokenizer),
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(
                [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows]
            ),
            args=SFTConfig(**common),
        )
    else:
        from trl import RewardConfig, RewardTrainer

        trainer = RewardTrainer(
            model=load_reward_model(tiny, tokenizer=tokenizer, seed=0),
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(rows),
            args=RewardConfig(**common),
        )
    start = time.perf_counter()
    out = trainer.train()
    return {"seconds": time.perf_counter() - start, "loss": out.training_loss}


def worker(kind: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    if kind.startswith("dpo-wide"):
        result = run_dpo(work / "wide" / "policy", work, args, lora=kind.endswith("lora"))
    elif kind == "dpo":
        result = run_dpo(tiny_model(work), work, args, lora=False)
    else:
        result = run_trl(kind, tiny_model(work), work, args)
    return {
        "rank": int(os.environ.get("RANK", "0")),
        "rows/s": args.rows / result["seconds"],
        "peak MiB": rss_mib(),
        **result,
    }


def launch(kind: str, processes: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = work / f"{kind}-{processes}.json"
    base = [__file__, "--worker", kind, "--work", str(work), "--out", str(out)]
    base += ["--rows", str(args.rows), "--batch", str(args.batch)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    command = [sys.executable, *base] if processes == 1 else [*launcher, str(processes), *base]
    env = {**os.environ, "RLHFSPEC_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{kind} x{processes} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--wide-rows", type=int, default=16, help="pairs of the LoRA/full run")
    parser.add_argument("--wide-batch", type=int, default=2)
    args = parser.parse_args()
    if args.worker:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        report = worker(args.worker, args.work, args)
        if report["rank"] == 0:
            args.out.write_text(json.dumps(report))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-scale-trl-") as tmp:
        work = Path(tmp)
        tiny_model(work)
        print(
            f"cores: {os.cpu_count()}; one thread per process; {args.rows} rows, batch {args.batch}"
        )
        print("stage         | 1 process rows/s | 2 processes rows/s | ratio | loss 1 / 2")
        for kind in ("sft", "reward_model", "dpo"):
            one, two = launch(kind, 1, work, args), launch(kind, 2, work, args)
            print(
                f"{kind:13} | {one['rows/s']:16.1f} | {two['rows/s']:18.1f} | "
                f"{two['rows/s'] / one['rows/s']:.2f}x | {one['loss']:.4f} / {two['loss']:.4f}"
            )
        from benchmarks.gpu_check import build_models

        (work / "wide").mkdir()
        build_models(work / "wide", WIDE, "cpu")
        from rlhfspec.compiler.memory import model_config, parameter_count

        config, _ = model_config("policy", work / "wide")
        size = parameter_count(config) / 1e6 if config else float("nan")
        # a small batch: the weights, gradients and optimizer state dominate, not activations
        small = argparse.Namespace(rows=args.wide_rows, batch=args.wide_batch)
        full = launch("dpo-wide", 1, work, small)
        lora = launch("dpo-wide-lora", 1, work, small)
        print(
            f"DPO on a {size:.1f}M-parameter Qwen2: full {full['rows/s']:.1f} pairs/s, peak "
            f"{full['peak MiB over start']:.0f} MiB; LoRA r16 {lora['rows/s']:.1f} pairs/s, "
            f"{lora['peak MiB over start']:.0f} MiB "
            f"({lora['peak MiB over start'] / full['peak MiB over start']:.2f}x); with the final "
            f"checkpoint's save {full['peak MiB with saving']:.0f} / "
            f"{lora['peak MiB with saving']:.0f} MiB (LoRA merges a copy)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
