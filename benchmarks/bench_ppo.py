"""PPO throughput and peak memory: `rlhfspec.runtime.policy.ppo.train_ppo` against TRL 1.12.0's PPOTrainer.

Run: python benchmarks/bench_ppo.py [--episodes 256 --rollout 32 --new-tokens 32
     --venv /tmp/rlhfspec-trl112 --repeats 2]

TRL removed ``PPOTrainer`` after 1.12.0 (its last home is ``trl.experimental.ppo``), so the
comparison runs it from a separate virtual environment that this script creates at ``--venv``
(or reuses when it already holds trl 1.12.0 on the same torch): ``python -m venv``, then the
running interpreter's torch version alone (on CPU machines the local ``+cpu`` wheel, seconds,
never a different torch), then trl 1.12.0 with transformers, accelerate, datasets, tokenizers,
safetensors and numpy pinned to the versions of *this* environment, with torch pinned again so
pip cannot swap it. Both sides therefore run the same torch and transformers; only the trainer
differs. If the environment cannot be built (no network, no wheel), the script says so and
reports ours alone. ``--skip-trl`` does that on purpose.

What is compared. A builtin:tiny policy (`build_tiny` on the support-assistant prompt texts,
seed 0) serves as policy and reference; the reward model is `load_reward_model(tiny, seed=1)`
saved with safetensors, and on both sides the value model starts as a copy of it. Both sides
train on the same prompts (``User: ...\\nAssistant:``, BOS prepended, left-padded) with the
same settings: ``--episodes`` episodes in rollout batches of ``--rollout``, ``--mini-batches``
minibatches of one micro-batch each (TRL: ``per_device_train_batch_size = rollout``,
``gradient_accumulation_steps = 1``, ``num_mini_batches``; so both take one optimizer step per
minibatch), ``--ppo-epochs`` epochs, ``--new-tokens`` response tokens sampled at temperature
1 (no top-k / top-p), stop at EOS, fixed KL coefficient 0.05 with the k1 estimator, missing-EOS
penalty 1.0, learning rate 1e-5 held constant (TRL: ``lr_scheduler_type="constant"``),
gamma 1, lambda 0.95, clip ranges 0.2, vf_coef 0.1, advantages whitened, rewards not, fp32
(TRL: ``bf16=False`` -- its default would be bf16 mixed precision; ``--mixed-precision bf16``
turns autocast on on both sides), no gradient checkpointing,
no evaluation or sample generations, nothing reported, seed 0, the same thread count
(RLHFSPEC_THREADS, default up to 2) and ``OMP_WAIT_POLICY=PASSIVE`` on both sides. CUDA is
used automatically on both sides when present (``use_cpu=not cuda`` for TRL; ours picks it
itself), so the same command runs unchanged on a GPU machine.

What is measured. Each side runs in a fresh process, alternating (ours, TRL, ours, TRL, ...,
``--repeats`` rounds); the best (fastest) run of each side is reported. Episodes per second =
episodes trained / training time, where training time runs from the start of the first
rollout (ours: the first `collect_rollout` call; TRL: its first ``batch_generation`` call) to
the end of the last update (ours: the last `ppo_update` returning; TRL: ``trainer.train()``
returning), so imports, model loading, dataset preparation and ours' final checkpoint are
outside it on both sides. The same window is also measured in process CPU time (all
threads): on a shared machine wall time swings with other processes' load, CPU time much
less, so both ratios are printed; the goal is stated on wall time. The end-to-end column is
the process time after the imports, including loading and (ours) writing the final
checkpoint. Peak memory is the process's max
RSS (``getrusage(RUSAGE_SELF).ru_maxrss``, imports included) and, on CUDA,
``torch.cuda.max_memory_allocated()``; the table shows the highest value over a side's runs.
"last score / kl" is the last update's mean reward-model score (after the missing-EOS
penalty) and mean per-response KL: a check that both sides trained, not a quality comparison.

Differences that remain between the two configurations (inherent to the trainers):

* Log-probabilities of the rollout: TRL takes them from the scores that ``generate`` returns
  (``output_scores=True``, so it keeps ``[B, T, vocab]`` scores from generation); ours runs an
  extra policy forward pass over the truncated sequences. Ours: 4 no-grad forward passes per
  rollout chunk (policy, reference, value, reward); TRL: 3 (reference, value, reward).
* Rollout chunking: both generate the whole rollout batch at once (TRL:
  ``local_rollout_forward_batch_size = rollout``); ours then runs its no-grad passes in
  micro-batch chunks (``rollout / mini_batches`` rows), TRL in one chunk of the whole batch.
* Generation: ours passes EOS and pad ids and stops a batch early once every row has ended;
  TRL's generation config sets only length and sampling (the policy's generation config gets
  ``eos_token_id`` from ``stop_token='eos'``). With the untrained tiny model almost no
  response ends before ``--new-tokens``, so both generate full length in practice.
* Value wiring: TRL reads the value model over the untruncated query+response and the reward
  at the last token before the first pad; ours reads values over the truncated sequence and
  the reward at the EOS (or the last generated token). Same number of passes, same shapes.
* Ours clips gradients (max_grad_norm 1.0, policy and value together) and TRL does not;
  ours uses ``torch.optim.AdamW``, TRL the Trainer's default ``optim`` (printed in the
  report). Both weight decay 0.
* Ours writes metrics.jsonl after every update and the final checkpoint after the last
  (outside the timed window; ``--checkpoint-every`` adds intermediate ones inside it); TRL is
  set to save nothing. TRL logs a metrics dict every update and calls ``gc.collect()`` twice
  per update (plus ``empty_cache``); those are part of its loop and are timed. On CPU with
  the tiny models they weigh heavily: a cProfile of a 3-update TRL run here spent 1.19 s of
  3.63 s in six ``gc.collect()`` calls, and with them patched out (an experiment, not what
  this script runs) the CPU ratio at the defaults fell from about 1.7 to about 1.1. With
  larger models and on GPU their share shrinks.
* Forward passes: ours applies the LM head only to the response positions
  (``logits_to_keep``); TRL computes logits (and keeps all hidden states,
  ``output_hidden_states=True``) over the whole prompt + response in its reference pass and
  in every training forward.
* Prompt order: each side draws its batches from the same prompt pool with its own seeded
  shuffle, so the batches (and the padded prompt width of each) differ between the sides.
* TRL's ``total_episodes`` rounds up to whole batches, ours down; ``--episodes`` must be a
  multiple of ``--rollout`` so both run the same number of updates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPT_FILES = sorted((ROOT / "specs" / "support-assistant" / "data" / "prompts").glob("*.jsonl"))
TRL_VERSION = "1.12.0"
#: Pinned in the TRL environment to this environment's versions (when installed here).
PINNED_ALONG = ("transformers", "accelerate", "datasets", "tokenizers", "safetensors", "numpy")
MARKER = "BENCH_PPO_RESULT "
#: Quiet, and quick to give up where there is no network (the venv then is skipped).
PIP_OPTIONS = ("--disable-pip-version-check", "--timeout", "60", "--retries", "1")

# The settings both sides share; the command line adds episodes, batch shape and lengths.
KL_COEF = 0.05
LEARNING_RATE = 1e-5
TEMPERATURE = 1.0
MISSING_EOS_PENALTY = 1.0
SEED = 0

PRELUDE = r"""
import json, os, resource, sys, time
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE"); os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
cfg = json.loads(sys.argv[1])
"""

EPILOGUE = r"""
if cuda:
    torch.cuda.synchronize()
