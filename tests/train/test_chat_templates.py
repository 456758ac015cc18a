"""Chat templates end to end: one format per run, the same in every stage.

Before, every stage hard-coded ``User: ...\\nAssistant:``, so a chat model was trained and
scored on text it never sees in use. These tests pin down the formatter (the no-template path
byte-identical to the old format, the prompt's tokens a prefix of prompt + response's, EOS at
the end of a response), multi-turn prompt rows, and, on builtin:tiny and on the hub-like
fixture (`tests.hub_model`), that the template reaches SFT inputs, reward-model inputs, PPO
rollouts and evaluation prompts, with the plan's and lineage's sha256 of it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")
pytest.importorskip("trl")

from rlhfspec.common.chat_templates import TINY_CHAT_TEMPLATE, folder_template  # noqa: E402
from rlhfspec.common.errors import RunError  # noqa: E402
from rlhfspec.common.hashing import sha256_text  # noqa: E402
from rlhfspec.common.model_shapes import TINY_VOCAB_SIZE  # noqa: E402
from rlhfspec.runtime.run import run  # noqa: E402
from rlhfspec.runtime.train.formatting import (  # noqa: E402
    ChatFormat,
    chat_format,
    format_prompt,
    format_response,
)
from rlhfspec.runtime.train.models import build_tiny, load_tokenizer  # noqa: E402
from tests.hub_model import HUB_CHAT_TEMPLATE, build_hub_like  # noqa: E402
from tests.policy.test_ppo import CORPUS  # noqa: E402
from tests.train.test_train_stages import small_project  # noqa: E402

MULTI = [
    {"role": "system", "content": "You answer for the shop."},
    {"role": "user", "content": "Where is order 48213?"},
    {"role": "assistant", "content": "It left on Friday."},
    {"role": "user", "content": "It has still not arrived."},
]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("formats")
    tiny = build_tiny(CORPUS, seed=0, out_dir=root / "tiny", vocab_size=320)
    hub = build_hub_like(root / "hub", CORPUS)
    plain = load_tokenizer(tiny)
    plain.chat_template = None
    return {"tiny": load_tokenizer(tiny), "hub": load_tokenizer(hub), "plain": plain}


# ---------------------------------------------------------------------------------------------
# The formatter


def test_without_a_template_the_format_is_the_old_one_byte_for_byte(models: dict[str, Any]) -> None:
    for fmt in (chat_format(models["plain"], "auto"), chat_format(models["tiny"], "none")):
        assert fmt.template is None and fmt.sha256 is None
        prompt, response = "  My parcel is late.  ", " Sorry! Track it here. "
        assert fmt.prompt(prompt) == "User: My parcel is late.\nAssistant:" == format_prompt(prompt)
        assert (
            fmt.response(prompt, response) == " Sorry! Track it here." == format_response(response)
        )
        # multi-turn without a template: the same format, turn by turn
        assert fmt.prompt(MULTI) == (
            "System: You answer for the shop.\nUser: Where is order 48213?\n"
            "Assistant: It left on Friday.\nUser: It has still not arrived.\nAssistant:"
        )
        assert fmt.prompt([{"role": "user", "content": prompt}]) == format_prompt(prompt)


def test_builtin_tiny_renders_its_template(models: dict[str, Any]) -> None:
    fmt = chat_format(models["tiny"], "auto")
    assert fmt.template == TINY_CHAT_TEMPLATE and fmt.sha256 == sha256_text(TINY_CHAT_TEMPLATE)
    assert fmt.prompt(" Hi there ") == "<|user|>\nHi there\n<|assistant|>\n"
    # the response part ends at EOS: the newline the template puts after the turn is cut
    assert fmt.response("Hi there", " Hello. ") == "Hello.</s>"
    assert fmt.prompt(MULTI) == (
        "<|system|>\nYou answer for the shop.\n<|user|>\nWhere is order 48213?\n"
        "<|assistant|>\nIt left on Friday.</s>\n<|user|>\nIt has still not arrived.\n"
        "<|assistant|>\n"
    )
    ids = models["tiny"](fmt.prompt("Hi"))["input_ids"]
    assert ids[0] == models["tiny"].bos_token_id  # one BOS, from the tokenizer
    roles = {models["tiny"].convert_ids_to_tokens(i) for i in ids}
    assert {"<|user|>", "<|assistant|>"} <= roles  # role tokens are single special tokens


texts = st.text(
    alphabet=st.sampled_from(list("abcdefgh ABC.,!?'0123\n-éß")),
    min_size=1,
    max_size=40,
).filter(lambda t: t.strip() != "")


@pytest.mark.parametrize("name", ["tiny", "hub", "plain"])
@settings(max_examples=40, deadline=None)
@given(prompt=texts, response=texts)
def test_prompt_tokens_are_a_prefix_of_prompt_and_response_tokens(
    models: dict[str, Any], name: str, prompt: str, response: str
) -> None:
    """What SFT's and DPO's completion masks, the reward model and PPO rely on: the tokens
    of the prompt alone are the first tokens of prompt + response, and a templated response
    ends with EOS (the token PPO's missing-EOS penalty looks for)."""
    tokenizer = models[name]
    fmt = chat_format(tokenizer, "auto")
    for p in (prompt, [*MULTI[:3], {"role": "user", "content": prompt}]):
        head = tokenizer(fmt.prompt(p))["input_ids"]
        whole = tokenizer(fmt.full(p, response))["input_ids"]
        assert whole[: len(head)] == head
        assert len(whole) > len(head)
        if fmt.template is not None:
            assert whole[-1] == tokenizer.eos_token_id


def test_a_template_that_renders_the_prompt_differently_is_refused(models: dict[str, Any]) -> None:
    odd = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT>{% endif %}"
    )
    fmt = ChatFormat(odd, "test", models["tiny"])
    assert fmt.prompt("hi").endswith("ASSISTANT>")
    with pytest.raises(RunError, match="prefix"):
        fmt.response("hi", "hello")


