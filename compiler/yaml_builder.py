"""Plain data and source positions built from YAML parse events with an explicit stack.

Reading events rather than composing nodes lets every limit (depth, node count, alias
expansion) be checked at the event that would exceed it; see compiler/yaml_loader.py.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from typing import Any

import yaml

from rlhfspec.compiler.yaml_scalars import (
    _MAP_TAG,
    _NO_MATCH,
    _SCALAR_TAGS,
    _SEQ_TAG,
    _quote,
    _resolve_plain,
    _resolve_tagged,
    _short_tag,
    _TooLong,
    _type_name,
)
from rlhfspec.compiler.yaml_types import (
    BAD_TAG,
    DUPLICATE_KEY,
    MULTIPLE_DOCUMENTS,
    NON_FINITE,
    NON_STRING_KEY,
    SYNTAX,
    Limits,
    Path,
    Pos,
    YamlProblem,
    _limit,
    _Stop,
)

# --------------------------------------------------------------------------------------
# Event-driven construction


class _Frame:
    """An open mapping or sequence on the construction stack."""

    __slots__ = (
        "value",
        "is_map",
        "path",
        "anchor",
        "start_nodes",
        "height",
        "expect_key",
        "key",
        "key_ok",
        "first_seen",
        "pos",
    )

    def __init__(
        self,
        value: dict[str, Any] | list[Any],
        path: Path | None,
        anchor: str | None,
        nodes: int,
        pos: Pos,
    ) -> None:
        self.pos = pos
        self.value = value
        self.is_map = isinstance(value, dict)
        self.path = path  # None: inside a rejected key/entry; no positions are recorded
        self.anchor = anchor
        self.start_nodes = nodes
        self.height = 1  # collections nested in this one, counting itself
        self.expect_key = True
        self.key: str = ""
        self.key_ok = False
        self.first_seen: dict[str, int] = {}  # key -> line of first definition


class _Anchor:
    __slots__ = ("value", "path", "nodes", "height", "done")

    def __init__(self, value: Any, path: Path | None, nodes: int, height: int, done: bool) -> None:
        self.value = value
        self.path = path
        self.nodes = nodes
        self.height = height
        self.done = done


def _pos(event: yaml.Event) -> Pos:
    mark = event.start_mark
    return Pos(mark.line + 1, mark.column + 1) if mark is not None else Pos(1, 1)


class _Builder:
    """Turns a PyYAML event stream into data + positions, enforcing limits as it goes."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.problems: list[YamlProblem] = []
        self.positions: dict[Path, Pos] = {}
        self.key_positions: dict[Path, Pos] = {}
        self.stack: list[_Frame] = []
        self.anchors: dict[str, _Anchor] = {}
        self.alias_sources: dict[Path, Path] = {}  # alias use site -> anchored node's path
        self.nodes = 0
        self.aliases = 0
        self.documents = 0
        self.root: Any = None

    # -- helpers -----------------------------------------------------------------------

    def problem(self, code: str, pos: Pos, message: str, hint: str | None = None) -> None:
        self.problems.append(YamlProblem(code, pos.line, pos.col, message, hint))

    def count_nodes(self, n: int, pos: Pos) -> None:
        self.nodes += n
        if self.nodes > self.limits.max_nodes:
            raise _limit(
                pos,
                f"document has more than {self.limits.max_nodes:,} nodes after alias expansion "
                "(max_nodes)",
                "aliases (*name) inside anchored nodes multiply the data"
                if self.aliases
                else "spec files are small; check that this is the right file",
            )

    def child_path(self) -> Path | None:
        """Path of the node about to start; None for keys and inside rejected entries."""
        if not self.stack:
            return ()
        top = self.stack[-1]
        if top.path is None:
            return None
        if top.is_map:
            if top.expect_key or not top.key_ok:
                return None
            return (*top.path, top.key)
        return (*top.path, len(top.value))

    def set_key(self, top: _Frame, key: Any, pos: Pos, raw: str | None) -> None:
        """Accept ``key`` for the entry ``top`` is building, or record why it is rejected."""
        top.key_ok = False
        if not isinstance(key, str):
            if isinstance(key, dict | list):
                message = f"{_type_name(key)} cannot be used as a key; keys must be strings"
            elif raw is None:
                message = f"a key here is {_type_name(key)}, but keys must be strings"
            elif raw == "":
                message = "a key here is empty (null), but keys must be strings"
            else:
                message = (
                    f"key {raw} is {_type_name(key)}, but keys must be strings; "
                    f"quote it: {_quote(raw)}: ..."
                )
            self.problem(
                NON_STRING_KEY, pos, message, "write every key as a plain word or quote it"
            )
            return
        first = top.first_seen.get(key)
        if first is not None:
            self.problem(
                DUPLICATE_KEY,
                pos,
                f"duplicate key {_quote(key)} (first defined at line {first})",
                "remove one of them; YAML loaders that accept this silently keep only the last",
            )
            return
        top.first_seen[key] = pos.line
        top.key = key
        top.key_ok = True
        if top.path is not None:
            self.key_positions[(*top.path, key)] = pos

    def finish(self, value: Any, height: int, pos: Pos, raw: str | None) -> None:
        """Hand a completed node to its parent (or make it the root)."""
        if not self.stack:
            self.root = value
            return
        top = self.stack[-1]
        if height + 1 > top.height:
            top.height = height + 1
        if not top.is_map:
            top.value.append(value)  # type: ignore[union-attr]
        elif top.expect_key:
            top.expect_key = False
            self.set_key(top, value, pos, raw)
        else:
            top.expect_key = True
            if top.key_ok:
                top.value[top.key] = value  # type: ignore[call-overload]

    # -- events ------------------------------------------------------------------------

    def scalar(self, ev: yaml.ScalarEvent) -> None:
        pos = _pos(ev)
        self.count_nodes(1, pos)
        path = self.child_path()
        tag, value = ev.tag, ev.value
        if tag is None:
            try:
                resolved: Any = _resolve_plain(value) if ev.implicit[0] else value
            except _TooLong:
                raise _limit(
                    pos,
                    f"integer has {len(value):,} digits, more than Python converts "
                    f"({sys.get_int_max_str_digits():,})",
                    "quote it if it is meant as a string",
                ) from None
        elif tag == "!":  # the non-specific tag: "just a string"
            resolved = value
        elif tag in _SCALAR_TAGS:
            try:
                resolved = _resolve_tagged(tag, value)
            except _TooLong:
                resolved = _NO_MATCH
            if resolved is _NO_MATCH:
                self.problem(
                    BAD_TAG,
                    pos,
                    f"{_quote(value)} is not a valid {_short_tag(tag)}",
                    "fix the value or remove the tag",
                )
                resolved = value
        else:
            self.bad_tag(tag, "a scalar", pos)
            resolved = value
        if isinstance(resolved, float) and not math.isfinite(resolved):
            # NaN compares false with every bound, so it would switch a gate off unseen
            self.problem(
                NON_FINITE,
                pos,
                f"{_quote(value)} is not a finite number",
                "every number in a spec must be finite; write the value you mean "
                "(quote it if it is meant as a string)",
            )
            resolved = value
        if path is not None:
            self.positions[path] = pos
        if ev.anchor is not None:
            self.anchors[ev.anchor] = _Anchor(resolved, path, 1, 0, True)
        raw = value if tag is None and ev.implicit[0] else None
        self.finish(resolved, 0, pos, raw)

    def bad_tag(self, tag: str, where: str, pos: Pos) -> None:
        short = _short_tag(tag)
        if tag in _SCALAR_TAGS or tag in (_MAP_TAG, _SEQ_TAG):
            message = f"tag {short} cannot be applied to {where}"
        else:
            message = f"unsupported tag {short}; only plain YAML values are allowed in a spec"
        self.problem(BAD_TAG, pos, message, "remove the tag")

    def start(self, ev: yaml.CollectionStartEvent, is_map: bool) -> None:
        pos = _pos(ev)
        if len(self.stack) >= self.limits.max_depth:
            raise _limit(
                pos,
                f"nesting is deeper than {self.limits.max_depth} levels (max_depth)",
                "check for unbalanced '[' or '{', or flatten the structure",
            )
        self.count_nodes(1, pos)
        tag = ev.tag
        if tag is not None and tag != "!" and tag != (_MAP_TAG if is_map else _SEQ_TAG):
            self.bad_tag(tag, "a mapping" if is_map else "a sequence", pos)
        path = self.child_path()
        if path is not None:
            self.positions[path] = pos
        value: dict[str, Any] | list[Any] = {} if is_map else []
        frame = _Frame(value, path, ev.anchor, self.nodes - 1, pos)
        if ev.anchor is not None:
            # Registered now (not at the end) so that an alias inside it is seen as recursive.
            self.anchors[ev.anchor] = _Anchor(value, path, 0, 0, False)
        self.stack.append(frame)

    def end(self) -> None:
        frame = self.stack.pop()
        if frame.anchor is not None:
            anchor = self.anchors.get(frame.anchor)
            if anchor is not None and anchor.value is frame.value:
                anchor.nodes = self.nodes - frame.start_nodes
                anchor.height = frame.height
                anchor.done = True
        self.finish(frame.value, frame.height, frame.pos, None)

    def alias(self, ev: yaml.AliasEvent) -> None:
        pos = _pos(ev)
        name = ev.anchor or ""
        anchor = self.anchors.get(name)
        if anchor is None:
            raise _Stop(
                YamlProblem(
                    SYNTAX,
                    pos.line,
                    pos.col,
                    f"invalid YAML: alias *{name} refers to no anchor (&{name}) defined before it",
                    "define the anchor before using it, or check the spelling",
                )
            )
        if not anchor.done:
            raise _limit(
                pos,
                f"alias *{name} is used inside the node it refers to; recursive structures "
                "are not allowed",
            )
        self.aliases += 1
        if self.aliases > self.limits.max_aliases:
            raise _limit(
                pos,
                f"document uses more than {self.limits.max_aliases:,} aliases (max_aliases)",
            )
        # Count and check before expanding anything: this is what makes "billion laughs" cheap.
        self.count_nodes(anchor.nodes, pos)
        if len(self.stack) + anchor.height > self.limits.max_depth:
            raise _limit(
                pos,
                f"alias *{name} makes nesting deeper than {self.limits.max_depth} levels "
                "(max_depth)",
            )
        path = self.child_path()
        if path is not None:
            self.positions[path] = pos
            if anchor.height and anchor.path is not None:
                self.alias_sources[path] = anchor.path
        self.finish(anchor.value, anchor.height, pos, None)

    def document_start(self, ev: yaml.DocumentStartEvent) -> None:
        self.documents += 1
        if self.documents > 1:
            pos = _pos(ev)
            raise _Stop(
                YamlProblem(
                    MULTIPLE_DOCUMENTS,
                    pos.line,
                    pos.col,
                    "file contains more than one YAML document; a spec is exactly one document",
                    "remove the '---' (or '...') separating documents, or split the file",
                )
            )

    def run(self, events: Iterator[yaml.Event]) -> None:
        for ev in events:
            cls = type(ev)
            if cls is yaml.ScalarEvent:
                self.scalar(ev)  # type: ignore[arg-type]
            elif cls is yaml.MappingStartEvent:
                self.start(ev, True)  # type: ignore[arg-type]
            elif cls is yaml.SequenceStartEvent:
                self.start(ev, False)  # type: ignore[arg-type]
            elif cls is yaml.MappingEndEvent or cls is yaml.SequenceEndEvent:
                self.end()
            elif cls is yaml.AliasEvent:
                self.alias(ev)  # type: ignore[arg-type]
            elif cls is yaml.DocumentStartEvent:
                self.document_start(ev)  # type: ignore[arg-type]

    def expand_aliases(self) -> None:
        """Replace shared (aliased) containers by copies and fill in their positions.

        Runs only after the whole document has been accepted, so its cost is bounded by
        ``max_nodes``. Walks in document order: an anchored node always precedes (and never
        contains) its aliases, so the positions being copied are already known.
        """
        if not self.alias_sources:
            return
        positions, key_positions, sources = self.positions, self.key_positions, self.alias_sources
        seen: set[int] = {id(self.root)}
        todo: list[tuple[Any, Path, Path | None]] = [(self.root, (), None)]
        while todo:
            node, path, src = todo.pop()
            items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
            children: list[tuple[Any, Path, Path | None]] = []
            for k, child in items:
                cpath = (*path, k)
                csrc = sources.get(cpath)
                if csrc is None and src is not None:
                    csrc = (*src, k)
                    pos = positions.get(csrc)
                    if pos is not None:
                        positions[cpath] = pos
                    kpos = key_positions.get(csrc)
                    if kpos is not None:
                        key_positions[cpath] = kpos
                if isinstance(child, dict | list):
                    if id(child) in seen:
                        child = dict(child) if isinstance(child, dict) else list(child)
                        node[k] = child
                    else:
                        seen.add(id(child))
                    children.append((child, cpath, csrc))
            todo.extend(reversed(children))
