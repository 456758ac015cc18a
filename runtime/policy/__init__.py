"""Policy optimisation: KL-constrained PPO (our own, in `ppo/`) and DPO (on TRL).

`ppo_math` holds the arithmetic checked against hand computations (KL
estimators, GAE, whitening, clipped losses, the adaptive controller);
`distributed` the data-parallel helpers (global batch statistics, one
writer); `stages` the policy stage; `external` brings checkpoints of an
external engine (verl) back in for evaluation, selection and handoff.
Nothing is re-exported: every module here imports torch.
"""