def test_a_bos_the_template_renders_is_not_doubled(models: dict[str, Any], tmp_path: Path) -> None:
    jinja = tmp_path / "bos.jinja"
    jinja.write_text("{{ bos_token }}" + TINY_CHAT_TEMPLATE)
    fmt = chat_format(models["tiny"], "bos.jinja", tmp_path)
    assert fmt.source == "bos.jinja" and fmt.sha256 == sha256_text(jinja.read_text())
    ids = models["tiny"](fmt.prompt("Hi"))["input_ids"]
    assert ids.count(models["tiny"].bos_token_id) == 1
    with pytest.raises(RunError, match="no such file"):
        chat_format(models["tiny"], "missing.jinja", tmp_path)


def test_dpo_rows_go_through_the_run_format(models: dict[str, Any]) -> None:
    from rlhfspec.runtime.policy.dpo import dpo_rows

    fmt = chat_format(models["hub"], "auto")
    pair = {"prompt": "ignored transcript", "messages": MULTI, "chosen": " A ", "rejected": "B"}
    (row,) = dpo_rows([pair], fmt)
    assert row == {
        "prompt": fmt.prompt(MULTI),
        "chosen": "A</s>",
        "rejected": "B</s>",
    }
    assert row["prompt"].startswith("<|system|>\nYou answer for the shop.</s>\n")


# ---------------------------------------------------------------------------------------------
# Every stage of a run


@contextlib.contextmanager
def spies(seen: dict[str, list[Any]]) -> Iterator[None]:
    """Record (not replace) what the trainers and samplers of a run are given."""
    from trl.trainer.reward_trainer import RewardTrainer
    from trl.trainer.sft_trainer import SFTTrainer

    import rlhfspec.runtime.evaluation.generation as generation
    import rlhfspec.runtime.policy.ppo.rollout as rollout
    import rlhfspec.runtime.train.stages as stages

    def trainer_spy(cls: Any, key: str) -> Any:
        original = cls.__init__

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            seen[key].extend(kwargs["train_dataset"].to_list())
            original(self, *args, **kwargs)

        return init

    def call_spy(function: Any, key: str, index: int) -> Any:
        def spy(*args: Any, **kwargs: Any) -> Any:
            seen[key].extend(args[index])
            return function(*args, **kwargs)

        return spy

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SFTTrainer, "__init__", trainer_spy(SFTTrainer, "sft"))
        patch.setattr(RewardTrainer, "__init__", trainer_spy(RewardTrainer, "reward"))
        patch.setattr(stages, "score_texts", call_spy(stages.score_texts, "reward_eval", 2))
        patch.setattr(rollout, "encode_prompts", call_spy(rollout.encode_prompts, "ppo", 1))
        patch.setattr(
            generation, "encode_prompts", call_spy(generation.encode_prompts, "evaluation", 1)
        )
        yield


def project_texts(root: Path) -> list[str]:
    """The example's prompt and response texts (what builtin:tiny's tokenizer learns from)."""
    data = root / "support-assistant" / "data"
    files = [*sorted((data / "prompts").glob("*.jsonl")), data / "responses.jsonl"]
    return [json.loads(line)["text"] for f in files for line in f.read_text().splitlines()]


