"""``medxfer-data fetch <dataset>``: download a public dataset archive and place its images where the dataset
config reads them, every file checked against SHA-256 digests shipped with medxfer.

Only datasets with a public archive that needs no login are fetched (:data:`ARCHIVES`); for the others the
command says where to get them (the config's ``download_hint``). The work is idempotent (files already there with
the right digest are neither downloaded nor written again; when all are there, nothing is downloaded) and
resumable (the archive is downloaded to ``<root>/.medxfer-fetch/<dataset>.zip.part`` and a rerun continues it
with an HTTP range request). A file is written under a temporary name, checked, then renamed: a reader never sees
a half-written or unverified image.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from medxfer.config import reference_dir
from medxfer.data.tables import DataError
from medxfer.digests import FileDigests, file_sha256
from medxfer.progress import show_progress


@dataclass(frozen=True)
class Archive:
    """A public zip archive of a dataset.

    Attributes:
        url: where to download it.
        digests: the digest list, under ``medxfer/reference`` unless absolute (``<sha256>  <path under the
            dataset root>`` lines, the format of ``sha256sum``).
        folder: the folder under the dataset root that the archive's top folder becomes.
        source: what the archive is, for messages.
    """

    url: str
    digests: str
    folder: str
    source: str


#: The datasets ``medxfer-data fetch`` downloads, by dataset config name.
ARCHIVES = {
    # the dataset authors' own upload; the digests are those of commit 3ea9f4e (branch master), the Kaggle bytes
    "brain_tumor": Archive(
        url="https://github.com/SartajBhuvaji/Brain-Tumor-Classification-DataSet/archive/refs/heads/master.zip",
        digests="datasets/brain_tumor_kaggle.sha256",
        folder="brain_tumor_kaggle",
        source="github.com/SartajBhuvaji/Brain-Tumor-Classification-DataSet (commit 3ea9f4e; MIT, Bhuvaji et al. 2020)",
    ),
}
WORK_FOLDER = ".medxfer-fetch"
BLOCK = 1 << 20


def expected_files(archive: Archive) -> dict[str, str]:
    """Path under the dataset root -> SHA-256, from the digest list shipped with medxfer."""
    path = Path(archive.digests)
    path = path if path.is_absolute() else Path(reference_dir(archive.digests))
    out = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            digest, _, rel = line.partition("  ")
            if len(digest) != 64 or not rel:
                raise DataError(f"{path} line {n}: not '<sha256>  <path>'")
            out[rel] = digest
    return out


def not_fetchable(dataset: str, hint: str | None) -> DataError:
    """The error for a dataset medxfer does not download: where to get it instead."""
    known = ", ".join(sorted(ARCHIVES))
    where = hint or "its dataset config (conf/dataset) says where to get it"
    return DataError(
        f"dataset {dataset!r} is not downloaded by medxfer (it needs a login, or has no public archive with pinned "
        f"digests). Get it here: {where}",
        hint=f"medxfer-data fetch downloads: {known}",
    )


def fetch_dataset(dataset: str, root: str | Path, *, url: str | None = None, progress: object = "auto",
                  digests: FileDigests | None = None, hint: str | None = None) -> dict[str, int]:
    """Download ``dataset``'s archive (``url`` overrides the pinned address, e.g. a mirror) and place every file
    of its digest list under ``root``, checked. Returns ``{"present": files already there and right,
    "written": files extracted now}``. ``digests``: the per-file digest memo (a rerun stats files, not reads).
    Errors name the URL (offline), the file whose digest differs, or the file the archive lacks."""
    if dataset not in ARCHIVES:
        raise not_fetchable(dataset, hint)
    archive = ARCHIVES[dataset]
    root = Path(root).expanduser()
    expected = expected_files(archive)
    todo = _missing_or_wrong(root, expected, digests or FileDigests(None))
    if not todo:
        print(f"{dataset}: all {len(expected):,} files present and verified under {root}; nothing to download")
        return {"present": len(expected), "written": 0}
    print(f"{dataset}: {len(todo):,} of {len(expected):,} files to fetch into {root / archive.folder}")
    work = root / WORK_FOLDER
    work.mkdir(parents=True, exist_ok=True)
    zip_path = work / f"{dataset}.zip"
    if not zip_path.is_file():
        _download(url or archive.url, zip_path, progress, archive.source)
    try:
        written = _extract(zip_path, root, archive.folder, {rel: expected[rel] for rel in todo}, progress)
    except zipfile.BadZipFile as err:
        zip_path.unlink()  # a damaged download: the next run downloads it again
        raise DataError(f"{zip_path}: not a readable zip archive ({err}); removed, run the command again") from None
    zip_path.unlink()
    shutil.rmtree(work, ignore_errors=True)
    print(f"{dataset}: {written:,} files written and verified under {root / archive.folder}")
    return {"present": len(expected) - len(todo), "written": written}


def _missing_or_wrong(root: Path, expected: dict[str, str], digests: FileDigests) -> list[str]:
    present = [rel for rel in expected if (root / rel).is_file()]
    found = dict(zip(present, digests.many([root / rel for rel in present]))) if present else {}
    return [rel for rel in expected if found.get(rel) != expected[rel]]


def _download(url: str, dest: Path, progress: object, source: str) -> None:
    """``url`` to ``dest``, through ``dest.part``: a rerun continues a partial download (HTTP range request)."""
    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")
    done = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416 and done:  # the part file already holds the whole archive
            os.replace(part, dest)
            return
        raise DataError(f"cannot download {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DataError(
            f"cannot download {url}: {reason}. medxfer-data fetch needs internet access",
            hint=f"offline, download the archive on a machine with internet ({source}) and pass it as "
                 "fetch.url=file:///path/to/archive.zip, or copy the images under dataset.root",
        ) from None
    with response:
        if done and response.status != 206:  # the server ignored the range: start over
            done = 0
        total = response.headers.get("Content-Length")
        total = int(total) + done if total else None
        with open(part, "ab" if done else "wb") as out, tqdm(
                total=total, initial=done, unit="B", unit_scale=True, desc=f"download {dest.name}",
                disable=not show_progress(progress)) as bar:
            try:
                for block in iter(lambda: response.read(BLOCK), b""):
                    out.write(block)
                    bar.update(len(block))
            except OSError as err:
                raise DataError(f"download of {url} broke off ({err}); run the command again to continue it") from None
    if total is not None and part.stat().st_size != total:
        raise DataError(f"download of {url} ended early ({part.stat().st_size:,} of {total:,} bytes); run the "
                        "command again to continue it")
    os.replace(part, dest)


def _extract(zip_path: Path, root: Path, folder: str, wanted: dict[str, str], progress: object) -> int:
    """Write the members of ``zip_path`` that ``wanted`` lists (the archive's top folder becomes ``folder``),
    each checked against its digest before it gets its name."""
    from tqdm import tqdm

    with zipfile.ZipFile(zip_path) as zf:
        members = {}
        for info in zf.infolist():
            parts = info.filename.split("/", 1)
            if len(parts) == 2 and parts[1] and not info.is_dir():
                members[f"{folder}/{parts[1]}"] = info
        lacking = [rel for rel in wanted if rel not in members]
        if lacking:
            raise DataError(f"{zip_path}: the archive lacks {len(lacking)} of the {len(wanted):,} files to fetch, "
                            f"e.g. {lacking[0]}; is it the right archive (fetch.url)?")
        written = 0
        for rel in tqdm(sorted(wanted), unit="file", desc="verify", disable=not show_progress(progress)):
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".medxfer-tmp")
            with zf.open(members[rel]) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, BLOCK)
            got = file_sha256(tmp)
            if got != wanted[rel]:
                tmp.unlink()
                raise DataError(f"{zip_path}: {rel} has SHA-256 {got}, not the {wanted[rel]} medxfer expects; "
                                "the archive is not the pinned dataset (fetch.url?); that file was not written")
            os.replace(tmp, dest)
            written += 1
    return written
