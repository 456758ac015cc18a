"""Evaluation of a policy checkpoint on the plan's prompt sets, and the trajectory plot.

Output quality can peak early in policy optimisation and then degrade as the policy learns to
exploit the reward model, so every checkpoint is evaluated the same way and the deployment
candidate is chosen afterwards (`runtime/selection.py`). One evaluation measures, per prompt
set (validation, adversarial, production holdout) and pooled over all of them:

* the reward model's score of each response (mean, spread, quantiles);
* the KL divergence of the policy from its reference (the SFT model), the reward-hacking
  guard the PPO penalty is meant to enforce;
* response length (words, and tokens before EOS) and the Pearson correlation of length in
  words with reward: a policy that got longer because the reward model likes length is the
  best-known hack;
* the share of responses flagged by the spec's disqualifier detectors (regexes);
* how often generation ended with EOS rather than at ``max_new_tokens``;
* the win rate against the starting policy as judged by the reward model;
* a few sample outputs, so a reader can see what the numbers describe.

Generation. Sampling uses the Gumbel-max trick with one `torch.Generator` per prompt, seeded
from (seed, prompt text, occurrence of that text), and noise drawn on the CPU. Results
therefore never depend on the global RNG, on the order of prompts or on the device, and every
checkpoint sees the *same* noise for the same prompt (common random numbers), which lowers the
variance of checkpoint-to-checkpoint comparisons such as the win rate against the start.
Prompts are left-padded so that all rows of a batch continue from their last position;
generation of a row stops at its first EOS.

KL. For each response, the per-token estimator (`EvalSettings.kl_estimator`) is summed over
the sampled response tokens (EOS included when it was sampled: it is an action too), and the
reported KL is the mean of these sums over prompts. With ``log r = log p_ref(y_t) -
log p_policy(y_t)`` the estimators are Schulman's: k1 = ``-log r``, k2 = ``(log r)^2 / 2``,
k3 = ``r - 1 - log r``. They estimate KL(policy || reference) only for tokens *drawn from the
policy distribution whose log-probabilities are used*, so both models' log-probabilities are
taken at the sampling temperature (logits divided by it), exactly as TRL's PPO trainer does:
at temperature 1 this is KL(policy || reference) itself; at another temperature it is the KL
between the two tempered distributions. Scoring tempered samples with untempered
log-probabilities would give a number that is not a KL of anything (k1 could go negative in
expectation), so that is not done. The temperature used is recorded next to the value. Both
models are scored with the same full forward pass, so a policy evaluated against itself has a
KL of exactly zero.

Pooling. The ``overall`` block pools the responses of all sets, so its means and rates are the
sets' values weighted by their number of prompts; its spread, quantiles and length-reward
correlation are those of the pooled responses.
"""

from __future__ import annotations

import os

# as in train_common: idle OpenMP threads must not spin, or evaluation next to another busy
# process runs several times slower (only effective before torch starts its thread pool)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import hashlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import numpy as np  # noqa: E402

from rlhfspec.common.errors import RunError  # noqa: E402
from rlhfspec.common.fileio import atomic_write_text  # noqa: E402
from rlhfspec.compiler.schemas import default_of  # noqa: E402
from rlhfspec.runtime.prompts.pool import OUTSIDE_FOCUS  # noqa: E402
from rlhfspec.runtime.report.svg import line_chart  # noqa: E402
from rlhfspec.runtime.train.formatting import format_prompt, full_text, word_count  # noqa: E402
from rlhfspec.runtime.train.reward_eval import pearson  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover - imported for annotations only
    import torch

EVAL_FORMAT = "rlhfspec.checkpoint_eval/1"
KL_ESTIMATORS = ("k1", "k2", "k3")


