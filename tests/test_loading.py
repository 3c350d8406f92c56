"""Loader settings: ``num_workers: auto`` from the cores available, pinned memory only on a GPU, persistent
fine-tuning workers, and extraction with workers giving the same features as without."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medxfer.data.loading as loading
from medxfer.data.loading import resolve_num_workers, uses_gpu
from medxfer.data.tables import SampleTable
from medxfer.data.transforms import Preprocess
from medxfer.training.data import make_loader

P = Preprocess(32, 36, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _cores(monkeypatch, n: int) -> None:
    monkeypatch.setattr(loading.os, "sched_getaffinity", lambda pid: set(range(n)))


@pytest.mark.parametrize("cores, batches, expected", [(1, None, 0), (2, None, 1), (8, None, 7), (8, 3, 3), (8, 0, 0)])
def test_auto_is_one_worker_per_available_core_but_one(monkeypatch, cores, batches, expected):
    _cores(monkeypatch, cores)
    assert resolve_num_workers("auto", option="extract.num_workers", batches=batches) == expected


def test_an_integer_stays_and_bad_values_name_the_option(monkeypatch):
    _cores(monkeypatch, 1)
    assert resolve_num_workers(4, option="extract.num_workers", batches=2) == 4  # an explicit count is obeyed
    assert resolve_num_workers(0, option="extract.num_workers") == 0
    for bad in (-1, "many", 1.5, True):
        with pytest.raises(ValueError, match=r"finetune\.num_workers=.*expected an integer >= 0 or 'auto'"):
            resolve_num_workers(bad, option="finetune.num_workers")


def test_pinned_memory_only_on_a_gpu(monkeypatch):
    assert not uses_gpu("cpu")
    assert uses_gpu("gpu") and uses_gpu("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not uses_gpu("auto")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert uses_gpu("auto")


def _table(n: int = 10) -> SampleTable:
    rng = np.random.default_rng(0)
    return SampleTable(name="mem/train", labels=np.arange(n) % 2, class_names=("a", "b"),
                       images=rng.integers(0, 256, (n, 40, 48, 3), dtype=np.uint8))


def test_finetune_loader_workers_persist_and_pin_only_on_gpu(monkeypatch):
    _cores(monkeypatch, 4)
    train = make_loader(_table(), P, train=True, batch_size=4, num_workers="auto", accelerator="cpu")
    assert train.num_workers == 3 and train.persistent_workers and not train.pin_memory
    gpu = make_loader(_table(), P, train=False, batch_size=4, num_workers="auto", accelerator="gpu")
    assert gpu.pin_memory
    serial = make_loader(_table(), P, train=False, batch_size=4, num_workers=0)
    assert serial.num_workers == 0 and not serial.persistent_workers


def test_finetune_config_accepts_auto_and_refuses_nonsense():
    from medxfer.stages.finetune import FinetuneConfigError, check_finetune_config

    ft = {"keep": "best", "max_epochs": 1, "batch_size": 2, "num_workers": "auto", "checkpoint_dir": "/tmp/x",
          "memory_format": "channels_last"}
    check_finetune_config(ft)
    with pytest.raises(FinetuneConfigError, match=r"finetune\.num_workers=-2"):
        check_finetune_config({**ft, "num_workers": -2})


def test_extraction_with_workers_equals_serial_extraction():
    import timm

    from medxfer.models.extract import extract_features

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    table = _table(10)
    serial = extract_features(model, table, P, batch_size=4, num_workers=0, accelerator="cpu", progress=False)
    parallel = extract_features(model, table, P, batch_size=4, num_workers=2, accelerator="cpu", progress=False)
    np.testing.assert_array_equal(serial.features, parallel.features)
    np.testing.assert_array_equal(serial.labels, table.labels)
