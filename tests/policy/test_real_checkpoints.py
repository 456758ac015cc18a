"""PPO and DPO on a checkpoint saved the way hub models are (`tests.hub_model`).

Each test pins down one defect the review of issue 10 found on real checkpoints:

* bf16 weights trained without float32 master weights (AdamW rounds most small steps away);
* k2/k3 in the reward, whose gradient is not the KL's;
* the model's generation_config.json leaking into rollout sampling;
* a loss whose step size depends on the split into micro-batches and processes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402
from transformers import GenerationConfig  # noqa: E402

from rlhfspec.runtime.policy.ppo import PPOSettings, Rollout, collect_rollout, ppo_update  # noqa: E402
from rlhfspec.runtime.policy.ppo.rollout import REWARD_KL_ESTIMATOR  # noqa: E402
from rlhfspec.runtime.policy.ppo.trainer import train_ppo  # noqa: E402
from rlhfspec.runtime.policy.ppo_math import kl_per_token  # noqa: E402
from rlhfspec.runtime.train.models import load_causal_lm, load_reward_model, load_tokenizer  # noqa: E402
from tests.hub_model import build_hub_like  # noqa: E402
from tests.policy.test_ppo import CORPUS, PROMPTS  # noqa: E402


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hub")
    model = build_hub_like(root / "model", CORPUS)
    tokenizer = load_tokenizer(model)
    reward = load_reward_model(model, tokenizer=tokenizer, seed=0)  # bf16, as the checkpoint
    reward.save_pretrained(root / "reward", safe_serialization=True)
    tokenizer.save_pretrained(root / "reward")
    return {"root": root, "model": model, "reward": root / "reward"}


def settings(**changes: Any) -> PPOSettings:
    values: dict[str, Any] = {
        "kl_coef": 0.05,
        "total_episodes": 4,
        "rollout_batch_size": 4,
        "mini_batches": 1,
        "ppo_epochs": 1,
        "max_new_tokens": 6,
        "seed": 0,
        "threads": 1,
        "cpu": True,
        "checkpoint_every": 1,
    }
    values.update(changes)
    return PPOSettings(**values)


# ---------------------------------------------------------------------------------------------
# 1. float32 master weights


def changed_share(before: dict[str, Any], after: dict[str, Any]) -> float:
    moved = total = 0
    for name, old in before.items():
        new = after[name]
        assert new.dtype == torch.float32, f"{name} trained in {new.dtype}"
        moved += int((new != old.float()).sum())
        total += old.numel()
    return moved / total


def test_one_ppo_step_moves_float32_weights_on_a_bf16_checkpoint(hub: dict[str, Path]) -> None:
    before = load_file(str(hub["model"] / "model.safetensors"))
    assert {t.dtype for t in before.values()} == {torch.bfloat16}
    result = train_ppo(
        hub["model"],
        hub["model"],
        hub["reward"],
        PROMPTS,
        settings(learning_rate=1e-5, mixed_precision="bf16"),
        hub["root"] / "ppo-step",
        log=lambda line: None,
    )
    assert result.optimizer_steps == 1
    after = load_file(str(result.policy_dir / "model.safetensors"))
    # AdamW's first step moves every weight with a gradient by about lr; in bf16 (8 bits of
    # mantissa) a step of 1e-5 on weights of about 0.02 rounds away (15.6% moved before)
    assert changed_share(before, after) > 0.95


def test_one_dpo_step_moves_float32_weights_on_a_bf16_checkpoint(hub: dict[str, Path]) -> None:
    pytest.importorskip("trl")
    from rlhfspec.runtime.policy.dpo import train_dpo
    from tests.policy.test_dpo import settings as dpo_settings

    pairs = [{"prompt": p, "chosen": "the helpful answer", "rejected": "no"} for p in PROMPTS[:4]]
    block = dpo_settings(train={"learning_rate": 1e-5, "batch_size": 4}, checkpoint_every=1)
    before = load_file(str(hub["model"] / "model.safetensors"))
    summary = train_dpo(
        hub["model"],
        hub["model"],
        pairs,
        block,
        seed=0,
        out_dir=hub["root"] / "dpo-step",
        resume=False,
        log=lambda line: None,
        metadata={},
        compute={"device": "cpu", "mixed_precision": "bf16"},
    )
    assert summary["steps"] == 1
    after = load_file(str(Path(summary["final_checkpoint"]) / "model.safetensors"))
    assert changed_share(before, after) > 0.95


# ---------------------------------------------------------------------------------------------
# 2. k1 in the reward


def test_k1_in_the_reward_has_the_gradient_of_kl_and_k2_k3_do_not() -> None:
    # A categorical policy over 6 tokens. PPO treats the per-token reward -k(y) as a constant,
    # so its expected policy gradient is -sum_y pi(y) k(y) grad log pi(y) (computed exactly,
    # no sampling). Only k1 makes that -grad KL(pi || ref).
    torch.manual_seed(0)
    logits = torch.randn(6, dtype=torch.float64, requires_grad=True)
    ref_logp = torch.log_softmax(torch.randn(6, dtype=torch.float64), dim=0)
    logp = torch.log_softmax(logits, dim=0)
    pi = logp.exp()
    (kl_grad,) = torch.autograd.grad((pi * (logp - ref_logp)).sum(), logits, retain_graph=True)
    gradients = {}
    for estimator in ("k1", "k2", "k3"):
        k = kl_per_token(logp, ref_logp, estimator).detach()
        (grad,) = torch.autograd.grad(-(pi.detach() * k * logp).sum(), logits, retain_graph=True)
        gradients[estimator] = grad
    torch.testing.assert_close(gradients["k1"], -kl_grad)
    for estimator in ("k2", "k3"):
        assert not torch.allclose(gradients[estimator], -kl_grad, atol=1e-3)
    assert REWARD_KL_ESTIMATOR == "k1"


def test_the_reward_uses_k1_whatever_the_estimator(hub: dict[str, Path]) -> None:
    tokenizer = load_tokenizer(hub["model"])
    policy = load_causal_lm(hub["model"], tokenizer=tokenizer, dtype=torch.float32)
    reference = load_causal_lm(hub["model"], tokenizer=tokenizer, dtype=torch.float32)
    with torch.no_grad():  # a reference the policy has drifted from
        generator = torch.Generator().manual_seed(1)
        for param in reference.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    value = load_reward_model(hub["reward"], tokenizer=tokenizer, dtype=torch.float32)
    out = {}
    for estimator in ("k1", "k3"):
        out[estimator] = collect_rollout(
            policy=policy,
            value_model=value,
            reference=reference,
            reward_model=None,
            reward_fn=lambda ids, mask, width: torch.zeros(ids.shape[0]),
            tokenizer=tokenizer,
            prompts=PROMPTS[:4],
            settings=settings(kl_coef=0.5, kl_estimator=estimator, whiten_advantages=False),
            kl_coef=0.5,
            update=1,
            device=torch.device("cpu"),
        )
    k1, k3 = out["k1"], out["k3"]
    assert k1.stats["kl"] != pytest.approx(k3.stats["kl"])  # the logged estimators differ
    torch.testing.assert_close(k1.returns, k3.returns)  # the reward does not
    torch.testing.assert_close(k1.advantages, k3.advantages)


# ---------------------------------------------------------------------------------------------
# 3. Sampling is softmax(logits / T), whatever generation_config.json says


def test_rollout_samples_softmax_at_the_temperature_ignoring_generation_config(
    hub: dict[str, Path],
) -> None:
    tokenizer = load_tokenizer(hub["model"])
    policy = load_causal_lm(hub["model"], tokenizer=tokenizer, dtype=torch.float32)
    assert policy.generation_config.repetition_penalty == 1.3  # the planted config is read
    value = load_reward_model(hub["reward"], tokenizer=tokenizer, dtype=torch.float32)

    def roll() -> Rollout:
        return collect_rollout(
            policy=policy,
            value_model=value,
            reference=policy,
            reward_model=value,
            reward_fn=None,
            tokenizer=tokenizer,
            prompts=PROMPTS,
            settings=settings(
                temperature=0.8,
                max_new_tokens=12,
                rollout_batch_size=8,
                total_episodes=8,
                missing_eos_penalty=0.0,
            ),
            kl_coef=0.0,
            update=1,
            device=torch.device("cpu"),
        )

    planted = roll()
    policy.generation_config = GenerationConfig()  # an empty one: nothing to leak
    clean = roll()
    assert torch.equal(planted.input_ids, clean.input_ids)
    # the sampler's log-probabilities are those of softmax(logits / T) in a full forward pass
    assert planted.sample_logp is not None
    mask = planted.response_mask.float()
    torch.testing.assert_close(planted.sample_logp, planted.logp * mask, atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# 5. One minibatch, any split: the same step


class TokenTable(torch.nn.Module):
    """Policy logits and values looked up per input token: every row has its own gradient."""

    def __init__(self, vocab: int, actions: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.logits = torch.nn.Parameter(torch.randn(vocab, actions, generator=generator))
        self.values = torch.nn.Parameter(torch.randn(vocab, generator=generator))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        state = input_ids[:, context_length - 1 : -1]  # the token before each action
        return self.logits[state], self.values[state]


class PlainAccelerator:
    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, params: Any, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


def uneven_rollout() -> Rollout:
    """Four episodes of 1, 8, 8 and 8 response tokens (the issue's example)."""
    generator = torch.Generator().manual_seed(2)
    lengths = [1, 8, 8, 8]
    batch, prompt, response, actions = 4, 2, 8, 5
    mask = (torch.arange(response).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).long()
    ids = torch.randint(0, actions, (batch, prompt + response), generator=generator)
    return Rollout(
        input_ids=ids,
        attention_mask=torch.cat([torch.ones(batch, prompt, dtype=torch.long), mask], dim=1),
        context_length=prompt,
        response_mask=mask,
        logp=torch.full((batch, response), -math.log(actions)) * mask,
        values=torch.randn(batch, response, generator=generator) * mask,
        advantages=torch.randn(batch, response, generator=generator) * mask,
        returns=torch.randn(batch, response, generator=generator) * mask,
        stats={},
    )


def step_with(accumulation: int) -> dict[str, torch.Tensor]:
    model = TokenTable(vocab=5, actions=5)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ppo_update(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        accelerator=PlainAccelerator(),
        rollout=uneven_rollout(),
        settings=settings(gradient_accumulation_steps=accumulation, **SPLIT),
        update=1,
    )
    return {k: v - before[k] for k, v in model.state_dict().items()}


def test_one_minibatch_split_1_2_4_ways_takes_the_same_step() -> None:
    steps = {n: step_with(n) for n in (1, 2, 4)}
    size = float(torch.linalg.vector_norm(steps[1]["logits"]))
    assert size > 0
    for n in (2, 4):
        for name in steps[1]:
            torch.testing.assert_close(steps[n][name], steps[1][name], atol=1e-6, rtol=0)


SPLIT_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[2])  # the repository, for tests.*
import torch
from accelerate import Accelerator
from rlhfspec.runtime.policy.distributed import Group
from rlhfspec.runtime.policy.ppo import Rollout, ppo_update
from tests.policy.test_real_checkpoints import SPLIT, TokenTable, settings, uneven_rollout

