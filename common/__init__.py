"""Shared helpers of the compiler, the runtime and the CLI.

Errors with their exit codes, atomic file IO, hashing, the JSONL reader,
findings and the version. Nothing here imports the compiler, the runtime or
the CLI, and nothing here imports torch.
"""