done = time.perf_counter()
result.update({
    "train_seconds": marks["last"] - marks["first"],
    "train_cpu_seconds": marks["last_cpu"] - marks["first_cpu"],
    "e2e_seconds": done - start,
    "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    "device": "cuda" if cuda else "cpu",
    "threads": torch.get_num_threads(),
})
print(MARKER + json.dumps(result), flush=True)
"""

OURS = (
    PRELUDE
    + r"""
from pathlib import Path
import torch
import accelerate  # noqa: F401  imported before the clock starts, as on the TRL side
import transformers  # noqa: F401
from rlhfspec.runtime.policy import ppo
from rlhfspec.runtime.policy.ppo import trainer
MARKER = cfg["marker"]
start = time.perf_counter()
cuda = torch.cuda.is_available()
marks = {}
collect_rollout, ppo_update = trainer.collect_rollout, trainer.ppo_update
def timed_rollout(*a, **k):
    if "first" not in marks:
        marks["first"], marks["first_cpu"] = time.perf_counter(), time.process_time()
    return collect_rollout(*a, **k)
def timed_update(*a, **k):
    out = ppo_update(*a, **k)
    if cuda:
        torch.cuda.synchronize()
    marks["last"], marks["last_cpu"] = time.perf_counter(), time.process_time()
    return out
