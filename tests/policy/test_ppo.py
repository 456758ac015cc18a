"""The PPO trainer (`rlhfspec.runtime.policy.ppo`) end to end on the built-in tiny model.

Fast by design (8 prompts, 4 episodes per update, 8 new tokens): the optimizer-step accounting
that TRL got wrong (several minibatches, accumulation, several passes over the prompts), the
metrics and checkpoints it writes, exact reproduction with one seed and across a resume, the
reward read at the EOS exactly as `score_texts` reads it, and a smoke test that it learns.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402
from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

from rlhfspec.common.errors import RunError  # noqa: E402
from rlhfspec.compiler.schemas import schema_node, with_defaults  # noqa: E402
from rlhfspec.runtime.policy.ppo import (  # noqa: E402
    CHECKPOINT_META,
    METRIC_FIELDS,
    PPOResult,
    PPOSettings,
    Rollout,
    latest_checkpoint,
    ppo_update,
    prompt_indices,
    sequence_scores,
    train_ppo,
)
from rlhfspec.runtime.train.formatting import (  # noqa: E402
    chat_format,
    format_prompt,
    format_response,
    full_text,
)
from rlhfspec.runtime.train.models import (  # noqa: E402
    build_tiny,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
)
from rlhfspec.runtime.train.scoring import score_texts  # noqa: E402

WORDS = ["the", "model", "answer", "question", "helpful", "honest", "reward", "policy", "human"]
CORPUS = [
    f"Question {i}: {' '.join(WORDS[(i + j) % len(WORDS)] for j in range(12))}. Answer: ok {i % 7}"
    for i in range(60)
]
PROMPTS = [f"question {i} about the {WORDS[i % len(WORDS)]}" for i in range(8)]

#: 16 + 4 episodes over 8 prompts: 5 updates, two and a half passes over the prompts;
#: 2 minibatches of 2 micro-batches each, 2 PPO epochs: 4 optimizer steps per update.
SETTINGS = PPOSettings(
    kl_coef=0.05,
    kl_mode="adaptive",
    kl_target=0.5,
    kl_horizon=100,
    kl_estimator="k3",
    total_episodes=20,
    rollout_batch_size=4,
    mini_batches=2,
    gradient_accumulation_steps=2,
    ppo_epochs=2,
    max_new_tokens=8,
    learning_rate=1e-3,
    whiten_rewards=True,
    checkpoint_every=2,
    seed=3,
    threads=1,
    cpu=True,
)


class Killed(Exception):
    """Stands in for a kill: raised from the log callback in the middle of a run."""


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ppo")
    tiny = build_tiny(CORPUS, seed=0, out_dir=root / "tiny", vocab_size=320)
    tokenizer = load_tokenizer(tiny)
    reward = load_reward_model(tiny, tokenizer=tokenizer, seed=0)
    reward.save_pretrained(root / "reward", safe_serialization=True)
    tokenizer.save_pretrained(root / "reward")
    return {"root": root, "tiny": tiny, "reward": root / "reward"}


def run(dirs: dict[str, Path], out: str, **kwargs: Any) -> PPOResult:
    kwargs.setdefault("log", lambda line: None)
    settings = kwargs.pop("settings", SETTINGS)
    return train_ppo(
        dirs["tiny"], dirs["tiny"], dirs["reward"], PROMPTS, settings, dirs["root"] / out, **kwargs
    )


@pytest.fixture(scope="module")
def baseline(dirs: dict[str, Path]) -> tuple[PPOResult, int]:
    """One uninterrupted run, with every optimizer step in the process counted by a hook."""
    steps = 0

    def count(optimizer: Any, args: Any, kwargs: Any) -> None:
        nonlocal steps
        steps += 1

    handle = register_optimizer_step_post_hook(count)
    try:
        result = run(dirs, "baseline", metadata={"reward_model_version": "rm-v1"})
    finally:
        handle.remove()
    return result, steps


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = weights(a), weights(b)
    assert left.keys() == right.keys()
    for name in left:
        assert torch.equal(left[name], right[name]), name


def without_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


# ---------------------------------------------------------------------------------------------
# Accounting (regressions for TRL's PPOTrainer)


def test_one_optimizer_step_per_minibatch_across_passes(baseline: tuple[PPOResult, int]) -> None:
    result, counted = baseline
    # 5 updates x 2 PPO epochs x 2 minibatches; gradient accumulation (2 micro-batches) adds no
    # steps and is never switched off, and the 2.5 passes over the prompts change nothing
    assert SETTINGS.num_updates == 5
    assert counted == 5 * 2 * 2 == 20
    assert result.optimizer_steps == 20
    assert [row["optimizer_steps"] for row in result.metrics] == [4, 8, 12, 16, 20]
    assert [row["episodes"] for row in result.metrics] == [4, 8, 12, 16, 20]
    assert result.final_metrics == result.metrics[-1]


class ConstantPolicyAndValue(torch.nn.Module):
    """Uniform logits over 5 tokens and values of 0, both through a parameter so that backward
    and the optimizer run; with a learning rate of 0 every micro-batch sees the same numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length = input_ids.shape[0], input_ids.shape[1] - context_length
        return torch.zeros(batch, length, 5) + self.bias, torch.zeros(batch, length) + self.bias


