"""Checkpoint evaluation (`rlhfspec.runtime.evaluation.evaluate`) on the built-in tiny model.

One tiny model serves as policy, reference and (with a fresh score head) reward model: it
cannot say anything sensible, but every quantity an evaluation reports has a known value when a
policy is compared with itself, which is what these tests pin down.
"""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

# idle OpenMP threads must not spin: on a shared two-core machine that is several times slower
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from rlhfspec.common.errors import RunError  # noqa: E402
from rlhfspec.runtime.evaluation.evaluate import (  # noqa: E402
    EvalSettings,
    eval_json,
    evaluate_checkpoint,
    generate,
    kl_per_response,
    trajectory_svg,
    write_eval,
)
from rlhfspec.runtime.evaluation.generation import (  # noqa: E402
    response_logprobs_of,
    sample_batches,
)
from rlhfspec.runtime.train.formatting import chat_format  # noqa: E402
from rlhfspec.runtime.train.models import (  # noqa: E402
    build_tiny,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
)

WORDS = ["order", "refund", "parcel", "account", "password", "thanks", "please", "help", "email"]
CORPUS = [
    f"User: question {i} about my {WORDS[i % 9]}\nAssistant: "
    + " ".join(WORDS[(i + j) % len(WORDS)] for j in range(10))
    for i in range(60)
]
PROMPTS = {
    "validation": ["Where is my order?", "How do I get a refund?", "Change my email", "hi"],
    "adversarial": ["Tell me the password <now> & fast", "Refund me or else"],
}
MATCH_ALL = r"^"  # search() finds the empty match at the start of every text
MATCH_NONE = r"(?!)"  # a lookahead that can never succeed


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(CORPUS, seed=0, out_dir=tmp_path_factory.mktemp("tiny"), vocab_size=300)


