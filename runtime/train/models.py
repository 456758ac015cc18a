"""Model references: a built-in tiny model, and loaders that only take safetensors weights.

A spec names its base model by reference. Two kinds exist:

* ``builtin:tiny`` (`BUILTIN_TINY`): a small Llama-family causal LM with a byte-level BPE
  tokenizer and a small chat template (``TINY_CHAT_TEMPLATE``, role tokens as special
  tokens), both built locally from the run's own texts by `build_tiny`. It exists so that the
  whole pipeline (SFT, reward model, policy optimisation) can run end to end on a CPU, in CI
  and without network access. It is useless as a language model and is not meant to be one.
  The build is deterministic: the same texts, seed and vocabulary size give byte-identical
  ``tokenizer.json`` and ``model.safetensors``, so the cache key (`resolve_model`) can be a hash
  of those inputs and two machines that build it agree on what they trained from.
* anything else: a local directory or a hub id, passed to ``from_pretrained`` unchanged.

All loading goes through the ordinary ``from_pretrained`` path with ``use_safetensors=True``.
Pickle-based checkpoints (``pytorch_model.bin``) can run arbitrary code when they are loaded,
so they are refused with a `RunError` rather than silently used. ``trust_remote_code`` is passed
through and defaults to False for the same reason: a model repository's Python code runs only
when the spec says so. A local directory is loaded with ``local_files_only=True`` so that a
typo in a path never turns into a download attempt.

Padding. Every loaded tokenizer gets a pad token distinct from EOS (`ensure_pad_token`). With
``pad == eos`` two things go wrong quietly: a sequence-classification reward model reads its
score at the last non-pad token, so an EOS at the end of a sequence is taken for padding and
the reward is read one token early; and causal-LM collators that mask pad positions out of the
labels also mask the real EOS, so the model never learns to stop. When a ``<pad>`` token has to
be added, the model loaders grow the embedding matrix to match and set the new row to the mean
of the existing rows (deterministic, unlike random initialisation; the pad row is masked out
anyway, so its value only needs to be harmless).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from rlhfspec.common.chat_templates import TINY_CHAT_TEMPLATE, TINY_ROLE_TOKENS
from rlhfspec.common.errors import RunError
from rlhfspec.common.model_shapes import BUILTIN_TINY, TINY_CONFIG, TINY_VOCAB_SIZE

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


#: Bumped whenever `build_tiny`'s recipe changes, so that cached builds from an older recipe
#: are not reused (it is part of the cache key and of the manifest).
BUILTIN_RECIPE_VERSION = 2

MANIFEST_NAME = "rlhfspec_builtin.json"

BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
# Order fixes the ids: <pad>=0, <s>=1, </s>=2, <unk>=3, then the chat template's role tokens
# <|system|>=4, <|user|>=5, <|assistant|>=6 (rlhfspec.common.chat_templates).
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, *TINY_ROLE_TOKENS)


_WEIGHT_SUFFIXES_SAFE = (".safetensors", ".safetensors.index.json")
_WEIGHT_SUFFIXES_UNSAFE = (".bin", ".bin.index.json", ".pt", ".pth", ".ckpt", ".pkl")


# ---------------------------------------------------------------------------------------------
# The built-in tiny model


def corpus_sha256(texts: Iterable[str]) -> str:
    """SHA-256 of a corpus, unambiguous about text boundaries (each text is length-prefixed)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def _train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """Train a byte-level BPE `tokenizers.Tokenizer` on `texts`.

    Byte-level BPE needs no normaliser and never produces ``<unk>``: every byte has a token,
    so any text round-trips. The post-processor prepends ``<s>`` (Llama's convention); EOS is
    left to the trainers, which append it where a sequence really ends.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A $B",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return tokenizer


def _wrap_tokenizer(raw: Any) -> PreTrainedTokenizerBase:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=raw,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="right",
        model_max_length=TINY_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def build_tiny(
    texts: Iterable[str], *, seed: int, out_dir: Path, vocab_size: int = TINY_VOCAB_SIZE
) -> Path:
    """Build the ``builtin:tiny`` model and tokenizer from `texts` into `out_dir`.

    Writes ``tokenizer.json`` (+ its config), ``config.json``, ``model.safetensors``,
    ``generation_config.json`` and a manifest ``rlhfspec_builtin.json`` (seed, vocabulary size,
    corpus hash, recipe version, config summary). The weights are initialised under
    ``torch.manual_seed(seed)`` inside a forked RNG, so the caller's random state is untouched
    and the same (texts, seed, vocab_size) always gives byte-identical files.

    `vocab_size` is an upper bound: a small corpus yields fewer merges, and the model's
    embedding matrix is sized to the tokenizer actually trained. Returns `out_dir`.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    corpus = [t for t in texts if t]
    if not corpus:
        raise RunError("builtin:tiny needs a non-empty corpus of texts to train its tokenizer")
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise RunError(
            f"builtin:tiny vocab_size must be at least {256 + len(SPECIAL_TOKENS)} "
            f"(the 256 byte tokens and the special tokens), got {vocab_size}"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = _wrap_tokenizer(_train_tokenizer(corpus, vocab_size))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **TINY_CONFIG,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)

    manifest = {
        "ref": BUILTIN_TINY,
        "recipe_version": BUILTIN_RECIPE_VERSION,
        "seed": seed,
        "vocab_size_requested": vocab_size,
        "vocab_size": len(tokenizer),
        "corpus_sha256": corpus_sha256(corpus),
        "corpus_texts": len(corpus),
        "special_tokens": {
            "pad": [PAD_TOKEN, tokenizer.pad_token_id],
            "bos": [BOS_TOKEN, tokenizer.bos_token_id],
            "eos": [EOS_TOKEN, tokenizer.eos_token_id],
            "unk": [UNK_TOKEN, tokenizer.unk_token_id],
        },
        "chat_template_sha256": hashlib.sha256(TINY_CHAT_TEMPLATE.encode()).hexdigest(),
        "architecture": "LlamaForCausalLM",
        "config": dict(TINY_CONFIG),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    (out_dir / MANIFEST_NAME).write_text(
        json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return out_dir


def builtin_cache_key(corpus_sha: str, *, seed: int, vocab_size: int) -> str:
    """First 12 hex digits of the hash of everything a ``builtin:tiny`` build depends on."""
    material = f"{BUILTIN_RECIPE_VERSION}\n{corpus_sha}\n{seed}\n{vocab_size}".encode()
    return hashlib.sha256(material).hexdigest()[:12]


def resolve_model(
    ref: str,
    *,
    texts_for_builtin: Callable[[], Iterable[str]] | None,
    seed: int,
    cache_dir: Path,
    vocab_size: int = TINY_VOCAB_SIZE,
) -> Path | str:
    """Turn a spec's model reference into something ``from_pretrained`` accepts.

    ``builtin:tiny`` is built (once) under ``cache_dir/builtin-tiny-<key>``, where the key
    hashes the corpus, seed, vocabulary size and recipe version; `texts_for_builtin` is only
    called for it. The build goes into a temporary sibling directory that is renamed into
    place when complete, so an interrupted or concurrent build never leaves a half-written
    model that a later run would trust. An existing local directory is returned as a `Path`;
    any other reference (a hub id) is returned unchanged.
    """
    if ref == BUILTIN_TINY:
        if texts_for_builtin is None:
            raise RunError("builtin:tiny needs texts to build its tokenizer; none were given")
        texts = list(texts_for_builtin())
        key = builtin_cache_key(
            corpus_sha256(t for t in texts if t), seed=seed, vocab_size=vocab_size
        )
        cache_dir = Path(cache_dir)
        final = cache_dir / f"builtin-tiny-{key}"
        if (final / MANIFEST_NAME).is_file():
            return final
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".builtin-tiny-{key}.", dir=cache_dir))
        try:
            build_tiny(texts, seed=seed, out_dir=tmp, vocab_size=vocab_size)
            try:
                os.rename(tmp, final)
            except OSError:
                # Another process finished the same build first; its result is identical.
                if not (final / MANIFEST_NAME).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final
    if ref.startswith("builtin:"):
        raise RunError(f"unknown built-in model {ref!r}; the only one is {BUILTIN_TINY!r}")
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if path.is_absolute() or ref.startswith((".", "~")) or path.exists():
        raise RunError(f"model path {ref!r} is not a directory")
    return ref