trainer.collect_rollout, trainer.ppo_update = timed_rollout, timed_update
prompts = [json.loads(line)["raw"] for line in open(cfg["prompts"], encoding="utf-8")]
settings = ppo.PPOSettings(
    kl_coef=cfg["kl_coef"], kl_estimator="k1", kl_mode="fixed", total_episodes=cfg["episodes"],
    rollout_batch_size=cfg["rollout"], mini_batches=cfg["mini_batches"], ppo_epochs=cfg["ppo_epochs"],
    gradient_accumulation_steps=1, learning_rate=cfg["learning_rate"], temperature=cfg["temperature"],
    max_new_tokens=cfg["new_tokens"], gamma=1.0, lam=0.95, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1,
    whiten_rewards=False, whiten_advantages=True, missing_eos_penalty=cfg["missing_eos_penalty"],
    checkpoint_every=cfg["checkpoint_every"], seed=cfg["seed"], threads=cfg["threads"],
    mixed_precision=cfg["mixed_precision"],
)
run = ppo.train_ppo(Path(cfg["policy"]), Path(cfg["policy"]), Path(cfg["reward"]), prompts, settings,
                    Path(cfg["out"]), log=lambda message: None)
last = run.final_metrics
result = {"updates": run.updates, "episodes": run.episodes, "optimizer_steps": run.optimizer_steps,
          "score": last["score"] - last["eos_penalty"], "kl": last["kl"], "optim": "torch.optim.AdamW"}
"""
    + EPILOGUE
)

TRL = (
    PRELUDE
    + r"""
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl.experimental.ppo import PPOConfig, PPOTrainer
from trl.experimental.ppo import ppo_trainer as trl_ppo
MARKER = cfg["marker"]
start = time.perf_counter()
cuda = torch.cuda.is_available()
torch.manual_seed(cfg["seed"]); torch.set_num_threads(cfg["threads"])
tok = AutoTokenizer.from_pretrained(cfg["policy"], local_files_only=True)
tok.padding_side = "left"
assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
policy = AutoModelForCausalLM.from_pretrained(cfg["policy"], local_files_only=True, use_safetensors=True)
ref = AutoModelForCausalLM.from_pretrained(cfg["policy"], local_files_only=True, use_safetensors=True)
def sequence_classifier():
    return AutoModelForSequenceClassification.from_pretrained(
        cfg["reward"], num_labels=1, pad_token_id=tok.pad_token_id, local_files_only=True, use_safetensors=True)
reward, value = sequence_classifier(), sequence_classifier()
prompts = [json.loads(line)["formatted"] for line in open(cfg["prompts"], encoding="utf-8")]
dataset = Dataset.from_dict({"prompt": prompts}).map(
    lambda row: tok(row["prompt"], add_special_tokens=True), remove_columns=["prompt"])
args = PPOConfig(
    output_dir=cfg["out"], total_episodes=cfg["episodes"], per_device_train_batch_size=cfg["rollout"],
    gradient_accumulation_steps=1, num_mini_batches=cfg["mini_batches"], num_ppo_epochs=cfg["ppo_epochs"],
    local_rollout_forward_batch_size=cfg["rollout"], response_length=cfg["new_tokens"],
    temperature=cfg["temperature"], stop_token="eos", missing_eos_penalty=cfg["missing_eos_penalty"],
    kl_coef=cfg["kl_coef"], kl_estimator="k1", whiten_rewards=False, gamma=1.0, lam=0.95, cliprange=0.2,
    cliprange_value=0.2, vf_coef=0.1, learning_rate=cfg["learning_rate"], lr_scheduler_type="constant",
    weight_decay=0.0, num_sample_generations=0, eval_strategy="no", save_strategy="no", report_to=[],
    push_to_hub=False, seed=cfg["seed"], use_cpu=not cuda, bf16=cfg["mixed_precision"] == "bf16", fp16=False, gradient_checkpointing=False,
    disable_tqdm=True, dataloader_num_workers=0, logging_steps=1,
)
trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                     value_model=value, train_dataset=dataset)
marks = {}
batch_generation = trl_ppo.batch_generation
def timed_generation(*a, **k):
    if "first" not in marks:
        marks["first"], marks["first_cpu"] = time.perf_counter(), time.process_time()
    return batch_generation(*a, **k)
