"""rlhfspec's light half: load, validate and compile RLHF specs.

Nothing here imports torch, transformers or trl, nor the runtime or the CLI,
so CI and pre-commit can validate and compile specs with a small install.
"""

from rlhfspec.common.version import __version__

__all__ = ["__version__"]