# ---------------------------------------------------------------------------------------------
# Loading


def _local_dir(ref: str | os.PathLike[str]) -> Path | None:
    path = Path(ref).expanduser()
    return path if path.is_dir() else None


def _check_safetensors(ref: str | os.PathLike[str]) -> Path | None:
    """For a local directory, refuse it unless it holds safetensors weights; return it."""
    path = _local_dir(ref)
    if path is None:
        return None
    names = [p.name for p in path.iterdir() if p.is_file()]
    if any(n.endswith(_WEIGHT_SUFFIXES_SAFE) for n in names):
        return path
    unsafe = sorted(n for n in names if n.endswith(_WEIGHT_SUFFIXES_UNSAFE))
    if unsafe:
        raise RunError(
            f"{path} holds only pickle-based weights ({', '.join(unsafe)}); rlhfspec loads "
            "safetensors only, because unpickling a checkpoint can run arbitrary code. Convert "
            "it (load it yourself and save_pretrained(..., safe_serialization=True))."
        )
    raise RunError(f"{path} holds no model weights (no *.safetensors file)")


def _common_kwargs(ref: str | os.PathLike[str], trust_remote_code: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "trust_remote_code": trust_remote_code,
        "local_files_only": _local_dir(ref) is not None,
    }
    if _local_dir(ref) is None:
        from rlhfspec.common.model_ref import hub_parts

        revision = hub_parts(str(ref))[1]
        if revision is not None:
            kwargs["revision"] = revision
    return kwargs