class CountingAccelerator:
    def __init__(self) -> None:
        self.backward_calls = 0

    def backward(self, loss: torch.Tensor) -> None:
        self.backward_calls += 1
        loss.backward()

    def clip_grad_norm_(self, params: Any, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


def test_update_statistics_are_means_over_every_minibatch() -> None:
    # Regression: with num_mini_batches > 1 TRL wrote each minibatch's statistics into slots
    # that were then averaged with untouched zeros, halving them. Here every micro-batch has
    # policy loss -1 (ratio 1, advantage 1) and value loss 0.5 * (0 - 2)^2 = 2, so the means
    # must be exactly -1 and 2 whatever the split.
    settings = PPOSettings(
        kl_coef=0.0,
        total_episodes=8,
        rollout_batch_size=8,
        mini_batches=2,
        gradient_accumulation_steps=2,
        ppo_epochs=3,
        threads=1,
    )
    batch, prompt, response = 8, 3, 4
    mask = torch.ones(batch, response, dtype=torch.long)
    rollout = Rollout(
        input_ids=torch.ones(batch, prompt + response, dtype=torch.long),
        attention_mask=torch.ones(batch, prompt + response, dtype=torch.long),
        context_length=prompt,
        response_mask=mask,
        logp=torch.full((batch, response), -math.log(5)),  # uniform over 5 tokens
        values=torch.zeros(batch, response),
        advantages=torch.ones(batch, response),
        returns=torch.full((batch, response), 2.0),
        stats={},
    )
    model = ConstantPolicyAndValue()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    accelerator = CountingAccelerator()
    stats, steps = ppo_update(
        model=model,
        optimizer=optimizer,
        accelerator=accelerator,
        rollout=rollout,
        settings=settings,
        update=1,
    )
    assert steps == 3 * 2  # ppo_epochs x mini_batches
    assert accelerator.backward_calls == 3 * 2 * 2  # ... x gradient_accumulation_steps
    assert stats["policy_loss"] == pytest.approx(-1.0)
    assert stats["value_loss"] == pytest.approx(2.0)
    assert stats["policy_clipfrac"] == 0.0 and stats["value_clipfrac"] == 0.0
    assert stats["approx_kl"] == pytest.approx(0.0, abs=1e-7)


def test_prompts_cycle_in_a_seeded_order_each_pass() -> None:
    stream = prompt_indices(8, seed=3, start=0, count=24)
    for pass_index in range(3):
        assert sorted(stream[pass_index * 8 : (pass_index + 1) * 8]) == list(range(8))
    assert stream[:8] != stream[8:16]  # each pass has its own order
    assert prompt_indices(8, seed=3, start=12, count=4) == stream[12:16]  # the cursor is enough


# ---------------------------------------------------------------------------------------------
# Metrics and checkpoints


def test_metrics_rows_have_every_field(baseline: tuple[PPOResult, int]) -> None:
    result, _ = baseline
    lines = result.metrics_path.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert rows == result.metrics
    assert [row["update"] for row in rows] == [1, 2, 3, 4, 5]
    for row in rows:
        assert tuple(row) == METRIC_FIELDS
        for key in METRIC_FIELDS:
            value = row[key]
            assert value is None or math.isfinite(value), key
        assert 0.0 <= row["eos_rate"] <= 1.0
        assert 1.0 <= row["response_length"] <= SETTINGS.max_new_tokens
        assert 0.0 <= row["policy_clipfrac"] <= 1.0
        assert 0.0 <= row["value_clipfrac"] <= 1.0
        assert row["approx_kl"] >= 0.0
        assert row["kl"] >= 0.0  # k3 is never negative
        expected = row["score"] - row["eos_penalty"] - row["kl_coef"] * row["kl"]
        assert row["score_minus_kl"] == pytest.approx(expected, abs=1e-5)
    assert rows[0]["kl"] == 0.0  # the policy starts as the reference
    assert rows[0]["kl_coef"] == SETTINGS.kl_coef
    # adaptive: the coefficient moved after the first update
    assert len({row["kl_coef"] for row in rows}) > 1


def test_checkpoints_at_every_n_updates_and_at_the_end(baseline: tuple[PPOResult, int]) -> None:
    result, _ = baseline
    root = result.final_checkpoint.parent
    assert sorted(p.name for p in root.iterdir()) == [
        "update-000002",
        "update-000004",
        "update-000005",
    ]
    assert result.final_checkpoint == root / "update-000005"
    assert latest_checkpoint(root.parent) == result.final_checkpoint
    for checkpoint in root.iterdir():
        for name in (
            "policy/model.safetensors",
            "policy/config.json",
            "policy/tokenizer.json",
            "value/model.safetensors",
            "optimizer.pt",
            "rng_state.pt",
            CHECKPOINT_META,
        ):
            assert (checkpoint / name).is_file(), f"{checkpoint.name}/{name}"
    info = json.loads((root / "update-000004" / CHECKPOINT_META).read_text(encoding="utf-8"))
    assert info["update"] == 4
    assert info["episodes"] == info["prompt_cursor"] == 16
    assert info["optimizer_steps"] == 16
    assert info["metadata"] == {"reward_model_version": "rm-v1"}
    assert info["settings"] == SETTINGS.to_dict()
    assert info["kl_controller"]["mode"] == "adaptive"
    assert info["kl_coef"] == info["kl_controller"]["value"]
    # the coefficient saved is the one after update 4, i.e. the one update 5 used
    assert info["kl_coef"] == pytest.approx(result.metrics[4]["kl_coef"], abs=1e-6)
    assert info["sources"]["reward_model_sha256"]
    # the final policy loads as an ordinary model, and it did train
    policy = load_causal_lm(result.policy_dir)
    assert policy is not None
    trained, initial = weights(result.policy_dir), weights(Path(info["sources"]["policy"]))
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)


