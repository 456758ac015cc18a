"""DPO training throughput: `rlhfspec.runtime.policy.dpo.train_dpo` against a plain TRL DPOTrainer script.

Run: python benchmarks/bench_dpo.py [--pairs 512] [--batch 16] [--every 4] [--repeats 3]

The pairs are the support-assistant example's (`rlhfspec run --until aggregate` on a copy of
it); the model is builtin:tiny built from their texts. Both sides train the same model on the
same pairs with the same DPO settings and thread count, each in a fresh process, alternating
(plain, ours, plain, ours, ...) so that a machine's background load hits both alike; the
median of the repeats is reported. Time is measured inside each process after the imports,
from loading the models to the final weights on disk: ours includes everything train_dpo
does on top (a policy checkpoint and a trainer checkpoint every `--every` steps, per-step
metrics.jsonl), the plain script saves only the final model. Goal: ratio ours/plain >= 0.95.
Both wall time and process CPU time are reported: on a shared machine wall time swings with
other processes' load, CPU time much less. RLHFSPEC_THREADS sets the threads (default 2).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "support-assistant.yaml"

PRELUDE = r"""
import json, os, sys, time
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE"); os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
cfg = json.loads(sys.argv[1])
rows = [json.loads(l) for l in open(cfg["pairs"])]
"""

PLAIN = (
    PRELUDE
    + r"""
import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer
from rlhfspec.runtime.train.formatting import format_prompt, format_response
from rlhfspec.runtime.train.models import load_causal_lm, load_tokenizer
from rlhfspec.runtime.train.common import quiet_transformers
quiet_transformers()
start, cpu = time.perf_counter(), time.process_time()
torch.manual_seed(cfg["seed"]); torch.set_num_threads(cfg["threads"])
tok = load_tokenizer(cfg["base"])
policy = load_causal_lm(cfg["base"], tokenizer=tok)
ref = load_causal_lm(cfg["base"], tokenizer=tok)
ds = Dataset.from_list([{"prompt": format_prompt(r["prompt"]), "chosen": format_response(r["chosen"]),
                         "rejected": format_response(r["rejected"])} for r in rows])
args = DPOConfig(output_dir=cfg["out"], beta=cfg["beta"], loss_type=[cfg["loss_type"]], max_length=cfg["max_length"],
                 num_train_epochs=cfg["epochs"], per_device_train_batch_size=cfg["batch"], learning_rate=cfg["lr"],
                 seed=cfg["seed"], use_cpu=True, bf16=False, fp16=False, activation_checkpointing=False,
                 report_to=[], save_strategy="no", dataloader_num_workers=0, disable_tqdm=True)
trainer = DPOTrainer(model=policy, ref_model=ref, processing_class=tok, train_dataset=ds, args=args)
trainer.train()
trainer.save_model(cfg["out"] + "/final")
print(json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "pairs": len(rows),
                  "steps": trainer.state.global_step, "checkpoints": 1}))
"""
)

OURS = (
    PRELUDE
    + r"""
from pathlib import Path
from rlhfspec.runtime.policy.dpo import train_dpo
from datasets import Dataset  # noqa: F401  imported before the clock starts, as in the plain script
from trl import DPOConfig, DPOTrainer  # noqa: F401
settings = {"checkpoint_every": cfg["every"], "trust_remote_code": False,
            "dpo": {"beta": cfg["beta"], "loss_type": cfg["loss_type"],
                    "train": {"epochs": cfg["epochs"], "learning_rate": cfg["lr"], "batch_size": cfg["batch"],
                              "gradient_accumulation_steps": 1, "max_length": cfg["max_length"],
                              "weight_decay": 0.0, "warmup_ratio": 0.0}}}
start, cpu = time.perf_counter(), time.process_time()
summary = train_dpo(Path(cfg["base"]), Path(cfg["base"]), rows, settings, seed=cfg["seed"],
                    out_dir=Path(cfg["out"]), resume=False, log=lambda m: None, metadata={"bench": True},
                    compute={"device": "cpu", "mixed_precision": "no"})
print(json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, "pairs": len(rows),
                  "steps": summary["steps"], "checkpoints": len(summary["checkpoints"])}))
