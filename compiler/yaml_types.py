"""What the YAML loader returns and raises: positions, problems, limits, the loaded document.

Kept apart from the loader (compiler/yaml_loader.py) so that its parts (scalar resolution,
input checks, the event-driven builder) share them without importing one another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

Path = tuple[str | int, ...]
"""A JSON path: mapping keys (str) and sequence indices (int) from the root."""

SYNTAX: Final = "Y001"
DUPLICATE_KEY: Final = "Y002"
NON_STRING_KEY: Final = "Y003"
LIMIT: Final = "Y004"
BAD_TAG: Final = "Y005"
MULTIPLE_DOCUMENTS: Final = "Y006"
NON_FINITE: Final = "Y008"


@dataclass(frozen=True)
class Pos:
    """A 1-based source position, as editors display it."""

    line: int
    col: int


@dataclass(frozen=True)
class YamlProblem:
    """One user-facing problem. ``line``/``col`` are 1-based."""

    code: str
    line: int
    col: int
    message: str
    hint: str | None = None

    def format(self, filename: str = "<string>") -> str:
        """Render as ``file:line:col: CODE message`` plus an indented hint line."""
        text = f"{filename}:{self.line}:{self.col}: {self.code} {self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


class YamlLoadError(Exception):
    """Raised by :func:`load_yaml` with every problem found, sorted by position.

    ``args`` are ``(problems, filename)`` so that the exception pickles and re-raises
    intact across processes.
    """

    problems: list[YamlProblem]
    filename: str

    def __init__(self, problems: Sequence[YamlProblem], filename: str = "<string>") -> None:
        ordered = sorted(problems, key=lambda p: (p.line, p.col))
        super().__init__(ordered, filename)
        self.problems = ordered
        self.filename = filename

    def __str__(self) -> str:
        return "\n".join(p.format(self.filename) for p in self.problems)


@dataclass(frozen=True)
class Limits:
    """Resource limits; every one is enforced before the work it guards is done.

    ``max_nodes`` counts nodes after alias expansion (keys, values and collections all
    count one each), which is what bounds the size of the returned data.
    """

    max_bytes: int = 5_000_000
    max_depth: int = 64
    max_nodes: int = 1_000_000
    max_aliases: int = 1_000


DEFAULT_LIMITS: Final = Limits()


@dataclass
class LoadedYaml:
    """The loaded document and where each part of it came from.

    ``positions[path]`` is the start of the *value* node at ``path`` (``()`` is the root);
    ``key_positions[path]`` is the start of the *key* of the mapping entry at ``path``.
    """

    data: Any
    positions: dict[Path, Pos] = field(default_factory=dict)
    key_positions: dict[Path, Pos] = field(default_factory=dict)

    def locate(self, path: Sequence[str | int], *, key: bool = False) -> Pos:
        """Best position for ``path``: its key (if ``key``) or value, else the nearest ancestor.

        Validators report paths that may not exist in the document (a missing required
        key, say); pointing at the closest enclosing node is the useful answer then.
        """
        p: Path = tuple(path)
        if key and p in self.key_positions:
            return self.key_positions[p]
        while p:
            if p in self.positions:
                return self.positions[p]
            p = p[:-1]
        return self.positions.get((), Pos(1, 1))


class _Stop(Exception):
    """Internal: a problem that ends loading at once (syntax or limit)."""

    def __init__(self, problem: YamlProblem) -> None:
        super().__init__(problem)
        self.problem = problem


def _limit(pos: Pos, message: str, hint: str | None = None) -> _Stop:
    return _Stop(YamlProblem(LIMIT, pos.line, pos.col, message, hint))
