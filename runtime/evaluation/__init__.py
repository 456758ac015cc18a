"""Checkpoint evaluation and guarded selection.

`evaluate` scores every policy checkpoint on the validation, adversarial and
production-holdout prompt sets exactly as PPO scores its rollouts (sampled
token ids, missing-EOS penalty, KL at the policy's sampling temperature);
`generation` and `metrics` are its sampling and statistics, `trajectory`
its plot. `selection` picks the deployment candidate under the
reward-hacking guards (failing closed on NaN) and round-trips blinded human
evaluation. Modules import torch only where they sample, so nothing is
re-exported here: importing `selection` alone stays light.
"""
