"""DPO policy training on TRL's DPOTrainer (`rlhfspec.runtime.policy.dpo`), on a tiny model (seconds, CPU).

The data make the preference easy to learn: every chosen response is polite ("thank you ...
glad to help") and every rejected one rude ("figure it out yourself, idiot"), so a few steps
of DPO must raise the chosen responses' log-probabilities relative to the rejected ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from transformers import TrainerCallback  # noqa: E402

from rlhfspec.common.errors import RunError  # noqa: E402
from rlhfspec.runtime.policy.dpo import (  # noqa: E402
    CHECKPOINT_META,
    METRICS_FILE,
    checkpoint_name,
    dpo_args,
    dpo_rows,
    list_checkpoints,
    train_dpo,
)
from rlhfspec.runtime.train.formatting import chat_format, format_prompt  # noqa: E402
from rlhfspec.runtime.train.models import build_tiny, load_causal_lm, load_tokenizer  # noqa: E402

TOPICS = ["order", "refund", "password", "invoice", "delivery", "account", "plan", "card"]
# 52 pairs with batch 8: 7 optimizer steps, the last one on a batch of 4
PAIRS = [
    {
        "prompt": f"Can you help me with my {TOPICS[i % len(TOPICS)]}, reference {i}?",
        "chosen": f"Thank you for asking, I am glad to help with your {TOPICS[i % len(TOPICS)]}. "
        "Please share the details.",
        "rejected": f"No. Figure out your {TOPICS[i % len(TOPICS)]} yourself, idiot.",
    }
    for i in range(52)
]
EVERY = 2
STEPS = 7


def settings(**dpo: Any) -> dict[str, Any]:
    """A resolved ``policy`` block as the compiler hands it over (all defaults filled in)."""
    train = {
        "epochs": 1,
        "learning_rate": 5e-3,
        "batch_size": 8,
        "gradient_accumulation_steps": 1,
        "max_length": 128,
        "weight_decay": 0.0,
        "warmup_ratio": 0.0,
    }
    train.update(dpo.pop("train", {}))
    return {
        "base_model": "builtin:tiny",
        "trust_remote_code": False,
        "start_from_sft": False,
        "method": "dpo",
        "checkpoint_every": dpo.pop("checkpoint_every", EVERY),
        "kl": {"coef": 0.1},
        "dpo": {"beta": 0.1, "loss_type": "sigmoid", "train": train, **dpo},
    }


METADATA = {"stage": "policy", "pairs_sha256": "0" * 64, "annotation_batches": ["b1"]}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """One training thread: the batches here are far too small to gain from two, and on a
    shared CI machine a second thread mostly waits on the first. Restored afterwards."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RLHFSPEC_THREADS", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [p[k] for p in PAIRS for k in ("prompt", "chosen", "rejected")]
    return build_tiny(texts, seed=0, out_dir=tmp_path_factory.mktemp("tiny"), vocab_size=512)


def run_dpo(tiny: Path, out_dir: Path, *, resume: bool = False, **kwargs: Any) -> dict[str, Any]:
    lines: list[str] = []
    summary = train_dpo(
        tiny,
        tiny,
        PAIRS,
        kwargs.pop("policy", settings()),
        seed=0,
        out_dir=out_dir,
        resume=resume,
        log=lines.append,
        metadata=METADATA,
        **kwargs,
    )
    summary["log"] = lines
    return summary


