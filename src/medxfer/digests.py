"""SHA-256 digests of files and folders: what caches and registry archives are checked against."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_sha256", "path_sha256"]


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def path_sha256(path: str | Path) -> str:
    """SHA-256 of a file; of a folder, SHA-256 over its files' relative paths and digests, in sorted order."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a file nor a folder")
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{file_sha256(f)}\n".encode())
    return h.hexdigest()
