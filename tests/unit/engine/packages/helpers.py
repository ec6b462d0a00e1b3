"""Building package directories and archives for the package tests."""

from __future__ import annotations

import io
import tarfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
EXAMPLES = REPO / "examples" / "packages"


def write_package(root: Path, name: str, version: str, manifest: str, **files: str) -> Path:
    """A package directory ``root/name`` with ``package.toml`` = [package] + ``manifest``."""
    directory = root / f"{name}-src-{version}"
    directory.mkdir(parents=True, exist_ok=True)
    head, _, tail = textwrap.dedent(manifest).partition("##")
    body = (
        f'{head}\n[package]\nname = "{name}"\nversion = "{version}"\n'
        f'description = "test package {name}"\n{tail}'
    )
    (directory / "package.toml").write_text(body)
    for filename, text in files.items():
        (
            directory / filename.replace("__", "/") if "/" in filename else directory / filename
        ).write_text(textwrap.dedent(text))
    return directory


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A .tar.gz of exactly these members (for hostile archives)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
            else:
                archive.addfile(info)
    return buffer.getvalue()


def file_member(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


MANIFEST = b'[package]\nname = "p"\nversion = "1.0"\ndescription = "x"\n'
