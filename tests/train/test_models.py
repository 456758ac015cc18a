"""The built-in tiny model and the safetensors-only loaders (`rlhfspec.runtime.train.models`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import transformers  # noqa: E402

from rlhfspec.common.errors import RunError  # noqa: E402
from rlhfspec.runtime.train import models  # noqa: E402
from rlhfspec.runtime.train.models import (  # noqa: E402
    BUILTIN_TINY,
    MANIFEST_NAME,
    build_tiny,
    corpus_sha256,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    resolve_model,
)

WORDS = ["the", "model", "answer", "question", "helpful", "honest", "reward", "policy", "human"]
CORPUS = [
    f"Question {i}: {' '.join(WORDS[(i + j) % len(WORDS)] for j in range(12))}. Answer: ok {i % 7}"
    for i in range(60)
] + ["Unicode too: héllo wörld ✓ 你好"]
VOCAB = 320


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(CORPUS, seed=0, out_dir=tmp_path_factory.mktemp("tiny"), vocab_size=VOCAB)


def test_build_tiny_is_byte_identical_for_the_same_inputs(tiny: Path, tmp_path: Path) -> None:
    again = build_tiny(CORPUS, seed=0, out_dir=tmp_path / "again", vocab_size=VOCAB)
    for name in ("tokenizer.json", "model.safetensors", "config.json", MANIFEST_NAME):
        assert (tiny / name).read_bytes() == (again / name).read_bytes(), name
    other_seed = build_tiny(CORPUS, seed=1, out_dir=tmp_path / "seed1", vocab_size=VOCAB)
    assert (tiny / "tokenizer.json").read_bytes() == (other_seed / "tokenizer.json").read_bytes()
    assert (tiny / "model.safetensors").read_bytes() != (
        other_seed / "model.safetensors"
    ).read_bytes()


def test_build_tiny_writes_a_manifest_and_a_safetensors_checkpoint(tiny: Path) -> None:
    manifest = json.loads((tiny / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert manifest["ref"] == BUILTIN_TINY
    assert manifest["seed"] == 0
    assert manifest["corpus_sha256"] == corpus_sha256(CORPUS)
    assert manifest["vocab_size_requested"] == VOCAB
    assert manifest["config"]["tie_word_embeddings"] is True
    assert not list(tiny.glob("*.bin"))
    config = json.loads((tiny / "config.json").read_text(encoding="utf-8"))
    assert config["vocab_size"] == manifest["vocab_size"] <= VOCAB


def test_pad_token_is_distinct_from_eos(tiny: Path) -> None:
    tokenizer = load_tokenizer(tiny)
    assert tokenizer.pad_token == "<pad>" and tokenizer.eos_token == "</s>"
    assert tokenizer.bos_token == "<s>" and tokenizer.unk_token == "<unk>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    ids = tokenizer("héllo wörld ✓ 你好").input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "héllo wörld ✓ 你好"


def test_causal_lm_loads_from_disk_and_generates(tiny: Path) -> None:
    tokenizer = load_tokenizer(tiny)
    model = load_causal_lm(tiny, tokenizer=tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id
    inputs = tokenizer(["the model answer"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, inputs.input_ids.shape[1] + 4)


def test_reward_model_gives_one_scalar_per_sequence_whatever_the_padding(tiny: Path) -> None:
    tokenizer = load_tokenizer(tiny)
    model = load_reward_model(tiny, tokenizer=tokenizer, seed=0).eval()
    assert model.config.num_labels == 1
    assert model.config.pad_token_id == tokenizer.pad_token_id
    texts = ["short answer</s>", "a much longer answer about the reward policy</s>"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        rewards = model(**batch).logits
        alone = model(**tokenizer(texts[:1], return_tensors="pt")).logits
    assert rewards.shape == (2, 1)
    # The padded sequence is scored at its own last token (its EOS), not one token early.
    torch.testing.assert_close(rewards[0], alone[0], rtol=1e-4, atol=1e-5)
    # Same seed, same score head.
    again = load_reward_model(tiny, tokenizer=tokenizer, seed=0)
    torch.testing.assert_close(again.score.weight, model.score.weight, rtol=0, atol=0)


def test_pickle_only_checkpoint_is_refused(tmp_path: Path, tiny: Path) -> None:
    (tmp_path / "config.json").write_bytes((tiny / "config.json").read_bytes())
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    for load in (load_causal_lm, load_reward_model):
        with pytest.raises(RunError, match="safetensors"):
            load(tmp_path)
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(RunError, match="no model weights"):
        load_causal_lm(tmp_path)


def test_trust_remote_code_defaults_to_false_and_is_passed_through(
    tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []
    original = transformers.AutoModelForCausalLM.from_pretrained

    def capture(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", capture)
    load_causal_lm(tiny)
    assert seen[-1]["trust_remote_code"] is False
    assert seen[-1]["use_safetensors"] is True
    assert seen[-1]["local_files_only"] is True
    load_causal_lm(tiny, trust_remote_code=True)
    assert seen[-1]["trust_remote_code"] is True


def test_a_missing_pad_token_is_added_and_the_embeddings_grow(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tok_models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(tok_models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=280,
        special_tokens=["</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", pad_token="</s>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        pad_token_id=tokenizer.eos_token_id,
        **models.TINY_CONFIG,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    rows = len(tokenizer)

    loaded_tokenizer = load_tokenizer(tmp_path)
    assert loaded_tokenizer.pad_token == "<pad>"
    assert loaded_tokenizer.pad_token_id == rows != loaded_tokenizer.eos_token_id
    model = load_causal_lm(tmp_path, tokenizer=loaded_tokenizer)
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == rows + 1
    assert model.config.pad_token_id == rows
    torch.testing.assert_close(weight[rows], weight[:rows].mean(dim=0))


def test_resolve_model_builds_builtin_once_and_passes_other_refs_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[Path] = []
    real_build = models.build_tiny

    def counting_build(*args: Any, **kwargs: Any) -> Path:
        builds.append(kwargs["out_dir"])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(models, "build_tiny", counting_build)
    cache = tmp_path / "cache"
    first = resolve_model(
        BUILTIN_TINY, texts_for_builtin=lambda: CORPUS, seed=0, cache_dir=cache, vocab_size=VOCAB
    )
    second = resolve_model(
        BUILTIN_TINY, texts_for_builtin=lambda: CORPUS, seed=0, cache_dir=cache, vocab_size=VOCAB
    )
    assert first == second
    assert isinstance(first, Path) and first.name.startswith("builtin-tiny-")
    assert len(builds) == 1 and builds[0] != first  # built elsewhere, then renamed into place
    assert sorted(p.name for p in cache.iterdir()) == [first.name]  # no temporary dirs left
    assert (first / MANIFEST_NAME).is_file()
    other = resolve_model(
        BUILTIN_TINY, texts_for_builtin=lambda: CORPUS, seed=1, cache_dir=cache, vocab_size=VOCAB
    )
    assert other != first

    assert resolve_model(str(first), texts_for_builtin=None, seed=0, cache_dir=cache) == first
    hub = resolve_model("org/some-model", texts_for_builtin=None, seed=0, cache_dir=cache)
    assert hub == "org/some-model"
    with pytest.raises(RunError, match="not a directory"):
        resolve_model(str(tmp_path / "missing"), texts_for_builtin=None, seed=0, cache_dir=cache)
    with pytest.raises(RunError, match="needs texts"):
        resolve_model(BUILTIN_TINY, texts_for_builtin=None, seed=0, cache_dir=cache)
    with pytest.raises(RunError, match="unknown built-in"):
        resolve_model("builtin:huge", texts_for_builtin=None, seed=0, cache_dir=cache)