accelerator = Accelerator(cpu=True)
group = Group.current()
model = TokenTable(vocab=5, actions=5)
before = {k: v.detach().clone() for k, v in model.state_dict().items()}
optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
model, optimizer = accelerator.prepare(model, optimizer)
full = uneven_rollout()
rows = slice(2 * group.rank, 2 * group.rank + 2)  # rank 0: lengths 1 and 8; rank 1: 8 and 8
shard = Rollout(
    input_ids=full.input_ids[rows], attention_mask=full.attention_mask[rows],
    context_length=full.context_length, response_mask=full.response_mask[rows],
    logp=full.logp[rows], values=full.values[rows], advantages=full.advantages[rows],
    returns=full.returns[rows], stats={},
)
ppo_update(model=model, optimizer=optimizer, accelerator=accelerator, rollout=shard,
           settings=settings(**SPLIT), update=1, group=group)
after = accelerator.unwrap_model(model).state_dict()
delta = {k: (after[k] - before[k]).tolist() for k in before}
with open(f"{sys.argv[1]}/rank{group.rank}.json", "w") as handle:
    json.dump(delta, handle)
# leave together: a rank exiting with the gloo group alive can abort the other at exit
# ("terminate called without an active exception"), as the launch entry avoids too
group.barrier()
torch.distributed.destroy_process_group()
"""

#: One minibatch of the whole batch, clipping off: the step is the plain gradient step.
SPLIT: dict[str, Any] = {"max_grad_norm": 1e9, "cliprange": 10.0, "cliprange_value": 10.0}


@pytest.mark.slow
def test_one_minibatch_over_two_processes_takes_the_same_step(tmp_path: Path) -> None:
    import json

    from tests.conftest import ROOT
    from tests.policy.test_multiprocess import torchrun

    script = tmp_path / "split.py"
    script.write_text(SPLIT_SCRIPT)
    torchrun([str(script), str(tmp_path), str(ROOT)], cwd=ROOT)
    single = step_with(1)
    for rank in (0, 1):
        delta = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for name, value in single.items():
            torch.testing.assert_close(
                torch.tensor(delta[name], dtype=value.dtype), value, atol=1e-6, rtol=0
            )