trl_ppo.batch_generation = timed_generation
trainer.train()
if cuda:
    torch.cuda.synchronize()
marks["last"], marks["last_cpu"] = time.perf_counter(), time.process_time()
logs = [row for row in trainer.state.log_history if "objective/kl" in row]
result = {"updates": trainer.state.global_step, "episodes": trainer.state.episode,
          "optimizer_steps": trainer.state.global_step * args.num_ppo_epochs * args.num_mini_batches,
          "score": logs[-1]["objective/scores"] if logs else None, "kl": logs[-1]["objective/kl"] if logs else None,
          "optim": str(getattr(args.optim, "value", args.optim))}
"""
    + EPILOGUE
)

PROBE = r"""
import json
from importlib.metadata import version
from trl.experimental.ppo import PPOConfig, PPOTrainer  # noqa: F401  the import the benchmark needs
names = ["torch", "trl", "transformers", "accelerate", "datasets", "tokenizers", "safetensors", "numpy"]
print(json.dumps({name: version(name) for name in names}))
"""


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _probe(python: Path) -> dict[str, str] | None:
    """The venv's package versions, or None when trl.experimental.ppo does not import there."""
    if not python.is_file():
        return None
    env = {**os.environ, "TRL_EXPERIMENTAL_SILENCE": "1"}
    done = subprocess.run(
        [str(python), "-c", PROBE], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode:
        return None
    found: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def ensure_trl_venv(venv: Path, torch_pin: str) -> tuple[Path | None, dict[str, str], str]:
    """Create or reuse the TRL 1.12.0 environment: (its python or None, versions, message)."""
    python = venv / "bin" / "python"
    found = _probe(python)
    if found and found.get("trl") == TRL_VERSION and found.get("torch") == torch_pin:
        return python, found, f"reusing {venv}"
    pins = [f"{name}=={v}" for name in PINNED_ALONG if (v := _version(name))]
    pip = [str(python), "-m", "pip", "install", *PIP_OPTIONS]
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        # torch first and alone: the local wheel of the version running here, never another one
        pip + [f"torch=={torch_pin}"],
        # listing torch again keeps pip from replacing it while resolving the rest
        pip + [f"torch=={torch_pin}", f"trl=={TRL_VERSION}", *pins],
    ]
    for step in steps:
        if step[0] == sys.executable and python.is_file():
            continue  # the environment exists; install into it
        print("$ " + " ".join(step), flush=True)
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-6:])
            return None, {}, f"could not build the TRL {TRL_VERSION} environment at {venv}:\n{tail}"
    found = _probe(python)
    if not found:
        return None, {}, f"trl.experimental.ppo does not import in {venv}"
    if found.get("torch") != torch_pin:
        return None, found, f"pip installed torch {found.get('torch')} in {venv}, not {torch_pin}"
    return python, found, f"built {venv}"


def build_inputs(work: Path, n_prompts: int) -> tuple[Path, Path, Path, int]:
    """The tiny policy, the reward model and the prompts file: (policy, reward, prompts, n)."""
    from rlhfspec.runtime.train.common import quiet_transformers
    from rlhfspec.runtime.train.formatting import format_prompt
    from rlhfspec.runtime.train.models import build_tiny, load_reward_model, load_tokenizer

    quiet_transformers()
    texts = [
        json.loads(line)["text"]
        for path in PROMPT_FILES
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    policy = build_tiny(texts, seed=SEED, out_dir=work / "tiny")
    reward_dir = work / "reward"
    tokenizer = load_tokenizer(policy)
    reward = load_reward_model(policy, tokenizer=tokenizer, seed=SEED + 1)
    reward.save_pretrained(reward_dir, safe_serialization=True)
    tokenizer.save_pretrained(reward_dir)
    chosen = texts[:n_prompts] if n_prompts > 0 else texts
    prompts = work / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"raw": t, "formatted": format_prompt(t)}) + "\n" for t in chosen),
        encoding="utf-8",
    )
    return policy, reward_dir, prompts, len(chosen)


