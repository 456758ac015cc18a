"""Evaluation of a policy checkpoint on the plan's prompt sets, and the trajectory plot.

Output quality can peak early in policy optimisation and then degrade as the policy learns to
exploit the reward model, so every checkpoint is evaluated the same way and the deployment
candidate is chosen afterwards (`runtime/selection.py`). One evaluation measures, per prompt
set (validation, adversarial, production holdout) and pooled over all of them:

* the reward PPO optimises for each response (mean, spread, quantiles): the reward model's
  score of the sampled token ids minus the missing-EOS penalty for a response cut at
  ``max_new_tokens`` (`rlhfspec.runtime.evaluation.generation`);
* the KL divergence of the policy from its reference (the SFT model), the reward-hacking
  guard the PPO penalty is meant to enforce;
* response length (words, and tokens before EOS) and the Pearson correlation of length in
  words with reward: a policy that got longer because the reward model likes length is the
  best-known hack;
* the share of responses flagged by the spec's disqualifier detectors (regexes);
* how often generation ended with EOS rather than at ``max_new_tokens`` (and the opposite
  share, ``no_eos_rate``, which a guard bounds);
* the win rate against the starting policy as judged by the reward model;
* a few sample outputs, so a reader can see what the numbers describe.

Generation and scoring: see `rlhfspec.runtime.evaluation.generation` (the sampler and the
scoring are PPO's own, seeded per prompt). Everything runs on the spec's device
(``compute.device``) in its precision (``compute.mixed_precision``, autocast), in batches of
``evaluation.batch_size``.

KL. For each response, the per-token estimator (`EvalSettings.kl_estimator`) is summed over
the sampled response tokens (EOS included when it was sampled: it is an action too), and the
reported KL is the mean of these sums over prompts. With ``log r = log p_ref(y_t) -
log p_policy(y_t)`` the estimators are Schulman's: k1 = ``-log r``, k2 = ``(log r)^2 / 2``,
k3 = ``r - 1 - log r``. They estimate KL(policy || reference) only for tokens *drawn from the
policy distribution whose log-probabilities are used*, so both models' log-probabilities are
taken at the sampling temperature (logits divided by it), exactly as TRL's PPO trainer does.
The KL guard must measure the divergence PPO's penalty acts on, so KL is measured on samples
drawn at the *policy's* sampling temperature (``policy.ppo.temperature``; 1 for DPO, whose
implicit KL is at temperature 1), not at ``evaluation.temperature``: when the two differ a
second seeded set of samples is drawn for it. Scoring tempered samples with untempered
log-probabilities would give a number that is not a KL of anything (k1 could go negative in
expectation), so that is not done. The temperature used is recorded next to the value. A non-finite KL, reward or rate is
written as null, and selection's guards fail on null. Both
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

import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from rlhfspec.common.errors import RunError  # noqa: E402
from rlhfspec.common.fileio import atomic_write_text  # noqa: E402
from rlhfspec.compiler.schemas import default_of  # noqa: E402
from rlhfspec.runtime.evaluation.generation import (  # noqa: E402
    Batch,
    Sampling,
    batch_rewards,
    decode,
    response_logprobs_of,
    sample_batches,
)
from rlhfspec.runtime.evaluation.metrics import (  # noqa: E402
    Rows,
    clean,
    kl_per_response,
    metrics,
    win_rate,
)
from rlhfspec.runtime.evaluation.trajectory import trajectory_svg  # noqa: E402
from rlhfspec.runtime.prompts.pool import OUTSIDE_FOCUS  # noqa: E402
from rlhfspec.runtime.train.formatting import (  # noqa: E402
    ChatFormat,
    PromptInput,
    chat_format,
    prompt_key,
    word_count,
)

__all__ = [
    "EVAL_FORMAT",
    "EvalSettings",
    "eval_json",
    "evaluate_checkpoint",
    "generate",
    "kl_per_response",
    "trajectory_svg",
    "write_eval",
]

EVAL_FORMAT = "rlhfspec.checkpoint_eval/2"
KL_ESTIMATORS = ("k1", "k2", "k3")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How a checkpoint is evaluated; the same settings must be used for every checkpoint.

    `disqualifiers` are (id, Python regex) pairs from the spec's ``criteria.disqualifiers``
    detectors; a response that any regex `search`-matches is flagged. `kl_temperature` is the
    policy's sampling temperature, at which KL is measured (None: `temperature`).
    `missing_eos_penalty` is PPO's. `batch_size`, `device` and `mixed_precision` affect speed
    only (the noise is per prompt and drawn on the CPU), up to floating-point differences.
    """

    seed: int
    # the spec's settings default to the schema's defaults (the single source)
    max_new_tokens: int = default_of("evaluation.max_new_tokens")
    temperature: float = default_of("evaluation.temperature")
    samples_shown: int = default_of("evaluation.samples_shown")
    kl_estimator: str = default_of("policy.kl.estimator")
    disqualifiers: Sequence[tuple[str, str]] = dataclasses.field(default_factory=tuple)
    batch_size: int = default_of("evaluation.batch_size")
    device: str = "cpu"
    kl_temperature: float | None = None
    missing_eos_penalty: float = default_of("policy.ppo.missing_eos_penalty")
    mixed_precision: str = default_of("compute.mixed_precision")
    #: ``prompts.chat_template``, and the spec's folder a ``.jinja`` file is read from
    chat_template: str = default_of("prompts.chat_template")
    template_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.kl_estimator not in KL_ESTIMATORS:
            raise RunError(
                f"unknown KL estimator {self.kl_estimator!r}; expected one of "
                f"{', '.join(KL_ESTIMATORS)}"
            )
        for name in ("temperature", "kl_at"):
            if not getattr(self, name) > 0:
                raise RunError(f"evaluation {name} must be positive, got {getattr(self, name)}")
        if self.max_new_tokens < 1:
            raise RunError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise RunError(f"batch_size must be at least 1, got {self.batch_size}")
        if not self.missing_eos_penalty >= 0:
            raise RunError(f"missing_eos_penalty must be >= 0, got {self.missing_eos_penalty}")
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

    @property
    def kl_at(self) -> float:
        """The temperature KL is measured at: the policy's sampling temperature."""
        return self.temperature if self.kl_temperature is None else self.kl_temperature

    def sampling(self, temperature: float) -> Sampling:
        return Sampling(
            seed=self.seed,
            temperature=temperature,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            device=self.device,
            mixed_precision=self.mixed_precision,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "kl_temperature": self.kl_at,
            "samples_shown": self.samples_shown,
            "kl_estimator": self.kl_estimator,
            "missing_eos_penalty": self.missing_eos_penalty,
            "mixed_precision": self.mixed_precision,
            "chat_template": self.chat_template,
            "disqualifiers": [{"id": d, "regex": r} for d, r in self.disqualifiers],
        }


