"""Models and the supervised stages: SFT, the reward model, and scoring.

`models` builds builtin:tiny and loads local or hub checkpoints (safetensors
only, trust_remote_code opt-in, provenance recorded); `formatting` renders
prompts and responses the same way in every stage; `precision`, `scale` and `progress` hold mixed precision, LoRA /
gradient checkpointing / multi-process helpers and progress reporting;
`stages` are the SFT and reward-model stages (on TRL), `reward_eval` the
reward model's gates and per-dimension metrics, `scoring` evaluation-only
scoring. Nothing is re-exported: most modules import torch, and
`formatting` and `reward_eval` must stay importable without it.
"""
