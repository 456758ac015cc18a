"""rlhfspec's light half: load, validate and compile RLHF specs.

Nothing here imports torch, transformers or trl, so CI and pre-commit can
validate and compile specs with a small install.
"""

__version__ = "0.1.0"
