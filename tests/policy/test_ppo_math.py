"""PPO arithmetic (`rlhfspec.runtime.policy.ppo_math`) against values worked out by hand.

Every expected number below is written out with the arithmetic that gives it, so a failure
says which formula moved, not merely that something did.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from rlhfspec.runtime.policy.ppo_math import (  # noqa: E402
    AdaptiveKLController,
    FixedKLController,
    explained_variance,
    first_eos_truncation,
    gae,
    kl_per_token,
    masked_mean,
    masked_var,
    masked_whiten,
    place_rewards,
    policy_loss,
    position_ids_from_mask,
    response_logprobs,
    value_loss,
)

EOS, PAD = 2, 0


def close(actual: torch.Tensor, expected: list[float] | list[list[float]] | float) -> None:
    torch.testing.assert_close(
        actual.float(), torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=1e-6
    )


# ---------------------------------------------------------------------------------------------
# KL estimators


LOGP = torch.tensor([-1.0, -2.0])
REF = torch.tensor([-1.5, -1.0])


def test_k1_is_the_log_ratio() -> None:
    # logp - ref: -1 - (-1.5) = 0.5; -2 - (-1) = -1
    close(kl_per_token(LOGP, REF, "k1"), [0.5, -1.0])


def test_k2_is_half_the_squared_log_ratio() -> None:
    # 0.5 * 0.5**2 = 0.125; 0.5 * (-1)**2 = 0.5
    close(kl_per_token(LOGP, REF, "k2"), [0.125, 0.5])


def test_k3_is_ratio_minus_one_minus_log_ratio() -> None:
    # r = ref - logp = [-0.5, 1.0]; exp(r) - 1 - r:
    # exp(-0.5) - 1 + 0.5 = 0.6065306597 - 0.5 = 0.1065306597
    # exp(1) - 1 - 1 = 2.7182818285 - 2 = 0.7182818285
    close(kl_per_token(LOGP, REF, "k3"), [0.1065306597, 0.7182818285])


def test_all_estimators_are_zero_when_policy_equals_reference() -> None:
    for estimator in ("k1", "k2", "k3"):
        close(kl_per_token(LOGP, LOGP, estimator), [0.0, 0.0])


def test_unknown_estimator_is_refused() -> None:
    with pytest.raises(ValueError, match="k4"):
        kl_per_token(LOGP, REF, "k4")


# ---------------------------------------------------------------------------------------------
# Masked statistics and whitening

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])  # real values: 1, 2, 4


def test_masked_mean_ignores_padding() -> None:
    # (1 + 2 + 4) / 3 = 7/3
    close(masked_mean(VALUES, MASK), 7 / 3)
    # per row: (1 + 2) / 2 = 1.5; 4 / 1 = 4
    close(masked_mean(VALUES, MASK, dim=1), [1.5, 4.0])


def test_masked_var_is_unbiased_over_real_positions() -> None:
    # deviations from 7/3: -4/3, -1/3, 5/3; squares 16/9 + 1/9 + 25/9 = 42/9
    # biased: 42/9 / 3 = 14/9; unbiased: 42/9 / 2 = 7/3
    close(masked_var(VALUES, MASK), 7 / 3)
    close(masked_var(VALUES, MASK, unbiased=False), 14 / 9)
    # a single real position: no Bessel correction, variance 0 rather than 0/0
    close(masked_var(VALUES, torch.tensor([[1, 0, 0], [0, 0, 0]])), 0.0)


def test_masked_whiten_standardises_and_zeroes_padding() -> None:
    # (x - 7/3) / sqrt(7/3), sqrt(7/3) = 1.5275252317
    # -4/3 / 1.5275252317 = -0.8728715609; -1/3 / ... = -0.2182178902; 5/3 / ... = 1.0910894512
    close(
        masked_whiten(VALUES, MASK),
        [[-0.8728715609, -0.2182178902, 0.0], [1.0910894512, 0.0, 0.0]],
    )


def test_masked_whiten_without_mean_shift_only_rescales() -> None:
    # the whitened values plus the mean 7/3 = 2.3333333333:
    # -0.8728715609 + 2.3333333333 = 1.4604617724; -0.2182178902 + ... = 2.1151154431;
    # 1.0910894512 + ... = 3.4244227845
    close(
        masked_whiten(VALUES, MASK, shift_mean=False),
        [[1.4604617724, 2.1151154431, 0.0], [3.4244227845, 0.0, 0.0]],
    )


def test_explained_variance() -> None:
    values = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    returns = torch.tensor([[1.0, 3.0, 5.0, -99.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # Var[returns] (unbiased): mean 3, deviations -2, 0, 2 -> 8 / 2 = 4
    # returns - values = 0, 1, 2: mean 1, deviations -1, 0, 1 -> 2 / 2 = 1
    # 1 - 1/4 = 0.75
    assert explained_variance(values, returns, mask) == pytest.approx(0.75)
    assert math.isnan(explained_variance(values, torch.ones(1, 4), mask))


# ---------------------------------------------------------------------------------------------
# KL controllers


def test_adaptive_kl_controller_worked_example() -> None:
    controller = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10000)
    # KL 9 over 32 episodes: error = 9/6 - 1 = 0.5, clipped to 0.2
    # coef = 0.1 * (1 + 0.2 * 32 / 10000) = 0.1 * 1.00064 = 0.100064
    controller.update(9.0, 32)
    assert controller.value == pytest.approx(0.100064, abs=1e-12)
    # KL 3: error = 3/6 - 1 = -0.5, clipped to -0.2
    # coef = 0.100064 * (1 - 0.2 * 32 / 10000) = 0.100064 * 0.99936 = 0.0999999590
    controller.update(3.0, 32)
    assert controller.value == pytest.approx(0.100064 * 0.99936, abs=1e-12)
    assert controller.value == pytest.approx(0.099999959, abs=1e-9)


def test_adaptive_kl_controller_unclipped_error() -> None:
    controller = AdaptiveKLController(init_coef=1.0, target=6.0, horizon=100)
    # KL 6.6: error = 6.6/6 - 1 = 0.1 (inside the clip); coef = 1 * (1 + 0.1 * 10/100) = 1.01
    controller.update(6.6, 10)
    assert controller.value == pytest.approx(1.01, abs=1e-12)
    # on target: error 0, no change
    controller.update(6.0, 10)
    assert controller.value == pytest.approx(1.01, abs=1e-12)
    restored = AdaptiveKLController(init_coef=1.0, target=6.0, horizon=100)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value


def test_fixed_kl_controller_never_moves() -> None:
    controller = FixedKLController(0.05)
    controller.update(100.0, 32)
    assert controller.value == 0.05


# ---------------------------------------------------------------------------------------------
# Truncation, masks and reward placement


def test_first_eos_truncation() -> None:
    ids = torch.tensor(
        [
            [5, EOS, 7, 8],  # EOS at 1: keep 5, EOS; the rest becomes pad
            [5, 6, 7, 8],  # no EOS: everything is real, last index 3
            [EOS, 9, 9, 9],  # stops at once: only the EOS
            [PAD, 5, EOS, EOS],  # a sampled pad id is a real token; the first EOS counts
        ]
    )
    truncated, mask, has_eos, last = first_eos_truncation(ids, EOS, PAD)
    assert truncated.tolist() == [
        [5, EOS, PAD, PAD],
        [5, 6, 7, 8],
        [EOS, PAD, PAD, PAD],
        [PAD, 5, EOS, PAD],
    ]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]]
    assert has_eos.tolist() == [True, False, True, True]
    assert last.tolist() == [1, 3, 0, 2]


def test_first_eos_truncation_refuses_pad_equal_to_eos() -> None:
    with pytest.raises(ValueError, match="pad and EOS"):
        first_eos_truncation(torch.tensor([[5, EOS]]), EOS, EOS)


def test_masks_and_positions_with_left_padded_prompts() -> None:
    # two prompts of 3 and 5 tokens, left-padded to 5; responses of 2 (EOS) and 3 (no EOS)
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    _, response_mask, _, last = first_eos_truncation(
        torch.tensor([[7, EOS, 9], [7, 8, 9]]), EOS, PAD
    )
    attention = torch.cat([prompt_mask, response_mask], dim=1)
    assert attention.tolist() == [[0, 0, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 1]]
    # the first real token is position 0 in both rows, as if each ran alone; left padding
    # gets 0, right padding repeats the last real position (both are masked out)
    assert position_ids_from_mask(attention).tolist() == [
        [0, 0, 0, 1, 2, 3, 4, 4],
        [0, 1, 2, 3, 4, 5, 6, 7],
    ]
    # the score is read at full-sequence index context_length + last_index:
    # row 0: 5 + 1 = 6 (the EOS); row 1: 5 + 2 = 7 (the last generated token)
    assert (5 + last).tolist() == [6, 7]


def test_place_rewards_with_and_without_eos() -> None:
    ids = torch.tensor([[5, 6, EOS, 8], [5, 6, 7, 8]])
    _, mask, has_eos, last = first_eos_truncation(ids, EOS, PAD)
    assert has_eos.tolist() == [True, False]
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.5, 0.6, 0.7]])
    scores = torch.tensor([1.0, 2.0])
    rewards = place_rewards(scores, kl, 0.5, last, mask)
    # row 0 ends with EOS at 2: -0.5 * [0.1, 0.2, 0.3] = [-0.05, -0.1, -0.15], score 1 on
    # the EOS: -0.15 + 1 = 0.85; the position after EOS is padding: 0
    # row 1 has no EOS: the score goes on the last generated token: -0.35 + 2 = 1.65
    close(rewards, [[-0.05, -0.1, 0.85, 0.0], [-0.2, -0.25, -0.3, 1.65]])


def test_score_lands_on_eos_when_pad_differs_from_eos() -> None:
    # Regression (TRL with pad == eos): the reward was read one token early because the EOS was
    # taken for padding. With pad 0 and EOS 2, a response ending on EOS is scored at the EOS.
    _, mask, has_eos, last = first_eos_truncation(torch.tensor([[11, 12, EOS]]), EOS, PAD)
    assert has_eos.tolist() == [True]
    assert last.tolist() == [2]
    assert mask.tolist() == [[1, 1, 1]]  # EOS stays in the loss
    close(place_rewards(torch.tensor([3.0]), torch.zeros(1, 3), 0.1, last), [[0.0, 0.0, 3.0]])


def test_response_logprobs_divide_by_the_temperature() -> None:
    logits = torch.tensor([[[1.0, 2.0, 3.0]]])
    # at temperature 2: [0.5, 1.0, 1.5]; logsumexp = ln(e^0.5 + e^1 + e^1.5)
    # = ln(1.6487213 + 2.7182818 + 4.4816891) = ln(8.8486922) = 2.1802697
    # log p(token 2) = 1.5 - 2.1802697 = -0.6802697
    # p = [0.1863237, 0.3071959, 0.5064804]; entropy = sum p * -log p
    # = 0.1863237 * 1.6802697 + 0.3071959 * 1.1802697 + 0.5064804 * 0.6802697 = 1.0201913
    logp, entropy = response_logprobs(logits, torch.tensor([[2]]), temperature=2.0)
    close(logp, [[-0.6802697]])
    close(entropy, [[1.0201913]])


# ---------------------------------------------------------------------------------------------
# GAE and the losses


def test_gae_worked_example() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 9.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.5, 1.0, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])  # row 1: the 9 and the 7 are padding
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # gamma * lam = 0.72; V after the last real token is 0
    # row 0, t=2: delta = 1 + 0.9*0 - 0.7 = 0.3;       A2 = 0.3
    #        t=1: delta = 0 + 0.9*0.7 - 0.6 = 0.03;    A1 = 0.03 + 0.72*0.3 = 0.246
    #        t=0: delta = 0 + 0.9*0.6 - 0.5 = 0.04;    A0 = 0.04 + 0.72*0.246 = 0.21712
    # row 1, t=1: delta = 2 + 0.9*0 - 1.0 = 1.0;       A1 = 1.0
    #        t=0: delta = 0 + 0.9*1.0 - 0.5 = 0.4;     A0 = 0.4 + 0.72*1.0 = 1.12
    close(advantages, [[0.21712, 0.246, 0.3], [1.12, 1.0, 0.0]])
    # returns = A + V: [0.71712, 0.846, 1.0] and [1.62, 2.0, 0 (padding)]
    close(returns, [[0.71712, 0.846, 1.0], [1.62, 2.0, 0.0]])


def test_gae_gamma_one_lambda_one_is_the_reward_to_go_minus_value() -> None:
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    # reward to go: 6, 5, 3; minus V = 0.5
    close(returns, [[6.0, 5.0, 3.0]])
    close(advantages, [[5.5, 4.5, 2.5]])


def test_policy_loss_clips_both_ways() -> None:
    logp = torch.tensor([[-1.0, -1.0, -2.0, 5.0]])
    old = torch.tensor([[-1.0, -1.2, -1.5, 0.0]])
    adv = torch.tensor([[1.0, 1.0, -2.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])  # the 4th token is padding and must not count
    loss, clipfrac, approx_kl = policy_loss(logp, old, adv, mask, cliprange=0.2)
    # ratio = exp(logp - old) = [1, exp(0.2) = 1.2214028, exp(-0.5) = 0.6065307]
    # t0: max(-1*1, -1*1) = -1                               (not clipped)
    # t1: max(-1.2214028, -1*clip(1.2214028) = -1.2) = -1.2  (clipped)
    # t2: max(2*0.6065307 = 1.2130613, 2*clip(.) = 2*0.8 = 1.6) = 1.6 (clipped)
    # loss = (-1 - 1.2 + 1.6) / 3 = -0.2; clipfrac = 2/3
    close(loss, -0.2)
    close(clipfrac, 2 / 3)
    # approx KL (k3) = mean((ratio - 1) - log ratio):
    # t0: 0; t1: 0.2214028 - 0.2 = 0.0214028; t2: -0.3934693 + 0.5 = 0.1065307
    # (0 + 0.0214028 + 0.1065307) / 3 = 0.0426445
    close(approx_kl, 0.0426445)


def test_policy_loss_gradient_vanishes_where_clipped() -> None:
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.5]])  # ratio of token 1: exp(0.5) > 1.2, clipped for A > 0
    loss, _, _ = policy_loss(logp, old, torch.tensor([[1.0, 1.0]]), torch.ones(1, 2), 0.2)
    loss.backward()
    assert logp.grad is not None
    # token 0: d/dlogp of -A*ratio/2 = -1*1/2 = -0.5; token 1: clipped, gradient 0
    close(logp.grad, [[-0.5, 0.0]])


def test_value_loss_clips_around_old_values() -> None:
    values = torch.tensor([[1.0, 2.0, 0.5, 50.0]])
    old = torch.tensor([[1.0, 1.5, 1.0, 0.0]])
    returns = torch.tensor([[1.5, 3.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clipfrac = value_loss(values, old, returns, mask, cliprange_value=0.2)
    # t0: v - old = 0 -> v_clip = 1.0; (1 - 1.5)^2 = 0.25 both;        max 0.25 (not clipped)
    # t1: v - old = 0.5 -> 0.2, v_clip = 1.7; (2 - 3)^2 = 1; (1.7 - 3)^2 = 1.69; max 1.69 (clipped)
    # t2: v - old = -0.5 -> -0.2, v_clip = 0.8; 0.5^2 = 0.25; 0.8^2 = 0.64; max 0.64 (clipped)
    # loss = 0.5 * (0.25 + 1.69 + 0.64) / 3 = 0.5 * 0.86 = 0.43; clipfrac = 2/3
    close(loss, 0.43)
    close(clipfrac, 2 / 3)
