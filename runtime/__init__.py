"""rlhfspec's heavy half: execute a compiled plan in a run directory.

The runner (`run`), the stage contract (`stage_api`), lineage and the
project view live here; each domain has its own subpackage:
`annotation/` (records, readers, tasks, agreement, QC, aggregation),
`prompts/` (prompt pool and checks), `train/` (models, SFT, reward model,
scoring), `policy/` (PPO, DPO, distributed helpers), `evaluation/`
(checkpoint evaluation, selection), `handoff/` (package, verify) and
`report/` (report rendering, SVG plots). It imports the compiler's
validation and the common helpers, never the CLI.
"""
