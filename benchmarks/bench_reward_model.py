"""Reward-model training throughput: `rlhfspec run --stage reward_model` against plain TRL.

Run: python benchmarks/bench_reward_model.py [--epochs 2]

Both sides train the same builtin:tiny model on the same preference pairs
(the stage's by-prompt training split) with the same settings and thread
count. Each side is timed as a whole fresh process, as a user meets it
(imports, loading, training, saving; ours also compiles the plan, checks
lengths, writes checkpoints and lineage, and evaluates the holdout), the two
alternating `--rounds` times on the same machine, best of each. Pairs per
second = training pairs x epochs / process wall time. Goal: ratio >= 0.95.
Also reports the time of the SFT stage on the example.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "specs" / "support-assistant.yaml"

PLAIN = r"""
import json, os, sys, time
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE"); os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import torch
from datasets import Dataset
from trl import RewardConfig, RewardTrainer
from rlhfspec.runtime.train.models import load_reward_model, load_tokenizer
from rlhfspec.runtime.train.formatting import format_prompt, format_response
cfg = json.loads(sys.argv[1])
start = time.perf_counter()
torch.manual_seed(cfg["seed"]); torch.set_num_threads(cfg["threads"])
tok = load_tokenizer(cfg["base"])
model = load_reward_model(cfg["base"], tokenizer=tok, seed=cfg["seed"])
rows = [json.loads(l) for l in open(cfg["pairs"])]
ds = Dataset.from_list([{"prompt": format_prompt(r["prompt"]), "chosen": format_response(r["chosen"]),
                         "rejected": format_response(r["rejected"])} for r in rows])
args = RewardConfig(output_dir=cfg["out"], num_train_epochs=cfg["epochs"], per_device_train_batch_size=cfg["batch"],
                    learning_rate=cfg["lr"], max_length=cfg["max_length"], seed=cfg["seed"], use_cpu=True,
                    bf16=False, fp16=False, activation_checkpointing=False, report_to=[], save_strategy="no",
                    disable_tqdm=True, dataloader_num_workers=0, logging_steps=1000)
