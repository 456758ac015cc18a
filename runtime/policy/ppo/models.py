"""The models PPO reads: response-aligned policy logits, per-token values, sequence scores.

The policy and the value model are trained together as one module (`PolicyAndValue`) so that
accelerate prepares them, and DDP synchronises them, as one; the reward model and the value
model are sequence classifiers whose ``score`` head is read at explicit positions, never at
"the last non-pad token", so nothing depends on the padding side or on pad differing from EOS.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.policy.ppo_math import position_ids_from_mask


class PolicyAndValue(nn.Module):
    """The two trained models as one module, so accelerate prepares (and, with several
    processes, DDP synchronises) them together and one optimizer covers both."""

    def __init__(self, policy: nn.Module, value_model: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Response-aligned policy logits ``[B, T, V]`` and values ``[B, T]``."""
        logits = policy_logits(self.policy, input_ids, attention_mask, context_length)
        values = token_values(self.value_model, input_ids, attention_mask, context_length)
        return logits, values


def _accepts(model: nn.Module, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


def policy_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
) -> torch.Tensor:
    """Logits aligned with the response: ``out[:, t]`` predicts response token ``t``.

    Those are the outputs at positions ``P - 1 .. P + T - 2``; when the model supports
    ``logits_to_keep``, the LM head is only applied to the last ``T + 1`` positions.
    """
    response_length = input_ids.shape[1] - context_length
    kwargs: dict[str, Any] = {}
    if _accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = response_length + 1
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
        **kwargs,
    )
    logits: torch.Tensor = out.logits
    return logits[:, -(response_length + 1) : -1]


def backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """A sequence classifier's transformer and its ``score`` head (under PEFT's wrapper)."""
    unwrap = getattr(model, "get_base_model", None)
    if callable(unwrap):  # PEFT: the model with its adapters in place
        model = unwrap()
    backbone = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    head = getattr(model, "score", None)
    if not isinstance(backbone, nn.Module) or not isinstance(head, nn.Module):
        raise RunError(
            f"{type(model).__name__} is not a sequence classifier with a `score` head on a "
            "backbone; the reward model must be an AutoModelForSequenceClassification"
        )
    return backbone, head


def _hidden_states(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, nn.Module]:
    backbone, head = backbone_and_head(model)
    out = backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        use_cache=False,
    )
    return out.last_hidden_state, head


def token_values(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int
) -> torch.Tensor:
    """The score head read at every position before a response token: ``V(state before t)``."""
    hidden, head = _hidden_states(model, input_ids, attention_mask)
    response_length = input_ids.shape[1] - context_length
    values: torch.Tensor = head(
        hidden[:, context_length - 1 : context_length - 1 + response_length]
    )
    return values.squeeze(-1).float()


def sequence_scores(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, index: torch.Tensor
) -> torch.Tensor:
    """The reward model's score of each row, read at full-sequence position ``index[i]``.

    Reading at an explicit index (the EOS, or the last generated token) rather than at "the
    last non-pad token" does not depend on pad differing from EOS or on the padding side.
    """
    hidden, head = _hidden_states(model, input_ids, attention_mask)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    scores: torch.Tensor = head(hidden[rows, index])
    return scores.squeeze(-1).float()


def same_tokenizer(a: Any, b: Any) -> bool:
    return bool(
        a.get_vocab() == b.get_vocab()
        and a.eos_token_id == b.eos_token_id
        and a.pad_token_id == b.pad_token_id
        and a.bos_token_id == b.bos_token_id
    )
