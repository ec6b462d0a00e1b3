"""Package archives: ``NAME-VERSION.tar.gz`` with one top folder ``NAME-VERSION/``.

``pack`` writes one from a package directory. ``check_archive`` reads only the member
headers and refuses, before anything is written to disk: archives over the compressed or
extracted size limits, too many members, absolute paths, ``..``, links, devices and FIFOs,
and members outside the single top folder. ``extract`` then extracts with tarfile's
``data`` filter as a second line of defence.
"""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from headrace.engine.packages.manifest import MANIFEST

MAX_ARCHIVE_BYTES = 16 * 1024 * 1024
MAX_EXTRACTED_BYTES = 64 * 1024 * 1024
MAX_MEMBERS = 2_000
SKIPPED = {"__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


class ArchiveError(ValueError):
    """The archive is refused; ``reasons`` lists every problem found."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True)
class ArchiveLimits:
    max_archive_bytes: int = MAX_ARCHIVE_BYTES
    max_extracted_bytes: int = MAX_EXTRACTED_BYTES
    max_members: int = MAX_MEMBERS


def _files(directory: Path) -> list[Path]:
    found = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part in SKIPPED for part in relative.parts) or path.suffix == ".pyc":
            continue
        if path.is_symlink():
            raise ArchiveError([f"{relative}: symbolic links cannot be packed"])
        if path.is_file():
            found.append(path)
    return found


def pack(directory: Path, name: str, version: str, out_dir: Path) -> Path:
    """Write ``out_dir/NAME-VERSION.tar.gz`` holding ``directory`` under ``NAME-VERSION/``."""
    top = f"{name}-{version}"
    target = out_dir / f"{top}.tar.gz"
    with tarfile.open(target, "w:gz") as archive:
        for path in _files(directory):
            info = archive.gettarinfo(
                str(path), arcname=f"{top}/{path.relative_to(directory).as_posix()}"
            )
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as handle:
                archive.addfile(info, handle)
    return target


def _member_problem(member: tarfile.TarInfo, top: str | None) -> str | None:
    name = member.name
    path = PurePosixPath(name)
    if name.startswith("/") or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return f"{name}: absolute path"
    if ".." in path.parts:
        return f"{name}: path leaves the package ('..')"
    if member.issym() or member.islnk():
        return f"{name}: links are not allowed (-> {member.linkname})"
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        return f"{name}: devices and FIFOs are not allowed"
    if not (member.isfile() or member.isdir()):
        return f"{name}: only regular files and directories are allowed"
    if top is not None and path.parts and path.parts[0] != top:
        return f"{name}: outside the top folder {top}/ (an archive holds one folder NAME-VERSION/)"
    return None


def check_archive(data: bytes, limits: ArchiveLimits = ArchiveLimits()) -> str:
    """The archive's top folder; ``ArchiveError`` with every problem otherwise."""
    if len(data) > limits.max_archive_bytes:
        raise ArchiveError(
            [f"archive is {len(data)} bytes; the limit is {limits.max_archive_bytes} bytes"]
        )
    reasons: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            members = []
            total = 0
            for member in archive:
                members.append(member)
                if len(members) > limits.max_members:
                    raise ArchiveError([f"more than {limits.max_members} members"])
                total += max(member.size, 0)
                if total > limits.max_extracted_bytes:
                    raise ArchiveError(
                        [
                            f"extracted size is over {limits.max_extracted_bytes} bytes "
                            "(the limit on extracted bytes)"
                        ]
                    )
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ArchiveError([f"not a readable .tar.gz archive: {error}"]) from None
    if not members:
        raise ArchiveError(["the archive is empty"])
    tops = {PurePosixPath(m.name).parts[0] for m in members if PurePosixPath(m.name).parts}
    top = next(iter(tops)) if len(tops) == 1 else None
    for member in members:
        problem = _member_problem(member, top)
        if problem:
            reasons.append(problem)
    if top is None and not reasons:
        reasons.append(
            f"expected one top folder NAME-VERSION/, found {', '.join(sorted(tops)) or 'none'}"
        )
    if top is not None and not any(m.name == f"{top}/{MANIFEST}" and m.isfile() for m in members):
        reasons.append(f"no {top}/{MANIFEST} in the archive")
    if reasons:
        raise ArchiveError(reasons)
    assert top is not None
    return top


def extract(data: bytes, target: Path, limits: ArchiveLimits = ArchiveLimits()) -> Path:
    """Check, then extract into ``target``; returns the package directory (the top folder)."""
    top = check_archive(data, limits)
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
        try:
            archive.extractall(target, filter="data")
        except tarfile.FilterError as error:
            raise ArchiveError([f"refused by the extraction filter: {error}"]) from None
    return target / top