def generate(
    policy: Any, tokenizer: Any, prompts: Sequence[PromptInput], settings: EvalSettings
) -> list[str]:
    """Seeded sampled responses (text after the prompt, up to EOS), one per prompt.

    The same (model, prompts, settings) give the same responses whatever the global RNG state;
    another seed gives other samples. See `rlhfspec.runtime.evaluation.generation`.
    """
    how = settings.sampling(settings.temperature)
    render = chat_format(tokenizer, settings.chat_template, settings.template_dir).prompt
    return [
        t
        for b in sample_batches(policy, tokenizer, prompts, how, render)
        for t in decode(tokenizer, b)
    ]


# ---------------------------------------------------------------------------------------------
# One checkpoint


@dataclasses.dataclass
class _Models:
    tokenizer: Any
    policy: Any
    reference: Any
    reward_model: Any
    chat: ChatFormat


def _same_tokenizer(a: Any, b: Any) -> bool:
    return bool(
        a.get_vocab() == b.get_vocab()
        and a.eos_token_id == b.eos_token_id
        and a.pad_token_id == b.pad_token_id
    )


def _load(
    policy_dir: Path, reference_dir: Path, reward_dir: Path, settings: EvalSettings
) -> _Models:
    """The three models on the spec's device; frozen models stay in the checkpoint's dtype.
    All share the policy's tokenizer: KL compares token probabilities, and the reward model
    scores the sampled token ids as PPO does."""
    from rlhfspec.runtime.train.models import load_causal_lm, load_reward_model, load_tokenizer

    tokenizer = load_tokenizer(policy_dir)
    for other, why in (
        (reference_dir, "KL to the reference compares token probabilities"),
        (reward_dir, "the reward model scores the sampled token ids, as in PPO"),
    ):
        if other.resolve() != policy_dir.resolve() and not _same_tokenizer(
            tokenizer, load_tokenizer(other)
        ):
            raise RunError(
                f"{other} has another tokenizer than {policy_dir}; {why}, so both must share "
                "one (train them from the same base model)"
            )
    policy: Any = load_causal_lm(policy_dir, tokenizer=tokenizer)
    reference: Any = policy
    if reference_dir.resolve() != policy_dir.resolve():
        reference = load_causal_lm(reference_dir, tokenizer=tokenizer)
    reward_model: Any = load_reward_model(reward_dir, tokenizer=tokenizer, seed=settings.seed)
    for model in (policy, reference, reward_model):
        model.to(settings.device)
        model.eval()
    chat = chat_format(tokenizer, settings.chat_template, settings.template_dir)
    return _Models(tokenizer, policy, reference, reward_model, chat)


