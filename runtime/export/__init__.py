"""Export a plan's policy stage to another engine's job, with the data and models it reads.

`export_job` is what `rlhfspec compile SPEC --target verl -o DIR --run-dir RUN`
runs: the compiler target checks the mapping (no run needed, so a refused
setting fails fast), then the job's data and models are prepared from the run
and the target renders the config, MAPPING.md and the launch scripts.
"""