@pytest.fixture(scope="module")
def trained(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("dpo")
    return out, run_dpo(tiny, out)


def final_weights(out_dir: Path) -> bytes:
    return (out_dir / "checkpoints" / checkpoint_name(STEPS) / "model.safetensors").read_bytes()


def response_logps(model: Any, tokenizer: Any, pairs: list[dict[str, str]], key: str) -> Any:
    """Per pair, the sum of the response tokens' log-probabilities given the prompt (EOS included),
    as DPO scores them; one padded forward pass for all pairs."""
    rows, starts = [], []
    chat = chat_format(tokenizer, "auto")  # builtin:tiny's template, as train_dpo formats
    for pair in pairs:
        prompt = chat.prompt(pair["prompt"])
        prompt_ids = tokenizer(prompt)["input_ids"]
        ids = tokenizer(prompt + chat.response(pair["prompt"], pair[key]))["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids and ids[-1] == tokenizer.eos_token_id
        rows.append(ids)
        starts.append(len(prompt_ids))
    width = max(map(len, rows))
    input_ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    picked = torch.log_softmax(logits, -1).gather(2, input_ids[:, 1:, None])[..., 0]
    positions = torch.arange(width - 1)[None, :]
    response = (positions >= torch.tensor(starts)[:, None] - 1) & (attention[:, 1:] == 1)
    return (picked * response).sum(dim=1)


def test_checkpoints_every_n_steps_and_a_final_one(trained: tuple[Path, dict[str, Any]]) -> None:
    out, summary = trained
    names = [p.name for p in list_checkpoints(out)]
    assert names == ["step-000002", "step-000004", "step-000006", "step-000007"]
    assert summary["steps"] == STEPS
    assert summary["checkpoints"] == [str(out / "checkpoints" / n) for n in names]
    assert summary["final_checkpoint"] == str(out / "checkpoints" / "step-000007")
    assert summary["pairs"] == summary["pairs_trained"] == len(PAIRS)
    assert summary["pairs_dropped"] == summary["pairs_truncated"] == 0
    assert summary["resumed_from_step"] is None
    assert summary["final_loss"] is not None and summary["seconds"] > 0
    assert "policy checkpoint step-000004" in summary["log"]
    # no temporary folders left behind; trainer state kept for resume
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert (out / "trainer" / f"checkpoint-{STEPS}" / "trainer_state.json").is_file()


def test_each_checkpoint_is_a_loadable_model_with_its_metadata(
    trained: tuple[Path, dict[str, Any]],
) -> None:
    out, _ = trained
    for path in list_checkpoints(out):
        assert (path / "model.safetensors").is_file()
        assert not list(path.glob("*.bin"))
        meta = json.loads((path / CHECKPOINT_META).read_text(encoding="utf-8"))
        step = int(path.name.split("-")[1])
        assert meta["step"] == step
        assert meta["epoch"] == pytest.approx(step / STEPS, abs=1e-5)
        assert (meta["beta"], meta["loss_type"], meta["method"]) == (0.1, "sigmoid", "dpo")
        assert meta["metadata"] == METADATA
        assert meta["metrics"]["step"] == step and "rewards/accuracies" in meta["metrics"]
        tokenizer = load_tokenizer(path)
        model = load_causal_lm(path, tokenizer=tokenizer)
        prompt = tokenizer(
            chat_format(tokenizer, "auto").prompt(PAIRS[0]["prompt"]), return_tensors="pt"
        )
        generated = model.generate(
            **prompt, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
        assert generated.shape[1] > prompt["input_ids"].shape[1]


def test_metrics_rows_per_step(trained: tuple[Path, dict[str, Any]]) -> None:
    out, _ = trained
    rows = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies"):
        assert all(key in r for r in rows), key
    assert "rewards/margins" in rows[0] and "logps/chosen" in rows[0]
    # the policy starts as the reference: no margin at step 1; it learns the preference after
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert rows[-1]["rewards/accuracies"] == 1.0
    assert rows[-1]["rewards/margins"] > 0
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_policy_moves_towards_the_chosen_responses(
    tiny: Path, trained: tuple[Path, dict[str, Any]]
) -> None:
    out, _ = trained
    tokenizer = load_tokenizer(tiny)
    reference = load_causal_lm(tiny, tokenizer=tokenizer)
    policy = load_causal_lm(out / "checkpoints" / checkpoint_name(STEPS), tokenizer=tokenizer)
    margins = (
        response_logps(policy, tokenizer, PAIRS, "chosen")
        - response_logps(reference, tokenizer, PAIRS, "chosen")
    ) - (
        response_logps(policy, tokenizer, PAIRS, "rejected")
        - response_logps(reference, tokenizer, PAIRS, "rejected")
    )
    assert float(margins.mean()) > 1.0
    assert float((margins > 0).float().mean()) > 0.9


def test_same_seed_gives_byte_identical_weights(
    tiny: Path, trained: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, _ = trained
    run_dpo(tiny, tmp_path / "again")
    assert final_weights(tmp_path / "again") == final_weights(out)


class Interrupt(Exception):
    pass


class InterruptAfterSave(TrainerCallback):
    """Stands for a killed process: raises right after the step-`at` checkpoints are written."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.at:
            raise Interrupt(f"interrupted after step {self.at}")


def test_resume_after_an_interruption_ends_with_the_same_weights(
    tiny: Path, trained: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, _ = trained
    target = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        run_dpo(tiny, target, callbacks=[InterruptAfterSave(4)])
    assert [p.name for p in list_checkpoints(target)] == ["step-000002", "step-000004"]
    # leftovers of the killed run past the resume point are dropped before continuing: a
    # half-written checkpoint, a metrics row of a step not saved, a torn last line
    (target / "checkpoints" / ".step-000006.tmp").mkdir()
    with (target / METRICS_FILE).open("a") as handle:
        handle.write(json.dumps({"step": 5, "loss": 9.9}) + '\n{"step": 6, "lo')
    # killed between the trainer's save and the policy checkpoint's: step-4 is rebuilt
    step4 = target / "checkpoints" / checkpoint_name(4)
    shutil.rmtree(step4)

    summary = run_dpo(tiny, target, resume=True)
    assert summary["resumed_from_step"] == 4
    assert "continuing from step 4" in summary["log"]
    assert summary["steps"] == STEPS
    assert [p.name for p in list_checkpoints(target)] == [
        "step-000002",
        "step-000004",
        "step-000006",
        "step-000007",
    ]
    assert not (target / "checkpoints" / ".step-000006.tmp").exists()
    rows = [json.loads(line) for line in (target / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert final_weights(target) == final_weights(out)
    assert "policy checkpoint step-000004 restored from the trainer's" in summary["log"]
    reference = out / "checkpoints" / checkpoint_name(4)
    assert (step4 / "model.safetensors").read_bytes() == (
        reference / "model.safetensors"
    ).read_bytes()
    assert sorted(p.name for p in step4.iterdir()) == sorted(p.name for p in reference.iterdir())
    restored = json.loads((step4 / CHECKPOINT_META).read_text())
    assert restored == json.loads((reference / CHECKPOINT_META).read_text())


def test_resume_of_a_finished_run_trains_nothing_more(
    tiny: Path, trained: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, _ = trained
    target = tmp_path / "copy"
    shutil.copytree(out, target)
    summary = run_dpo(tiny, target, resume=True)
    assert summary["resumed_from_step"] == STEPS and summary["steps"] == STEPS
    assert final_weights(target) == final_weights(out)


def test_a_fresh_run_clears_an_older_runs_outputs(tiny: Path, tmp_path: Path) -> None:
    stale = tmp_path / "out" / "checkpoints" / "step-000099"
    stale.mkdir(parents=True)
    (stale / CHECKPOINT_META).write_text("{}")
    (tmp_path / "out" / METRICS_FILE).write_text('{"step": 99, "loss": 1.0}\n')
    policy = settings(train={"batch_size": 52}, checkpoint_every=5)
    summary = run_dpo(tiny, tmp_path / "out", resume=True, policy=policy)
    # resume without a trainer checkpoint starts over, as resume=False does
    assert "no complete trainer checkpoint to resume from; starting over" in summary["log"]
    # one step, fewer than checkpoint_every: the final checkpoint is still written
    assert [p.name for p in list_checkpoints(tmp_path / "out")] == ["step-000001"]
    rows = (tmp_path / "out" / METRICS_FILE).read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1]


@pytest.mark.parametrize("loss_type", ["ipo", "hinge", "robust"])
def test_every_loss_type_of_the_schema_trains(tiny: Path, tmp_path: Path, loss_type: str) -> None:
    # prompts are 27-28 tokens, prompt + response 38-48: max_length 32 truncates every pair
    policy = settings(loss_type=loss_type, beta=0.2, train={"batch_size": 52, "max_length": 32})
    summary = run_dpo(tiny, tmp_path, policy=policy)
    assert summary["steps"] == 1
    meta = json.loads((Path(summary["final_checkpoint"]) / CHECKPOINT_META).read_text())
    assert (meta["loss_type"], meta["beta"]) == (loss_type, 0.2)
    # truncated pairs are counted and still trained on
    assert summary["pairs_truncated"] == len(PAIRS) and summary["pairs_dropped"] == 0


def test_config_mapping_from_the_spec() -> None:
    policy = settings(
        beta=0.3,
        loss_type="hinge",
        train={"warmup_ratio": 0.25, "gradient_accumulation_steps": 2},
        checkpoint_every=3,
    )
    args = dpo_args(policy, seed=7, trainer_dir=Path("t"), steps_hint=10, use_cpu=True)
    assert args["loss_type"] == ["hinge"] and args["beta"] == 0.3
    assert args["warmup_steps"] == 0.25 and args["save_steps"] == 3
    assert args["gradient_accumulation_steps"] == 2 and args["seed"] == args["data_seed"] == 7
    assert not args["bf16"] and not args["fp16"] and args["use_cpu"]
    # a float 1.0 would read as one step: the whole run is passed as a step count
    whole = dpo_args(
        settings(train={"warmup_ratio": 1.0}),
        seed=0,
        trainer_dir=Path("t"),
        steps_hint=10,
        use_cpu=True,
    )
    assert whole["warmup_steps"] == 10


def test_rows_use_the_shared_template_and_reject_incomplete_pairs(
    tiny: Path, tmp_path: Path
) -> None:
    row = dpo_rows([{"prompt": " hi ", "chosen": "yes ", "rejected": "no"}])[0]
    assert row == {"prompt": format_prompt("hi"), "chosen": " yes", "rejected": " no"}
    with pytest.raises(RunError, match="lacks text for rejected"):
        dpo_rows([{"prompt": "hi", "chosen": "yes"}])
    with pytest.raises(RunError, match="fills policy.dpo.train.max_length"):
        run_dpo(tiny, tmp_path, policy=settings(train={"max_length": 16}))
    with pytest.raises(RunError, match="no preference pairs"):
        train_dpo(
            tiny,
            tiny,
            [],
            settings(),
            seed=0,
            out_dir=tmp_path,
            resume=False,
            log=print,
            metadata={},
        )


# ---------------------------------------------------------------------------------------------
# compute: LoRA, gradient checkpointing; tracking


def compute_block(**changes: Any) -> dict[str, Any]:
    """The schema's default ``compute`` block on the CPU, with `changes`."""
    from rlhfspec.compiler.schemas import default_of

    block = {**default_of("compute"), "device": "cpu"}
    lora = {**block["lora"], **changes.pop("lora", {})}
    return {**block, **changes, "lora": lora}


def test_lora_trains_adapters_against_the_base_with_adapters_disabled(
    tiny: Path, tmp_path: Path
) -> None:
    from rlhfspec.runtime.train.scale import weights_sha256

    # 52 pairs in batches of 26: two steps, a checkpoint after each
    policy = settings(train={"batch_size": 26, "learning_rate": 5e-2}, checkpoint_every=1)
    compute = compute_block(lora={"enabled": True, "r": 4, "alpha": 8})
    summary = run_dpo(tiny, tmp_path / "lora", policy=policy, compute=compute)
    assert summary["steps"] == 2
    record = summary["compute"]
    assert record["reference"] == "adapters disabled"
    assert record["lora"]["r"] == 4 and record["lora"]["base_sha256"] == weights_sha256(tiny)
    rows = [json.loads(x) for x in (tmp_path / "lora" / METRICS_FILE).read_text().splitlines()]
    # step 1: new adapters are zero (LoRA's B starts at 0), so the policy IS the reference:
    # every implicit reward is exactly 0 and the sigmoid loss is -log(sigmoid(0)) = log 2
    assert rows[0]["rewards/chosen"] == rows[0]["rewards/rejected"] == 0.0
    assert rows[0]["loss"] == pytest.approx(0.693147, abs=1e-5)
    assert rows[1]["rewards/margins"] > 0  # and the adapters learn the preference
    final = Path(summary["final_checkpoint"])
    adapter = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and adapter["r"] == 4
    # merged weights at the top: a plain model for evaluation, moved away from the base
    assert_moved(tiny / "model.safetensors", final / "model.safetensors")

    # killed after step 1 before its policy checkpoint: it is rebuilt from the trainer's
    # adapters merged into the base, and the resumed run ends where the unbroken one did
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "lora", resumed)
    shutil.rmtree(resumed / "trainer" / "checkpoint-2")
    shutil.rmtree(resumed / "checkpoints" / "step-000002")
    shutil.rmtree(resumed / "checkpoints" / "step-000001")
    again = run_dpo(tiny, resumed, resume=True, policy=policy, compute=compute)
    assert again["resumed_from_step"] == 1
    for step in (1, 2):
        a = tmp_path / "lora" / "checkpoints" / checkpoint_name(step) / "model.safetensors"
        b = resumed / "checkpoints" / checkpoint_name(step) / "model.safetensors"
        assert_same_weights(a, b)


def test_gradient_checkpointing_recomputes_and_trains_the_same(
    tiny: Path, trained: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    seen: list[bool] = []

    class Probe(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            seen.append(bool(kwargs["model"].is_gradient_checkpointing))

    summary = run_dpo(
        tiny,
        tmp_path / "gc",
        compute=compute_block(gradient_checkpointing=True),
        callbacks=[Probe()],
    )
    assert seen and all(seen)
    assert summary["compute"]["gradient_checkpointing"] is True
    assert summary["compute"]["reference"] == "frozen copy"
    # recomputing the activations changes nothing in the arithmetic
    out, _ = trained
    assert_same_weights(
        out / "checkpoints" / checkpoint_name(STEPS) / "model.safetensors",
        tmp_path / "gc" / "checkpoints" / checkpoint_name(STEPS) / "model.safetensors",
    )


def test_tracking_reaches_dpo_trainer(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    tracking = {"backend": "tensorboard", "report_to": ["tensorboard"], "run_name": "dpo-run"}
    policy = settings(train={"batch_size": 26})
    run_dpo(tiny, tmp_path / "out", policy=policy, tracking=tracking)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "train/loss" in scalars and "train/rewards/margins" in scalars
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]


def test_batch_size_is_the_global_batch() -> None:
    policy = settings(train={"batch_size": 8})
    assert (
        dpo_args(policy, seed=0, trainer_dir=Path("t"), steps_hint=1, use_cpu=True, world=2)[
            "per_device_train_batch_size"
        ]
        == 4
    )
    with pytest.raises(RunError, match="multiple of the 3 training processes"):
        dpo_args(policy, seed=0, trainer_dir=Path("t"), steps_hint=1, use_cpu=True, world=3)


def load_weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_weights(a), load_weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-6, rtol=0), key


def assert_moved(a: Path, b: Path) -> None:
    wa, wb = load_weights(a), load_weights(b)
    assert any(not torch.equal(wa[k].float(), wb[k].float()) for k in wa if k in wb)