@dataclass(frozen=True)
class EvalSettings:
    """How a checkpoint is evaluated; the same settings must be used for every checkpoint.

    `disqualifiers` are (id, Python regex) pairs from the spec's ``criteria.disqualifiers``
    detectors; a response that any regex `search`-matches is flagged. `batch_size` and `device`
    affect speed only (the noise is per prompt and drawn on the CPU), up to floating-point
    differences between batch shapes and devices.
    """

    seed: int
    # the spec's settings default to the schema's defaults (the single source)
    max_new_tokens: int = default_of("evaluation.max_new_tokens")
    temperature: float = default_of("evaluation.temperature")
    samples_shown: int = default_of("evaluation.samples_shown")
    kl_estimator: str = default_of("policy.kl.estimator")
    disqualifiers: Sequence[tuple[str, str]] = field(default_factory=tuple)
    batch_size: int = 16
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.kl_estimator not in KL_ESTIMATORS:
            raise RunError(
                f"unknown KL estimator {self.kl_estimator!r}; expected one of {', '.join(KL_ESTIMATORS)}"
            )
        if not self.temperature > 0:
            raise RunError(f"evaluation temperature must be positive, got {self.temperature}")
        if self.max_new_tokens < 1:
            raise RunError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise RunError(f"batch_size must be at least 1, got {self.batch_size}")
        ids = [d for d, _ in self.disqualifiers]
        if len(set(ids)) != len(ids):
            raise RunError(f"duplicate disqualifier ids: {ids}")
        for ident, pattern in self.disqualifiers:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise RunError(
                    f"disqualifier {ident!r}: invalid regex {pattern!r}: {exc}"
                ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "samples_shown": self.samples_shown,
            "kl_estimator": self.kl_estimator,
            "disqualifiers": [{"id": d, "regex": r} for d, r in self.disqualifiers],
        }


# ---------------------------------------------------------------------------------------------
# Generation


@dataclass
class _Batch:
    """One generated batch: left-padded prompt ids, response ids (pad after EOS) and masks."""

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor  # 1 for sampled tokens, EOS included
    ended: list[bool]  # sampled EOS within max_new_tokens
    lengths: list[int]  # response tokens before EOS
    sample_logprobs: torch.Tensor  # log-prob of each sampled token at the sampling temperature


def _prompt_seed(seed: int, prompt: str, occurrence: int) -> int:
    material = f"rlhfspec-eval\x00{seed}\x00{occurrence}\x00{prompt}".encode()
    return int.from_bytes(hashlib.sha256(material).digest()[:8], "big") >> 1


def _generators(prompts: Sequence[str], seed: int) -> list[torch.Generator]:
    """One CPU generator per prompt; a repeated prompt gets fresh noise per occurrence."""
    import torch

    seen: Counter[str] = Counter()
    out = []
    for prompt in prompts:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(_prompt_seed(seed, prompt, seen[prompt]))
        seen[prompt] += 1
        out.append(generator)
    return out


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids for a left-padded batch: each row counts from 0 at its first real token."""
    positions = mask.long().cumsum(-1) - 1
    return positions.clamp(min=0)


def _encode_prompts(
    tokenizer: Any, prompts: Sequence[str], limit: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids; a prompt too long for the context keeps its end."""
    old_side, old_trunc = tokenizer.padding_side, getattr(tokenizer, "truncation_side", "right")
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    try:
        enc = tokenizer(
            [format_prompt(p) for p in prompts],
            return_tensors="pt",
            padding=True,
            truncation=limit is not None,
            max_length=limit,
            add_special_tokens=True,
        )
    finally:
        tokenizer.padding_side = old_side
        tokenizer.truncation_side = old_trunc
    return enc["input_ids"], enc["attention_mask"]


def _prompt_limit(model: Any, settings: EvalSettings) -> int | None:
    positions = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(positions, int):
        return None
    if positions <= settings.max_new_tokens:
        raise RunError(
            f"max_new_tokens {settings.max_new_tokens} leaves no room for the prompt in a "
            f"context of {positions} positions"
        )
    return positions - settings.max_new_tokens