def hub_project(root: Path) -> Path:
    """The small example with every stage starting from the hub-like fixture folder (its
    tokenizer trained on the example's texts, as builtin:tiny's is)."""
    spec = small_project(root)
    build_hub_like(root / "models" / "hub", project_texts(root), vocab_size=TINY_VOCAB_SIZE)
    text = spec.read_text()
    text = text.replace(
        "sft:\n  enabled: true\n  base_model: builtin:tiny",
        "sft:\n  enabled: true\n  base_model: models/hub",
    )
    text = text.replace(
        "reward_model:\n  base_model: builtin:tiny", "reward_model:\n  base_model: models/hub"
    )
    spec.write_text(text)
    return spec


@pytest.mark.slow  # two small runs up to evaluate: about 30 s each
@pytest.mark.parametrize("base", ["builtin:tiny", "hub"])
def test_the_template_reaches_every_stage(base: str, tmp_path: Path) -> None:
    spec = small_project(tmp_path) if base == "builtin:tiny" else hub_project(tmp_path)
    seen: dict[str, list[Any]] = {
        k: [] for k in ("sft", "reward", "reward_eval", "ppo", "evaluation")
    }
    with spies(seen):
        run_dir = run(
            spec, display="spec", run_dir=tmp_path / "run", until="evaluate", log=lambda m: None
        )
    template = TINY_CHAT_TEMPLATE if base == "builtin:tiny" else HUB_CHAT_TEMPLATE
    # the hub template closes every turn with EOS; the tiny one only the assistant's
    user_end = "\n" if base == "builtin:tiny" else "</s>\n"

    def templated_prompt(text: str) -> bool:
        return text.startswith("<|user|>\n") and text.endswith(f"{user_end}<|assistant|>\n")

    for key in ("sft", "reward", "reward_eval", "ppo", "evaluation"):
        assert seen[key], f"nothing seen for {key}"
    assert all(templated_prompt(r["prompt"]) for r in seen["sft"])
    assert all(
        r["completion"].endswith("</s>") and "\n" not in r["completion"][-5:] for r in seen["sft"]
    )
    assert all(templated_prompt(r["prompt"]) for r in seen["reward"])
    assert all(
        r["chosen"].endswith("</s>") and r["rejected"].endswith("</s>") for r in seen["reward"]
    )
    assert all(t.startswith("<|user|>\n") and t.endswith("</s>") for t in seen["reward_eval"])
    assert all(templated_prompt(t) for t in seen["ppo"])
    assert all(templated_prompt(t) for t in seen["evaluation"])

    # the plan and lineage record the same template, for every stage that formats text
    plan = json.loads((run_dir / "plan" / "plan.json").read_text())
    sha = sha256_text(template)
    for entry in plan["stages"]:
        if entry["name"] in ("sft", "reward_model", "policy", "evaluate"):
            assert entry["chat_template"]["sha256"] == sha, entry["name"]
    lineage = json.loads((run_dir / "lineage.json").read_text())
    for stage in ("sft", "reward_model"):
        assert lineage["stages"][stage]["metrics"]["chat_template"]["sha256"] == sha
    for model in ("sft", "reward_model"):
        assert folder_template(run_dir / "models" / model) == template
    start = json.loads((run_dir / "eval" / "start.json").read_text())
    assert start["chat_template"]["sha256"] == sha


def test_the_verl_job_tokenizers_get_the_runs_format(tmp_path: Path) -> None:
    """The job keeps a model's own template (the run formatted with it); a run without one
    gets the plain format as a template, multi-turn included, and the reward model's view of
    a finished turn is the plain full text plus EOS."""
    pytest.importorskip("pyarrow")
    from rlhfspec.runtime.export.verl_job import set_chat_template
    from rlhfspec.runtime.train.formatting import plain_prompt

    folder = build_tiny(CORPUS, seed=0, out_dir=tmp_path / "model", vocab_size=320)
    assert not set_chat_template(folder, TINY_CHAT_TEMPLATE, False)  # already the run's
    assert set_chat_template(folder, None, False)
    tokenizer = load_tokenizer(folder)
    for prompt in ("  My parcel is late. ", MULTI):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else MULTI
        rendered = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        assert rendered == plain_prompt(prompt)
        whole = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": " Sorry! "}], tokenize=False
        )
        assert whole == plain_prompt(prompt) + format_response("Sorry!") + "</s>"