@pytest.fixture(scope="module")
def tiny_copy(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights in another directory: loaded as a second, separate model object."""
    target = tmp_path_factory.mktemp("copy") / "reference"
    shutil.copytree(tiny, target)
    return target


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same tokenizer (same corpus), other weights (other seed): a reference that differs."""
    return build_tiny(CORPUS, seed=1, out_dir=tmp_path_factory.mktemp("other"), vocab_size=300)


def settings(**overrides: Any) -> EvalSettings:
    values: dict[str, Any] = {
        "seed": 7,
        "max_new_tokens": 8,
        "temperature": 0.8,
        "samples_shown": 3,
        "kl_estimator": "k1",
        "disqualifiers": [("everything", MATCH_ALL), ("nothing", MATCH_NONE)],
        "batch_size": 3,
    }
    values.update(overrides)
    return EvalSettings(**values)


@pytest.fixture(scope="module")
def result(tiny: Path) -> dict[str, Any]:
    return evaluate_checkpoint(tiny, tiny, tiny, PROMPTS, settings(), step=0, label="start")


@pytest.fixture(scope="module")
def policy(tiny: Path) -> tuple[Any, Any]:
    tokenizer = load_tokenizer(tiny)
    return load_causal_lm(tiny, tokenizer=tokenizer), tokenizer


# ---------------------------------------------------------------------------------------------
# Generation


def test_generation_is_reproducible_and_ignores_the_global_rng(policy: tuple[Any, Any]) -> None:
    model, tokenizer = policy
    prompts = PROMPTS["validation"]
    torch.manual_seed(0)
    first = generate(model, tokenizer, prompts, settings())
    torch.manual_seed(12345)
    torch.rand(100)
    second = generate(model, tokenizer, prompts, settings())
    assert first == second
    assert len(first) == len(prompts) and all(isinstance(t, str) for t in first)
    assert generate(model, tokenizer, prompts, settings(seed=8)) != first


def test_generation_does_not_depend_on_batching_or_order(policy: tuple[Any, Any]) -> None:
    """Noise is per prompt, so a prompt's sample is the same alone, in a batch, or reordered."""
    model, tokenizer = policy
    prompts = PROMPTS["validation"]
    batched = generate(model, tokenizer, prompts, settings(batch_size=4))
    single = generate(model, tokenizer, prompts, settings(batch_size=1))
    reversed_ = generate(model, tokenizer, prompts[::-1], settings(batch_size=4))
    assert batched == single == reversed_[::-1]


def test_sampling_stops_at_eos_and_logprobs_match_a_full_forward_pass(
    policy: tuple[Any, Any],
) -> None:
    """Left padding and the KV cache give the same log-probabilities as recomputing each
    sequence; tokens after EOS are masked out and EOS itself is counted."""
    model, tokenizer = policy
    eos = tokenizer.eos_token_id

    def favour_eos(module: Any, inputs: Any, output: Any) -> Any:
        output[..., eos] += 6.0  # makes EOS likely, so some rows stop early
        return output

    handle = model.get_output_embeddings().register_forward_hook(favour_eos)
    try:
        prompts = PROMPTS["validation"] + PROMPTS["adversarial"]
        config = settings(max_new_tokens=12, batch_size=6, temperature=1.0)
        (batch,) = sample_batches(model, tokenizer, prompts, config.sampling(1.0))
        full = response_logprobs_of(model, batch, 1.0, "cpu")
    finally:
        handle.remove()
    assert any(batch.ended), "the hook should make some responses end with EOS"
    for row in range(len(prompts)):
        length = batch.lengths[row]
        counted = int(batch.response_mask[row].sum())
        assert counted == length + (1 if batch.ended[row] else 0)
        if batch.ended[row]:
            assert int(batch.response_ids[row, length]) == eos
    assert torch.allclose(full, batch.sample_logprobs, atol=1e-5)
    assert bool((full[batch.response_mask == 0] == 0).all())


# ---------------------------------------------------------------------------------------------
# KL


def test_kl_estimators_on_known_log_probabilities() -> None:
    policy = torch.tensor([[-1.0, -2.0, -0.5]])
    reference = torch.tensor([[-1.5, -1.0, -9.0]])
    mask = torch.tensor([[1, 1, 0]])
    log_r = torch.tensor([-0.5, 1.0], dtype=torch.float64)
    expected = {
        "k1": float((-log_r).sum()),
        "k2": float((0.5 * log_r**2).sum()),
        "k3": float((log_r.exp() - 1 - log_r).sum()),
    }
    for name, value in expected.items():
        (got,) = kl_per_response(policy, reference, mask, name)
        assert got == pytest.approx(value, abs=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_of_a_policy_against_itself_is_zero(tiny: Path, tiny_copy: Path, estimator: str) -> None:
    out = evaluate_checkpoint(
        tiny, tiny_copy, tiny, PROMPTS, settings(kl_estimator=estimator), step=0, label="self"
    )
    for block in [*out["sets"].values(), out["overall"]]:
        assert abs(block["kl"]["mean"]) < 1e-6
    assert out["settings"]["kl_estimator"] == estimator


def test_kl_against_another_reference_is_positive(tiny: Path, other: Path) -> None:
    k1 = evaluate_checkpoint(tiny, other, tiny, PROMPTS, settings(), step=0, label="k1")
    k3 = evaluate_checkpoint(
        tiny, other, tiny, PROMPTS, settings(kl_estimator="k3"), step=0, label="k3"
    )
    assert k3["overall"]["kl"]["mean"] > 0.01
    assert k1["overall"]["kl"]["mean"] != 0
    # same samples (same seed), only the estimator differs
    assert k1["responses"] == k3["responses"]


# ---------------------------------------------------------------------------------------------
# The evaluation record


def test_evaluation_layout(result: dict[str, Any]) -> None:
    assert result["label"] == "start" and result["step"] == 0
    assert list(result["sets"]) == list(PROMPTS)
    assert result["overall"]["sets"] == list(PROMPTS)
    for name, prompts in PROMPTS.items():
        block = result["sets"][name]
        assert block["n"] == len(prompts)
        assert len(result["responses"][name]) == len(prompts)
        assert len(result["scores"][name]) == len(prompts)
        reward = block["reward"]
        assert reward["p10"] <= reward["p50"] <= reward["p90"]
        assert 0.0 <= block["eos_rate"] <= 1.0
        assert block["length"]["tokens_mean"] <= 8
        assert block["win_rate_vs_start"] is None
        assert len(block["samples"]) == min(3, len(prompts))
        sample = block["samples"][0]
        assert sample["prompt"] == prompts[0]
        assert sample["response"] == result["responses"][name][0]
        assert sample["score"] == result["scores"][name][0]
    overall = result["overall"]
    assert overall["n"] == sum(len(p) for p in PROMPTS.values())
    weighted = sum(b["reward"]["mean"] * b["n"] for b in result["sets"].values()) / overall["n"]
    assert overall["reward"]["mean"] == pytest.approx(weighted, abs=1e-5)
    assert "samples" not in overall


def test_disqualifier_rates_for_planted_detectors(result: dict[str, Any]) -> None:
    for block in [*result["sets"].values(), result["overall"]]:
        assert block["disqualifier_rates"] == {"everything": 1.0, "nothing": 0.0}
        assert block["disqualifier_rate"] == 1.0
    sample = result["sets"]["validation"]["samples"][0]
    assert sample["flags"] == ["everything"]


def test_no_detector_hits_gives_a_zero_rate(tiny: Path) -> None:
    out = evaluate_checkpoint(
        tiny,
        tiny,
        tiny,
        {"validation": PROMPTS["validation"]},
        settings(disqualifiers=[("nothing", MATCH_NONE)]),
        step=0,
        label="clean",
    )
    assert out["overall"]["disqualifier_rate"] == 0.0
    assert out["overall"]["disqualifier_rates"] == {"nothing": 0.0}


def test_win_rate_against_identical_start_responses_is_one_half(
    tiny: Path, result: dict[str, Any]
) -> None:
    again = evaluate_checkpoint(
        tiny,
        tiny,
        tiny,
        PROMPTS,
        settings(),
        start=result,
        step=4,
        label="step-4",
    )
    assert again["responses"] == result["responses"]
    for block in [*again["sets"].values(), again["overall"]]:
        assert block["win_rate_vs_start"] == 0.5


def test_evaluation_json_is_deterministic(
    tiny: Path, result: dict[str, Any], tmp_path: Path
) -> None:
    again = evaluate_checkpoint(tiny, tiny, tiny, PROMPTS, settings(), step=0, label="start")
    assert eval_json(again) == eval_json(result)
    write_eval(result, tmp_path / "a" / "eval.json")
    write_eval(again, tmp_path / "b" / "eval.json")
    data = (tmp_path / "a" / "eval.json").read_bytes()
    assert data == (tmp_path / "b" / "eval.json").read_bytes()
    assert json.loads(data) == result


def test_settings_are_checked() -> None:
    with pytest.raises(RunError, match="KL estimator"):
        settings(kl_estimator="k4")
    with pytest.raises(RunError, match="invalid regex"):
        settings(disqualifiers=[("broken", "(")])
    with pytest.raises(RunError, match="temperature"):
        settings(temperature=0)


def test_bad_inputs_are_refused(tiny: Path) -> None:
    with pytest.raises(RunError, match="empty"):
        evaluate_checkpoint(tiny, tiny, tiny, {"validation": []}, settings(), step=0, label="x")
    with pytest.raises(RunError, match="start responses"):
        evaluate_checkpoint(
            tiny,
            tiny,
            tiny,
            {"validation": ["hi", "there"]},
            settings(),
            start={"responses": {"validation": ["only one"]}, "scores": {"validation": [0.0]}},
            step=0,
            label="x",
        )


# ---------------------------------------------------------------------------------------------
# Trajectory plot


def _fake(step: int, reward: float, kl: float, words: float, names: list[str]) -> dict[str, Any]:
    block = {"reward": {"mean": reward}, "kl": {"mean": kl}, "length": {"words_mean": words}}
    return {
        "label": f"step-{step}",
        "step": step,
        "overall": block,
        "sets": dict.fromkeys(names, block),
    }


def test_trajectory_svg_is_standalone_escaped_and_deterministic(result: dict[str, Any]) -> None:
    evals = [
        _fake(8, 0.9, 5.5, 40.0, ["validation", "red <team> & co"]),
        result,
        _fake(4, 0.4, 2.0, 22.0, ["validation"]),
    ]
    svg = trajectory_svg(evals, guards={"max_kl": 8.0})
    assert svg == trajectory_svg(evals, guards={"max_kl": 8.0})
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert len(root.findall("{http://www.w3.org/2000/svg}svg")) == 3
    assert "red &lt;team&gt; &amp; co" in svg and "<team>" not in svg
    assert "max_kl 8" in svg
    for title in ("Mean reward", "KL to the reference", "Mean response length"):
        assert title in svg
    # categories are the steps, in order
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert texts.index("0") < texts.index("4") < texts.index("8")


# ---------------------------------------------------------------------------------------------
# The reward is PPO's; KL at the policy's temperature


def test_evaluation_reward_is_ppos_score_of_the_sampled_ids(tiny: Path) -> None:
    """Each reward is the reward model read at the EOS of the sampled token ids, or at the last
    generated token minus the missing-EOS penalty, computed here one unpadded sequence at a
    time; with 3 new tokens most responses are cut at the limit and pay the penalty."""
    config = settings(max_new_tokens=3, missing_eos_penalty=5.0, disqualifiers=[])
    out = evaluate_checkpoint(tiny, tiny, tiny, PROMPTS, config, step=0, label="start")
    tokenizer = load_tokenizer(tiny)
    policy = load_causal_lm(tiny, tokenizer=tokenizer)
    reward_model = load_reward_model(tiny, tokenizer=tokenizer, seed=config.seed)
    cut = 0
    for name, prompts in PROMPTS.items():
        expected = []
        # the prompts as evaluation formats them: builtin:tiny's chat template
        render = chat_format(tokenizer, "auto").prompt
        for batch in sample_batches(policy, tokenizer, prompts, config.sampling(0.8), render):
            for row in range(batch.prompt_ids.shape[0]):
                prompt = batch.prompt_ids[row][batch.prompt_mask[row].bool()]
                assert tokenizer.decode(prompt).endswith("\n<|assistant|>\n")
                response = batch.response_ids[row][batch.response_mask[row].bool()]
                sequence = torch.cat([prompt, response]).unsqueeze(0)
                with torch.no_grad():
                    score = float(reward_model(input_ids=sequence).logits[0, 0])
                ended = batch.ended[row]
                cut += not ended
                expected.append(score - (0.0 if ended else 5.0))
        assert out["scores"][name] == pytest.approx(expected, abs=1e-4)
    assert cut > 0
    assert out["overall"]["no_eos_rate"] == pytest.approx(cut / out["overall"]["n"], abs=1e-6)
    assert out["overall"]["eos_rate"] + out["overall"]["no_eos_rate"] == pytest.approx(1.0)


def test_kl_is_measured_at_the_policys_sampling_temperature(tiny: Path, other: Path) -> None:
    """Evaluation samples at 0.7, but the KL guard reads KL at the policy's temperature (1.0):
    the same number an evaluation at 1.0 gives, and not the one at 0.7."""
    at_07 = evaluate_checkpoint(
        tiny, other, tiny, PROMPTS, settings(temperature=0.7, kl_temperature=1.0), step=0, label="a"
    )
    at_10 = evaluate_checkpoint(
        tiny, other, tiny, PROMPTS, settings(temperature=1.0), step=0, label="b"
    )
    only_07 = evaluate_checkpoint(
        tiny, other, tiny, PROMPTS, settings(temperature=0.7), step=0, label="c"
    )
    assert at_07["overall"]["kl"]["temperature"] == 1.0
    assert at_07["overall"]["kl"]["mean"] == at_10["overall"]["kl"]["mean"]
    assert at_07["overall"]["kl"]["mean"] != only_07["overall"]["kl"]["mean"]
    assert at_07["responses"] == only_07["responses"]  # reward, length...: sampled at 0.7


def test_stage_settings_take_the_policys_temperature_and_penalty() -> None:
    from rlhfspec.runtime.policy.stages import eval_settings

    spec = {
        "seed": 3,
        "criteria": {"disqualifiers": []},
        "policy": {
            "method": "ppo",
            "kl": {"estimator": "k3"},
            "ppo": {"temperature": 0.9, "missing_eos_penalty": 2.0},
        },
        "evaluation": {
            "max_new_tokens": 8,
            "temperature": 0.7,
            "samples_shown": 1,
            "batch_size": 5,
        },
        "compute": {"device": "cpu", "mixed_precision": "bf16"},
    }
    got = eval_settings(spec)
    assert (got.temperature, got.kl_at, got.missing_eos_penalty) == (0.7, 0.9, 2.0)
    assert (got.batch_size, got.device, got.mixed_precision) == (5, "cpu", "bf16")
    spec["policy"]["method"] = "dpo"
    assert eval_settings(spec).kl_at == 1.0


def test_scoring_is_batched_on_the_models_device_in_its_precision(tiny: Path) -> None:
    from rlhfspec.runtime.train.scoring import score_texts

    tokenizer = load_tokenizer(tiny)
    model = load_reward_model(tiny, tokenizer=tokenizer, seed=7)
    texts = [f"User: {p}\nAssistant: {w} please" for p in PROMPTS["validation"] for w in WORDS[:3]]
    one = score_texts(model, tokenizer, texts, batch_size=1)
    many = score_texts(model, tokenizer, texts, batch_size=5)
    assert many == pytest.approx(one, abs=1e-5)
    bf16 = score_texts(model, tokenizer, texts, batch_size=5, mixed_precision="bf16")
    assert bf16 == pytest.approx(one, abs=0.1) and bf16 != many  # autocast took effect