def _cache_argument(model: Any) -> str:
    """The KV-cache argument's name: ``cache`` in newer transformers 5 releases, where
    ``past_key_values`` is deprecated, and ``past_key_values`` before that."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def _sample_batch(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    generators: Sequence[torch.Generator],
    settings: EvalSettings,
) -> _Batch:
    """Sample one batch with a KV cache; Gumbel-max noise comes from each row's generator."""
    import torch

    device = torch.device(settings.device)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompt_ids, prompt_mask = _encode_prompts(tokenizer, prompts, _prompt_limit(model, settings))
    ids, mask = prompt_ids.to(device), prompt_mask.to(device)
    rows = ids.shape[0]
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=_positions(mask),
        use_cache=True,
        logits_to_keep=1,
    )
    cache_name = _cache_argument(model)
    cache = getattr(out, cache_name)
    next_positions = _positions(mask)[:, -1:] + 1
    finished = torch.zeros(rows, dtype=torch.bool)
    tokens: list[torch.Tensor] = []
    taken: list[torch.Tensor] = []
    for _ in range(settings.max_new_tokens):
        logits = out.logits[:, -1, :].float().cpu() / settings.temperature
        uniform = torch.stack(
            [torch.rand(logits.shape[-1], generator=g, dtype=torch.float32) for g in generators]
        )
        gumbel = -torch.log(-torch.log(uniform))
        chosen = (logits + gumbel).argmax(dim=-1)
        chosen = torch.where(finished, torch.full_like(chosen, pad), chosen)
        tokens.append(chosen)
        taken.append(torch.log_softmax(logits, dim=-1).gather(-1, chosen.unsqueeze(-1)).squeeze(-1))
        finished |= chosen == eos
        if bool(finished.all()):
            break
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(
            input_ids=chosen.unsqueeze(1).to(device),
            attention_mask=mask,
            position_ids=next_positions,
            use_cache=True,
            **{cache_name: cache},
        )
        cache = getattr(out, cache_name)
        next_positions = next_positions + 1
    response = torch.stack(tokens, dim=1)
    is_eos = response == eos
    ended = is_eos.any(dim=1)
    width = response.shape[1]
    lengths = torch.where(ended, is_eos.long().argmax(dim=1), torch.full_like(ended.long(), width))
    # sampled tokens: those before EOS, and EOS itself where it was sampled
    response_mask = torch.arange(width).unsqueeze(0) < (lengths + ended.long()).unsqueeze(1)
    return _Batch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response,
        response_mask=response_mask.long(),
        ended=[bool(v) for v in ended],
        lengths=[int(v) for v in lengths],
        sample_logprobs=torch.stack(taken, dim=1) * response_mask,
    )


def _decode(tokenizer: Any, batch: _Batch) -> list[str]:
    """Response text only: the tokens before EOS, special tokens dropped, outer space removed."""
    texts = []
    for row, length in enumerate(batch.lengths):
        ids = batch.response_ids[row, :length].tolist()
        texts.append(tokenizer.decode(ids, skip_special_tokens=True).strip())
    return texts


def _sample(
    model: Any, tokenizer: Any, prompts: Sequence[str], settings: EvalSettings
) -> list[_Batch]:
    import torch

    generators = _generators(prompts, settings.seed)
    model.eval()
    batches = []
    with torch.inference_mode():
        for start in range(0, len(prompts), settings.batch_size):
            end = start + settings.batch_size
            batches.append(
                _sample_batch(model, tokenizer, prompts[start:end], generators[start:end], settings)
            )
    return batches


def generate(policy: Any, tokenizer: Any, prompts: list[str], settings: EvalSettings) -> list[str]:
    """Seeded sampled responses (text after the prompt, up to EOS), one per prompt.

    The same (model, prompts, settings) give the same responses whatever the global RNG state;
    another seed gives other samples. See the module docstring for the sampling scheme.
    """
    return [
        text
        for b in _sample(policy, tokenizer, prompts, settings)
        for text in _decode(tokenizer, b)
    ]


# ---------------------------------------------------------------------------------------------
# KL to the reference


def _response_logprobs(model: Any, batch: _Batch, temperature: float, device: str) -> torch.Tensor:
    """Log-probabilities of the sampled response tokens (logits / temperature), masked to 0."""
    import torch

    ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1).to(device)
    mask = torch.cat([batch.prompt_mask, batch.response_mask], dim=1).to(device)
    width = batch.response_ids.shape[1]
    with torch.inference_mode():
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=_positions(mask),
            logits_to_keep=width + 1,
        )
    logits = out.logits[:, :-1, :].float().cpu() / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    taken = logprobs.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    return taken * batch.response_mask


def kl_per_response(
    policy_logprobs: torch.Tensor,
    reference_logprobs: torch.Tensor,
    mask: torch.Tensor,
    estimator: str,
) -> list[float]:
    """The per-token estimator summed over each response's sampled tokens (see module doc)."""
    import torch

    log_ratio = (reference_logprobs - policy_logprobs).double()
    if estimator == "k1":
        per_token = -log_ratio
    elif estimator == "k2":
        per_token = 0.5 * log_ratio**2
    elif estimator == "k3":
        per_token = torch.expm1(log_ratio) - log_ratio
    else:
        raise RunError(f"unknown KL estimator {estimator!r}")
    return [float(v) for v in (per_token * mask.double()).sum(dim=1)]


