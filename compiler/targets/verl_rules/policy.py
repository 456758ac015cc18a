"""verl rules for the policy settings: seed, method, start model, KL control, PPO's
schedule and sampling, and DPO (which the export refuses)."""

from __future__ import annotations

from typing import Any

from rlhfspec.compiler.targets.verl_rules.base import (
    JOB_DIR,
    PREFIX_RULES,
    RULES,
    Row,
    Rule,
    _exact,
    gpus,
    ppo_block,
    rule,
)


@rule("seed")
def _seed(setting: str, value: Any, s: dict[str, Any]) -> Row:
    keys = {
        "data.seed": value,
        "actor_rollout_ref.actor.data_loader_seed": value,
        "critic.data_loader_seed": value,
        "actor_rollout_ref.rollout.seed": value,
    }
    return Row(
        setting,
        value,
        "difference",
        keys,
        "seeds verl's prompt shuffling, minibatch order and sampling; verl draws other random "
        "streams than rlhfspec, so the same seed does not reproduce a local run's samples",
    )


@rule("policy.method")
def _method(setting: str, value: Any, s: dict[str, Any]) -> Row:
    if value == "ppo":
        return _exact(
            setting,
            value,
            {"algorithm.adv_estimator": "gae"},
            "PPO with a value model (critic) and GAE",
        )
    return Row(
        setting,
        value,
        "refused",
        {},
        "verl's main_ppo runs PPO-family algorithms only; DPO stays on `rlhfspec run`",
        acknowledgeable=False,
    )


@rule("policy.base_model")
def _base_model(setting: str, value: Any, s: dict[str, Any]) -> Row:
    if s["policy"]["start_from_sft"]:
        return Row(setting, value, "unused", {}, "start_from_sft: the policy starts from SFT")
    return _exact(
        setting,
        value,
        {"actor_rollout_ref.model.path": f"{JOB_DIR}/model"},
        "copied into the job's model/ folder (with its chat template); also the KL reference",
    )


@rule("policy.start_from_sft")
def _start_from_sft(setting: str, value: Any, s: dict[str, Any]) -> Row:
    if not value:
        return _exact(setting, value, {}, "the policy starts from policy.base_model")
    return _exact(
        setting,
        value,
        {"actor_rollout_ref.model.path": f"{JOB_DIR}/model"},
        "the run's SFT model (models/sft) is copied into model/; verl's reference policy is the "
        "same starting model, as ours",
    )


@rule("policy.trust_remote_code")
def _trust(setting: str, value: Any, s: dict[str, Any]) -> Row:
    keys = {
        "actor_rollout_ref.model.trust_remote_code": bool(value),
        "critic.model.trust_remote_code": bool(value),
        "data.trust_remote_code": bool(value),
    }
    return _exact(setting, value, keys, "for the policy, the critic and the data's tokenizer")


@rule("policy.checkpoint_every")
def _checkpoint_every(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"trainer.save_freq": int(value)},
        "one verl step is one PPO update (a rollout batch); verl also saves the last step",
    )


@rule("policy.kl.coef")
def _kl_coef(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"algorithm.use_kl_in_reward": True, "algorithm.kl_ctrl.kl_coef": float(value)},
        "KL in the reward, per token, `reward - coef * kl` as ours (verl's default has none)",
    )


@rule("policy.kl.estimator")
def _kl_estimator(setting: str, value: Any, s: dict[str, Any]) -> Row:
    # ours puts k1 in the reward whatever the estimator (only k1 has the KL's gradient; see
    # runtime/policy/ppo/rollout.py); the estimator is what is logged, evaluated, guarded and
    # fed to the adaptive controller. verl feeds its controller the reward's own estimate.
    keys = {"algorithm.kl_penalty": "kl"}
    if value == "k1":
        return _exact(setting, value, keys, "k1 = logp - ref_logp in the reward and the controller")
    if s["policy"]["kl"]["mode"] != "adaptive":
        return Row(
            setting,
            value,
            "difference",
            keys,
            f"the reward uses k1 in both (verl's kl_penalty=kl; never {value} in the reward); "
            f"verl logs k1 where rlhfspec logs {value}; rlhfspec's evaluation of the imported "
            f"checkpoints measures and guards {value}",
        )
    return Row(
        setting,
        value,
        "refused",
        keys,
        f"ours feeds the adaptive controller the {value} estimate while the reward uses k1; "
        "verl's controller sees the reward's own estimate. If acknowledged: k1 in reward and "
        "controller (kl_penalty=kl)",
    )


