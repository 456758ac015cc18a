"""Build the handoff package: gather the run's facts, collect and render its files, write them
(a directory, or a reproducible `.tar.gz`) with a manifest and checksums; and the handoff stage.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfspec.common.errors import RunError
from rlhfspec.common.hashing import sha256_bytes
from rlhfspec.common.templating import render_template
from rlhfspec.common.version import __version__ as rlhfspec_version
from rlhfspec.runtime.handoff.collect import Entry, collect_entries
from rlhfspec.runtime.handoff.context import front_matter, template_context
from rlhfspec.runtime.handoff.facts import Facts, RunDir, epoch, gather_facts
from rlhfspec.runtime.handoff.layout import (
    CHECKSUMS_FILE,
    HANDOFF_STAGE,
    MANIFEST_FILE,
    MANIFEST_FORMAT,
    MODEL_CARD_FILE,
    PARTS,
    WEIGHTS_MODES,
    human_size,
    json_bytes,
    safe_name,
)
from rlhfspec.runtime.stage_api import StageContext, StageOutcome


@dataclass(frozen=True)
class PackageResult:
    """What `build_package` wrote, for the CLI's last lines and the stage's metrics."""

    path: Path
    format: str  # "directory" or "tar.gz"
    files: int  # files in the package, CHECKSUMS.sha256 included
    total_bytes: int  # the directory's files together, or the tarball's size
    weights: str
    parts: tuple[str, ...]
    checkpoint: str
    root: str  # the tarball's top folder ("" for a directory)
    warnings: tuple[str, ...] = ()

    @property
    def index(self) -> str:
        """Where the HTML index is: a path, or `archive.tar.gz:folder/index.html`."""
        if self.format == "directory":
            return str(self.path / "index.html")
        return f"{self.path}:{self.root}/index.html"

    def describe(self) -> str:
        """Two lines for a terminal: where the package is, and where to start reading."""
        return (
            f"handoff package: {self.path} ({self.files} files, {human_size(self.total_bytes)}; "
            f"deployment checkpoint {self.checkpoint}, weights {self.weights})\n"
            f"index: {self.index}"
        )


def _checksums(files: dict[str, str]) -> bytes:
    lines = [f"{files[path]}  {path}\n" for path in sorted(files)]
    return "".join(lines).encode("utf-8")


def _write_tree(root: Path, entries: list[Entry]) -> None:
    for entry in entries:
        target = root / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.data is not None:
            target.write_bytes(entry.data)
        else:
            assert entry.file is not None
            shutil.copyfile(entry.file, target)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tar_info(name: str, *, size: int = 0, directory: bool, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.size = 0 if directory else size
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _write_tarball(tree: Path, target: Path, top: str, mtime: int) -> None:
    """A reproducible tar.gz: sorted entries, fixed owner and time, no name or time in gzip."""
    paths = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*"))
    with (
        target.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar.addfile(_tar_info(top, directory=True, mtime=mtime))
        for rel in paths:
            path = tree / rel
            name = f"{top}/{rel}"
            if path.is_dir():
                tar.addfile(_tar_info(name, directory=True, mtime=mtime))
            else:
                info = _tar_info(name, size=path.stat().st_size, directory=False, mtime=mtime)
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
        raw.flush()


def _is_tarball(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


def build_package(
    run_dir: Path,
    out: Path,
    *,
    weights: str | None = None,
    spec_dir: Path | None = None,
    include: Sequence[str] | None = None,
) -> PackageResult:
    """Build the handoff package of a finished run into `out` (a directory, or `.tar.gz`).

    `weights` is `include` (copy the deployment checkpoint's model files) or `reference`
    (record their paths, relative to the run directory, and sha256); by default the plan's
    `handoff.weights`. `spec_dir` is the spec's
    folder, where the gold items are read from (checked against the plan's sha256); by default
    the folder the plan names. `include` lists the parts (default: the plan's
    `handoff.include`). The package is written to a temporary sibling of `out` and renamed
    into place, so a failure never leaves a half-written package; an existing package at
    `out` is replaced, anything else there is refused.
    """
    run = RunDir(run_dir, spec_dir)
    weights = str(run.spec["handoff"]["weights"]) if weights is None else weights
    if weights not in WEIGHTS_MODES:
        raise RunError(f"weights must be one of {', '.join(WEIGHTS_MODES)}, got {weights!r}")
    parts = tuple(include if include is not None else run.spec["handoff"]["include"])
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise RunError(f"unknown handoff part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}")
    tarball = _is_tarball(out)
    _check_target(out, tarball)
    try:
        return _build(run, out, parts, weights, tarball)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        # run files are data a person may have edited: say so instead of crashing
        raise RunError(
            f"{run_dir}: a run file lacks what the handoff package needs "
            f"({type(exc).__name__}: {exc}); was the run made by this version of rlhfspec?"
        ) from exc


def _build(
    run: RunDir, out: Path, parts: tuple[str, ...], weights: str, tarball: bool
) -> PackageResult:
    facts = gather_facts(run)
    entries = collect_entries(run, facts, parts, weights)
    planned = _planned(entries, parts)
    descriptions = {path: description for path, _, description, _ in planned}

    def generated(path: str, part: str, data: bytes) -> Entry:
        return Entry(path, part, descriptions[path], facts.provenance(HANDOFF_STAGE), data=data)

    context = template_context(run, facts, parts, weights, planned)
    if "model_card" in parts:
        values = {**context, "front_matter": front_matter(run, facts)}
        card = render_template("model_card.md.j2", values)
        entries.append(generated(MODEL_CARD_FILE, "model_card", card.encode("utf-8")))
    for name, template in (
        ("index.html", "handoff_index.html.j2"),
        ("index.md", "handoff_index.md.j2"),
    ):
        entries.append(generated(name, "index", render_template(template, context).encode()))
    hashes = {e.path: e.sha256() for e in entries}
    if "lineage" in parts:
        data = json_bytes(_manifest(run, facts, parts, weights, entries, hashes))
        entries.append(generated(MANIFEST_FILE, "lineage", data))
        hashes[MANIFEST_FILE] = sha256_bytes(data)
    bad = [e.path for e in entries if not safe_name(e.path)]
    if bad:
        raise RunError(f"cannot package file name(s) {bad!r}")
    checksums = Entry(
        CHECKSUMS_FILE,
        "index",
        descriptions[CHECKSUMS_FILE],
        {"stage": HANDOFF_STAGE},
        data=_checksums(hashes),
    )
    entries.append(checksums)
    top = f"{run.name}-handoff"
    written = _write(out, entries, tarball, top, epoch(run.time))
    return PackageResult(
        path=out,
        format="tar.gz" if tarball else "directory",
        files=len(entries),
        total_bytes=written,
        weights=weights,
        parts=parts,
        checkpoint=facts.chosen["label"],
        root=top if tarball else "",
        warnings=tuple(facts.warnings),
    )


def _planned(entries: list[Entry], parts: Sequence[str]) -> list[tuple[str, str, str, int | None]]:
    """Every file of the package, generated ones included, named before they are rendered
    so that the index can list them: (path, part, description, size or None), sorted."""
    planned: list[tuple[str, str, str, int | None]] = [
        (e.path, e.part, e.description, e.size()) for e in entries
    ]
    if "model_card" in parts:
        planned.append((MODEL_CARD_FILE, "model_card", "Hugging Face model card", None))
    if "lineage" in parts:
        about = "Every file with sha256, size and what produced it"
        planned.append((MANIFEST_FILE, "lineage", about, None))
    planned += [
        ("index.html", "index", "The index as HTML, with the trajectory plot and samples", None),
        ("index.md", "index", "The index in Markdown", None),
        (CHECKSUMS_FILE, "index", "sha256 of every file (sha256sum format)", None),
    ]
    planned.sort()
    return planned


def _manifest(
    run: RunDir,
    facts: Facts,
    parts: Sequence[str],
    weights: str,
    entries: list[Entry],
    hashes: dict[str, str],
) -> dict[str, Any]:
    files = [
        {
            "path": e.path,
            "sha256": hashes[e.path],
            "bytes": e.size(),
            "part": e.part,
            "description": e.description,
            "source": e.source,
            "produced_by": e.producer,
        }
        for e in sorted(entries, key=lambda e: e.path)
    ]
    reward_meta = facts.reward["metadata"]
    return {
        "format": MANIFEST_FORMAT,
        "generator": f"rlhfspec {rlhfspec_version}",
        "run": {
            "run_id": run.lineage.get("run_id"),
            "name": run.name,
            "plan_fingerprint": run.plan["fingerprint"],
            "spec_sha256": run.plan["spec"]["sha256"],
            "seed": run.spec["seed"],
            "started": run.lineage.get("started"),
            "finished": run.time,
            "libraries": run.lineage.get("libraries"),
        },
        "parts": list(parts),
        "criteria": {
            "version": facts.criteria["version"],
            "sha256": facts.criteria["sha256"],
            "history": facts.criteria["history"],
        },
        "annotation_batches": facts.batches,
        "reward_model": {
            "version": facts.reward["version"],
            "version_is": "sha256 of models/reward_model/model.safetensors",
            "criteria_version": reward_meta.get("criteria_version"),
            "annotation_batches": reward_meta.get("annotation_batches"),
            "holdout": facts.reward["eval"].get("holdout", {}).get("accuracy"),
            "gates": reward_meta.get("gates", []),
        },
        "policy": {
            "method": facts.policy["method"],
            "start": facts.policy["start"],
            "base_model": facts.policy["base_model"],
            "kl": facts.policy["kl"],
            "final_kl_coef": facts.policy["final_kl_coef"],
        },
        "deployment_checkpoint": {
            **facts.chosen,
            "rule": facts.selection.get("rule"),
            "reason": facts.selection.get("reason"),
            "weights": weights,
        },
        "checks": "files copied from the run matched the sha256 lineage.json recorded for them; "
        "plan documents matched plan.json; gold items matched the plan's input sha256",
        "files": files,
    }


def _check_target(out: Path, tarball: bool) -> None:
    if tarball:
        if out.is_dir():
            raise RunError(f"{out} is a directory; a .tar.gz package must be a file")
        return
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / CHECKSUMS_FILE).is_file():
        raise RunError(
            f"{out} exists and is not a handoff package (no {CHECKSUMS_FILE}); "
            "choose another path or remove it"
        )


def _write(out: Path, entries: list[Entry], tarball: bool, top: str, mtime: int) -> int:
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tree = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise RunError(f"cannot write to {parent}: {exc.strerror or exc}") from None
    try:
        os.chmod(tree, 0o777 & ~_umask())
        _write_tree(tree, entries)
        if tarball:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                os.chmod(tmp, 0o666 & ~_umask())
                _write_tarball(tree, tmp, top, mtime)
                os.replace(tmp, out)
            finally:
                tmp.unlink(missing_ok=True)
            return out.stat().st_size
        total = sum(e.size() for e in entries)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.rename(out, old / "package")
            os.rename(tree, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tree, out)
        return total
    except OSError as exc:
        raise RunError(f"cannot write the handoff package {out}: {exc.strerror or exc}") from None
    finally:
        if tree.exists():
            shutil.rmtree(tree, ignore_errors=True)


def handoff_stage(ctx: StageContext) -> StageOutcome:
    """The plan's last stage: the package in `handoff/` or `handoff.tar.gz` of the run."""
    settings = ctx.settings["handoff"]
    fmt = settings["format"]
    rel = "handoff.tar.gz" if fmt == "tar.gz" else "handoff"
    result = build_package(
        ctx.run_dir,
        ctx.path(rel),
        weights=settings["weights"],
        spec_dir=ctx.project.folder,
        include=settings["include"],
    )
    for warning in result.warnings:
        ctx.log(f"warning: {warning}")
    index = f"{rel}/index.html" if fmt != "tar.gz" else f"{rel}:{result.root}/index.html"
    return StageOutcome(
        [rel],
        {
            "files": result.files,
            "bytes": result.total_bytes,
            "weights": result.weights,
            "format": result.format,
            "checkpoint": result.checkpoint,
            "parts": list(result.parts),
            "index": index,
        },
        summary=f"handoff package {ctx.path(rel)} ({result.files} files, {human_size(result.total_bytes)}); "
        f"index {ctx.path(rel) / 'index.html' if fmt != 'tar.gz' else result.index}",
    )