# ---------------------------------------------------------------------------------------------
# Reproduction


def test_same_seed_gives_identical_weights(
    dirs: dict[str, Path], baseline: tuple[PPOResult, int]
) -> None:
    result, _ = baseline
    again = run(dirs, "again", metadata={"reward_model_version": "rm-v1"})
    assert_same_weights(result.policy_dir, again.policy_dir)
    assert_same_weights(result.final_checkpoint / "value", again.final_checkpoint / "value")
    assert without_timing(again.metrics) == without_timing(result.metrics)


def test_resume_after_a_kill_matches_an_uninterrupted_run(
    dirs: dict[str, Path], baseline: tuple[PPOResult, int]
) -> None:
    result, _ = baseline

    def killer(line: str) -> None:
        if line.startswith("update 3/"):
            raise Killed

    with pytest.raises(Killed):
        run(dirs, "resumed", log=killer)
    checkpoints = dirs["root"] / "resumed" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["update-000002"]
    # what a kill during a save leaves behind must not be taken for a checkpoint
    (checkpoints / ".update-000004.tmp" / "policy").mkdir(parents=True)
    (checkpoints / "update-000003").mkdir()
    assert latest_checkpoint(dirs["root"] / "resumed") == checkpoints / "update-000002"

    lines: list[str] = []
    resumed = run(dirs, "resumed", resume=True, log=lines.append)
    assert resumed.resumed_from == 2
    assert lines[0].startswith("resuming from update-000002")
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "update-000002",
        "update-000004",
        "update-000005",
    ]
    assert_same_weights(result.policy_dir, resumed.policy_dir)
    assert_same_weights(result.final_checkpoint / "value", resumed.final_checkpoint / "value")
    assert resumed.optimizer_steps == result.optimizer_steps
    assert resumed.kl_coef == result.kl_coef
    assert without_timing(resumed.metrics) == without_timing(result.metrics)

    # resuming a finished run does nothing more
    done = run(dirs, "resumed", resume=True)
    assert done.resumed_from == 5
    assert done.final_checkpoint == resumed.final_checkpoint


