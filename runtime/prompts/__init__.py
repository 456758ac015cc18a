"""Prompts: the pool a spec's sources make, and the checks on it.

`pool` reads the prompt sources into one pool and reserves the production
holdout (written once by the prompts stage as `prompts/holdout.jsonl`, read
by every later stage); `check` runs the mix, strata, privacy-review and
holdout-leak checks (PR codes) and writes the report. Light: no torch.
"""

from rlhfspec.runtime.prompts.check import PromptReport, check_prompts, write_prompt_report
from rlhfspec.runtime.prompts.pool import (
    Prompt,
    PromptPool,
    load_prompt_pool,
    production_holdout,
    read_holdout,
)

__all__ = [
    "Prompt",
    "PromptPool",
    "PromptReport",
    "check_prompts",
    "load_prompt_pool",
    "production_holdout",
    "read_holdout",
    "write_prompt_report",
]
