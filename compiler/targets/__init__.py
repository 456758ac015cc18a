"""Export targets: turn a compiled plan's policy stage into another engine's job.

A target maps every spec setting it reads to the engine's configuration or
refuses it with a reason, so no setting is silently dropped when a team moves
its policy optimisation to a cluster engine. Targets are pure (no torch, no
run directory): they return the mapping, the diagnostics and the text files
of the job; the runtime adds the job's data and models
(`rlhfspec.runtime.export`). The registry names each target's module, so a
new engine (OpenRLHF) is one more entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from rlhfspec.common.errors import CompilerError

#: target name -> module implementing `check` and `render` (see compiler/targets/verl.py)
TARGETS: dict[str, str] = {"verl": "rlhfspec.compiler.targets.verl"}


def get_target(name: str) -> ModuleType:
    """The module of export target `name`; a usage error names the known targets."""
    module = TARGETS.get(name)
    if module is None:
        raise CompilerError(
            f"unknown export target {name!r}; known targets: {', '.join(sorted(TARGETS))}",
            exit_code=2,
        )
    return importlib.import_module(module)


def spec_locator(spec_path: Path) -> Callable[[str], tuple[int, int]]:
    """Line and column of a dotted setting in the spec file (its nearest written ancestor,
    since a default the spec does not write has no position of its own). An acknowledgement
    key `export.verl.acknowledge.<setting>` is one key with dots in it."""
    from rlhfspec.compiler.schema_check import Locator
    from rlhfspec.compiler.yaml_loader import load_yaml_file

    loaded = load_yaml_file(spec_path)
    locator = Locator(loaded.positions, loaded.key_positions)
    marker = "acknowledge."

    def locate(setting: str) -> tuple[int, int]:
        if marker in setting:
            head, tail = setting.split(marker, 1)
            return locator.key((*head.split("."), marker[:-1], tail))
        return locator.key(tuple(setting.split(".")))

    return locate