def test_resume_refuses_changed_settings(
    dirs: dict[str, Path], baseline: tuple[PPOResult, int]
) -> None:
    changed = PPOSettings(**{**SETTINGS.to_dict(), "learning_rate": 2e-3})
    with pytest.raises(RunError, match="learning_rate"):
        train_ppo(
            dirs["tiny"],
            dirs["tiny"],
            dirs["reward"],
            PROMPTS,
            changed,
            baseline[0].final_checkpoint.parent.parent,
            resume=True,
            log=lambda line: None,
        )


# ---------------------------------------------------------------------------------------------
# Sampling and scoring agree with the rest of the pipeline


def test_reward_is_read_at_eos_as_score_texts_reads_it(dirs: dict[str, Path]) -> None:
    tokenizer = load_tokenizer(dirs["reward"])
    model = load_reward_model(dirs["reward"], tokenizer=tokenizer)
    pairs = [("hi", "ok fine"), (PROMPTS[3], "the helpful answer is the model")]
    expected = score_texts(model, tokenizer, [full_text(p, r) for p, r in pairs])
    # the token ids PPO scores: BOS + prompt (left-padded), response, EOS, then right padding
    prompts = [tokenizer(format_prompt(p))["input_ids"] for p, _ in pairs]
    responses = [
        tokenizer(format_response(r), add_special_tokens=False)["input_ids"]
        + [tokenizer.eos_token_id]
        for _, r in pairs
    ]
    width, length = max(map(len, prompts)), max(map(len, responses)) + 2
    rows, masks, index = [], [], []
    for prompt, response in zip(prompts, responses, strict=True):
        left, right = width - len(prompt), length - len(response)
        pad = tokenizer.pad_token_id
        rows.append([pad] * left + prompt + response + [pad] * right)
        masks.append([0] * left + [1] * (len(prompt) + len(response)) + [0] * right)
        index.append(width + len(response) - 1)  # the EOS
    ids, mask = torch.tensor(rows), torch.tensor(masks)
    assert ids[torch.arange(2), torch.tensor(index)].tolist() == [tokenizer.eos_token_id] * 2
    with torch.no_grad():
        got = sequence_scores(model, ids, mask, torch.tensor(index))
    assert got.tolist() == pytest.approx(expected, abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Settings


def test_settings_from_spec_block() -> None:
    block = {
        "method": "ppo",
        "kl": {"coef": 0.02, "estimator": "k2", "mode": "adaptive", "target": 6, "horizon": 500},
        "ppo": {"rollout_batch_size": 8, "mini_batches": 4, "whiten_rewards": True},
        "checkpoint_every": 3,
    }
    # the block as the compiler hands it over: the schema's defaults written in
    settings = PPOSettings.from_spec(with_defaults(schema_node("policy"), block), seed=7, threads=2)
    assert settings.kl_coef == 0.02 and settings.kl_estimator == "k2"
    assert settings.kl_mode == "adaptive" and settings.kl_target == 6.0
    assert settings.kl_horizon == 500
    assert settings.rollout_batch_size == 8 and settings.mini_batches == 4
    assert settings.whiten_rewards is True and settings.whiten_advantages is True
    assert settings.total_episodes == 512 and settings.temperature == 1.0  # schema defaults
    assert settings.checkpoint_every == 3 and settings.seed == 7 and settings.threads == 2
    assert settings.steps_per_update == 2 * 4
    assert settings.num_updates == 512 // 8


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rollout_batch_size": 6, "mini_batches": 4}, "multiple of ppo.mini_batches"),
        ({"rollout_batch_size": 8, "mini_batches": 2, "gradient_accumulation_steps": 3}, "evenly"),
        ({"kl_mode": "adaptive"}, "kl.target"),
        ({"total_episodes": 4, "rollout_batch_size": 8, "mini_batches": 1}, "less than one"),
    ],
)
def test_settings_refuse_splits_that_cannot_be_exact(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(RunError, match=message):
        PPOSettings(kl_coef=0.1, threads=1, **changes)


# ---------------------------------------------------------------------------------------------
# It learns


def test_rewarding_length_makes_responses_longer(dirs: dict[str, Path]) -> None:
    # The tiny random model almost never says EOS, so every response would already be as long
    # as allowed. Point EOS's (tied) embedding along the mean final hidden state so that it
    # starts out likely (a quarter of tokens or so) and there is room to learn to go on.
    tokenizer = load_tokenizer(dirs["tiny"])
    model = load_causal_lm(dirs["tiny"], tokenizer=tokenizer)
    tokenizer.padding_side = "left"
    chat = chat_format(tokenizer, "auto")  # train_ppo formats with the model's template
    enc = tokenizer([chat.prompt(p) for p in PROMPTS], return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model.model(**enc).last_hidden_state[enc["attention_mask"].bool()].mean(dim=0)
        model.get_input_embeddings().weight[tokenizer.eos_token_id] = 2 * hidden / hidden.norm()
    chatty = dirs["root"] / "chatty"
    model.save_pretrained(chatty, safe_serialization=True)
    tokenizer.save_pretrained(chatty)

    def response_length(ids: torch.Tensor, mask: torch.Tensor, context: int) -> torch.Tensor:
        return mask[:, context:].sum(dim=1).float()

    settings = PPOSettings(
        kl_coef=0.0,
        total_episodes=24,
        rollout_batch_size=8,
        mini_batches=2,
        ppo_epochs=2,
        max_new_tokens=8,
        learning_rate=1e-2,
        missing_eos_penalty=0.0,
        checkpoint_every=10,
        seed=0,
        threads=1,
        cpu=True,
    )
    result = train_ppo(
        chatty,
        chatty,
        dirs["reward"],
        PROMPTS,
        settings,
        dirs["root"] / "length",
        reward_fn=response_length,
        log=lambda line: None,
    )
    lengths = [row["response_length"] for row in result.metrics]
    assert [row["score"] for row in result.metrics] == lengths  # the reward is the length
    assert lengths[0] < 7.0  # EOS was common at the start
    assert lengths[-1] > lengths[0] + 1.0
    assert result.metrics[-1]["eos_rate"] < result.metrics[0]["eos_rate"]
