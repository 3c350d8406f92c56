"""A synthetic stand-in for the three medical tasks of Chaves et al. (2023).

No real medical data exists on development machines or in CI, so this module draws a small synthetic
benchmark with the same structure as the paper's tasks: the same class names, an out-of-distribution (OOD)
variant of each task that mimics the paper's OOD test set, and several images per synthetic patient so that
group-aware splitting matters.  None of it is real medical imagery, and results on it say nothing about
real clinical performance; it exists so that the whole pipeline (scoring, fine-tuning, analysis) can run
end to end and be tested.

========================  ===============================  ==============================================
task                      stands in for                    OOD variant stands in for
========================  ===============================  ==============================================
``synthetic_derm``        ISIC 2019 (dermoscopy)           PAD-UFES-20 (smartphone clinical photos)
``synthetic_histo``       BreakHis (H&E histopathology)    ICIAR 2018 (other lab: stain, magnification)
``synthetic_mri``         Kaggle brain-tumour MRI          NINS (another hospital and scanner)
========================  ===============================  ==============================================

A generated folder holds ``images/NNNNNN.png``, ``labels.csv`` (columns ``image,label,group``; ``image`` is
relative to the folder, ``group`` a synthetic patient id) and ``synthetic.json`` (the generation parameters).
Generation is deterministic, idempotent and atomic: see :func:`generate_synthetic`.  Same arguments give
byte-identical files on one machine and software stack; numpy's vectorised float32 maths may round
differently on another CPU or numpy version, so do not compare pixel hashes across machines.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from medxfer.data import _draw

#: Version of the drawing code; bump it whenever the images change, so old folders are not mistaken for new.
SYNTHETIC_VERSION = 1

_FORMAT = "medxfer-synthetic"
_LABELS = "labels.csv"
_META = "synthetic.json"
_IMAGES = "images"


@dataclass(frozen=True)
class SyntheticTask:
    """One synthetic task: its classes and how to draw a patient and an image.

    Attributes:
        name: task key in :data:`SYNTHETIC_TASKS`.
        classes: class names, in label order (sorted, so they match ``encode_labels``).
        image_mode: PIL mode of the PNG files (``"RGB"`` or ``"L"``).
        mimics: the real dataset the in-distribution images imitate.
        ood_mimics: the real OOD test set the ``ood=True`` images imitate.
        description: the visual class cues, in words.
        ood_description: the acquisition shift of the OOD variant, in words.
    """

    name: str
    classes: tuple[str, ...]
    image_mode: str
    mimics: str
    ood_mimics: str
    description: str
    ood_description: str
    patient: Callable[[np.random.Generator, int, bool], dict] = field(repr=False, compare=False)
    image: Callable[[np.random.Generator, dict, int, bool], np.ndarray] = field(repr=False, compare=False)

    @property
    def n_classes(self) -> int:
        return len(self.classes)


SYNTHETIC_TASKS: dict[str, SyntheticTask] = {
    "synthetic_derm": SyntheticTask(
        name="synthetic_derm",
        classes=("benign", "malignant"),
        image_mode="RGB",
        mimics="ISIC 2019 (dermoscopy)",
        ood_mimics="PAD-UFES-20 (smartphone clinical photographs)",
        description=(
            "Synthetic dermoscopy: a pigmented lesion on textured skin, sometimes with hairs, inside a "
            "dermoscope's circular field stop. Malignant lesions tend to be asymmetric, with irregular, "
            "sharper borders, colour variegation (dark brown, black, blue-grey veil, whitish regression) and a "
            "distorted pigment network; benign ones are symmetric, smooth-bordered and uniformly coloured. "
            "All cues come from one latent atypia score whose class distributions overlap."
        ),
        ood_description=(
            "No dermoscope vignette, lesion small and off-centre in the frame, uneven lighting and white "
            "balance, lower resolution (blur), sensor noise and JPEG compression, all skin tones equally likely."
        ),
        patient=_draw.derm_patient,
        image=_draw.derm_image,
    ),
    "synthetic_histo": SyntheticTask(
        name="synthetic_histo",
        classes=("benign", "malignant"),
        image_mode="RGB",
        mimics="BreakHis (H&E breast histopathology)",
        ood_mimics="ICIAR 2018 BACH (H&E from another lab)",
        description=(
            "Synthetic H&E patches rendered with the Beer-Lambert law from haematoxylin and eosin "
            "concentration maps: pink stroma with wavy collagen fibres and haematoxylin nuclei. Malignant "
            "patches have denser, clustered, larger, pleomorphic and hyperchromatic nuclei with nucleoli and "
            "few glands; benign patches have sparse small regular nuclei and glands (lumens lined by a row of "
            "nuclei). Atypia is a latent score with overlapping class distributions."
        ),
        ood_description=(
            "Other stain vectors (bluer haematoxylin, magenta eosin) and stain strengths, 1.3-1.6x higher "
            "magnification (bigger, fewer nuclei per patch), slight defocus blur and stronger grain."
        ),
        patient=_draw.histo_patient,
        image=_draw.histo_image,
    ),
    "synthetic_mri": SyntheticTask(
        name="synthetic_mri",
        classes=("glioma", "meningioma", "no_tumor", "pituitary"),
        image_mode="L",
        mimics="Kaggle brain tumour MRI (T1 contrast-enhanced axial slices)",
        ood_mimics="NINS (another hospital and scanner)",
        description=(
            "Synthetic 8-bit grayscale axial brain slices: scalp, skull, grey/white matter with sulci, "
            "ventricles. Glioma: irregular heterogeneous mass inside the parenchyma, ring enhancement or "
            "non-enhancing, necrotic core, oedema halo, mass effect on the ventricles. Meningioma: round, "
            "well-circumscribed, homogeneously bright mass against the inner skull. Pituitary: small bright "
            "mass on the midline near the skull base (lower centre). No tumour: normal anatomy (some normal "
            "heads show a small bright pituitary gland). Images of one patient are neighbouring slices."
        ),
        ood_description=(
            "Another contrast curve (gamma 0.5-0.72 or 1.4-1.9) and lower grey/white contrast, a strong bias "
            "field, 2-4x more Rician noise and a wider field of view (head 72-88 % of the usual size), more "
            "head rotation and shift."
        ),
        patient=_draw.mri_patient,
        image=_draw.mri_image,
    ),
}


def _task_key(task: str) -> int:
    return zlib.crc32(task.encode("utf-8"))


def _params(task: str, n_per_class: int, image_size: int, seed: int, ood: bool, images_per_group) -> dict:
    return {
        "format": _FORMAT,
        "version": SYNTHETIC_VERSION,
        "task": task,
        "n_per_class": int(n_per_class),
        "image_size": int(image_size),
        "seed": int(seed),
        "ood": bool(ood),
        "images_per_group": [int(images_per_group[0]), int(images_per_group[1])],
    }


def _check_args(task: str, n_per_class, image_size, seed, images_per_group) -> tuple[int, int]:
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; known tasks: {', '.join(sorted(SYNTHETIC_TASKS))}")
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise ValueError(f"n_per_class must be an integer >= 1, got {n_per_class!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    try:
        lo, hi = (int(v) for v in images_per_group)
    except (TypeError, ValueError):
        raise ValueError(f"images_per_group must be a pair (min, max) of integers, got {images_per_group!r}") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"images_per_group must satisfy 1 <= min <= max, got {images_per_group!r}")
    return lo, hi


def _read_meta(root: Path) -> dict | None:
    """The parameters stored in ``root``, None if ``root`` holds no dataset; ValueError if it is broken."""
    labels, meta = root / _LABELS, root / _META
    has_labels, has_meta = labels.is_file(), meta.is_file()
    if not has_labels and not has_meta:
        return None
    if not (has_labels and has_meta):
        missing = _META if has_labels else _LABELS
        raise ValueError(
            f"{root} is not a complete synthetic dataset ({missing} is missing); delete the folder or use another root"
        )
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{meta}: cannot read the synthetic dataset's parameters: {err}") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"{meta} does not describe a medxfer synthetic dataset; delete the folder or use another root")
    return data


def _check_same(root: Path, existing: dict, wanted: dict) -> None:
    diffs = [
        f"{k}={existing.get(k)!r} there, {wanted[k]!r} requested"
        for k in wanted
        if existing.get(k) != wanted[k]
    ]
    if diffs:
        raise ValueError(
            f"{root} already holds a synthetic dataset generated with other parameters ({'; '.join(diffs)}); "
            "delete the folder or choose another root"
        )


def _plan(task: str, n_per_class: int, seed: int, ood: bool, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """The synthetic patients as (class index, patient index within the class, number of images), shuffled."""
    t = SYNTHETIC_TASKS[task]
    key = _task_key(task)
    plan = []
    for c in range(t.n_classes):
        rng = np.random.default_rng([seed, int(ood), key, c, 0xC0FFEE])
        left, p = n_per_class, 0
        while left > 0:
            k = min(left, int(rng.integers(lo, hi + 1)))
            plan.append((c, p, k))
            left -= k
            p += 1
    # interleave the classes so image numbers and patient ids say nothing about the label
    order = np.random.default_rng([seed, int(ood), key, 0x5EED]).permutation(len(plan))
    return [plan[i] for i in order]


def _png_bytes(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def generate_synthetic(
    task: str,
    root: str | Path,
    *,
    n_per_class: int,
    image_size: int = 96,
    seed: int = 0,
    ood: bool = False,
    images_per_group: tuple[int, int] = (1, 3),
    progress: bool | str = "auto",
) -> Path:
    """Draw a synthetic dataset for ``task`` into ``root`` (idempotent) and return the path of its labels.csv.

    Args:
        task: a key of :data:`SYNTHETIC_TASKS` (``synthetic_derm``, ``synthetic_histo``, ``synthetic_mri``).
        root: output folder; it must not exist, be empty, or hold this very dataset.
        n_per_class: images per class (exact; the dataset is balanced).
        image_size: side of the square images in pixels (>= 16).
        seed: random seed; each image is drawn from ``default_rng([seed, ood, task, class, patient, image])``.
        ood: draw the out-of-distribution variant (other acquisition; a different random stream).
        images_per_group: (min, max) images per synthetic patient; the last patient of a class may have
            fewer than min when needed to reach exactly ``n_per_class``.
        progress: a tqdm progress bar: true, false or ``"auto"`` (on a terminal only).

    Returns:
        ``root / "labels.csv"``.  Columns: ``image`` (relative path, e.g. ``images/000123.png``), ``label``
        (class name) and ``group`` (synthetic patient id, e.g. ``p0042``; each patient has one class).

    If ``root`` already holds a dataset with the same parameters it is returned untouched; with other
    parameters a ValueError names the folder and the differences.  The dataset is written into a hidden
    sibling folder and moved into place with one ``os.replace``, so an interrupted run never leaves a folder
    that looks complete, and of two processes racing on the same root the loser keeps the winner's result.
    """
    lo, hi = _check_args(task, n_per_class, image_size, seed, images_per_group)
    t = SYNTHETIC_TASKS[task]
    root = Path(root)
    wanted = _params(task, n_per_class, image_size, seed, ood, (lo, hi))
    labels_path = root / _LABELS

    existing = _read_meta(root) if root.is_dir() else None
    if existing is not None:
        _check_same(root, existing, wanted)
        return labels_path
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root} exists and is not a folder; choose another root for the synthetic dataset")
    if root.is_dir() and any(root.iterdir()):
        raise ValueError(
            f"{root} is not empty but holds no synthetic dataset (no {_LABELS} and {_META}); "
            "delete it or choose another root"
        )

    target = Path(os.path.abspath(root))  # "." and "data/.." have a usable name and parent
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is an ordinary folder
        _write(t, tmp, wanted, progress)
        try:
            os.replace(tmp, target)  # atomic; replaces root only if it is missing or an empty folder
        except OSError:
            # Another process finished first (root is no longer empty): accept its result if it is ours.
            existing = _read_meta(root) if root.is_dir() else None
            if existing is None:
                raise
            _check_same(root, existing, wanted)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return labels_path


def _write(t: SyntheticTask, out: Path, params: dict, progress: bool | str) -> None:
    from tqdm import tqdm

    from medxfer.progress import show_progress

    n, size, seed, ood = params["n_per_class"], params["image_size"], params["seed"], params["ood"]
    lo, hi = params["images_per_group"]
    key = _task_key(t.name)
    plan = _plan(t.name, n, seed, ood, lo, hi)
    (out / _IMAGES).mkdir()
    rows = []
    desc = f"{t.name}{' (ood)' if ood else ''}"
    with tqdm(total=n * t.n_classes, desc=desc, unit="img", disable=not show_progress(progress, "dataset.synthetic.progress"),
              leave=False) as bar:
        for g, (c, p, k) in enumerate(plan):
            traits = t.patient(np.random.default_rng([seed, int(ood), key, c, p]), c, ood)
            for j in range(k):
                arr = t.image(np.random.default_rng([seed, int(ood), key, c, p, j + 1]), traits, size, ood)
                name = f"{_IMAGES}/{len(rows):06d}.png"
                (out / name).write_bytes(_png_bytes(arr, t.image_mode))
                rows.append((name, t.classes[c], f"p{g:04d}"))
                bar.update(1)
    with open(out / _LABELS, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("image", "label", "group"))
        w.writerows(rows)
    meta = dict(params)
    meta.update(
        classes=list(t.classes),
        image_mode=t.image_mode,
        n_images=len(rows),
        n_groups=len(plan),
        mimics=t.ood_mimics if ood else t.mimics,
        note="synthetic images drawn by medxfer.data.synthetic; not real medical data",
    )
    (out / _META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


__all__ = ["SYNTHETIC_TASKS", "SYNTHETIC_VERSION", "SyntheticTask", "generate_synthetic"]