trainer = RewardTrainer(model=model, processing_class=tok, train_dataset=ds, args=args)
trainer.train()
trainer.save_model(cfg["out"] + "/final")
print(json.dumps({"seconds": time.perf_counter() - start, "pairs": len(rows)}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating runs of each side; best is kept"
    )
    args = parser.parse_args()
    env = {**os.environ, "RLHFSPEC_THREADS": os.environ.get("RLHFSPEC_THREADS", "2")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copytree(
            ROOT / "specs" / "support-assistant",
            work / "support-assistant",
            ignore=shutil.ignore_patterns("truth"),
        )
        shutil.copy(SPEC.with_name("support-assistant.lock.json"), work)
        text = SPEC.read_text()
        start = text.index("reward_model:\n")
        end = text.index("\npolicy:")
        block = text[start:end]
        train_line = next(line for line in block.splitlines() if line.strip().startswith("train:"))
        settings = dict(
            item.split(": ") for item in train_line.split("{")[1].rstrip("}").split(", ")
        )
        epochs, lr, batch, max_length = (
            args.epochs,
            float(settings["learning_rate"]),
            int(settings["batch_size"]),
            int(settings["max_length"]),
        )
        block = block.replace(
            train_line,
            f"  train: {{epochs: {epochs}, learning_rate: {lr}, batch_size: {batch}, "
            f"max_length: {max_length}}}",
        )
        spec = work / SPEC.name
        spec.write_text(text[:start] + block + text[end:])
        env["RLHFSPEC_CACHE"] = str(work / "cache")
        run_dir = work / "run"
        cli = [
            sys.executable,
            "-m",
            "rlhfspec.cli.main",
            "run",
            str(spec),
            "--run-dir",
            str(run_dir),
        ]
        t0 = time.perf_counter()
        subprocess.run(cli + ["--until", "sft"], env=env, check=True, capture_output=True)
        sft_seconds = json.loads((run_dir / "lineage.json").read_text())["stages"]["sft"]["seconds"]
        gates = [
            "--override-gate",
            "min_validation_accuracy",
            "--override-gate",
            "max_length_correlation",
            "--override-gate",
            "min_shorter_preferred_accuracy",
        ]
        ours_runs: list[float] = []
        plain_runs: list[float] = []

        def run_ours() -> None:
            # a fresh stage each round: forget the finished entry so --stage trains again
            lineage_path = run_dir / "lineage.json"
            doc = json.loads(lineage_path.read_text())
            doc["stages"].pop("reward_model", None)
            lineage_path.write_text(json.dumps(doc))
            begin = time.perf_counter()
            subprocess.run(
                cli + ["--stage", "reward_model", *gates], env=env, check=True, capture_output=True
            )
            ours_runs.append(time.perf_counter() - begin)

        run_ours()
        end_to_end = time.perf_counter() - t0
        meta = json.loads(
            (run_dir / "models" / "reward_model" / "rlhfspec_reward_model.json").read_text()
        )
        # TRL drops over-length pairs itself, so both sides train on this many pairs
        train_pairs = meta["data"]["train_pairs"]
        from rlhfspec.runtime.train.stages import split_by_prompt

        pairs = [
            json.loads(line)
            for line in (run_dir / "preferences" / "pairs.jsonl").read_text().splitlines()
        ]
        prov = [
            json.loads(line)
            for line in (run_dir / "preferences" / "provenance.jsonl").read_text().splitlines()
        ]
        joined = [{**p, **q} for p, q in zip(pairs, prov, strict=True)]
        train, _ = split_by_prompt(joined, 0.12, 20261101)
        train_file = work / "train_pairs.jsonl"
        train_file.write_text(
            "".join(
                json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n"
                for r in train
            )
        )
        cfg = {
            "base": meta["resolved_base_model"],
            "pairs": str(train_file),
            "out": str(work / "plain"),
            "epochs": epochs,
            "lr": lr,
            "batch": batch,
            "max_length": max_length,
            "seed": 20261101,
            "threads": int(env["RLHFSPEC_THREADS"]),
        }
        for round_index in range(args.rounds):
            begin = time.perf_counter()
            subprocess.run(
                [sys.executable, "-c", PLAIN, json.dumps(cfg)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            plain_runs.append(time.perf_counter() - begin)
            if round_index + 1 < args.rounds:
                run_ours()
    ours_seconds = min(ours_runs)
    plain_result = {"pairs": train_pairs, "seconds": min(plain_runs)}
    ours_rate = train_pairs * epochs / ours_seconds
    plain_rate = plain_result["pairs"] * epochs / plain_result["seconds"]
    print(
        f"reward model: {epochs} epochs, batch {batch}, max_length {max_length}, threads {cfg['threads']}"
    )
    print(
        f"process wall times, best of {args.rounds} alternating rounds: ours {[round(t, 1) for t in ours_runs]}, "
        f"plain {[round(t, 1) for t in plain_runs]}"
    )
    print(f"{'':32} {'pairs':>6} {'seconds':>8} {'pairs/s':>8}")
    print(
        f"{'rlhfspec run --stage reward_model':32} {train_pairs:6d} {ours_seconds:8.1f} {ours_rate:8.1f}"
    )
    print(
        f"{'plain TRL RewardTrainer script':32} {plain_result['pairs']:6d} {plain_result['seconds']:8.1f} "
        f"{plain_rate:8.1f}"
    )
    print(f"throughput ratio ours/plain: {ours_rate / plain_rate:.3f} (goal >= 0.95)")
    print(f"holdout accuracy: {meta['holdout']['accuracy']}")
    print(
        f"end to end (prompts..sft, then reward_model; {epochs} reward-model epochs): {end_to_end:.1f}s, "
        f"of which SFT {sft_seconds:.1f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
