"""PPO sharded with FSDP2 (`fully_shard`) in two processes under torchrun (gloo, CPU).

What the slow tests pin down, against one process and against DDP:

* one PPO minibatch (a fixed rollout, plain SGD so the weight change *is* the gradient) split
  over two processes gives the one-process update to 1e-6, under DDP and under FSDP: FSDP's
  reduce-scatter averages over processes as DDP's all-reduce does, so the per-token mean over
  the global minibatch survives sharding;
* a whole run (rollouts, updates, checkpoints) under FSDP gives DDP's metrics and weights to
  1e-4 (same rollouts; only reduction order differs), with the parameters really sharded
  (each process holds about half of every trained model) and the checkpoints in the DDP layout;
* gradient checkpointing under FSDP trains as the plain FSDP run does;
* LoRA (adapters on a sharded base) under FSDP gives DDP's metrics, adapters and merged
  weights;
* a FSDP run killed with SIGKILL after its first checkpoint and resumed ends with the metrics
  and weights of the unbroken FSDP run.

A full run in two processes does not reproduce a one-process run: each process samples its
shard of the rollout under its own seed (see `rlhfspec.runtime.policy.ppo`), so the exact
1-vs-2 comparison is the update's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402

from tests.policy.test_multiprocess import (  # noqa: E402, F401
    PPO_SETTINGS,
    PROCESSES,
    PROMPTS,
    TIMEOUT,
    free_port,
    reports,
    tiny_models,
    torchrun,
    torchrun_command,
)

#: 3 updates of 8 episodes, a checkpoint after each: the kill lands after the first.
SETTINGS = {**PPO_SETTINGS, "total_episodes": 24}

SCRIPT = """
import json, os, sys
from pathlib import Path

import torch
from accelerate import Accelerator

from rlhfspec.runtime.policy import ppo
from rlhfspec.runtime.policy.distributed import SINGLE, Group
from rlhfspec.runtime.policy.ppo import trainer
from rlhfspec.runtime.policy.ppo.sharding import Sharding, full_model_state, shard_pair
from rlhfspec.runtime.train.models import load_causal_lm, load_reward_model, load_tokenizer

models, out, settings = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
prompts, what = json.loads(sys.argv[4]), sys.argv[5]
rank = int(os.environ["RANK"])
report = {"rank": rank}
(out / f"{what}-pid-{rank}").write_text(str(os.getpid()))  # for the kill

def pair():
    tokenizer = load_tokenizer(models / "tiny")
    policy = load_causal_lm(models / "tiny", tokenizer=tokenizer, dtype=torch.float32)
    value = load_reward_model(models / "reward", tokenizer=tokenizer, dtype=torch.float32)
    return ppo.PolicyAndValue(policy.eval(), value.eval())

def rollout(rows):
    g = torch.Generator().manual_seed(7)
    b, p, t = 8, 5, 6
    ids = torch.randint(3, 60, (b, p + t), generator=g)
    attention = torch.ones(b, p + t, dtype=torch.long)
    attention[::3, :2] = 0  # some left padding
    lengths = torch.tensor([6, 1, 4, 6, 2, 5, 3, 6])
    mask = (torch.arange(t)[None] < lengths[:, None]).float()
    attention[:, p:] = mask.long()
    def r(scale):
        return torch.randn(b, t, generator=g) * scale * mask
    return ppo.Rollout(
        input_ids=ids[rows], attention_mask=attention[rows], context_length=p,
        response_mask=mask[rows], logp=(r(0.1) - 4.0)[rows], values=r(1.0)[rows],
        advantages=r(1.0)[rows], returns=r(1.0)[rows], stats={},
    )

def one_update():
    # one minibatch of 8 (2 micro-batches per process), SGD lr 1: weights move by the gradient
    s = ppo.PPOSettings(**{**settings, "total_episodes": 8, "mini_batches": 1, "ppo_epochs": 1,
                          "max_grad_norm": 1e9})
    accelerator = Accelerator(cpu=True)  # joins the process group
    group, cpu = Group.current(), torch.device("cpu")
    assert group.world == 2
    shard = slice(4 * rank, 4 * rank + 4)
    single = pair()
    sgd = torch.optim.SGD(single.parameters(), lr=1.0)
    stats, _ = ppo.ppo_update(model=single, optimizer=sgd, accelerator=Sharding(cpu, False),
                              rollout=rollout(slice(0, 8)), settings=s, update=1, group=SINGLE)
    expected, found = single.state_dict(), {"single": stats["grad_norm"]}
    ddp_model = accelerator.prepare(pair())
    sgd = torch.optim.SGD(ddp_model.parameters(), lr=1.0)
    stats, _ = ppo.ppo_update(model=ddp_model, optimizer=sgd, accelerator=accelerator,
                              rollout=rollout(shard), settings=s, update=1, group=group)
    found["ddp"] = stats["grad_norm"]
    states = {"ddp": accelerator.unwrap_model(ddp_model).state_dict()}
    sharded = pair()
    sharding = shard_pair(sharded, 2, cpu, False)
    sgd = torch.optim.SGD(sharded.parameters(), lr=1.0)
    stats, _ = ppo.ppo_update(model=sharded, optimizer=sgd, accelerator=sharding,
                              rollout=rollout(shard), settings=s, update=1, group=group)
    found["fsdp"] = stats["grad_norm"]
    states["fsdp"] = full_model_state(sharded)
    if rank == 0:
        moved = max(float((single.state_dict()[k] - pair().state_dict()[k]).abs().max())
                    for k in expected)
        found["moved"] = moved
        for name, state in states.items():
            assert state.keys() == expected.keys(), name
            found[name + "_diff"] = max(float((state[k] - expected[k]).abs().max())
                                        for k in expected)
    return found