def _kl(
    policy: Any, reference: Any, batches: Sequence[_Batch], settings: EvalSettings
) -> list[float]:
    import torch

    values: list[float] = []
    with torch.inference_mode():
        for batch in batches:
            own = _response_logprobs(policy, batch, settings.temperature, settings.device)
            ref = (
                own
                if reference is policy
                else _response_logprobs(reference, batch, settings.temperature, settings.device)
            )
            values.extend(kl_per_response(own, ref, batch.response_mask, settings.kl_estimator))
    return values


# ---------------------------------------------------------------------------------------------
# Metrics


def _r(value: float | None, digits: int = 6) -> float | None:
    """Fixed precision for stable JSON; None stays None and -0.0 becomes 0.0."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits) + 0.0


def _win_rate(
    responses: Sequence[str],
    scores: Sequence[float],
    start: Sequence[str],
    start_scores: Sequence[float],
) -> list[float]:
    """Per prompt: 1 if this response scores higher than the start's, 0.5 on a tie, else 0.

    Identical texts are a tie by definition, rather than by comparing two floats that were
    computed in differently padded batches and may differ in the last bit.
    """
    out = []
    for text, score, other, other_score in zip(responses, scores, start, start_scores, strict=True):
        if text == other or score == other_score:
            out.append(0.5)
        else:
            out.append(1.0 if score > other_score else 0.0)
    return out


@dataclass
class _Rows:
    """Per-response values of one prompt set (or of all sets pooled)."""

    rewards: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    words: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)
    flags: list[list[str]] = field(default_factory=list)
    wins: list[float] | None = None

    def extend(self, other: _Rows) -> None:
        self.rewards += other.rewards
        self.kl += other.kl
        self.words += other.words
        self.tokens += other.tokens
        self.ended += other.ended
        self.flags += other.flags
        if other.wins is not None:
            self.wins = (self.wins or []) + other.wins


def _metrics(rows: _Rows, disqualifier_ids: Sequence[str], temperature: float) -> dict[str, Any]:
    n = len(rows.rewards)
    rewards = np.asarray(rows.rewards, dtype=np.float64)
    words = np.asarray(rows.words, dtype=np.float64)
    kl = np.asarray(rows.kl, dtype=np.float64)
    total_tokens = sum(rows.tokens) + sum(rows.ended)  # EOS counts as a sampled token
    return {
        "n": n,
        "reward": {
            "mean": _r(float(rewards.mean())),
            "std": _r(float(rewards.std())),
            "p10": _r(float(np.quantile(rewards, 0.1))),
            "p50": _r(float(np.quantile(rewards, 0.5))),
            "p90": _r(float(np.quantile(rewards, 0.9))),
        },
        "kl": {
            "mean": _r(float(kl.mean())),
            "std": _r(float(kl.std())),
            "per_token": _r(float(kl.sum() / total_tokens)) if total_tokens else None,
            "temperature": temperature,
        },
        "length": {
            "words_mean": _r(float(words.mean()), 3),
            "tokens_mean": _r(float(np.mean(rows.tokens)), 3),
        },
        "length_reward_correlation": _r(pearson(words, rewards)),
        "disqualifier_rate": _r(sum(1 for f in rows.flags if f) / n),
        "disqualifier_rates": {
            ident: _r(sum(1 for f in rows.flags if ident in f) / n) for ident in disqualifier_ids
        },
        "eos_rate": _r(sum(rows.ended) / n),
        "win_rate_vs_start": None if rows.wins is None else _r(float(np.mean(rows.wins))),
    }


class _OnDevice:
    """A model whose inputs are moved to its device: `score_texts` builds them on the CPU, and
    wrapping the model keeps one scoring implementation for training and evaluation."""

    def __init__(self, model: Any, device: str) -> None:
        self.model = model
        self.device = device

    def eval(self) -> _OnDevice:
        self.model.eval()
        return self

    def __call__(self, **inputs: Any) -> Any:
        return self.model(**{k: v.to(self.device) for k, v in inputs.items()})


def _score(
    model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], max_length: int
) -> list[float]:
    from rlhfspec.runtime.train.scoring import score_texts

    texts = [full_text(p, r) for p, r in zip(prompts, responses, strict=True)]
    return score_texts(model, tokenizer, texts, max_length=max_length)


def _reward_max_length(reward_model_dir: Path) -> int:
    from rlhfspec.runtime.train.scoring import REWARD_META

    meta = reward_model_dir / REWARD_META
    if meta.is_file():
        return int(json.loads(meta.read_text(encoding="utf-8")).get("max_length", 512))
    return 512


def _same_vocabulary(a: Any, b: Any) -> bool:
    return len(a) == len(b) and a.get_vocab() == b.get_vocab()


def evaluate_checkpoint(
    policy_dir: Path | str,
    reference_dir: Path | str,
    reward_model_dir: Path | str,
    prompt_sets: dict[str, list[str]],
    settings: EvalSettings,
    *,
    start_responses: dict[str, list[str]] | None = None,
    step: int,
    label: str,
) -> dict[str, Any]:
    """Evaluate one checkpoint on every prompt set; the result is what `write_eval` stores.

    `start_responses` are the starting policy's responses to the same prompts (the
    ``responses`` of its own evaluation, usually at step 0); when given, each set gets a win
    rate against them judged by the reward model. The result also carries this checkpoint's
    ``responses`` and their ``scores`` per set, so that the caller can keep the step-0
    responses and export human-evaluation pairs without generating again.
    """
    from rlhfspec.runtime.train.models import load_causal_lm, load_reward_model, load_tokenizer

    if not prompt_sets:
        raise RunError("no prompt sets to evaluate")
    for name, prompts in prompt_sets.items():
        if not prompts:
            raise RunError(f"prompt set {name!r} is empty")
        if start_responses is not None and len(start_responses.get(name, ())) != len(prompts):
            raise RunError(
                f"start responses for {name!r}: expected {len(prompts)}, "
                f"got {len(start_responses.get(name, ()))}"
            )
    policy_dir, reference_dir, reward_model_dir = (
        Path(policy_dir),
        Path(reference_dir),
        Path(reward_model_dir),
    )
    tokenizer = load_tokenizer(policy_dir)
    policy: Any = load_causal_lm(policy_dir, tokenizer=tokenizer)
    policy.to(settings.device)
    reference: Any
    if reference_dir.resolve() == policy_dir.resolve():
        reference = policy
    else:
        if not _same_vocabulary(tokenizer, load_tokenizer(reference_dir)):
            raise RunError(
                f"{reference_dir} has another vocabulary than {policy_dir}; KL to the reference "
                "compares token probabilities, so both must share a tokenizer"
            )
        reference = load_causal_lm(reference_dir, tokenizer=tokenizer)
        reference.to(settings.device)
        reference.eval()
    rm_tokenizer = load_tokenizer(reward_model_dir)
    reward_model: Any = load_reward_model(
        reward_model_dir, tokenizer=rm_tokenizer, seed=settings.seed
    )
    if settings.device != "cpu":
        reward_model = _OnDevice(reward_model.to(settings.device), settings.device)
    rm_max_length = _reward_max_length(reward_model_dir)
    patterns = [(ident, re.compile(regex)) for ident, regex in settings.disqualifiers]
    ids = [ident for ident, _ in settings.disqualifiers]

    sets: dict[str, Any] = {}
    responses: dict[str, list[str]] = {}
    scores: dict[str, list[float]] = {}
    pooled = _Rows()
    for name, prompts in prompt_sets.items():
        batches = _sample(policy, tokenizer, prompts, settings)
        texts = [t for b in batches for t in _decode(tokenizer, b)]
        rows = _Rows(
            rewards=_score(reward_model, rm_tokenizer, prompts, texts, rm_max_length),
            kl=_kl(policy, reference, batches, settings),
            words=[word_count(t) for t in texts],
            tokens=[n for b in batches for n in b.lengths],
            ended=[e for b in batches for e in b.ended],
            flags=[[ident for ident, rx in patterns if rx.search(t)] for t in texts],
        )
        if start_responses is not None:
            start = start_responses[name]
            start_scores = _score(reward_model, rm_tokenizer, prompts, start, rm_max_length)
            rows.wins = _win_rate(texts, rows.rewards, start, start_scores)
        block = _metrics(rows, ids, settings.temperature)
        block["samples"] = [
            {"prompt": p, "response": t, "score": _r(s), "flags": f}
            for p, t, s, f in list(zip(prompts, texts, rows.rewards, rows.flags, strict=True))[
                : settings.samples_shown
            ]
        ]
        sets[name] = block
        responses[name] = texts
        scores[name] = [_r(s) or 0.0 for s in rows.rewards]
        if name != OUTSIDE_FOCUS:  # the excluded slice is reported, not selected on
            pooled.extend(rows)

    overall = _metrics(pooled, ids, settings.temperature)
    overall["sets"] = [name for name in prompt_sets if name != OUTSIDE_FOCUS]
    return {
        "format": EVAL_FORMAT,
        "label": label,
        "step": step,
        "models": {
            "policy": str(policy_dir),
            "reference": str(reference_dir),
            "reward_model": str(reward_model_dir),
        },
        "settings": settings.to_dict(),
        "kl_method": (
            f"mean over prompts of the per-token {settings.kl_estimator} estimator summed over "
            "the sampled response tokens (EOS included), both models' log-probabilities at "
            "the sampling temperature"
        ),
        "sets": sets,
        "overall": overall,
        "responses": responses,
        "scores": scores,
    }


def eval_json(result: dict[str, Any]) -> str:
    """The evaluation as JSON text: fixed key order and precision, so reruns compare by bytes."""
    return json.dumps(result, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_eval(result: dict[str, Any], path: Path) -> None:
    """Write one checkpoint's evaluation atomically (a reader never sees half a file)."""
    atomic_write_text(Path(path), eval_json(result))


