"""`rlhfspec verify PACKAGE`: re-hash every file of a package (directory or tarball) and report
missing, extra and altered files.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from rlhfspec.common.errors import RunError
from rlhfspec.common.hashing import sha256_file
from rlhfspec.common.jsonl import JsonProblem, parse_json
from rlhfspec.runtime.handoff.layout import (
    CHECKSUMS_FILE,
    MANIFEST_FILE,
    MAX_METADATA_BYTES,
    REFERENCE_FILE,
    safe_name,
)

_CHECKSUM_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


@dataclass
class VerifyResult:
    """The outcome of `verify_package`: anything missing, extra or altered fails it."""

    package: Path
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.altered or self.problems)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def lines(self) -> list[str]:
        """One line per finding, then a verdict: what `rlhfspec verify` prints."""
        out = [f"missing: {p}" for p in self.missing]
        out += [f"extra: {p}" for p in self.extra]
        out += [f"altered: {p}" for p in self.altered]
        out += [f"problem: {p}" for p in self.problems]
        out += self.details
        if self.ok:
            out.append(f"{self.package}: OK, {self.checked} files match their checksums")
        else:
            out.append(
                f"{self.package}: FAILED, {len(self.missing)} missing, {len(self.extra)} extra, "
                f"{len(self.altered)} altered, {len(self.problems)} other problem(s) "
                f"in {self.checked} files checked"
            )
        return out


@dataclass
class _Found:
    sha256: str
    size: int
    data: bytes | None  # kept for the three files verification reads


_KEEP = (CHECKSUMS_FILE, MANIFEST_FILE, REFERENCE_FILE)


#: bounds on what verification reads: metadata files are read whole (MAX_METADATA_BYTES),
#: tar headers (GNU long names, pax records) are read whole by tarfile, members are counted
MAX_HEADER_BYTES = 1024 * 1024
MAX_MEMBERS = 100_000


def _hash_keep(handle: IO[bytes], keep: bool, name: str, problems: list[str]) -> _Found:
    """Hash a member in chunks; keep its bytes (up to MAX_METADATA_BYTES) when verification
    reads it whole."""
    digest = hashlib.sha256()
    size = 0
    kept: list[bytes] | None = [] if keep else None
    while chunk := handle.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
        if kept is not None:
            kept.append(chunk)
            if size > MAX_METADATA_BYTES:
                problems.append(f"{name} is larger than {MAX_METADATA_BYTES // 2**20} MiB")
                kept = None
    return _Found(digest.hexdigest(), size, None if kept is None else b"".join(kept))


def _scan_directory(root: Path, problems: list[str]) -> dict[str, _Found]:
    found: dict[str, _Found] = {}
    for count, path in enumerate(sorted(root.rglob("*"))):
        if count >= MAX_MEMBERS:
            raise RunError(f"{root}: more than {MAX_MEMBERS:,} entries; not a handoff package")
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            problems.append(f"{rel} is a symbolic link; a package holds plain files only")
        elif path.is_file():
            with path.open("rb") as handle:
                found[rel] = _hash_keep(handle, rel in _KEEP, rel, problems)
        elif not path.is_dir():
            problems.append(f"{rel} is not a regular file")
    return found


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile reads GNU long-name and pax headers whole: refuse large ones before reading."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        extended = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE)
        if (self.type in extended or self.type == tarfile.XGLTYPE) and self.size > MAX_HEADER_BYTES:
            raise tarfile.HeaderError(
                f"an extended header of {self.size:,} bytes (at most {MAX_HEADER_BYTES:,})"
            )
        member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return member


def _check_end(gz: gzip.GzipFile, tar: tarfile.TarFile) -> None:
    """After the last member only the end-of-archive zero blocks may follow, then the end
    of the gzip stream: trailing data (or a second gzip member) is not part of the package."""
    gz.seek(tar.offset)
    while chunk := gz.read(1 << 20):
        if chunk.strip(b"\0"):
            raise tarfile.ReadError("data after the end of the archive")


def _tar_members(path: Path, problems: list[str]) -> dict[str, _Found]:
    members: dict[str, _Found] = {}
    with (
        gzip.open(path, "rb") as gz,
        tarfile.open(fileobj=gz, mode="r:", tarinfo=_BoundedTarInfo) as tar,
    ):
        for count, member in enumerate(tar):
            if count >= MAX_MEMBERS:
                raise tarfile.ReadError(f"more than {MAX_MEMBERS:,} members")
            name = member.name.rstrip("/")
            if not safe_name(name):
                problems.append(f"{member.name[:200]!r}: unsafe path in the archive")
                continue
            if member.isdir():
                continue
            if not member.isreg():
                problems.append(f"{name} is not a regular file")
                continue
            if name in members:
                problems.append(f"{name} appears twice in the archive")
            handle = tar.extractfile(member)
            assert handle is not None
            keep = name.split("/", 1)[-1] in _KEEP or name in _KEEP
            members[name] = _hash_keep(handle, keep, name, problems)
        _check_end(gz, tar)
    return members


def _scan_tarball(path: Path, problems: list[str]) -> dict[str, _Found]:
    try:
        members = _tar_members(path, problems)
    except (tarfile.TarError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise RunError(
            f"{path}: not a readable tar.gz archive (corrupt, truncated or with trailing data): {exc}"
        ) from None
    if CHECKSUMS_FILE in members:
        return members
    roots = [n[: -len(CHECKSUMS_FILE) - 1] for n in members if n.endswith("/" + CHECKSUMS_FILE)]
    if len(roots) != 1 or "/" in roots[0]:
        return members  # no package folder: verification reports the missing checksums
    prefix = roots[0] + "/"
    return {
        n[len(prefix) :] if n.startswith(prefix) else f"(outside {roots[0]}/) {n}": found
        for n, found in members.items()
    }


def _parse_checksums(data: bytes, problems: list[str]) -> dict[str, str]:
    listed: dict[str, str] = {}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        problems.append(f"{CHECKSUMS_FILE} is not UTF-8 text")
        return listed
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _CHECKSUM_LINE.match(line)
        if match is None or not safe_name(match.group(2)):
            problems.append(f"{CHECKSUMS_FILE} line {number} is not `<sha256>  <path>`")
            continue
        digest, name = match.groups()
        if name in listed:
            problems.append(f"{CHECKSUMS_FILE} lists {name} twice")
        listed[name] = digest
    return listed


def verify_package(path: Path, *, run_dir: Path | None = None) -> VerifyResult:
    """Re-hash every file of a package (directory or .tar.gz) against its checksums.

    A file listed in `CHECKSUMS.sha256` but absent is missing; present but not listed is
    extra; with another sha256 (or, for the manifest, another size) it is altered. The
    manifest (`lineage/manifest.json`) must agree with the checksums file, so editing a file
    and its line in `CHECKSUMS.sha256` is still caught. With `run_dir`, the weights a
    `model/REFERENCE.json` points to are checked too. Raises RunError when the input cannot
    be read as a package at all.
    """
    result = VerifyResult(path)
    if not path.exists():
        raise RunError(f"{path}: no such file or directory", exit_code=2)
    if path.is_dir():
        found = _scan_directory(path, result.problems)
    elif path.is_file():
        found = _scan_tarball(path, result.problems)
    else:
        raise RunError(f"{path} is neither a directory nor a file")
    checksums = found.get(CHECKSUMS_FILE)
    if checksums is None:
        raise RunError(f"{path}: no {CHECKSUMS_FILE}; this is not a handoff package")
    if checksums.data is None:
        raise RunError(
            f"{path}: {CHECKSUMS_FILE} is larger than {MAX_METADATA_BYTES:,} bytes; "
            "this is not a handoff package"
        )
    listed = _parse_checksums(checksums.data, result.problems)
    for name in sorted(listed):
        got = found.get(name)
        if got is None:
            result.missing.append(name)
        elif got.sha256 != listed[name]:
            result.altered.append(name)
            result.details.append(
                f"  {name}: sha256 {got.sha256[:12]}, {CHECKSUMS_FILE} says {listed[name][:12]}"
            )
    result.extra = sorted(n for n in found if n != CHECKSUMS_FILE and n not in listed)
    result.checked = sum(1 for n in listed if n in found)
    manifest = found.get(MANIFEST_FILE)
    if MANIFEST_FILE in listed and manifest is not None and manifest.data is not None:
        _check_manifest(manifest.data, listed, found, result)
    reference = found.get(REFERENCE_FILE)
    if run_dir is not None and reference is not None and reference.data is not None:
        _check_reference(reference.data, run_dir, result)
    return result


def _check_manifest(
    data: bytes, listed: dict[str, str], found: dict[str, _Found], result: VerifyResult
) -> None:
    try:
        manifest = parse_json(data)
        files = {str(f["path"]): f for f in manifest["files"]}
    except (JsonProblem, KeyError, TypeError) as exc:
        result.problems.append(f"{MANIFEST_FILE} is not a readable manifest: {exc}")
        return
    for name, entry in sorted(files.items()):
        if name not in listed:
            result.problems.append(f"{MANIFEST_FILE} lists {name}, {CHECKSUMS_FILE} does not")
            continue
        got = found.get(name)
        if entry.get("sha256") != listed[name] or (
            got is not None and got.size != entry.get("bytes")
        ):
            if name not in result.altered:
                result.altered.append(name)
            result.details.append(f"  {name}: does not match {MANIFEST_FILE}")
    unlisted = sorted(n for n in listed if n not in files and n != MANIFEST_FILE)
    for name in unlisted:
        result.problems.append(f"{CHECKSUMS_FILE} lists {name}, {MANIFEST_FILE} does not")
    result.altered.sort()


def _check_reference(data: bytes, run_dir: Path, result: VerifyResult) -> None:
    try:
        reference = parse_json(data)
        files = list(reference["files"])
    except (JsonProblem, KeyError, TypeError) as exc:
        result.problems.append(f"{REFERENCE_FILE} is not readable: {exc}")
        return
    for item in files:
        rel = str(item["path"])
        shown = f"{rel} (referenced weights in {run_dir})"
        target = run_dir / rel
        if not safe_name(rel) or not target.is_file():
            result.missing.append(shown)
        elif sha256_file(target) != item["sha256"]:
            result.altered.append(shown)