def train(folder, strategy, resume=False, **extra):
    local = []
    original = trainer.load_models
    def load(*args, **kwargs):  # how much of each trained model this process holds
        loaded = original(*args, **kwargs)
        local.append(sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel()
                         for p in loaded.pair.parameters()))
        local.append(sum(p.numel() for p in loaded.pair.parameters()))
        return loaded
    trainer.load_models = load
    result = ppo.train_ppo(
        models / "tiny", models / "tiny", models / "reward", prompts,
        ppo.PPOSettings(**{**settings, "strategy": strategy, **extra}), folder, resume=resume,
        log=lambda line: None,
    )
    trainer.load_models = original
    return {
        "strategy": result.strategy,
        "resumed_from": result.resumed_from,
        "final": str(result.final_checkpoint),
        "metrics": [{k: v for k, v in row.items() if k != "seconds"} for row in result.metrics],
        "local_parameters": local,
    }

if what == "compare":
    report["update"] = one_update()
    report["ddp"] = train(out / "ddp", "ddp")
    report["fsdp"] = train(out / "fsdp", "fsdp")
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["all-linear"]}
    for strategy in ("ddp", "fsdp"):
        report["lora_" + strategy] = train(out / ("lora-" + strategy), strategy, lora=lora,
                                           total_episodes=16)
    report["checkpointed"] = train(out / "checkpointed", "fsdp", gradient_checkpointing=True,
                                   total_episodes=16)
else:
    report["run"] = train(out / "killed", "fsdp", resume=(what == "resume"))
