"""`verify` reads packages with bounds and ends where the package ends (issue 15, class 3).

On main a 1.1 MB archive took 2.1 GB (tarfile reads pax and GNU long-name
headers whole), trailing garbage after the archive was accepted, and the
metadata files were read whole whatever their size.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from rlhfspec.common.errors import RunError
from rlhfspec.runtime.handoff import verify
from rlhfspec.runtime.handoff.verify import verify_package

BODY = b"hello\n"


def tar_bytes(*, pax_size: int | None = None, members: int = 1) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        names = [f"pkg/f{i}.txt" for i in range(members)]
        sums = "".join(f"{hashlib.sha256(BODY).hexdigest()}  {n[4:]}\n" for n in names).encode()
        for name, data in (("pkg/CHECKSUMS.sha256", sums), *((n, BODY) for n in names)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    if pax_size is not None:  # a pax header claiming pax_size bytes of records
        header = tarfile.TarInfo("././@PaxHeader")
        header.type = tarfile.XHDTYPE
        header.size = pax_size
        padded = -(-pax_size // 512) * 512
        raw = header.tobuf(format=tarfile.USTAR_FORMAT) + b"\0" * padded + raw
    return raw


def write(tmp_path: Path, data: bytes, name: str = "p.tar.gz") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(path: Path) -> str:
    with pytest.raises(RunError) as info:
        verify_package(path)
    assert info.value.exit_code == 1
    return info.value.message


def test_a_well_formed_archive_verifies(tmp_path: Path) -> None:
    result = verify_package(write(tmp_path, gzip.compress(tar_bytes())))
    assert result.ok and result.checked == 1


def test_trailing_garbage_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, gzip.compress(tar_bytes()) + b"GARBAGE" * 10)
    assert "not a readable tar.gz archive" in refused(path)


def test_a_second_gzip_member_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, gzip.compress(tar_bytes()) + gzip.compress(b"smuggled"))
    assert "data after the end of the archive" in refused(path)


def test_data_after_the_end_blocks_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, gzip.compress(tar_bytes() + b"x" * 100))
    assert "data after the end of the archive" in refused(path)


def test_corrupt_gzip_is_reported_as_corrupt(tmp_path: Path) -> None:
    data = bytearray(gzip.compress(tar_bytes()))
    data[-6] ^= 0xFF  # the CRC/length trailer: every member reads, the stream is corrupt
    message = refused(write(tmp_path, bytes(data)))
    assert "corrupt" in message and "missing" not in message


def test_huge_pax_header_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = write(tmp_path, gzip.compress(tar_bytes(pax_size=64 * 1024 * 1024)))
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    try:
        message = refused(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "an extended header of 67,108,864 bytes" in message
    assert peak < 8 * 1024 * 1024, f"verify used {peak:,} bytes"


def test_member_count_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "MAX_MEMBERS", 5)
    path = write(tmp_path, gzip.compress(tar_bytes(members=8)))
    assert "more than 5 members" in refused(path)
    folder = tmp_path / "dir"
    for i in range(8):
        (folder / f"d{i}").mkdir(parents=True)
    assert "more than 5 entries" in refused(folder)


def test_metadata_read_whole_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "MAX_METADATA_BYTES", 100)
    path = write(tmp_path, gzip.compress(tar_bytes(members=3)))
    assert "CHECKSUMS.sha256 is larger than" in refused(path)  # never read whole
