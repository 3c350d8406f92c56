"""medxfer-data fetch: a dataset's public archive downloaded (here from 127.0.0.1), every file checked against the
digests shipped with medxfer, placed where the dataset config reads it; idempotent, resumable, clear offline."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from medxfer.data import fetch
from medxfer.data.fetch import ARCHIVES, Archive, expected_files, fetch_dataset
from medxfer.data.tables import DataError

TOP = "Brain-Tumor-Classification-DataSet-master"


class _Server:
    """Serves files of one folder on 127.0.0.1, honouring HTTP range requests; counts the requests."""

    def __init__(self, folder: Path):
        served = self
        self.requests: list[dict[str, str]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the http.server interface)
                served.requests.append({"path": self.path, "range": self.headers.get("Range", "")})
                path = folder / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                self.wfile.write(data[start:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(folder: Path) -> _Server:
        servers.append(_Server(folder))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _zip(path: Path, files: dict[str, bytes | Path]) -> Path:
    """A zip laid out like GitHub's archive of the dataset: one top folder, a README beside the images."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{TOP}/README.md", "not an image\n")
        for rel, content in files.items():
            if isinstance(content, Path):
                zf.write(content, f"{TOP}/{rel}")
            else:
                zf.writestr(f"{TOP}/{rel}", content)
    return path


def _tiny(tmp_path: Path, monkeypatch) -> tuple[Path, dict[str, bytes]]:
    """A three-file dataset ``tiny`` with its own digest list, fetchable like brain_tumor."""
    files = {f"Training/c{i}/image({i}).jpg": bytes([i]) * (100 + i) for i in range(3)}
    digests = tmp_path / "tiny.sha256"
    digests.write_text("".join(f"{hashlib.sha256(b).hexdigest()}  tiny_folder/{rel}\n" for rel, b in files.items()))
    monkeypatch.setitem(ARCHIVES, "tiny", Archive(url="http://127.0.0.1:9/none.zip", digests=str(digests),
                                                  folder="tiny_folder", source="a test archive"))
    return digests, files


def test_shipped_digests_are_the_brain_tumor_files_of_the_config():
    expected = expected_files(ARCHIVES["brain_tumor"])
    assert len(expected) == 3264
    assert all(rel.startswith("brain_tumor_kaggle/Training/") or rel.startswith("brain_tumor_kaggle/Testing/")
               for rel in expected)
    # every image the paper's split files name is one of them (the config's root is the folder they go into)
    from medxfer.config import reference_dir

    for name in ("train_split_01.csv", "val_split_01.csv", "test.csv"):
        rows = Path(reference_dir("chaves2023/splits/brain_tumor"), name).read_text().splitlines()[1:]
        assert {r.rsplit(",", 1)[0].lstrip("/") for r in rows} <= set(expected), name


def test_brain_tumor_from_a_local_archive_is_verified_idempotent_and_resumable(real_data, tmp_path, serve):
    expected = expected_files(ARCHIVES["brain_tumor"])
    site = tmp_path / "site"
    site.mkdir()
    archive = _zip(site / "master.zip", {rel.split("/", 1)[1]: real_data / rel for rel in expected})
    server = serve(site)
    data_dir = tmp_path / "data"
    # a download that broke off halfway: the rerun continues it with a range request
    work = data_dir / fetch.WORK_FOLDER
    work.mkdir(parents=True)
    half = archive.stat().st_size // 2
    (work / "brain_tumor.zip.part").write_bytes(archive.read_bytes()[:half])
    env = {**os.environ, "MEDXFER_ROOT": str(tmp_path)}
    cmd = [sys.executable, "-m", "medxfer.cli.data", "fetch", "brain_tumor", f"paths.data_dir={data_dir}",
           f"fetch.url={server.url}/master.zip", f"paths.cache_dir={tmp_path}/cache", "progress=false"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert server.requests == [{"path": "/master.zip", "range": f"bytes={half}-"}]
    assert "3,264 files written and verified" in out.stdout
    for rel, digest in expected.items():
        assert hashlib.sha256((data_dir / rel).read_bytes()).hexdigest() == digest, rel
    assert not (data_dir / "brain_tumor_kaggle" / "README.md").exists() and not work.exists()
    # a rerun downloads nothing
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "nothing to download" in again.stdout and len(server.requests) == 1
    # the config reads what was fetched: the paper's splits resolve (no OOD set: named, not an error)
    from omegaconf import OmegaConf

    from conftest import compose_config
    from medxfer.data.datasets import load_dataset

    node = OmegaConf.to_container(compose_config("data", ["dataset=brain_tumor", f"paths.data_dir={data_dir}"]).dataset,
                                  resolve=True)
    data = load_dataset(node)
    assert (len(data.train), len(data.val), len(data.test), data.ood) == (2440, 430, 394, None)


def test_a_file_whose_digest_differs_is_not_written_and_named(tmp_path, serve, monkeypatch):
    _, files = _tiny(tmp_path, monkeypatch)
    site = tmp_path / "site"
    site.mkdir()
    bad = dict(files)
    bad["Training/c1/image(1).jpg"] = b"tampered"
    _zip(site / "tiny.zip", bad)
    server = serve(site)
    with pytest.raises(DataError, match=r"tiny_folder/Training/c1/image\(1\)\.jpg has SHA-256 .*not the"):
        fetch_dataset("tiny", tmp_path / "data", url=f"{server.url}/tiny.zip", progress=False)
    assert not (tmp_path / "data" / "tiny_folder/Training/c1/image(1).jpg").exists()
    assert not list((tmp_path / "data").rglob("*.medxfer-tmp"))


def test_only_missing_or_wrong_files_are_written(tmp_path, serve, monkeypatch):
    _, files = _tiny(tmp_path, monkeypatch)
    site = tmp_path / "site"
    site.mkdir()
    _zip(site / "tiny.zip", files)
    server = serve(site)
    root = tmp_path / "data"
    (root / "tiny_folder/Training/c0").mkdir(parents=True)
    (root / "tiny_folder/Training/c0/image(0).jpg").write_bytes(files["Training/c0/image(0).jpg"])
    (root / "tiny_folder/Training/c2").mkdir(parents=True)
    (root / "tiny_folder/Training/c2/image(2).jpg").write_bytes(b"an older, damaged copy")
    got = fetch_dataset("tiny", root, url=f"{server.url}/tiny.zip", progress=False)
    assert got == {"present": 1, "written": 2}
    assert all((root / "tiny_folder" / rel).read_bytes() == b for rel, b in files.items())


def test_offline_is_a_clear_error(tmp_path, monkeypatch):
    _tiny(tmp_path, monkeypatch)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match=rf"cannot download http://127\.0\.0\.1:{port}/tiny\.zip: .*needs internet access") as err:
        fetch_dataset("tiny", tmp_path / "data", url=f"http://127.0.0.1:{port}/tiny.zip", progress=False)
    assert "fetch.url=file:///" in err.value.hint


def test_a_dataset_behind_a_login_says_where_to_get_it(tmp_path):
    env = {**os.environ, "MEDXFER_ROOT": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "medxfer.cli.data", "fetch", "isic2019_ham10000",
                          f"paths.data_dir={tmp_path}"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2
    assert "'isic2019_ham10000' is not downloaded by medxfer" in out.stderr
    assert "https://challenge.isic-archive.com/data/#2019" in out.stderr and "brain_tumor" in out.stderr
    assert not list(tmp_path.rglob("*.jpg"))
