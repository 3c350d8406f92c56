"""Dense linear algebra shared by the scores: device choice, Gram matrices, sorted eigendecompositions.

The scores work on float64 torch tensors on the chosen device (CPU unless the caller passes ``device``), and
on the CPU they adapt their thread count to how busy the machine is.  torch is imported lazily so that
``import medxfer.scores`` stays quick.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

from medxfer.scores.errors import ScoreError

if TYPE_CHECKING:
    import torch

__all__ = [
    "eigh_ascending",
    "eigh_descending",
    "flip_signs_like_sklearn",
    "gram",
    "limited_threads",
    "resolve_device",
    "threads_for_synchronised_work",
]

_PROBE = None  # a fixed 384 x 384 matrix, made on first use


@contextmanager
def limited_threads(device: "torch.device", threads: int = 1) -> Iterator[None]:
    """Run torch CPU work inside the block with at most ``threads`` intra-op threads (no-op off the CPU).

    For sequences of small operations: each opens a parallel region whose barrier, when other processes keep
    the cores busy, waits a scheduler time slice for a descheduled thread.
    """
    import torch

    before = torch.get_num_threads()
    if device.type != "cpu" or threads >= before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def threads_for_synchronised_work(device: "torch.device") -> int:
    """On the CPU, torch's thread count if several threads currently run faster than one, else 1.

    The eigendecomposition (its tridiagonal reduction synchronises the threads at every column) and the EM's
    repeated products suffer most when other processes keep the cores busy: a 2048 x 2048 eigh takes 0.9 s
    with two threads on idle cores, 5-30 s with two threads on busy ones, and 1.9 s with one thread in either
    case.  A 384 x 384 matrix product timed with both settings (about 15 ms, 0.15 s when busy) tells which case
    we are in now.  Thread counts change rounding only (about 1e-16 relative); with torch set to one thread
    (the score stage's reproducible mode) nothing is probed.
    """
    import torch

    threads = torch.get_num_threads()
    if threads == 1 or device.type != "cpu":
        return threads
    global _PROBE
    if _PROBE is None:
        _PROBE = torch.rand((384, 384), dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def timed(n: int) -> float:
        with limited_threads(_PROBE.device, n):
            start = time.perf_counter()
            _PROBE @ _PROBE
            return time.perf_counter() - start

    def several_threads_help() -> bool:
        ones, manys = zip(*[(timed(1), timed(threads)) for _ in range(3)])  # interleaved; medians resist luck
        return sorted(manys)[1] < 0.9 * sorted(ones)[1]

    if several_threads_help():
        return threads
    # NumPy's OpenBLAS threads keep spinning for up to ~0.1 s after a call (the Gram matrix comes just before the
    # eigendecomposition) and look like another busy process: ask again once they have gone to sleep.
    time.sleep(0.1)
    return threads if several_threads_help() else 1


def resolve_device(device) -> "torch.device":
    """``None`` means the CPU; anything else is passed to :class:`torch.device` and must exist."""
    import torch

    if device is None:
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ScoreError(
            f"device={str(device)!r} was requested but torch sees no CUDA device; pass device=None to use the CPU"
        )
    return resolved


def gram(a: "torch.Tensor") -> "torch.Tensor":
    """``a.T @ a`` for a 2-D float64 tensor.

    On the CPU this goes through NumPy, whose matmul recognises ``a.T @ a`` and calls BLAS ``syrk``: half the
    flops of a general product, and an exactly symmetric result.  Elsewhere it is a plain torch product,
    symmetrised.
    """
    import torch

    if a.device.type == "cpu":
        a_np = a.numpy()
        return torch.from_numpy(a_np.T @ a_np)
    product = a.T @ a
    return (product + product.T) / 2


def flip_signs_like_sklearn(vectors: "torch.Tensor") -> "torch.Tensor":
    """Give each column the sign that makes its largest-magnitude entry positive.

    This is scikit-learn's ``svd_flip(u_based_decision=False)`` convention for PCA components, so projections
    match ``PCA.fit_transform`` coordinate for coordinate (the first maximum wins ties, as in NumPy).
    """
    import torch

    rows = torch.argmax(vectors.abs(), dim=0)
    signs = torch.sign(vectors[rows, torch.arange(vectors.shape[1], device=vectors.device)])
    signs[signs == 0] = 1.0
    return vectors * signs


def eigh_descending(symmetric: "torch.Tensor", threads: int | None = None) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Eigenvalues in decreasing order and the matching eigenvectors (columns), signs as in scikit-learn's PCA.

    ``threads``: CPU threads for the decomposition; by default :func:`threads_for_synchronised_work` decides.
    """
    import torch

    if threads is None:
        threads = threads_for_synchronised_work(symmetric.device)
    values, vectors = eigh_ascending(symmetric, threads, "the feature covariance")
    values = torch.flip(values, dims=(0,))
    vectors = torch.flip(vectors, dims=(1,))
    return values, flip_signs_like_sklearn(vectors)


def eigh_ascending(symmetric: "torch.Tensor", threads: int, what: str) -> tuple["torch.Tensor", "torch.Tensor"]:
    """``torch.linalg.eigh`` (eigenvalues increasing, eigenvectors as columns, signs as LAPACK returns them) on at
    most ``threads`` CPU threads; a failure is a :class:`ScoreError` naming ``what`` was decomposed."""
    import torch

    with limited_threads(symmetric.device, threads):
        try:
            return torch.linalg.eigh(symmetric)
        except RuntimeError as err:  # torch.linalg.LinAlgError derives from RuntimeError
            raise ScoreError(f"the eigendecomposition of {what} failed ({err})") from err
