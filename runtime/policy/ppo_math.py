"""The arithmetic of PPO for language models, as small pure functions over tensors.

Everything the trainer (`rlhfspec.runtime.policy.ppo`) computes from log-probabilities, values and
scores lives here, apart from the models, so that each piece can be checked against numbers
worked out by hand (``tests/test_ppo_math.py``). Conventions shared by all functions:

* Response tensors are ``[batch, T]`` and right-padded: response token ``t`` of row ``i`` is
  real where ``mask[i, t] == 1``. The mask is positional (``t <= last_index[i]``), never derived
  from token values, so a sampled token that happens to equal the pad id is still a real token.
* Masked-out positions carry no weight in any mean, variance or loss, and the functions that
  return per-token tensors (`kl_per_token` aside, whose caller masks) return 0 there, so that a
  padding position can never leak into GAE or a loss.
* The action at response position ``t`` is emitting token ``t``; its log-probability and value
  come from the model's output at full-sequence position ``context_length - 1 + t`` (the state
  before the token). The sequence-level score belongs to the last real action (`place_rewards`).

References: Schulman et al. 2017 (PPO, arXiv:1707.06347); Schulman et al. 2016 (GAE,
arXiv:1506.02438); Ziegler et al. 2019 (fine-tuning LMs from human preferences, adaptive KL,
arXiv:1909.08593); Schulman 2020, "Approximating KL divergence" (the k1/k2/k3 estimators,
http://joschu.net/blog/kl-approx.html).
"""

from __future__ import annotations

from typing import Any

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")


# ---------------------------------------------------------------------------------------------
# KL estimators