@rule("policy.kl.mode")
def _kl_mode(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"algorithm.kl_ctrl.type": value},
        "fixed coefficient, or the Ziegler et al. controller (error clipped to +-0.2, "
        "n_steps = rollout batch), as ours",
    )


@rule("policy.kl.target")
def _kl_target(setting: str, value: Any, s: dict[str, Any]) -> Row:
    if s["policy"]["kl"]["mode"] != "adaptive":
        return Row(setting, value, "unused", {}, "kl.mode fixed: the target is not used")
    per_token = float(value) / int(ppo_block(s)["max_new_tokens"])
    return Row(
        setting,
        value,
        "refused",
        {"algorithm.kl_ctrl.target_kl": per_token},
        "our target is the KL per response (summed over its tokens); verl's controller "
        "compares the per-token mean KL. If acknowledged, the export sets target_kl = "
        f"target / max_new_tokens = {per_token:.6g}: the per-token KL of a full-length "
        "response at the target, so shorter responses are held tighter than ours",
    )


@rule("policy.kl.horizon")
def _kl_horizon(setting: str, value: Any, s: dict[str, Any]) -> Row:
    if s["policy"]["kl"]["mode"] != "adaptive":
        return Row(setting, value, "unused", {}, "kl.mode fixed: the horizon is not used")
    return _exact(
        setting,
        value,
        {"algorithm.kl_ctrl.horizon": int(value)},
        "in episodes (responses) in both",
    )


@rule("policy.ppo.total_episodes")
def _total_episodes(setting: str, value: Any, s: dict[str, Any]) -> Row:
    steps = int(value) // int(ppo_block(s)["rollout_batch_size"])
    return _exact(
        setting,
        value,
        {"trainer.total_training_steps": steps},
        f"{steps} updates = total_episodes // rollout_batch_size (whole batches, as ours)",
    )


@rule("policy.ppo.rollout_batch_size")
def _rollout_batch(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"data.train_batch_size": int(value), "actor_rollout_ref.rollout.n": 1},
        "prompts per update with one response each = episodes per update",
    )


@rule("policy.ppo.mini_batches")
def _mini_batches(setting: str, value: Any, s: dict[str, Any]) -> Row:
    size = int(ppo_block(s)["rollout_batch_size"]) // int(value)
    return _exact(
        setting,
        value,
        {"actor_rollout_ref.actor.ppo_mini_batch_size": size},
        f"{size} episodes per minibatch, one optimizer step each (the critic inherits it)",
    )


@rule("policy.ppo.ppo_epochs")
def _ppo_epochs(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"actor_rollout_ref.actor.ppo_epochs": int(value)},
        "passes over each rollout batch (the critic inherits it)",
    )


@rule("policy.ppo.gradient_accumulation_steps")
def _accumulation(setting: str, value: Any, s: dict[str, Any]) -> Row:
    ppo = ppo_block(s)
    minibatch = int(ppo["rollout_batch_size"]) // int(ppo["mini_batches"])
    micro = max(1, minibatch // (gpus(s) * int(value)))
    keys = {
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": micro,
        "critic.ppo_micro_batch_size_per_gpu": micro,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": micro,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": micro,
    }
    return Row(
        setting,
        value,
        "difference",
        keys,
        f"verl splits each minibatch over {gpus(s)} GPU(s), then into micro-batches of "
        f"{micro} per GPU: memory only, the optimizer step is still one per minibatch",
    )


@rule("policy.ppo.learning_rate")
def _lr(setting: str, value: Any, s: dict[str, Any]) -> Row:
    keys = {"actor_rollout_ref.actor.optim.lr": float(value), "critic.optim.lr": float(value)}
    return _exact(setting, value, keys, "AdamW for policy and value, constant, no warmup")


@rule("policy.ppo.temperature")
def _temperature(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"actor_rollout_ref.rollout.temperature": float(value)},
        "sampling temperature; verl's actor divides the logits by it in training too",
    )