(out / f"{what}-rank-{rank}.json").write_text(json.dumps(report))
"""


def launch(models: Path, out: Path, what: str) -> list[str]:
    """The test script's torchrun arguments: ``compare``, ``kill`` (a fresh FSDP run) or
    ``resume`` (the same run, resumed)."""
    script = out / "fsdp_ppo.py"
    script.write_text(textwrap.dedent(SCRIPT))
    return [
        str(script),
        str(models),
        str(out),
        json.dumps(SETTINGS),
        json.dumps(PROMPTS),
        what,
    ]


def read(out: Path, what: str) -> list[dict[str, Any]]:
    return [json.loads((out / f"{what}-rank-{r}.json").read_text()) for r in range(PROCESSES)]


def close(a: list[dict[str, Any]], b: list[dict[str, Any]], tol: float) -> None:
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a.keys() == row_b.keys()
        for key, value in row_a.items():
            other = row_b[key]
            if value is None or other is None:
                assert value is other, key
            else:
                assert value == pytest.approx(other, rel=tol, abs=tol), (key, value, other)


def max_difference(a: Path, b: Path) -> float:
    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    return max(float((left[k] - right[k]).abs().max()) for k in left)


@pytest.fixture(scope="module")
def compared(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """One torchrun: the single-minibatch check, then a DDP and a FSDP run of `SETTINGS`."""
    out = tmp_path_factory.mktemp("fsdp")
    torchrun(launch(tiny_models, out, "compare"), cwd=out)
    return out


@pytest.mark.slow
def test_one_minibatch_over_two_processes_updates_as_one_process(compared: Path) -> None:
    ranks = read(compared, "compare")
    update = ranks[0]["update"]
    assert update["moved"] > 1e-3  # the step is not empty
    for strategy in ("ddp", "fsdp"):
        assert update[f"{strategy}_diff"] < 1e-6, update
        # the global gradient norm, as one process computes it (a halved or doubled loss
        # normalisation would show here: Adam's first step would hide it)
        assert update[strategy] == pytest.approx(update["single"], rel=1e-6)


@pytest.mark.slow
def test_fsdp_run_matches_ddp_and_shards_the_trained_models(compared: Path) -> None:
    ranks = read(compared, "compare")
    for report in ranks:
        assert report["ddp"]["strategy"] == "ddp" and report["fsdp"]["strategy"] == "fsdp"
        close(report["fsdp"]["metrics"], report["ddp"]["metrics"], 1e-4)
        held, total = report["fsdp"]["local_parameters"]
        assert 0.45 * total < held < 0.55 * total, (held, total)  # half of every model
        held, total = report["ddp"]["local_parameters"]
        assert held == total
    assert ranks[0]["fsdp"]["metrics"] == ranks[1]["fsdp"]["metrics"]
    ddp, fsdp = Path(ranks[0]["ddp"]["final"]), Path(ranks[0]["fsdp"]["final"])
    # the same files (the layout evaluation, selection and the handoff read), the same weights
    names = sorted(p.relative_to(ddp).as_posix() for p in ddp.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(fsdp).as_posix() for p in fsdp.rglob("*") if p.is_file())
    for part in ("policy", "value"):
        assert (
            max_difference(ddp / part / "model.safetensors", fsdp / part / "model.safetensors")
            < 1e-4
        )
    ddp_optimizer = torch.load(ddp / "optimizer.pt", weights_only=True)
    fsdp_optimizer = torch.load(fsdp / "optimizer.pt", weights_only=True)
    assert ddp_optimizer["state"].keys() == fsdp_optimizer["state"].keys()
    assert ddp_optimizer["param_groups"][0]["params"] == fsdp_optimizer["param_groups"][0]["params"]
    info = json.loads((fsdp / "checkpoint.json").read_text())
    assert info["strategy"] == "fsdp" and info["processes"] == 2


@pytest.mark.slow
def test_lora_under_fsdp_matches_ddp(compared: Path) -> None:
    """LoRA on a sharded base: the same metrics, adapters and merged weights as DDP."""
    report = read(compared, "compare")[0]
    assert report["lora_fsdp"]["strategy"] == "fsdp"
    close(report["lora_fsdp"]["metrics"], report["lora_ddp"]["metrics"], 1e-4)
    ddp, fsdp = Path(report["lora_ddp"]["final"]), Path(report["lora_fsdp"]["final"])
    for part in ("policy", "value"):
        for file in ("model.safetensors", "adapter/adapter_model.safetensors"):
            assert max_difference(ddp / part / file, fsdp / part / file) < 1e-4


@pytest.mark.slow
def test_gradient_checkpointing_under_fsdp_trains_the_same(compared: Path) -> None:
    """Blocks recomputed inside their FSDP units: the first two updates of the plain FSDP
    run, to floating point."""
    report = read(compared, "compare")[0]
    checkpointed, plain = report["checkpointed"], report["fsdp"]
    close(checkpointed["metrics"], plain["metrics"][:2], 1e-5)
    update_2 = Path(plain["final"]).parent / "update-000002"
    for part in ("policy", "value"):
        file = f"{part}/model.safetensors"
        assert max_difference(Path(checkpointed["final"]) / file, update_2 / file) < 1e-6


@pytest.mark.slow
def test_fsdp_run_resumes_after_kill_9(
    tiny_models: Path,  # noqa: F811
    compared: Path,
    tmp_path: Path,  # noqa: F811
) -> None:
    command, env = torchrun_command(launch(tiny_models, tmp_path, "kill"))
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    first = tmp_path / "killed" / "checkpoints" / "update-000001" / "checkpoint.json"
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline and proc.poll() is None and not first.is_file():
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:  # kill -9 both workers (torchrun starts them in their own sessions), then torchrun
        for rank in range(PROCESSES):
            pid = tmp_path / f"kill-pid-{rank}"
            if pid.is_file():
                os.kill(int(pid.read_text()), signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(1.0)  # a worker that survived the kill would write its next checkpoint by now
    done = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("update-*"))
    assert done and "update-000003" not in done, done

    torchrun(launch(tiny_models, tmp_path, "resume"), cwd=tmp_path)
    unbroken = read(compared, "compare")[0]["fsdp"]
    for report in read(tmp_path, "resume"):
        run = report["run"]
        assert run["strategy"] == "fsdp" and run["resumed_from"] == int(done[-1][-6:])
        close(run["metrics"], unbroken["metrics"], 1e-6)
    final = Path(read(tmp_path, "resume")[0]["run"]["final"])
    for part in ("policy", "value"):
        file = f"{part}/model.safetensors"
        assert max_difference(final / file, Path(unbroken["final"]) / file) < 1e-6


@pytest.mark.slow
def test_fsdp_in_one_launched_process_gives_the_single_process_run(
    tiny_models: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Under a launcher with one process (the GPU check on one GPU) FSDP runs its whole code
    path (sharded parameters, gathered rollouts, full-state checkpoints) over a mesh of one,
    and ends where the plain single-process run ends."""
    from rlhfspec.runtime.policy.ppo import PPOSettings, train_ppo

    settings = {**PPO_SETTINGS, "total_episodes": 8, "rollout_batch_size": 4}

    def run(name: str, strategy: str) -> Any:
        return train_ppo(
            tiny_models / "tiny",
            tiny_models / "tiny",
            tiny_models / "reward",
            PROMPTS,
            PPOSettings(**{**settings, "strategy": strategy}),
            tmp_path / name,
            log=lambda line: None,
        )

    plain = run("plain", "ddp")
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        sharded = run("fsdp", "fsdp")
    finally:
        torch.distributed.destroy_process_group()
    assert (plain.strategy, sharded.strategy) == ("single", "fsdp")
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in plain.metrics]
    close([{k: v for k, v in r.items() if k != "seconds"} for r in sharded.metrics], strip, 1e-5)
    for part in ("policy", "value"):
        file = f"{part}/model.safetensors"
        assert max_difference(plain.final_checkpoint / file, sharded.final_checkpoint / file) < 1e-5
