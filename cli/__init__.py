"""The `rlhfspec` command line and the multi-process launch entry.

It imports the compiler and the runtime; nothing imports it. Runtime
commands import their modules lazily so that `validate` and `compile` never
pull in torch, transformers or trl.
"""