def _kl(models: _Models, batches: Sequence[Batch], settings: EvalSettings) -> list[float]:
    values: list[float] = []
    for batch in batches:
        args = (batch, settings.kl_at, settings.device, settings.mixed_precision)
        own = response_logprobs_of(models.policy, *args)
        ref = (
            own
            if models.reference is models.policy
            else response_logprobs_of(models.reference, *args)
        )
        values.extend(kl_per_response(own, ref, batch.response_mask, settings.kl_estimator))
    return values


def _evaluate_set(
    models: _Models,
    prompts: list[PromptInput],
    settings: EvalSettings,
    patterns: list[tuple[str, Any]],
) -> tuple[Rows, list[str]]:
    """Sample, score and measure one prompt set; returns its rows and response texts."""
    render = models.chat.prompt
    batches = sample_batches(
        models.policy, models.tokenizer, prompts, settings.sampling(settings.temperature), render
    )
    kl_batches = batches
    if settings.kl_at != settings.temperature:
        kl_batches = sample_batches(
            models.policy, models.tokenizer, prompts, settings.sampling(settings.kl_at), render
        )
    texts = [t for b in batches for t in decode(models.tokenizer, b)]
    rewards = [
        r
        for b in batches
        for r in batch_rewards(
            models.reward_model,
            b,
            models.tokenizer,
            missing_eos_penalty=settings.missing_eos_penalty,
            device=settings.device,
            mixed_precision=settings.mixed_precision,
        )
    ]
    rows = Rows(
        rewards=rewards,
        kl=_kl(models, kl_batches, settings),
        words=[word_count(t) for t in texts],
        tokens=[n for b in batches for n in b.lengths],
        ended=[e for b in batches for e in b.ended],
        flags=[[ident for ident, rx in patterns if rx.search(t)] for t in texts],
    )
    return rows, texts


def _check_sets(prompt_sets: dict[str, list[PromptInput]], start: dict[str, Any] | None) -> None:
    if not prompt_sets:
        raise RunError("no prompt sets to evaluate")
    for name, prompts in prompt_sets.items():
        if not prompts:
            raise RunError(f"prompt set {name!r} is empty")
        if start is None:
            continue
        for key in ("responses", "scores"):
            got = len(start.get(key, {}).get(name, ()))
            if got != len(prompts):
                raise RunError(f"start {key} for {name!r}: expected {len(prompts)}, got {got}")


def evaluate_checkpoint(
    policy_dir: Path | str,
    reference_dir: Path | str,
    reward_model_dir: Path | str,
    prompt_sets: dict[str, list[PromptInput]],
    settings: EvalSettings,
    *,
    start: dict[str, Any] | None = None,
    step: int,
    label: str,
) -> dict[str, Any]:
    """Evaluate one checkpoint on every prompt set; the result is what `write_eval` stores.

    `start` is the starting policy's own evaluation of the same prompts (usually step 0);
    when given, each set gets a win rate against its responses, judged by their rewards. The
    result carries this checkpoint's ``responses`` and their ``scores`` (the rewards) per set,
    so that the caller can keep the step-0 evaluation and export human-evaluation pairs
    without generating again.
    """
    _check_sets(prompt_sets, start)
    policy_dir, reference_dir = Path(policy_dir), Path(reference_dir)
    models = _load(policy_dir, reference_dir, Path(reward_model_dir), settings)
    patterns = [(ident, re.compile(regex)) for ident, regex in settings.disqualifiers]
    ids = [ident for ident, _ in settings.disqualifiers]
    sets: dict[str, Any] = {}
    responses: dict[str, list[str]] = {}
    scores: dict[str, list[float | None]] = {}
    pooled = Rows()
    for name, prompts in prompt_sets.items():
        rows, texts = _evaluate_set(models, prompts, settings, patterns)
        if start is not None:
            rows.wins = win_rate(
                texts, rows.rewards, start["responses"][name], start["scores"][name]
            )
        block = metrics(rows, ids, settings.kl_at)
        block["samples"] = [
            {"prompt": prompt_key(p), "response": t, "score": clean(s), "flags": f}
            for p, t, s, f in list(zip(prompts, texts, rows.rewards, rows.flags, strict=True))[
                : settings.samples_shown
            ]
        ]
        sets[name] = block
        responses[name] = texts
        scores[name] = [clean(s) for s in rows.rewards]
        if name != OUTSIDE_FOCUS:  # the excluded slice is reported, not selected on
            pooled.extend(rows)
    overall = metrics(pooled, ids, settings.kl_at)
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
        "chat_template": models.chat.record(),
        "reward_method": (
            "the reward model's score of the sampled token ids at the EOS (or at the last "
            "generated token, minus missing_eos_penalty, when the response has no EOS): the "
            "reward PPO optimises"
        ),
        "kl_method": (
            f"mean over prompts of the per-token {settings.kl_estimator} estimator summed over "
            "the sampled response tokens (EOS included), on samples drawn at the policy's "
            f"sampling temperature ({settings.kl_at:g}), both models' log-probabilities at it"
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