def _source(ref: str | os.PathLike[str]) -> str:
    """What ``from_pretrained`` is given: the folder, or the hub id without ``@revision``."""
    if _local_dir(ref) is not None:
        return str(ref)
    from rlhfspec.common.model_ref import hub_parts

    return hub_parts(str(ref))[0]


@contextlib.contextmanager
def _load_errors(ref: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Turn the loaders' OSError (missing files, no safetensors on the hub) into a RunError."""
    try:
        yield
    except OSError as exc:
        raise RunError(
            f"could not load {what} from {str(ref)!r} (rlhfspec loads safetensors only): {exc}"
        ) from exc


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give `tokenizer` a ``<pad>`` token distinct from EOS if it lacks one; True if added.

    See the module docstring for why pad must differ from EOS. Padding side is not changed.
    """
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    if pad is not None and pad != eos:
        return False
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise RunError("could not give the tokenizer a pad token distinct from its EOS token")
    return True


def load_tokenizer(
    ref: str | os.PathLike[str], *, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Load a tokenizer with ``AutoTokenizer`` and make sure its pad token is not EOS."""
    from transformers import AutoTokenizer

    with _load_errors(ref, "a tokenizer"):
        tokenizer = AutoTokenizer.from_pretrained(
            _source(ref), **_common_kwargs(ref, trust_remote_code)
        )
    ensure_pad_token(tokenizer)
    return tokenizer


def _align_with_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Grow the embeddings if the tokenizer gained tokens, and set the pad id everywhere.

    New rows are set to the mean of the old ones (deterministic; see the module docstring).
    """
    import torch

    old_rows = int(cast("torch.Tensor", model.get_input_embeddings().weight).shape[0])
    if len(tokenizer) > old_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            inputs = cast("torch.Tensor", model.get_input_embeddings().weight)
            inputs[old_rows:] = inputs[:old_rows].mean(dim=0, keepdim=True)
            head = model.get_output_embeddings()  # type: ignore[no-untyped-call]
            outputs = cast("torch.Tensor | None", getattr(head, "weight", None))
            if outputs is not None and outputs.data_ptr() != inputs.data_ptr():
                outputs[old_rows:] = outputs[:old_rows].mean(dim=0, keepdim=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.pad_token_id = tokenizer.pad_token_id


def load_causal_lm(
    ref: str | os.PathLike[str],
    *,
    trust_remote_code: bool = False,
    dtype: torch.dtype | str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    quantization_config: Any = None,
) -> PreTrainedModel:
    """Load a causal LM (safetensors only) and align it with its tokenizer's pad token.

    `tokenizer` defaults to `load_tokenizer(ref)`; pass the one the trainer will use if it was
    loaded already, so that both agree on the pad id and vocabulary size.
    """
    from transformers import AutoModelForCausalLM

    _check_safetensors(ref)
    if tokenizer is None:
        tokenizer = load_tokenizer(ref, trust_remote_code=trust_remote_code)
    kwargs = _common_kwargs(ref, trust_remote_code)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if quantization_config is not None:  # QLoRA: the frozen base in 4-bit (CUDA)
        kwargs["quantization_config"] = quantization_config
    with _load_errors(ref, "a causal LM"):
        model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            _source(ref), use_safetensors=True, **kwargs
        )
    _align_with_tokenizer(model, tokenizer)
    return model


def load_reward_model(
    ref: str | os.PathLike[str],
    *,
    trust_remote_code: bool = False,
    dtype: torch.dtype | str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    seed: int | None = None,
    quantization_config: Any = None,
) -> PreTrainedModel:
    """Load a scalar reward model: ``AutoModelForSequenceClassification`` with one label.

    From a causal-LM checkpoint the score head is new and randomly initialised; pass `seed`
    to make that initialisation reproducible (it runs in a forked RNG, leaving the caller's
    random state alone). The config's pad id is set from the tokenizer, because the model reads
    each sequence's score at its last non-pad token.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    _check_safetensors(ref)
    if tokenizer is None:
        tokenizer = load_tokenizer(ref, trust_remote_code=trust_remote_code)
    kwargs = _common_kwargs(ref, trust_remote_code)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if quantization_config is not None:  # QLoRA: the frozen base in 4-bit (CUDA)
        kwargs["quantization_config"] = quantization_config
    with _load_errors(ref, "a reward model"), torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model: PreTrainedModel = AutoModelForSequenceClassification.from_pretrained(
            _source(ref),
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
            use_safetensors=True,
            **kwargs,
        )
    _align_with_tokenizer(model, tokenizer)
    return model