def kl_per_token(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probabilities.

    With ``r = ref_logp - logp`` (log of ref/policy at the sampled token), after Schulman 2020:

    * ``k1 = -r = logp - ref_logp``: unbiased, but a single sample can be negative;
    * ``k2 = r**2 / 2``: always >= 0, biased (low variance, good when the two are close);
    * ``k3 = exp(r) - 1 - r``: always >= 0 and unbiased (``E[exp(r)] = 1`` under the policy).

    The tokens were sampled from the policy, which is what makes these estimators of the
    policy-to-reference KL. The caller applies the response mask.
    """
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.square()
    if estimator == "k3":
        r = -log_ratio
        return torch.expm1(r) - r
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


# ---------------------------------------------------------------------------------------------
# Masked statistics


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum over real positions only (``mask`` is 0/1 or bool, broadcastable to ``values``)."""
    masked = values * mask
    return masked.sum() if dim is None else masked.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``sum(values * mask) / sum(mask)``: a mean over real positions, padding excluded.

    Over the whole tensor (``dim=None``) every real token weighs the same, whichever row it is
    in; that is the token-level average the PPO losses use.
    """
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(dim=dim) / mask.sum(dim=dim)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over real positions: ``mean((x - mean(x))**2)``, times ``n / (n - 1)`` if unbiased.

    Bessel's correction is skipped when there is a single real position (the variance is then
    0 either way), so a batch of one one-token response does not divide by zero.
    """
    mask = mask.to(values.dtype)
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean).square(), mask)
    if unbiased:
        n = mask.sum()
        if n > 1:
            var = var * n / (n - 1)
    return var


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` over real positions; masked-out positions become 0.

    Mean and (unbiased) variance are over the real positions of the whole batch, never over
    padding. With ``shift_mean=False`` the mean is added back, so only the scale changes: that
    is how rewards are whitened (a constant shift of the per-token reward would change what the
    policy is paid for stopping early or late), while advantages are fully standardised.
    """
    mask_f = mask.to(values.dtype)
    mean = masked_mean(values, mask_f)
    var = masked_var(values, mask_f)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask_f


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var[returns - values] / Var[returns]`` over real positions.

    1 is a perfect value function, 0 one no better than a constant, negative a harmful one.
    NaN when the returns do not vary (the ratio is undefined).
    """
    var_returns = masked_var(returns, mask)
    if float(var_returns) == 0.0:
        return float("nan")
    return float(1.0 - masked_var(returns - values, mask) / var_returns)


# ---------------------------------------------------------------------------------------------
# KL coefficient controllers


class FixedKLController:
    """A constant KL coefficient (beta); `update` does nothing."""

    def __init__(self, init_coef: float) -> None:
        self.value = float(init_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Fixed mode: the coefficient stays what the spec says."""

    def state_dict(self) -> dict[str, Any]:
        return {"mode": "fixed", "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """The proportional controller of Ziegler et al. 2019 (section 2.2), steering KL to a target.

    After each rollout batch with measured per-response KL ``current_kl`` over ``n_steps``
    episodes::

        proportional_error = clip(current_kl / target - 1, -0.2, 0.2)
        coef = coef * (1 + proportional_error * n_steps / horizon)

    The clip bounds how fast the coefficient moves on one noisy measurement; ``horizon`` (in
    episodes) sets the time constant: over ``horizon`` episodes at a constant error ``e`` the
    coefficient changes by about ``exp(e)``.
    """

    def __init__(self, init_coef: float, target: float, horizon: int) -> None:
        if target <= 0:
            raise ValueError(f"adaptive KL target must be > 0, got {target}")
        if horizon < 1:
            raise ValueError(f"adaptive KL horizon must be >= 1, got {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": "adaptive",
            "value": self.value,
            "target": self.target,
            "horizon": self.horizon,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


# ---------------------------------------------------------------------------------------------
# Responses: truncation, masks, positions, rewards


def first_eos_truncation(
    response_ids: torch.Tensor, eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each generated response after its first EOS.

    Returns ``(ids_truncated, response_mask, has_eos, last_index)``:

    * ``last_index[i]``: position of the first EOS, or ``T - 1`` (the last generated token)
      when the row has none;
    * ``response_mask[i, t] = t <= last_index[i]`` (long): the EOS itself stays in the mask, so
      the policy is trained on the decision to stop and the reward is read at EOS;
    * ``ids_truncated``: tokens after ``last_index`` replaced by ``pad_id``.

    Needs ``pad_id != eos_id``: with pad == eos, padding would be taken for a stop.
    """
    if pad_id == eos_id:
        raise ValueError("pad and EOS must be different tokens (see rlhfspec.runtime.train.models)")
    length = response_ids.shape[1]
    is_eos = response_ids == eos_id
    has_eos = is_eos.any(dim=1)
    first_eos = is_eos.int().argmax(dim=1)  # first True; 0 when there is none
    last_index = torch.where(has_eos, first_eos, torch.full_like(first_eos, length - 1))
    positions = torch.arange(length, device=response_ids.device).unsqueeze(0)
    response_mask = (positions <= last_index.unsqueeze(1)).long()
    ids_truncated = torch.where(response_mask.bool(), response_ids, pad_id)
    return ids_truncated, response_mask, has_eos, last_index


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only: ``cumsum(mask) - 1``, clamped at 0 on padding.

    With a left-padded prompt the first real token (BOS) gets position 0, exactly as when the
    sequence is run alone, so rotary/learned positions agree between batched rollout, training
    and the reward model. Left padding gets 0 and right padding repeats the last real position;
    both are masked out of attention, so their positions never matter.
    """
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def response_logprobs(
    logits: torch.Tensor, response_ids: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the response tokens, and per-token entropies, at `temperature`.

    `logits` are the model's outputs already aligned with the response: ``logits[:, t]`` is the
    output at position ``context_length - 1 + t`` and predicts ``response_ids[:, t]``. They are
    divided by `temperature` here, the same division sampling applied, so the ratio in PPO
    compares the policy the tokens were sampled from with the one being trained (dividing in
    one place and not the other is a classic, silent bias). Computed in float32.
    """
    scaled = logits.float() / temperature
    logprobs_all = torch.log_softmax(scaled, dim=-1)
    logp = logprobs_all.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logprobs_all.exp() * logprobs_all).sum(dim=-1)
    return logp, entropy


def place_rewards(
    scores: torch.Tensor,
    kl: torch.Tensor,
    kl_coef: float,
    last_index: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token rewards: ``-kl_coef * kl`` at every real token, plus the score at the last one.

    ``reward[i, t] = -kl_coef * kl[i, t] + (score[i] if t == last_index[i] else 0)``. The last
    real token is the EOS when the response has one (`first_eos_truncation`), else the last
    generated token; the score is the reward model's (already reduced by any missing-EOS
    penalty). This is the per-token KL-shaped reward of Ziegler et al. 2019 / Stiennon et al.
    2020. Positions outside `mask` (when given) are 0.
    """
    rewards = -kl_coef * kl
    if mask is not None:
        rewards = rewards * mask.to(rewards.dtype)
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    rewards = rewards.clone()
    rewards[rows, last_index] += scores.to(rewards.dtype)
    return rewards


# ---------------------------------------------------------------------------------------------
# Advantages and losses


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over right-padded responses.

    Backwards over ``t``, with ``V(T_end) = 0`` after the last real token (the episode ends)::

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t = delta_t + gamma * lam * A_{t+1}
        returns_t = A_t + V_t

    Padding is treated as beyond the end: its values, rewards and advantages are 0, and the
    recursion does not carry anything back across it. Returns ``(advantages, returns)``, both 0
    at masked-out positions.
    """
    mask_f = mask.to(values.dtype)
    values = values * mask_f
    rewards = rewards * mask_f
    length = rewards.shape[1]
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    advantages = torch.zeros_like(values)
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = (delta + gamma * lam * next_advantage) * mask_f[:, t]
        advantages[:, t] = advantage
        next_value = values[:, t]
        next_advantage = advantage
    returns = (advantages + values) * mask_f
    return advantages, returns


def token_mean(
    values: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor | None
) -> torch.Tensor:
    """`masked_mean`, or with `tokens` the masked *sum* divided by `tokens`: this micro-batch's
    share of a token mean over a larger batch that holds `tokens` real tokens in all."""
    if tokens is None:
        return masked_mean(values, mask)
    return masked_sum(values, mask.to(values.dtype)) / tokens


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise.

    ``ratio = exp(logp - old_logp)``; per token ``max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c))``
    (the pessimistic bound), averaged over real tokens. Returns ``(loss, clipfrac, approx_kl)``:
    ``clipfrac`` is the share of real tokens where the clipped term won (the gradient is zero
    there); ``approx_kl`` is the k3 estimate of KL(old || new), ``mean((ratio - 1) - log ratio)``,
    which is >= 0 and unbiased (Schulman 2020). Both diagnostics are detached.

    With `tokens` (the real-token count of the whole minibatch, over every micro-batch and
    process) every mean is a share of the minibatch's token mean (`token_mean`), so the shares
    of a minibatch's micro-batches add up to the same number however it is split.
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = token_mean(torch.maximum(unclipped, clipped), mask, tokens)
    with torch.no_grad():
        clipfrac = token_mean((clipped > unclipped).to(logp.dtype), mask, tokens)
        approx_kl = token_mean((ratio - 1.0) - log_ratio, mask, tokens)
    return loss, clipfrac, approx_kl


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
    tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (as in OpenAI's baselines PPO2 and Ziegler et al.'s lm-human-prefs).

    ``v_clipped = old + clip(v - old, -c, c)``; per token ``max((v - R)**2, (v_clipped - R)**2)``;
    the loss is half its mean over real tokens. Returns ``(loss, clipfrac)``, where ``clipfrac``
    (detached) is the share of real tokens where the clipped error was the larger one.
    `tokens` as in `policy_loss`.
    """
    clipped_values = old_values + torch.clamp(
        values - old_values, -cliprange_value, cliprange_value
    )
    error = (values - returns).square()
    error_clipped = (clipped_values - returns).square()
    loss = 0.5 * token_mean(torch.maximum(error, error_clipped), mask, tokens)
    with torch.no_grad():
        clipfrac = token_mean((error_clipped > error).to(values.dtype), mask, tokens)
    return loss, clipfrac