def run_side(python: Path, script: str, cfg: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [str(python), "-c", script, json.dumps(cfg)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(MARKER):
            result: dict[str, Any] = json.loads(line[len(MARKER) :])
            return result
    tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    raise RuntimeError(f"{python} exited with {done.returncode}:\n{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--episodes", type=int, default=256, help="episodes per run (256)")
    parser.add_argument("--rollout", type=int, default=32, help="rollout batch size (32)")
    parser.add_argument("--mini-batches", type=int, default=2, help="minibatches per rollout (2)")
    parser.add_argument("--ppo-epochs", type=int, default=2, help="PPO epochs per rollout (2)")
    parser.add_argument("--new-tokens", type=int, default=32, help="response tokens (32)")
    parser.add_argument("--prompts", type=int, default=0, help="prompts used (0: all 600)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per side (2)")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="ours' checkpoint interval in updates (0: only the final one, outside the timing)",
    )
    parser.add_argument("--venv", type=Path, default=Path("/tmp/rlhfspec-trl112"))
    parser.add_argument(
        "--torch",
        default=None,
        help="torch version for the venv (default: the one installed here)",
    )
    parser.add_argument("--skip-trl", action="store_true", help="run ours alone")
    parser.add_argument(
        "--mixed-precision",
        choices=("no", "bf16"),
        default="no",
        help="bf16: autocast on both sides (ours over float32 weights; TRL's bf16=True)",
    )
    args = parser.parse_args()
    if args.episodes % args.rollout or args.rollout % args.mini_batches:
        parser.error("--episodes must be a multiple of --rollout, and --rollout of --mini-batches")

    from rlhfspec.runtime.train.common import threads as default_threads

    threads = int(os.environ.get("RLHFSPEC_THREADS") or default_threads())
    env = {
        **os.environ,
        "RLHFSPEC_THREADS": str(threads),
        "OMP_WAIT_POLICY": "PASSIVE",
        "TOKENIZERS_PARALLELISM": "false",
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    torch_pin = args.torch or _version("torch") or "2.13.0"
    trl_python: Path | None = None
    trl_versions: dict[str, str] = {}
    if args.skip_trl:
        print("--skip-trl: reporting ours alone")
    else:
        began = time.perf_counter()
        trl_python, trl_versions, message = ensure_trl_venv(args.venv, torch_pin)
        print(f"{message} ({time.perf_counter() - began:.0f}s)")
        if trl_python is None:
            print(f"TRL {TRL_VERSION} is unavailable; reporting ours alone.")

    updates = args.episodes // args.rollout
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        work = Path(tmp)
        policy, reward, prompts, n_prompts = build_inputs(work, args.prompts)
        cfg = {
            "policy": str(policy),
            "reward": str(reward),
            "prompts": str(prompts),
            "episodes": args.episodes,
            "rollout": args.rollout,
            "mini_batches": args.mini_batches,
            "ppo_epochs": args.ppo_epochs,
            "new_tokens": args.new_tokens,
            "kl_coef": KL_COEF,
            "learning_rate": LEARNING_RATE,
            "temperature": TEMPERATURE,
            "missing_eos_penalty": MISSING_EOS_PENALTY,
            "checkpoint_every": args.checkpoint_every or updates,
            "seed": SEED,
            "threads": threads,
            "mixed_precision": args.mixed_precision,
            "marker": MARKER,
        }
        sides: dict[str, tuple[Path, str]] = {"ours": (Path(sys.executable), OURS)}
        if trl_python is not None:
            sides["trl"] = (trl_python, TRL)
        results: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
        for round_index in range(args.repeats):
            for side, (python, script) in sides.items():
                try:
                    out = work / f"out-{side}-{round_index}"
                    result = run_side(python, script, {**cfg, "out": str(out)}, env)
                except RuntimeError as exc:
                    print(f"{side} run {round_index + 1} failed: {exc}")
                    continue
                results[side].append(result)
                print(
                    f"  run {round_index + 1} {side}: {result['train_seconds']:.2f}s training, "
                    f"{result['max_rss_mib']:.0f} MiB max RSS",
                    flush=True,
                )

    names = {"ours": "rlhfspec train_ppo", "trl": f"trl {TRL_VERSION} PPOTrainer"}
    best: dict[str, dict[str, Any]] = {}
    device = "?"
    for side, runs in results.items():
        if runs:
            best[side] = min(runs, key=lambda r: r["train_seconds"])
            device = best[side]["device"]
    print()
    print(
        f"PPO on builtin:tiny, {args.episodes} episodes = {updates} updates x {args.rollout}, "
        f"{args.mini_batches} minibatches x {args.ppo_epochs} PPO epochs, {args.new_tokens} new "
        f"tokens, {n_prompts} prompts, device {device}, threads {threads}, "
        f"best of {args.repeats} alternating runs"
    )
    print(
        f"ours: python {sys.version.split()[0]}, torch {_version('torch')}, transformers "
        f"{_version('transformers')}, accelerate {_version('accelerate')}"
    )
    if trl_versions:
        print("trl venv: " + ", ".join(f"{k} {v}" for k, v in trl_versions.items()))
    header = (
        f"{'':26} {'upd':>3} {'train s (runs)':>16} {'episodes/s':>10} {'ep/cpu-s':>8} {'e2e s':>6} "
        f"{'max RSS MiB':>11} {'CUDA peak MiB':>13}  last score / kl"
    )
    print(header)
    for side in sides:
        runs = results[side]
        if not runs:
            print(f"{names[side]:26} (no successful run)")
            continue
        b = best[side]
        seconds = "/".join(f"{r['train_seconds']:.1f}" for r in runs)
        rss = max(r["max_rss_mib"] for r in runs)
        cuda_peaks = [r["cuda_peak_mib"] for r in runs if r["cuda_peak_mib"] is not None]
        cuda = f"{max(cuda_peaks):.0f}" if cuda_peaks else "-"
        eps = b["episodes"] / b["train_seconds"]
        eps_cpu = b["episodes"] / min(r["train_cpu_seconds"] for r in runs)
        quality = (
            f"{b['score']:.3f} / {b['kl']:.4f}"
            if b["score"] is not None and b["kl"] is not None
            else "-"
        )
        print(
            f"{names[side]:26} {b['updates']:3d} {seconds:>16} {eps:10.2f} {eps_cpu:8.2f} "
            f"{b['e2e_seconds']:6.1f} {rss:11.0f} {cuda:>13}  {quality}"
        )
    if "ours" in best and "trl" in best:
        ours, trl = best["ours"], best["trl"]
        if ours["episodes"] != trl["episodes"]:
            print(f"warning: episodes differ (ours {ours['episodes']}, trl {trl['episodes']})")
        ratio = (ours["episodes"] / ours["train_seconds"]) / (
            trl["episodes"] / trl["train_seconds"]
        )
        cpu_ratio = min(r["train_cpu_seconds"] for r in results["trl"]) / min(
            r["train_cpu_seconds"] for r in results["ours"]
        )
        rss_ratio = max(r["max_rss_mib"] for r in results["ours"]) / max(
            r["max_rss_mib"] for r in results["trl"]
        )
        line = (
            f"ratio ours/trl: episodes/s {ratio:.3f} wall (goal >= 1.0), {cpu_ratio:.3f} CPU "
            f"time; max RSS {rss_ratio:.3f} (lower is leaner)"
        )
        cuda_ours = [r["cuda_peak_mib"] for r in results["ours"] if r["cuda_peak_mib"]]
        cuda_trl = [r["cuda_peak_mib"] for r in results["trl"] if r["cuda_peak_mib"]]
        if cuda_ours and cuda_trl:
            line += f"; CUDA peak {max(cuda_ours) / max(cuda_trl):.3f}"
        print(line)
        print(f"TRL optimizer: {trl['optim']}; ours: {ours['optim']}")
    elif "ours" in best:
        print("no TRL result; ours alone (see above for why)")
    return 0 if "ours" in best else 1


if __name__ == "__main__":
    raise SystemExit(main())
