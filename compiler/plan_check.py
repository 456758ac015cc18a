"""Re-validate a plan.json before anything runs from it.

A plan's fingerprint is a plain sha256 anyone can recompute, so it proves
nothing about who wrote the plan: a hand-made plan could point a source at
`../outside/` or name its project `../../elsewhere` and the run would read
and write outside its folders. So `run PLAN.json` trusts no field of the
plan. It parses it as strict JSON, checks it against the plan schema, finds
the spec it names (whose bytes must match the recorded sha256), validates
that spec as the compiler does (schema, semantic and path rules), compiles
it again in memory and requires the same plan. Only the rendered documents
may differ (they depend on `--templates`, and the runtime never reads them).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from rlhfspec.common.errors import CompilerError
from rlhfspec.common.hashing import canonical_json, sha256_bytes, sha256_text
from rlhfspec.common.jsonl import JsonProblem, parse_json
from rlhfspec.compiler.compile import compile_spec
from rlhfspec.compiler.diagnostics import format_text, json_path
from rlhfspec.compiler.schema_check import Locator, unbounded_numbers
from rlhfspec.compiler.schemas import PLAN_SCHEMA, SPEC_SCHEMA, load_schema
from rlhfspec.compiler.spec_paths import check_path, iter_paths

MAX_PLAN_BYTES = 64 * 1024 * 1024
MAX_LISTED = 20
#: a spec file name, as the compiler records it: one path component, no `..`
SPEC_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: what may differ between a plan and a fresh compile of its spec
UNCHECKED = ("documents", "fingerprint", "generator")
RECOMPILE = "recompile it with `rlhfspec compile`"


def _refuse(display: str, problems: list[str]) -> CompilerError:
    shown = "\n".join(f"  {p}" for p in problems[:MAX_LISTED])
    more = len(problems) - MAX_LISTED
    return CompilerError(
        f"{display}: not a plan rlhfspec can run ({len(problems)} problem(s)):\n{shown}"
        + (f"\n  ... and {more} more" if more > 0 else "")
        + f"\n{RECOMPILE}"
    )


def plan_validator() -> Draft202012Validator:
    """The plan schema, whose `resolved` refers to the spec schema by its id (never fetched)."""
    spec = load_schema(SPEC_SCHEMA)
    registry: Registry[Any] = Registry().with_resource(spec["$id"], Resource.from_contents(spec))
    return Draft202012Validator(load_schema(PLAN_SCHEMA), registry=registry)


def read_plan_json(path: Path, display: str) -> dict[str, Any]:
    """Strict JSON within MAX_PLAN_BYTES that conforms to the plan schema."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PLAN_BYTES + 1)
    except OSError as exc:
        raise CompilerError(f"{display}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_PLAN_BYTES:
        raise CompilerError(f"{display}: larger than {MAX_PLAN_BYTES // 2**20} MiB; not a plan")
    try:
        plan = parse_json(data)
    except JsonProblem as exc:
        raise CompilerError(f"{display}: not a readable plan: {exc}") from None
    if not isinstance(plan, dict) or plan.get("plan_version") != 1 or "fingerprint" not in plan:
        raise CompilerError(
            f"{display}: not an rlhfspec plan (compile a spec with `rlhfspec compile`)"
        )
    problems = [
        f"at {json_path(error.absolute_path)}: {error.message[:200]}"
        for error in plan_validator().iter_errors(plan)
    ]
    problems += [
        f"at {d.path}: {d.message}" for d in unbounded_numbers(plan, Locator({}, {}), file=display)
    ]
    if problems:
        raise _refuse(display, sorted(set(problems)))
    return plan


def _differences(fresh: Any, given: Any, path: tuple[str | int, ...] = ()) -> list[str]:
    """JSON paths where `given` differs from `fresh` (the first few, depth-first)."""
    if isinstance(fresh, dict) and isinstance(given, dict):
        out = []
        for key in sorted(set(fresh) | set(given), key=str):
            if key in UNCHECKED and not path:
                continue
            out += _differences(fresh.get(key), given.get(key), path + (key,))
        return out
    if isinstance(fresh, list) and isinstance(given, list) and len(fresh) == len(given):
        out = []
        for index, (a, b) in enumerate(zip(fresh, given, strict=True)):
            out += _differences(a, b, path + (index,))
        return out
    return [] if canonical_json(fresh) == canonical_json(given) else [json_path(path)]


def spec_of_plan(path: Path, plan: dict[str, Any], display: str) -> Path:
    """The spec file the plan was compiled from; its bytes must be the recorded ones."""
    name = str(plan["spec"]["file"])
    if not SPEC_FILE.fullmatch(name) or name in (".", ".."):
        raise _refuse(display, [f"at spec.file: {name[:80]!r} is not a spec file name"])
    try:
        spec_dir = (path.parent / str(plan["spec"]["dir"])).resolve()
        spec_path = spec_dir / name
        found = spec_path.is_file()
        data = spec_path.read_bytes() if found else b""
    except (OSError, ValueError) as exc:
        raise _refuse(display, [f"at spec.dir: cannot be used: {exc}"]) from None
    if not found:
        raise CompilerError(
            f"{display}: its spec {name} is not in {spec_dir}; a plan runs beside its spec "
            f"(spec.dir is relative to the plan's folder); {RECOMPILE}"
        )
    if sha256_bytes(data) != plan["spec"]["sha256"]:
        raise CompilerError(f"{display}: the spec {spec_path} changed since compiling; {RECOMPILE}")
    return spec_path


def plan_path_problems(plan: dict[str, Any], spec_dir: Path) -> list[str]:
    """The spec's path rules (inside its folder, an existing file) on every path in the plan."""
    named = [((index, "path"), item["path"]) for index, item in enumerate(plan["inputs"])]
    problems = []
    for where, value in [
        *((("inputs", *w), v) for w, v in named),
        *((("resolved", *p), v) for p, v in iter_paths(load_schema(SPEC_SCHEMA), plan["resolved"])),
    ]:
        problem = check_path(spec_dir.resolve(), value)
        if problem is not None:
            problems.append(f"at {json_path(where)}: {problem[1]}")
    return problems


def load_compiled_plan(path: Path, display: str) -> tuple[dict[str, Any], Path]:
    """A plan.json checked as the compiler would check its spec; returns (plan, spec path)."""
    plan = read_plan_json(path, display)
    body = {k: v for k, v in plan.items() if k != "fingerprint"}
    if sha256_text(canonical_json(body)) != plan["fingerprint"]:
        raise CompilerError(
            f"{display}: the plan was edited after compiling (fingerprint mismatch); {RECOMPILE}"
        )
    spec_path = spec_of_plan(path, plan, display)
    path_problems = plan_path_problems(plan, spec_path.parent)
    if path_problems:
        raise _refuse(display, path_problems)
    result = compile_spec(spec_path, path.parent, display=str(spec_path))
    if result.plan is None:
        raise CompilerError(
            f"{display}: its spec is not valid; fix it first:\n" + format_text(result.diagnostics)
        )
    differences = _differences(result.plan, plan)
    if differences:
        where = ", ".join(differences[:MAX_LISTED])
        reason = (
            f"input files changed since {display} was compiled"
            if any(d.startswith("inputs") for d in differences)
            else "it is not what its spec compiles to"
        )
        raise CompilerError(f"{display}: {reason} (differs at {where}); {RECOMPILE}")
    return plan, spec_path
