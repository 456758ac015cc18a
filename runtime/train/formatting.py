"""How prompts and responses become model text, the same in every stage.

SFT, the reward model, the policy and evaluation must all see a prompt the
same way, or the reward model scores text the policy never produces. One
template lives here.
"""

from __future__ import annotations

PROMPT_TEMPLATE = "User: {prompt}\nAssistant:"


def format_prompt(prompt: str) -> str:
    """The prompt as the model sees it; it ends on a token boundary (no trailing space)."""
    return PROMPT_TEMPLATE.format(prompt=prompt.strip())


def format_response(response: str) -> str:
    """The response as it follows the prompt: the separating space belongs to the response,
    so byte-level BPE tokenizes prompt + response the same as the prompt alone plus the rest."""
    return " " + response.strip()


def full_text(prompt: str, response: str) -> str:
    return format_prompt(prompt) + format_response(response)


def word_count(text: str) -> int:
    return len(text.split())
