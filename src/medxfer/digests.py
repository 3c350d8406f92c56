"""SHA-256 digests of files and folders: what caches and registry archives are checked against."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

__all__ = ["FileDigests", "digest_store", "file_sha256", "hash_parts", "path_sha256", "published_with_checksum"]


def hash_parts(parts: Any, length: int = 16) -> str:
    """A short stable hash of a JSON-able description: the one way medxfer turns a description into an identity
    or a cache key (cells, the analysis run, the feature and decoded-image caches, the zoo's conversions)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:length]


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


@contextlib.contextmanager
def published_with_checksum(tmp: str | Path, path: Path) -> "Iterator[None]":
    """Publish the file the block writes at ``tmp`` (in ``path``'s folder) as ``path``, with its SHA-256 in
    ``path.with_suffix('.sha256')``: checksum first, then one atomic rename each, so a reader never sees a half
    file; on an error nothing is published and the temporary files are removed (the caches' write)."""
    tmp = str(tmp)
    try:
        yield
        Path(tmp + ".sha256").write_text(file_sha256(tmp) + "\n")
        os.replace(tmp + ".sha256", path.with_suffix(".sha256"))
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp + ".sha256"):
            if os.path.exists(leftover):
                os.unlink(leftover)


class FileDigests:
    """SHA-256 of many files, remembered by (resolved path, size, modification time) in a small SQLite file so
    that a second look at an unchanged file costs a ``stat``, not a read. A moved or copied file is read again
    (its path is new) and gets the same digest; an edited one gets a new digest. With ``db=None``, or when the
    database cannot be written, every file is read."""

    def __init__(self, db: str | Path | None):
        self._conn = None
        if db is not None:
            import sqlite3

            try:
                Path(db).parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(str(db), timeout=60)
                self._conn.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, size INTEGER, "
                                   "mtime_ns INTEGER, sha256 TEXT)")
            except (OSError, sqlite3.Error):  # a read-only cache: correct, only slower
                self._conn = None

    def many(self, paths: "list[str | Path] | tuple[str | Path, ...]") -> list[str]:
        """The digests of ``paths``, in order. A missing file raises FileNotFoundError naming it."""
        stats = []
        for p in paths:
            resolved = str(Path(p).resolve())
            st = os.stat(resolved)
            stats.append((resolved, st.st_size, st.st_mtime_ns))
        known: dict[str, tuple[int, int, str]] = {}
        if self._conn is not None:
            import sqlite3

            try:
                for i in range(0, len(stats), 500):
                    chunk = [s[0] for s in stats[i:i + 500]]
                    rows = self._conn.execute(
                        f"SELECT path, size, mtime_ns, sha256 FROM digests WHERE path IN ({','.join('?' * len(chunk))})", chunk)
                    known.update({r[0]: (r[1], r[2], r[3]) for r in rows})
            except sqlite3.Error:
                known = {}
        out, new = [], []
        for path, size, mtime in stats:
            hit = known.get(path)
            if hit is not None and hit[0] == size and hit[1] == mtime:
                out.append(hit[2])
            else:
                digest = file_sha256(path)
                out.append(digest)
                new.append((path, size, mtime, digest))
        if new and self._conn is not None:
            import sqlite3

            try:
                with self._conn:
                    self._conn.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?)", new)
            except sqlite3.Error:
                pass
        return out

    def file(self, path: str | Path) -> str:
        """The digest of one file."""
        return self.many([path])[0]


def digest_store(cache_dir: str | Path | None) -> FileDigests:
    """The per-file digest memo of a project: ``<cache_dir>/digests.sqlite``."""
    return FileDigests(Path(cache_dir) / "digests.sqlite" if cache_dir else None)