# ---------------------------------------------------------------------------------------------
# Trajectory plot


def _nice_range(values: Sequence[float | None]) -> tuple[float, float, float]:
    """(y_min, y_max, step) on a 1-2-5 grid covering the values.

    The step is at least 0.1 because `svg_plots` prints tick labels with one decimal: a finer
    grid would print repeated, misleading labels.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 0.0, 1.0, 0.2
    low, high = min(finite), max(finite)
    span = high - low if high > low else max(abs(high), 1.0)
    raw = span / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(step, 0.1)
    y_min = math.floor(low / step) * step
    y_max = math.ceil(high / step) * step
    if y_max <= y_min:
        y_max = y_min + step
    return round(y_min, 10) + 0.0, round(y_max, 10) + 0.0, round(step, 10)


def _svg_size(svg: str) -> tuple[int, int]:
    match = re.search(r'<svg [^>]*?width="(\d+)" height="(\d+)"', svg)
    if match is None:  # pragma: no cover - svg_plots always writes both
        raise ValueError("chart without width/height")
    return int(match.group(1)), int(match.group(2))


def trajectory_svg(
    results: Sequence[dict[str, Any]], *, guards: dict[str, float] | None = None
) -> str:
    """A standalone SVG: mean reward, KL to the reference and length (words) over the steps.

    One chart per metric, stacked; each has a line for every prompt set and one for all sets
    pooled, so a reward climb bought with length or with drift from the reference is visible
    at a glance. `guards` (``max_kl``) adds the KL guard as a dashed line. Every label is
    escaped by `svg_plots`.
    """
    ordered = sorted(results, key=lambda r: (int(r["step"]), str(r["label"])))
    categories = [str(r["step"]) for r in ordered]
    names: list[str] = []
    for result in ordered:
        names += [n for n in result["sets"] if n not in names]
    metrics = (
        ("Mean reward", "reward", ("reward", "mean")),
        ("KL to the reference", "KL", ("kl", "mean")),
        ("Mean response length", "words", ("length", "words_mean")),
    )
    charts = []
    for title, y_label, (group, key) in metrics:
        series: list[tuple[str, list[float | None]]] = [
            ("all sets", [r["overall"][group][key] for r in ordered])
        ]
        for name in names:
            series.append(
                (
                    name,
                    [r["sets"][name][group][key] if name in r["sets"] else None for r in ordered],
                )
            )
        lines: list[tuple[float, str]] = []
        if y_label == "KL" and guards and guards.get("max_kl") is not None:
            lines.append((float(guards["max_kl"]), f"max_kl {float(guards['max_kl']):g}"))
        values = [v for _, vs in series for v in vs] + [v for v, _ in lines]
        y_min, y_max, step = _nice_range(values)
        charts.append(
            line_chart(
                categories,
                series,
                title=title,
                reference_lines=lines,
                y_min=y_min,
                y_max=y_max,
                y_step=step,
                y_label=y_label,
                x_label="training step",
            )
        )
    sizes = [_svg_size(c) for c in charts]
    width = max(w for w, _ in sizes)
    height = sum(h for _, h in sizes)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}">',
        "<title>Evaluation trajectory across checkpoints</title>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
    ]
    offset = 0
    for chart, (_, h) in zip(charts, sizes, strict=True):
        parts.append(chart.replace("<svg ", f'<svg x="0" y="{offset}" ', 1))
        offset += h
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
