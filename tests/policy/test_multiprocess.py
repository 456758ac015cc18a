"""PPO and DPO as two data-parallel processes (torchrun, gloo on CPU), and the launch entry point.

The slow tests start ``python -m torch.distributed.run --nproc_per_node 2`` on small scripts
written into tmp (each calls `train_ppo` / `train_dpo` on a tiny model and reports what its rank
saw as JSON), then on the plan's own launch command for a PPO plan and a DPO plan whose
upstream stages already ran. What they pin down: both ranks exit 0; the run directory has one
writer (one metrics file with one row per update or step, one set of checkpoints, no rank's
temporary leftovers, no log lines from rank 1); the optimizer steps are those of the *global*
batch; each rank trains on its own shard of the prompts; the final weights are finite and moved;
and a two-process run resumed from a checkpoint ends with the same bytes as an unbroken one.

The fast tests check the arithmetic the processes share (global whitening and statistics, with
two threads standing in for two processes) and the global-batch divisibility rule.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from rlhfspec.cli.main import main as cli_main  # noqa: E402
from rlhfspec.common.errors import RunError  # noqa: E402
from rlhfspec.runtime.policy.distributed import (  # noqa: E402
    SINGLE,
    global_explained_variance,
    global_masked_mean,
    global_masked_var,
    global_masked_whiten,
)
from rlhfspec.runtime.policy.ppo import PPOSettings, prompt_indices  # noqa: E402
from rlhfspec.runtime.policy.ppo_math import (  # noqa: E402
    explained_variance,
    masked_mean,
    masked_var,
    masked_whiten,
)
from tests.conftest import ROOT  # noqa: E402

PROCESSES = 2
#: DPO's metrics in two processes against one on the same global batches (the loss is a mean
#: over pairs: only the reduction order differs, about 1e-6 relative; 1e-3 allowed)
DPO_TOLERANCE = 1e-3
#: Each torchrun below takes 15-40 s on two busy CPU cores; a hang must fail, not block CI.
TIMEOUT = 300


# ---------------------------------------------------------------------------------------------
# Helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def torchrun_command(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The command and environment of ``torchrun --nproc_per_node 2`` on `args`.

    One thread per process: two processes already fill the two cores CI has.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(PROCESSES),
        "--master_port",
        str(free_port()),
        *args,
    ]
    return command, {**os.environ, "RLHFSPEC_THREADS": "1", "OMP_NUM_THREADS": "1"}


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node 2`` on `args` (a script and its arguments, or ``-m ...``)."""
    command, env = torchrun_command(args)
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]
    return done


def reports(folder: Path) -> list[dict[str, Any]]:
    """The JSON each rank of a test script wrote about itself, in rank order."""
    found = [json.loads((folder / f"rank-{r}.json").read_text()) for r in range(PROCESSES)]
    assert [r["rank"] for r in found] == list(range(PROCESSES))
    return found


def weights(path: Path) -> dict[str, Any]:
    return load_file(str(path))


