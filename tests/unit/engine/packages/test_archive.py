"""Archives: pack writes one top folder; hostile archives are refused before extraction."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from headrace.engine.packages.archive import (
    ArchiveError,
    ArchiveLimits,
    check_archive,
    extract,
    pack,
)
from tests.unit.engine.packages.helpers import MANIFEST, file_member, tar_bytes


def test_pack_writes_one_top_folder_and_skips_caches(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "package.toml").write_bytes(MANIFEST)
    (src / "nodes.py").write_text("X = 1\n")
    (src / "lib" / "__init__.py").write_text("")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "nodes.cpython-311.pyc").write_bytes(b"\0")
    target = pack(src, "p", "1.0", tmp_path)
    assert target.name == "p-1.0.tar.gz"
    with tarfile.open(target) as archive:
        names = sorted(archive.getnames())
    assert names == ["p-1.0/lib/__init__.py", "p-1.0/nodes.py", "p-1.0/package.toml"]
    out = extract(target.read_bytes(), tmp_path / "out")
    assert out == tmp_path / "out" / "p-1.0"
    assert (out / "nodes.py").read_text() == "X = 1\n"


def test_pack_refuses_symlinks(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "package.toml").write_bytes(MANIFEST)
    (src / "evil.py").symlink_to("/etc/passwd")
    with pytest.raises(ArchiveError, match=r"evil\.py: symbolic links cannot be packed"):
        pack(src, "p", "1.0", tmp_path)


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


HOSTILE = {
    "traversal": ([file_member("p-1.0/../../evil.py", b"x")], "path leaves the package"),
    "absolute": ([file_member("/tmp/evil.py", b"x")], "absolute path"),
    "symlink": ([_link("p-1.0/nodes.py", "/etc/passwd", tarfile.SYMTYPE)], "links are not allowed"),
    "hardlink": (
        [_link("p-1.0/nodes.py", "/etc/passwd", tarfile.LNKTYPE)],
        "links are not allowed",
    ),
    "device": ([_special("p-1.0/dev", tarfile.CHRTYPE)], "devices and FIFOs are not allowed"),
    "fifo": ([_special("p-1.0/fifo", tarfile.FIFOTYPE)], "devices and FIFOs are not allowed"),
    "two tops": ([file_member("a/x.py", b"x"), file_member("b/y.py", b"y")], "one top folder"),
    "no manifest": ([file_member("p-1.0/nodes.py", b"x")], "no p-1.0/package.toml"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_before_anything_is_written(case: str, tmp_path: Path) -> None:
    members, reason = HOSTILE[case]
    manifest = (
        [] if case in ("no manifest", "two tops") else [file_member("p-1.0/package.toml", MANIFEST)]
    )
    data = tar_bytes(manifest + members)
    target = tmp_path / "out"
    with pytest.raises(ArchiveError) as refused:
        extract(data, target)
    assert any(reason in r for r in refused.value.reasons), refused.value.reasons
    assert not target.exists()  # checked before extraction: nothing on disk
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_oversized_compressed_archive_is_refused(tmp_path: Path) -> None:
    data = tar_bytes([file_member("p-1.0/package.toml", MANIFEST)])
    with pytest.raises(ArchiveError, match=f"archive is {len(data)} bytes; the limit is 100"):
        check_archive(data, ArchiveLimits(max_archive_bytes=100))


def test_gzip_bomb_is_refused_by_the_extracted_size_limit(tmp_path: Path) -> None:
    zeros = bytes(4 * 1024 * 1024)  # 4 MiB of zeros: a few KiB compressed
    data = tar_bytes([file_member("p-1.0/package.toml", MANIFEST), file_member("p-1.0/z", zeros)])
    assert len(data) < 64 * 1024
    with pytest.raises(ArchiveError, match="extracted size is over 1048576 bytes"):
        extract(data, tmp_path / "out", ArchiveLimits(max_extracted_bytes=1024 * 1024))
    assert not (tmp_path / "out").exists()


def test_too_many_members_and_garbage_are_refused() -> None:
    many = [file_member(f"p-1.0/f{i}", b"") for i in range(12)]
    with pytest.raises(ArchiveError, match="more than 10 members"):
        check_archive(tar_bytes(many), ArchiveLimits(max_members=10))
    with pytest.raises(ArchiveError, match=r"not a readable \.tar\.gz archive"):
        check_archive(b"this is not an archive")