"""
)


def example_pairs(work: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    """The example's preference pairs, from the data stages of a run on a copy of it."""
    shutil.copytree(
        ROOT / "specs" / "support-assistant",
        work / "support-assistant",
        ignore=shutil.ignore_patterns("truth"),
    )
    shutil.copy(SPEC, work)
    shutil.copy(SPEC.with_name("support-assistant.lock.json"), work)
    run_dir = work / "run"
    cli = [sys.executable, "-m", "rlhfspec.cli.main", "run", str(work / SPEC.name)]
    subprocess.run(
        cli + ["--run-dir", str(run_dir), "--until", "aggregate"],
        env=env,
        check=True,
        capture_output=True,
    )
    lines = (run_dir / "preferences" / "pairs.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def run_side(script: str, cfg: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    out = Path(cfg["out"])
    if out.exists():
        shutil.rmtree(out)
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(cfg)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=512, help="pairs trained on (default 512)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--every", type=int, default=4, help="policy.checkpoint_every (ours)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from rlhfspec.runtime.train.common import quiet_transformers
    from rlhfspec.runtime.train.models import build_tiny

    quiet_transformers()

    threads = int(os.environ.get("RLHFSPEC_THREADS", "2"))
    env = {**os.environ, "RLHFSPEC_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pairs = example_pairs(work, env)[: args.pairs]
        texts = [p[k] for p in pairs for k in ("prompt", "chosen", "rejected")]
        base = build_tiny(texts, seed=0, out_dir=work / "tiny")
        pairs_file = work / "pairs.jsonl"
        pairs_file.write_text(
            "".join(
                json.dumps({k: p[k] for k in ("prompt", "chosen", "rejected")}) + "\n"
                for p in pairs
            ),
            encoding="utf-8",
        )
        cfg = {
            "base": str(base),
            "pairs": str(pairs_file),
            "beta": 0.1,
            "loss_type": "sigmoid",
            "epochs": args.epochs,
            "lr": 1e-3,
            "batch": args.batch,
            "max_length": args.max_length,
            "every": args.every,
            "seed": 0,
            "threads": threads,
        }
        results: dict[str, list[dict[str, Any]]] = {"plain": [], "ours": []}
        for _ in range(args.repeats):
            results["plain"].append(run_side(PLAIN, {**cfg, "out": str(work / "plain")}, env))
            results["ours"].append(run_side(OURS, {**cfg, "out": str(work / "ours")}, env))

    def rate(result: dict[str, Any], key: str) -> float:
        return float(result["pairs"]) * args.epochs / float(result[key])

    medians = {
        (side, key): statistics.median(rate(r, key) for r in runs)
        for side, runs in results.items()
        for key in ("seconds", "cpu")
    }
    print(
        f"DPO on builtin:tiny, {len(pairs)} example pairs, {args.epochs:g} epoch(s), batch "
        f"{args.batch}, max_length {args.max_length}, threads {threads}, "
        f"median of {args.repeats} alternating runs"
    )
    print(
        f"{'':34} {'steps':>5} {'ckpts':>5} {'wall seconds':>18} {'pairs/s':>8} {'pairs/cpu-s':>11}"
    )
    names = {
        "ours": f"train_dpo (checkpoint every {args.every})",
        "plain": "plain TRL DPOTrainer script",
    }
    for side in ("ours", "plain"):
        runs = results[side]
        seconds = "/".join(f"{r['seconds']:.1f}" for r in runs)
        print(
            f"{names[side]:34} {runs[0]['steps']:5d} {runs[0]['checkpoints']:5d} "
            f"{seconds:>18} {medians[side, 'seconds']:8.1f} {medians[side, 'cpu']:11.1f}"
        )
    wall = medians["ours", "seconds"] / medians["plain", "seconds"]
    cpu = medians["ours", "cpu"] / medians["plain", "cpu"]
    # CPU time is the steadier measure on a shared machine; wall time is what a user waits
    print(f"throughput ratio ours/plain: {wall:.3f} wall, {cpu:.3f} CPU time (goal >= 0.95)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