def assert_trained(start: Path, final: Path) -> None:
    """Finite weights that differ from where training started."""
    before, after = weights(start), weights(final)
    assert before.keys() == after.keys()
    assert all(torch.isfinite(t).all() for t in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def no_leftovers(folder: Path) -> None:
    """Nothing half-written or rank-specific: no hidden temporaries, no rank-suffixed copies."""
    names = files_under(folder)
    assert not [n for n in names if "/." in f"/{n}" or ".tmp" in n], names
    assert not [n for n in names if "rank" in n.lower() and "rng_state" not in n], names


# The tiny corpus and prompts of tests/test_ppo.py
WORDS = ["the", "model", "answer", "question", "helpful", "honest", "reward", "policy", "human"]
CORPUS = [
    f"Question {i}: {' '.join(WORDS[(i + j) % len(WORDS)] for j in range(12))}. Answer: ok {i % 7}"
    for i in range(60)
]
PROMPTS = [f"question {i} about the {WORDS[i % len(WORDS)]}" for i in range(8)]

#: Global batch 8 over 2 processes: 4 episodes each, 2 minibatches of 2 micro-batches of 1.
#: 16 episodes = 2 updates x (2 epochs x 2 minibatches) = 8 optimizer steps, as with one process.
PPO_SETTINGS: dict[str, Any] = {
    "kl_coef": 0.05,
    "kl_mode": "adaptive",
    "kl_target": 0.5,
    "kl_horizon": 100,
    "kl_estimator": "k3",
    "total_episodes": 16,
    "rollout_batch_size": 8,
    "mini_batches": 2,
    "gradient_accumulation_steps": 2,
    "ppo_epochs": 2,
    "max_new_tokens": 8,
    "learning_rate": 1e-3,
    "whiten_rewards": True,
    "checkpoint_every": 1,
    "seed": 3,
    "threads": 1,
    "cpu": True,
}

PPO_SCRIPT = """
import json, os, shutil, sys
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from rlhfspec.runtime.policy import ppo
from rlhfspec.runtime.policy.ppo import trainer

models, out, settings = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
prompts = json.loads(sys.argv[4])
rank = int(os.environ["RANK"])
steps, logged, shards = [0], [], []
register_optimizer_step_post_hook(lambda *a: steps.__setitem__(0, steps[0] + 1))
real_collect = trainer.collect_rollout

def collect(**kwargs):
    shards.append(list(kwargs["prompts"]))
    return real_collect(**kwargs)

trainer.collect_rollout = collect  # train_ppo looks it up in its module: record each rank's shard

def train(folder, resume):
    result = ppo.train_ppo(
        models / "tiny", models / "tiny", models / "reward", prompts, ppo.PPOSettings(**settings),
        folder, resume=resume, log=logged.append,
    )
    return {
        "optimizer_steps": result.optimizer_steps,
        "kl_coef": result.kl_coef,
        "final": str(result.final_checkpoint),
        "metrics": [{k: v for k, v in row.items() if k != "seconds"} for row in result.metrics],
        "resumed_from": result.resumed_from,
    }

report = {"rank": rank, "world": int(os.environ["WORLD_SIZE"])}
report["run"] = train(out / "run", False)
report["steps"], report["shards"], report["logged"] = steps[0], shards, list(logged)
# A kill after update 1: the copy loses its last checkpoint, and the resumed run redoes update 2.
if rank == 0:
    shutil.copytree(out / "run", out / "resumed")
    shutil.rmtree(out / "resumed" / "checkpoints" / "update-000002")
torch.distributed.barrier()
report["resumed"] = train(out / "resumed", True)
(out / f"rank-{rank}.json").write_text(json.dumps(report))
"""

TOPICS = ["order", "refund", "password", "invoice", "delivery", "account", "plan", "card"]
PAIRS = [
    {
        "prompt": f"Can you help me with my {TOPICS[i % len(TOPICS)]}, reference {i}?",
        "chosen": f"Thank you for asking, I am glad to help with your {TOPICS[i % len(TOPICS)]}.",
        "rejected": f"No. Figure out your {TOPICS[i % len(TOPICS)]} yourself, idiot.",
    }
    for i in range(32)
]
#: 32 pairs in global batches of 8 (4 per process): 4 optimizer steps, as with one process.
DPO_POLICY: dict[str, Any] = {
    "base_model": "builtin:tiny",
    "trust_remote_code": False,
    "start_from_sft": False,
    "method": "dpo",
    "checkpoint_every": 2,
    "kl": {"coef": 0.1},
    "dpo": {
        "beta": 0.1,
        "loss_type": "sigmoid",
        "train": {
            "epochs": 1,
            "learning_rate": 5e-3,
            "batch_size": 8,
            "gradient_accumulation_steps": 1,
            "max_length": 128,
            "weight_decay": 0.0,
            "warmup_ratio": 0.0,
        },
    },
}

DPO_SCRIPT = """
import json, os, shutil, sys
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from rlhfspec.runtime.policy.dpo import train_dpo

tiny, out = Path(sys.argv[1]), Path(sys.argv[2])
policy, pairs = json.loads(sys.argv[3]), json.loads(sys.argv[4])
rank = int(os.environ["RANK"])
steps, logged = [0], []
register_optimizer_step_post_hook(lambda *a: steps.__setitem__(0, steps[0] + 1))

def train(folder, resume):
    return train_dpo(
        tiny, tiny, pairs, policy, seed=0, out_dir=folder, resume=resume, log=logged.append,
        metadata={"test": "multiprocess"},
    )

summary = train(out / "run", False)
report = {"rank": rank, "summary": summary, "steps": steps[0], "logged": list(logged)}
# A kill after step 2: the copy loses the trainer's and the policy's step-4 checkpoints.
if rank == 0:
    shutil.copytree(out / "run", out / "resumed")
    shutil.rmtree(out / "resumed" / "trainer" / "checkpoint-4")
    shutil.rmtree(out / "resumed" / "checkpoints" / "step-000004")
torch.distributed.barrier()
report["resumed"] = train(out / "resumed", True)
(out / f"rank-{rank}.json").write_text(json.dumps(report))
"""


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny policy and a reward model on it (as tests/test_ppo.py builds them)."""
    from rlhfspec.runtime.train.models import build_tiny, load_reward_model, load_tokenizer

    root = tmp_path_factory.mktemp("models")
    tiny = build_tiny(CORPUS, seed=0, out_dir=root / "tiny", vocab_size=320)
    tokenizer = load_tokenizer(tiny)
    reward = load_reward_model(tiny, tokenizer=tokenizer, seed=0)
    reward.save_pretrained(root / "reward", safe_serialization=True)
    tokenizer.save_pretrained(root / "reward")
    return root


# ---------------------------------------------------------------------------------------------
# train_ppo and train_dpo under torchrun


@pytest.mark.slow
def test_ppo_in_two_processes(tiny_models: Path, tmp_path: Path) -> None:
    script = tmp_path / "ppo_two.py"
    script.write_text(textwrap.dedent(PPO_SCRIPT))
    out = tmp_path / "out"
    out.mkdir()
    torchrun(
        [str(script), str(tiny_models), str(out), json.dumps(PPO_SETTINGS), json.dumps(PROMPTS)],
        cwd=tmp_path,
    )
    ranks = reports(out)
    settings = PPOSettings(**PPO_SETTINGS)

    # the global batch decides the accounting: 2 updates x 2 epochs x 2 minibatches
    for report in ranks:
        assert report["world"] == PROCESSES
        assert report["steps"] == report["run"]["optimizer_steps"] == 8
        assert [m["optimizer_steps"] for m in report["run"]["metrics"]] == [4, 8]
        assert [m["episodes"] for m in report["run"]["metrics"]] == [8, 16]
    # every rank computed the same global metrics and KL coefficient
    assert ranks[0]["run"] == ranks[1]["run"]

    # each rank rolled out its own half of the global batch, in the global prompt order, each
    # prompt formatted with the model's chat template (train_ppo's default, as the stage's)
    from rlhfspec.runtime.train.formatting import chat_format
    from rlhfspec.runtime.train.models import load_tokenizer

    render = chat_format(load_tokenizer(tiny_models / "tiny"), "auto").prompt
    for update in range(2):
        indices = prompt_indices(len(PROMPTS), settings.seed, 8 * update, 8)
        expected = [render(PROMPTS[i]) for i in indices]
        assert ranks[0]["shards"][update] + ranks[1]["shards"][update] == expected
        assert len(ranks[0]["shards"][update]) == len(ranks[1]["shards"][update]) == 4

    # one writer: one metrics file with one row per update, one set of checkpoints, one log
    run_dir = out / "run"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["update"] for row in rows] == [1, 2]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows] == ranks[0]["run"][
        "metrics"
    ]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "update-000001",
        "update-000002",
    ]
    assert files_under(run_dir / "checkpoints" / "update-000002") == [
        "checkpoint.json",
        "optimizer.pt",
        "policy/chat_template.jinja",  # builtin:tiny's tokenizer carries its chat template
        "policy/config.json",
        "policy/generation_config.json",
        "policy/model.safetensors",
        "policy/tokenizer.json",
        "policy/tokenizer_config.json",
        "rng_state.pt",
        "value/config.json",
        "value/model.safetensors",
    ]
    no_leftovers(run_dir)
    assert any(line.startswith("update 2/2") for line in ranks[0]["logged"])
    assert ranks[1]["logged"] == []

    final = Path(ranks[0]["run"]["final"])
    assert_trained(
        tiny_models / "tiny" / "model.safetensors", final / "policy" / "model.safetensors"
    )
    assert_trained(
        tiny_models / "reward" / "model.safetensors", final / "value" / "model.safetensors"
    )

    # resumed from update 1 by both processes, it ends with exactly the unbroken run's bytes
    for report in ranks:
        assert report["resumed"]["resumed_from"] == 1
        assert report["resumed"]["metrics"] == report["run"]["metrics"]
    resumed = Path(ranks[0]["resumed"]["final"])
    for part in ("policy", "value"):
        a = (final / part / "model.safetensors").read_bytes()
        assert a == (resumed / part / "model.safetensors").read_bytes(), part


@pytest.mark.slow
def test_dpo_in_two_processes(tiny_models: Path, tmp_path: Path) -> None:
    script = tmp_path / "dpo_two.py"
    script.write_text(textwrap.dedent(DPO_SCRIPT))
    out = tmp_path / "out"
    out.mkdir()
    torchrun(
        [
            str(script),
            str(tiny_models / "tiny"),
            str(out),
            json.dumps(DPO_POLICY),
            json.dumps(PAIRS),
        ],
        cwd=tmp_path,
    )
    ranks = reports(out)
    for report in ranks:
        # 32 pairs / global batch 8 = 4 optimizer steps, each counted on every rank
        assert report["summary"]["steps"] == report["steps"] == 4
        assert report["summary"]["checkpoints"] == ranks[0]["summary"]["checkpoints"]
    assert ranks[1]["logged"] == []
    assert any("policy checkpoint step-000004" in line for line in ranks[0]["logged"])

    run_dir = out / "run"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step-000002",
        "step-000004",
    ]
    meta = json.loads((run_dir / "checkpoints" / "step-000004" / "checkpoint.json").read_text())
    assert meta["step"] == 4 and meta["metrics"]["step"] == 4
    assert meta["metadata"] == {"test": "multiprocess"}
    # the HF Trainer keeps one RNG state per rank in its own checkpoints, and nothing else
    trainer_files = files_under(run_dir / "trainer")
    assert "checkpoint-4/rng_state_0.pth" in trainer_files
    assert "checkpoint-4/rng_state_1.pth" in trainer_files
    no_leftovers(run_dir)
    final = run_dir / "checkpoints" / "step-000004" / "model.safetensors"
    assert_trained(tiny_models / "tiny" / "model.safetensors", final)

    # resumed from step 2 by both processes, it ends with exactly the unbroken run's bytes
    for report in ranks:
        assert report["resumed"]["resumed_from_step"] == 2
        assert report["resumed"]["steps"] == 4
    resumed = out / "resumed" / "checkpoints" / "step-000004" / "model.safetensors"
    assert final.read_bytes() == resumed.read_bytes()

    # one process on the same data and seed trains on the same global batches: the same
    # metrics per step up to the reduction order (two half-batch means averaged by gloo)
    from rlhfspec.runtime.policy.dpo import train_dpo

    single = tmp_path / "single"
    train_dpo(
        tiny_models / "tiny",
        tiny_models / "tiny",
        PAIRS,
        DPO_POLICY,
        seed=0,
        out_dir=single,
        resume=False,
        log=lambda m: None,
        metadata={},
    )
    one = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in one] == [1, 2, 3, 4]
    for a, b in zip(one, rows, strict=True):
        for key in ("loss", "rewards/margins", "rewards/chosen", "logps/chosen"):
            assert b[key] == pytest.approx(a[key], rel=DPO_TOLERANCE, abs=1e-6), (a, b, key)


# ---------------------------------------------------------------------------------------------
# The plan's launch command, for the policy stage of a PPO and of a DPO plan


def small_spec(root: Path, method: str) -> Path:
    """tests/test_train_stages.py's small example, without SFT (the policy starts from the
    builtin model: SFT is the slowest upstream stage), for two processes."""
    from tests.train.test_train_stages import small_project

    spec = small_project(root, records=240)
    text = spec.read_text()
    text = text.replace("sft:\n  enabled: true", "sft:\n  enabled: false")
    text = text.replace(
        "  start_from_sft: true\n  method: ppo", "  start_from_sft: false\n  method: ppo"
    )
    if method == "dpo":
        start, end = text.index("  method: ppo"), text.index("\nevaluation:")
        text = (
            text[:start]
            + "  method: dpo\n  kl: {coef: 0.1, estimator: k3}\n"
            + "  dpo:\n    beta: 0.1\n"
            + "    train: {epochs: 1, learning_rate: 5.0e-4, batch_size: 8, max_length: 128}\n"
            + "  checkpoint_every: 2\n"
            + text[end:]
        )
    # our PPO shards with FSDP2 on the CPU too (tests/policy/test_fsdp_ppo.py); DPO is DDP here
    policy = "stages: {policy: {strategy: fsdp}}" if method == "ppo" else "stages: {}"
    text += f"\ncompute: {{device: cpu, num_processes: 2, {policy}}}\n"
    if method == "dpo":
        text += "tracking: {backend: tensorboard}\n"
    spec.write_text(text)
    return spec


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A run directory whose stages up to the reward model have finished (in this process)."""
    from rlhfspec.runtime.run import run

    root = tmp_path_factory.mktemp("upstream")
    spec = small_spec(root, "ppo")
    run_dir = run(
        spec, display="spec", run_dir=root / "run", until="reward_model", log=lambda m: None
    )
    return root, run_dir