@rule("policy.ppo.top_k")
def _top_k(setting: str, value: Any, s: dict[str, Any]) -> Row:
    keys = {"actor_rollout_ref.rollout.top_k": int(value) if value else -1}
    return _exact(setting, value, keys, "0 (off) is -1 in verl")


@rule("policy.ppo.top_p")
def _top_p(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(setting, value, {"actor_rollout_ref.rollout.top_p": float(value)}, "nucleus")


@rule("policy.ppo.max_new_tokens")
def _max_new_tokens(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting,
        value,
        {"data.max_response_length": int(value)},
        "the rollout's response length follows it",
    )


@rule("policy.ppo.gamma")
def _gamma(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(setting, value, {"algorithm.gamma": float(value)}, "GAE discount")


@rule("policy.ppo.lam")
def _lam(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(setting, value, {"algorithm.lam": float(value)}, "GAE lambda (verl: 1.0)")


@rule("policy.ppo.cliprange")
def _cliprange(setting: str, value: Any, s: dict[str, Any]) -> Row:
    v = float(value)
    keys = {
        "actor_rollout_ref.actor.clip_ratio": v,
        "actor_rollout_ref.actor.clip_ratio_low": v,
        "actor_rollout_ref.actor.clip_ratio_high": v,
    }
    return _exact(setting, value, keys, "symmetric ratio clip; verl's dual clip is turned off")


@rule("policy.ppo.cliprange_value")
def _cliprange_value(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return _exact(
        setting, value, {"critic.cliprange_value": float(value)}, "value clip (verl: 0.5)"
    )


@rule("policy.ppo.vf_coef")
def _vf_coef(setting: str, value: Any, s: dict[str, Any]) -> Row:
    return Row(
        setting,
        value,
        "refused",
        {},
        "verl trains the critic as a separate model with its own optimizer and loss, so a "
        "value-loss weight has no counterpart (under Adam a constant loss weight mostly "
        "cancels, but ours also shares one gradient-norm clip). If acknowledged: not exported",
    )


def _flag_rule(verl_does: bool, what: str) -> Rule:
    def check(setting: str, value: Any, s: dict[str, Any]) -> Row:
        if bool(value) == verl_does:
            return _exact(setting, value, {}, f"verl's GAE {what} (no key to set)")
        return Row(
            setting,
            value,
            "refused",
            {},
            f"verl's GAE {what} and has no switch for it. If acknowledged: the job runs verl's way",
        )

    return check


RULES["policy.ppo.whiten_rewards"] = _flag_rule(False, "never whitens rewards")
RULES["policy.ppo.whiten_advantages"] = _flag_rule(True, "always whitens advantages")


@rule("policy.ppo.missing_eos_penalty")
def _missing_eos(setting: str, value: Any, s: dict[str, Any]) -> Row:
    if float(value) == 0.0:
        return _exact(setting, value, {}, "no penalty, as verl")
    return Row(
        setting,
        value,
        "refused",
        {},
        "verl scores a response with the reward model only (EOS stripped) and has no "
        "penalty for a response cut at max_new_tokens. If acknowledged: training runs without "
        "it; rlhfspec's evaluation of the imported checkpoints still applies it and guards "
        "the EOS rate",
    )


@rule("policy.ppo.max_grad_norm")
def _max_grad_norm(setting: str, value: Any, s: dict[str, Any]) -> Row:
    v = float(value)
    keys = {
        "actor_rollout_ref.actor.grad_clip": v,
        "actor_rollout_ref.actor.optim.clip_grad": v,
        "critic.grad_clip": v,
        "critic.optim.clip_grad": v,
    }
    return Row(
        setting,
        value,
        "difference",
        keys,
        "verl clips the policy's and the critic's gradients separately, each to this norm; "
        "ours clips both together",
    )


def _dpo_unused(setting: str, value: Any, s: dict[str, Any]) -> Row:
    if s["policy"]["method"] == "dpo":
        return Row(setting, value, "refused", {}, "DPO is not exported", acknowledgeable=False)
    return Row(setting, value, "unused", {}, "method ppo: DPO settings are not read")


PREFIX_RULES["policy.dpo."] = _dpo_unused
