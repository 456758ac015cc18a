"""Safe, position-tracking YAML loader for rlhfspec spec files.

A spec file is untrusted input that a person wrote by hand, so this loader has three jobs:
turn YAML into plain Python data, remember where every value came from (so that the
validator can point at ``line:col``), and refuse hostile or accidental inputs cleanly with
one exception type, :class:`YamlLoadError`, carrying user-facing :class:`YamlProblem` s.

Why the event stream and not ``yaml.load``/``yaml.compose``
    PyYAML's composer and constructor are recursive: a 50,000-deep ``[[[[...`` or
    ``{a: {a: ...`` raises ``RecursionError`` (or worse, overflows the C stack) long before
    any limit of ours could apply, and ``yaml.load`` expands aliases eagerly, so a
    "billion laughs" document is fully materialised before anyone can count it. Reading
    ``yaml.parse`` events and building values with an explicit stack lets us check the
    nesting depth at every collection start and the alias expansion size at every alias,
    and stop at the first event that goes over a limit. The parser itself is lazy, so a
    refused file costs only the events read so far.

Why the YAML 1.2 core schema and not PyYAML's resolver
    PyYAML resolves plain scalars with YAML 1.1 rules: ``yes``/``no``/``on``/``off`` become
    booleans (the "Norway problem": ``country: NO`` is ``False``), ``1_000`` is an int,
    ``0755`` is octal, ``2026-11-01`` becomes a ``datetime.date`` and ``1e-4`` is a
    *string* (1.1 floats need a dot). YAML 1.2 (the current spec, and a superset of JSON)
    fixes all of these, and users copying config from modern tools expect it. We resolve
    plain scalars ourselves with the 1.2 core schema (see :func:`_resolve_plain`).

Other decisions
    * Mapping keys must be strings (``Y003``), duplicate keys are errors (``Y002``) rather
      than silently keeping the last value, and only the standard tags ``!!str !!int
      !!float !!bool !!null !!map !!seq`` (and the non-specific ``!``) are accepted
      (``Y005``); no Python objects can ever be constructed.
    * Merge keys (``<<: *base``) are *not* supported: YAML 1.2 dropped them, so ``<<`` is an
      ordinary string key and the validator will reject it as unknown.
    * Aliases are expanded into independent copies, so the result is a plain tree (no
      shared sub-objects) that callers may mutate freely. Positions inside an expanded
      alias point at the anchored original; the alias itself points at its use site.
    * Exactly one document per file (``Y006``); an empty file loads as ``None``.

Problem codes
    ``Y001`` syntax error (including invalid UTF-8, control characters, undefined aliases);
    ``Y002`` duplicate key; ``Y003`` non-string key; ``Y004`` a size/depth/alias limit;
    ``Y005`` unsupported tag or a value its tag rejects; ``Y006`` more than one document;
    ``Y008`` a number that is not finite (``.nan``, ``.inf``, ``1e400``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import yaml

from rlhfspec.compiler.yaml_builder import _Builder
from rlhfspec.compiler.yaml_text import _decode, _syntax_problem
from rlhfspec.compiler.yaml_types import (
    DEFAULT_LIMITS,
    LIMIT,
    Limits,
    LoadedYaml,
    Path,
    Pos,
    YamlLoadError,
    YamlProblem,
    _Stop,
)

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "LoadedYaml",
    "Path",
    "Pos",
    "YamlLoadError",
    "YamlProblem",
    "load_yaml",
    "load_yaml_file",
]

# libyaml is much faster than the pure-Python parser; both give the same events and marks.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(
    text: str | bytes, *, filename: str = "<string>", limits: Limits = DEFAULT_LIMITS
) -> LoadedYaml:
    """Load one YAML document into plain data plus source positions.

    ``bytes`` must be UTF-8 (a BOM is allowed). Returns ``LoadedYaml(data=None)`` for an
    empty document. Raises :class:`YamlLoadError` carrying every duplicate-key,
    non-string-key and tag problem in the document, or the first syntax or limit problem
    (after which nothing further can be trusted), always sorted by position.
    """
    builder = _Builder(limits)
    try:
        source = _decode(text, limits)
        events: Iterator[yaml.Event] = yaml.parse(source, Loader=_Loader)
        try:
            builder.run(events)
        except yaml.YAMLError as exc:
            problem = _syntax_problem(exc, source)
            if "maximum nesting depth" in problem.message:
                # newer libyaml refuses depth > 1000 while scanning ahead, before our
                # event-level depth check sees level max_depth + 1: the same limit hit
                problem = YamlProblem(
                    LIMIT,
                    problem.line,
                    problem.col,
                    f"nesting is deeper than {limits.max_depth} levels (max_depth)",
                    "flatten the structure; specs need only a few levels",
                )
            raise _Stop(problem) from None
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()
    except _Stop as stop:
        raise YamlLoadError([*builder.problems, stop.problem], filename) from None
    if builder.problems:
        raise YamlLoadError(builder.problems, filename)
    builder.expand_aliases()
    positions = builder.positions
    positions.setdefault((), Pos(1, 1))
    return LoadedYaml(builder.root, positions, builder.key_positions)


def load_yaml_file(path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS) -> LoadedYaml:
    """Read and load a spec file; see :func:`load_yaml`.

    The size limit is checked against the file's size before it is read (and the read is
    capped, for files that grow or lie about their size). ``OSError`` (missing file,
    permissions) propagates unchanged: it is not a problem *in* the YAML.
    """
    name = os.fspath(path)
    with open(name, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limits.max_bytes:
            raise YamlLoadError(
                [
                    YamlProblem(
                        LIMIT,
                        1,
                        1,
                        f"file is {size:,} bytes, larger than the limit of "
                        f"{limits.max_bytes:,} bytes (max_bytes)",
                        "spec files are small; check that this is the right file",
                    )
                ],
                name,
            )
        data = fh.read(limits.max_bytes + 1)
    return load_yaml(data, filename=name, limits=limits)