def interpreter_bin(folder: Path) -> Path:
    """``torchrun`` and ``rlhfspec`` scripts that run this interpreter (an installed script's
    shebang may name another environment's Python)."""
    folder.mkdir(parents=True, exist_ok=True)
    scripts = {
        "torchrun": f'exec {shlex.quote(sys.executable)} -m torch.distributed.run "$@"\n',
        "rlhfspec": f"exec {shlex.quote(sys.executable)} -c "
        "'import sys; from rlhfspec.cli.main import main; sys.argv[0] = \"rlhfspec\"; main()' "
        '"$@"\n',
    }
    for name, body in scripts.items():
        path = folder / name
        path.write_text("#!/usr/bin/env bash\n" + body)
        path.chmod(0o755)
    return folder


def run_printed(
    command: str, cwd: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A command exactly as the plan prints it (plus `extra` arguments), through the shell,
    with `torchrun` and `rlhfspec` running this interpreter."""
    bindir = interpreter_bin(cwd / ".bin")
    full_env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "RLHFSPEC_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    line = " ".join([command, *(shlex.quote(a) for a in extra)])
    done = subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-6000:]
    return done


def launch_policy(root: Path, method: str, base_run: Path) -> tuple[dict[str, Any], Path]:
    """Compile the spec, then run the plan's printed launch command for the policy stage
    (torchrun with two processes) on a copy of a run directory whose upstream stages ran."""
    project = root / method
    spec = small_spec(project, method)
    build = project / "build"
    result = CliRunner().invoke(cli_main, ["compile", str(spec), "-o", str(build)])
    assert result.exit_code == 0, result.output
    plan = json.loads((build / "plan.json").read_text())
    launch = next(s["launch"] for s in plan["stages"] if s["name"] == "policy")
    assert launch.startswith("torchrun --standalone --nproc_per_node 2 -m rlhfspec.cli.launch")
    run_dir = project / "run"
    shutil.copytree(base_run, run_dir)
    done = run_printed(launch, build, "--run-dir", str(run_dir))
    assert "[policy] done in" in done.stdout, done.stdout
    assert not (run_dir / "run.lock").exists()
    lineage = json.loads((run_dir / "lineage.json").read_text())
    assert lineage["stages"]["policy"]["status"] == "done"
    # a second launch finds the stage unchanged: rank 0 skips it and the worker stops with it
    again = run_printed(launch, build, "--run-dir", str(run_dir))
    assert "[policy] unchanged" in again.stdout, again.stdout
    return lineage, run_dir


@pytest.mark.slow
def test_launch_runs_the_ppo_policy_stage_in_two_processes(upstream: tuple[Path, Path]) -> None:
    root, base_run = upstream
    lineage, run_dir = launch_policy(root, "ppo", base_run)
    entry = lineage["stages"]["policy"]
    # 16 episodes in global batches of 8: 2 updates x 1 epoch x 2 minibatches
    assert entry["metrics"]["updates"] == 2
    assert entry["metrics"]["final"]["optimizer_steps"] == 4
    assert entry["metrics"]["compute"]["strategy"] == "fsdp"
    assert entry["metrics"]["compute"]["processes"] == 2
    folder = run_dir / "models" / "policy"
    rows = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["update"] for row in rows] == [1, 2]
    index = json.loads((folder / "checkpoints.json").read_text())
    assert [c["step"] for c in index["checkpoints"]] == [1, 2]
    no_leftovers(folder)
    final = run_dir / index["checkpoints"][-1]["path"] / "model.safetensors"
    start = Path(index["start"]) / "model.safetensors"
    assert_trained(start, final)


@pytest.mark.slow
def test_launch_runs_the_dpo_policy_stage_in_two_processes(upstream: tuple[Path, Path]) -> None:
    root, base_run = upstream
    lineage, run_dir = launch_policy(root, "dpo", base_run)
    pairs = len((run_dir / "preferences" / "pairs.jsonl").read_text().splitlines())
    steps = -(-pairs // 8)  # batch_size 8 is the global batch (4 per process)
    metrics = lineage["stages"]["policy"]["metrics"]
    assert metrics["steps"] == steps
    assert metrics["compute"]["processes"] == 2 and metrics["compute"]["strategy"] == "ddp"
    # TRL's TensorBoard callback on the main process, the run id in lineage
    tracking = metrics["tracking"]
    assert tracking["backend"] == "tensorboard" and tracking["run_id"].endswith("-policy")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / tracking["dir"]))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, steps + 1))
    folder = run_dir / "models" / "policy"
    rows = [json.loads(row) for row in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(1, steps + 1))
    index = json.loads((folder / "checkpoints.json").read_text())
    assert index["checkpoints"][-1]["step"] == steps
    no_leftovers(folder / "checkpoints")
    final = run_dir / index["checkpoints"][-1]["path"] / "model.safetensors"
    assert_trained(Path(index["start"]) / "model.safetensors", final)


def test_launch_refuses_stages_that_cannot_run_in_several_processes(tmp_path: Path) -> None:
    spec = ROOT / "specs" / "minimal.yaml"
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0"}
    for args in (["--stage", "evaluate"], ["--until", "prompts"], []):
        done = subprocess.run(
            [sys.executable, "-m", "rlhfspec.cli.launch", str(spec), *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert "--stage sft, --stage reward_model, --stage policy" in done.stderr, done.stderr
        assert "--num_processes 1" in done.stderr


# ---------------------------------------------------------------------------------------------
# Shared arithmetic (fast): two threads stand in for two processes


class ThreadGroup:
    """A `Group` whose all-reduce adds the tensors of `world` threads (a barrier per call)."""

    def __init__(self, rank: int, world: int, box: dict[str, Any]) -> None:
        self.rank, self.world, self.box = rank, world, box

    @property
    def single(self) -> bool:
        return False

    def sum(self, tensor: Any) -> Any:
        barrier: threading.Barrier = self.box["barrier"]
        self.box[self.rank] = tensor.detach().clone()
        barrier.wait()
        total = sum(self.box[r] for r in range(self.world))
        barrier.wait()  # nobody overwrites its slot before everyone has read it
        return total


def in_threads(shards: list[tuple[Any, ...]], fn: Any) -> list[Any]:
    box: dict[str, Any] = {"barrier": threading.Barrier(len(shards))}
    out: list[Any] = [None] * len(shards)

    def work(rank: int) -> None:
        out[rank] = fn(*shards[rank], ThreadGroup(rank, len(shards), box))

    threads = [threading.Thread(target=work, args=(r,)) for r in range(len(shards))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def test_global_statistics_equal_those_of_the_whole_batch() -> None:
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    returns = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    mask = (torch.rand(6, 5, generator=generator) > 0.3).long()
    mask[:, 0] = 1
    # shards of different token counts: the means must weigh tokens, not shards
    shards = [(values[:3], returns[:3], mask[:3]), (values[3:], returns[3:], mask[3:])]

    means = in_threads(shards, lambda v, r, m, g: global_masked_mean(v, m, g))
    variances = in_threads(shards, lambda v, r, m, g: global_masked_var(v, m, g))
    for mean, var in zip(means, variances, strict=True):
        assert float(mean) == pytest.approx(float(masked_mean(values, mask)), rel=1e-12)
        assert float(var) == pytest.approx(float(masked_var(values, mask)), rel=1e-12)
    for shift in (True, False):
        whitened = in_threads(
            shards, lambda v, r, m, g, s=shift: global_masked_whiten(v, m, g, shift_mean=s)
        )
        expected = masked_whiten(values, mask, shift_mean=shift)
        assert torch.allclose(torch.cat(whitened), expected, rtol=1e-12, atol=1e-12)
    explained = in_threads(shards, lambda v, r, m, g: global_explained_variance(v, r, m, g))
    assert (
        explained[0]
        == explained[1]
        == pytest.approx(explained_variance(values, returns, mask), rel=1e-12)
    )
    # one process: exactly ppo_math's functions
    assert torch.equal(global_masked_whiten(values, mask, SINGLE), masked_whiten(values, mask))


def test_the_global_batch_must_split_evenly_across_processes() -> None:
    settings = PPOSettings(**{**PPO_SETTINGS, "rollout_batch_size": 8, "total_episodes": 8})
    assert settings.per_process_batch(1) == 8
    assert settings.per_process_batch(2) == 4
    with pytest.raises(RunError, match=r"multiple of processes x ppo.mini_batches .* = 12"):
        settings.per_process_batch(3)
    with pytest.raises(RunError, match="global batch"):
        settings.per_process_batch(4)  # 4 x 2 x 2 = 16 > 8
