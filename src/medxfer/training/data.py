"""What fine-tuning needs from a dataset, checked up front, and its data loaders."""

from __future__ import annotations

import numpy as np
from torch.utils.data import DataLoader

from medxfer.data.loading import batches_of, resolve_num_workers, uses_gpu
from medxfer.data.tables import DataError, DatasetSplits, SampleTable
from medxfer.data.transforms import ImageDataset, Preprocess, eval_transform, train_transform


def check_trainable(data: DatasetSplits) -> None:
    """Refuse a dataset that fine-tuning cannot use, saying what is wrong and what to do.

    Needs: a non-empty validation split (it selects the evaluated checkpoint), a non-empty test split, and
    every class of the dataset present in the training split (the new head has one output per class).
    """
    for table, role in ((data.train, "training"), (data.val, "validation"), (data.test, "test")):
        if len(table) == 0:
            hint = (
                "the checkpoint with the lowest validation loss is the one evaluated, so fine-tuning needs one; "
                "give the dataset a validation split (dataset.split.val for CSV/folder/synthetic sources, a "
                "non-empty val_images array in a MedMNIST file)"
                if role == "validation" else f"fine-tuning needs a {role} split"
            )
            raise DataError(f"dataset {data.name!r}: the {role} split ({table.name}) is empty; {hint}")
    counts = np.bincount(data.train.labels, minlength=len(data.class_names))
    missing = [name for name, n in zip(data.class_names, counts) if n == 0]
    if missing:
        where = {
            split.name: split.class_counts() for split in (data.val, data.test, data.ood) if split is not None
        }
        raise DataError(
            f"dataset {data.name!r}: class(es) {missing} have no sample in the training split "
            f"({data.train.name}: {data.train.class_counts()}); they appear in {where}. The model cannot learn "
            "a class it never sees: merge or drop it (label_map in the dataset config), or re-split the data"
        )


def make_loader(table: SampleTable, preprocess: Preprocess, *, train: bool, batch_size: int, num_workers: int | str,
                accelerator: str = "cpu") -> DataLoader:
    """Training loader (paper's augmentation, shuffled) or evaluation loader (resize + centre crop, in order).

    ``num_workers``: loader processes or ``"auto"`` (:func:`medxfer.data.loading.resolve_num_workers`); they
    persist across epochs (no re-fork per epoch). Batches are pinned when ``accelerator`` runs on a GPU.
    """
    transform = train_transform(preprocess) if train else eval_transform(preprocess)
    # a last training batch of one sample would make BatchNorm fail on some backbones; drop it
    drop_last = train and len(table) % batch_size == 1 and len(table) > batch_size
    workers = resolve_num_workers(num_workers, option="finetune.num_workers", batches=batches_of(len(table), batch_size))
    return DataLoader(
        ImageDataset(table, transform, draft=preprocess.draft_size), batch_size=batch_size, shuffle=train, num_workers=workers,
        drop_last=drop_last, persistent_workers=workers > 0, pin_memory=uses_gpu(accelerator),
    )
