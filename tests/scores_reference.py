"""Straightforward reference implementations of the paper's seven scores.

These follow the paper's code (Chaves et al., DART 2023, ``transfer_metrics/``, itself taken from tllib and the
original authors) line by line, with three deliberate changes, each of which the fast library also makes:

* labels are re-encoded to 0..C-1 with ``np.unique`` (the paper's code takes the class count from ``max + 1``);
* features and probabilities are cast to float64 first (the paper's code computes H-Score's class means in the
  input precision and lets N-LEEP's mixture run on float32, where it can fail);
* GBC's PCA uses the exact ``svd_solver="covariance_eigh"``; the paper's code leaves scikit-learn's ``"auto"``,
  which picks an approximate randomized SVD once the data are larger than 500 x 500 and D > 1000 (GBC then
  depends on that approximation).  ``ref_gbc(..., svd_solver="auto")`` gives the paper's literal choice.

Nothing here is fast on purpose: the tests and ``benchmarks/scores.py`` compare ``medxfer.scores`` against it.
"""

from __future__ import annotations

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture

__all__ = [
    "REFERENCE_SCORES",
    "encode_labels",
    "limit_threads_for_small_problems",
    "reference_scores",
    "ref_gbc",
    "ref_hscore",
    "ref_leep",
    "ref_logme",
    "ref_nce",
    "ref_nleep",
    "ref_reg_hscore",
    "synthetic_scores_data",
]


def encode_labels(labels):
    """Labels of any sortable type -> (codes in 0..C-1, C)."""
    classes, codes = np.unique(np.asarray(labels), return_inverse=True)
    return codes.reshape(-1), len(classes)


def _class_mean_matrix(f, y, n_classes):
    g = np.zeros_like(f)
    for i in range(n_classes):
        g[y == i] = np.mean(f[y == i, :], axis=0)
    return g


def ref_hscore(features, labels):
    f = np.asarray(features, dtype=np.float64)
    y, n_classes = encode_labels(labels)
    covf = np.atleast_2d(np.cov(f, rowvar=False))  # D = 1 gives a 0-d array
    covg = np.atleast_2d(np.cov(_class_mean_matrix(f, y, n_classes), rowvar=False))
    return float(np.trace(np.dot(np.linalg.pinv(covf, rcond=1e-15), covg)))


def ref_reg_hscore(features, labels):
    f = np.asarray(features, dtype=np.float64)
    f = f - np.mean(f, axis=0, keepdims=True)
    y, n_classes = encode_labels(labels)
    cov = LedoitWolf(assume_centered=False).fit(f)
    alpha = cov.shrinkage_
    covg = np.atleast_2d(np.cov(_class_mean_matrix(f, y, n_classes), rowvar=False))
    return float(np.trace(np.dot(np.linalg.pinv(cov.covariance_, rcond=1e-15), (1 - alpha) * covg)))


def ref_nce_from_source_labels(source_labels, labels):
    y, c_t = encode_labels(labels)
    source_labels = np.asarray(source_labels)
    c_s = int(np.max(source_labels) + 1)
    n = len(source_labels)
    joint = np.zeros((c_t, c_s), dtype=float)
    for s, t in zip(source_labels, y):
        joint[int(t), int(s)] += 1.0 / n
    p_z = joint.sum(axis=0, keepdims=True)
    mask = p_z.reshape(-1) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        p_target_given_source = (joint / p_z).T
    p_target_given_source = p_target_given_source[mask] + 1e-20
    entropy_y_given_z = np.sum(-p_target_given_source * np.log(p_target_given_source), axis=1, keepdims=True)
    return float(-np.sum(entropy_y_given_z * p_z.reshape((-1, 1))[mask]))


def ref_nce(probs, labels):
    return ref_nce_from_source_labels(np.argmax(np.asarray(probs, dtype=np.float64), axis=1), labels)


def ref_leep(probs, labels):
    predictions = np.asarray(probs, dtype=np.float64)
    y, c_t = encode_labels(labels)
    n, c_s = predictions.shape
    normalized_prob = predictions / float(n)
    joint = np.zeros((c_t, c_s), dtype=float)
    for i in range(c_t):
        joint[i] = np.sum(normalized_prob[y == i], axis=0)
    p_target_given_source = (joint / joint.sum(axis=0, keepdims=True)).T
    empirical_prediction = predictions @ p_target_given_source
    empirical_prob = np.array([predict[label] for predict, label in zip(empirical_prediction, y)])
    return float(np.mean(np.log(empirical_prob)))


def ref_nleep_posteriors(features, labels):
    """PCA (80 % variance) + GaussianMixture(5 C) posteriors, as in the paper's code."""
    f = np.asarray(features, dtype=np.float64)
    _, n_classes = encode_labels(labels)
    features_pca = PCA(n_components=0.8, random_state=42).fit_transform(f)
    gmm = GaussianMixture(n_components=5 * n_classes, random_state=42).fit(features_pca)
    return gmm.predict_proba(features_pca)


def ref_nleep(features, labels):
    return ref_leep(ref_nleep_posteriors(features, labels), labels)


def _each_evidence(y_, f, fh, v, s, vh, n, d):
    alpha = 1.0
    beta = 1.0
    lam = alpha / beta
    tmp = vh @ (f @ y_)
    eps = 1e-7
    for _ in range(11):
        gamma = (s / (s + lam)).sum()
        m = v @ (tmp * beta / (alpha + beta * s))
        alpha_de = (m * m).sum()
        alpha = gamma / (alpha_de + eps)
        beta_de = ((y_ - fh @ m) ** 2).sum()
        beta = (n - gamma) / (beta_de + eps)
        new_lam = alpha / (beta + eps)
        if np.abs(new_lam - lam) / (lam + eps) < 0.01:
            break
        lam = new_lam
    evidence = (
        d / 2.0 * np.log(alpha)
        + n / 2.0 * np.log(beta)
        - 0.5 * np.sum(np.log(alpha + beta * s))
        - beta / 2.0 * beta_de
        - alpha / 2.0 * alpha_de
        - n / 2.0 * np.log(2 * np.pi)
    )
    return evidence / n


def ref_logme(features, labels):
    """LogME with the full D x D SVD of F^T F (the variant that is right for N < D)."""
    f = np.asarray(features, dtype=np.float64)
    y, n_classes = encode_labels(labels)
    fh = f
    f = f.transpose()
    d, n = f.shape
    v, s, vh = np.linalg.svd(f @ fh, full_matrices=True)
    evidences = [
        _each_evidence((y == i).astype(np.float64), f, fh, v, s, vh, n, d) for i in range(n_classes)
    ]
    return float(np.mean(evidences))


def ref_gbc(features, labels, n_components=None, svd_solver="covariance_eigh"):
    """GBC; ``n_components`` defaults to 64, or min(64, N - 1, D) when fewer are usable (the agreed fallback)."""
    f = np.asarray(features, dtype=np.float64)
    y, n_classes = encode_labels(labels)
    if n_components is None:
        n_components = min(64, f.shape[0] - 1, f.shape[1])
    features_pca = PCA(n_components=n_components, svd_solver=svd_solver, random_state=42).fit_transform(f)
    stats = []
    for c in range(n_classes):
        class_features = features_pca[y == c]
        variance = np.maximum(np.var(class_features, axis=0), 1e-4)
        stats.append((np.mean(class_features, axis=0), np.mean(variance)))
    total = 0.0
    for c1 in range(n_classes):
        row = []
        for c2 in range(n_classes):
            if c1 == c2:
                continue
            (mu1, s1), (mu2, s2) = stats[c1], stats[c2]
            avg = (s1 + s2) / 2
            distance = np.sum((mu1 - mu2) ** 2 / avg) / 8 + 0.5 * (np.log(avg) - 0.5 * np.log(s1) - 0.5 * np.log(s2))
            row.append(np.exp(-distance))
        total += np.sum(row)
    return float(-total)


REFERENCE_SCORES = {
    "hscore": lambda f, y, p: ref_hscore(f, y),
    "reg_hscore": lambda f, y, p: ref_reg_hscore(f, y),
    "nce": lambda f, y, p: ref_nce(p, y),
    "leep": lambda f, y, p: ref_leep(p, y),
    "nleep": lambda f, y, p: ref_nleep(f, y),
    "logme": lambda f, y, p: ref_logme(f, y),
    "gbc": lambda f, y, p: ref_gbc(f, y),
}


def reference_scores(features, labels, probs=None, names=None, timings=None):
    """All (or the named) reference scores; fills ``timings`` with seconds per score when given."""
    import time

    out = {}
    for name in names or REFERENCE_SCORES:
        start = time.perf_counter()
        out[name] = REFERENCE_SCORES[name](features, labels, probs)
        if timings is not None:
            timings[name] = time.perf_counter() - start
    return out


def limit_threads_for_small_problems():
    """Context manager: one BLAS / OpenMP / torch thread.

    The test problems are tiny, so threads buy nothing, while on a shared machine every parallel region of a
    multi-threaded BLAS can wait a scheduler time slice for a descheduled thread (tests then take minutes).
    """
    import contextlib

    import torch
    from threadpoolctl import threadpool_limits

    @contextlib.contextmanager
    def limited():
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with threadpool_limits(limits=1):
                yield
        finally:
            torch.set_num_threads(before)

    return limited()


# ISIC 2019 training images per class (MEL, NV, BCC, AK, BKL, DF, VASC, SCC): the benchmark's class balance.
ISIC2019_CLASS_COUNTS = (4522, 12875, 3323, 867, 2624, 239, 253, 628)


def synthetic_scores_data(
    n, d, c, s, *, seed=0, latent=64, spectrum=0.5, separation=0.35, noise=0.2, dtype=np.float32
):
    """Seeded features / labels / source probabilities with class structure.

    Features are non-negative like pooled post-ReLU activations: a ``latent``-dimensional Gaussian whose standard
    deviations decay as ``i ** -spectrum``, with class means ``separation`` standard deviations apart per latent
    dimension, mapped linearly to ``d`` dimensions, plus isotropic ``noise``, then ReLU.  Probabilities are a
    softmax of a random linear map of the centred features (the "source head").  Classes follow the ISIC 2019
    imbalance when ``c == 8`` and a geometric one otherwise; every class occurs at least once.
    """
    rng = np.random.default_rng(seed)
    if c == len(ISIC2019_CLASS_COUNTS):
        weights = np.asarray(ISIC2019_CLASS_COUNTS, dtype=float)
    else:
        weights = 0.75 ** np.arange(c)
    weights = weights / weights.sum()
    labels = rng.choice(c, size=n, p=weights)
    labels[:c] = np.arange(c)
    latent = min(latent, d)
    scales = (1.0 + np.arange(latent)) ** -spectrum
    class_means = rng.normal(size=(c, latent)) * scales * separation
    z = class_means[labels] + rng.normal(size=(n, latent)) * scales
    mixing = rng.normal(size=(latent, d)) / np.sqrt(scales @ scales)  # unit latent variance per dimension
    features = np.maximum(z @ mixing + 0.5 * noise + noise * rng.normal(size=(n, d)), 0.0)
    head = rng.normal(size=(d, s)) / np.sqrt(d)
    logits = 4.0 * (features - features.mean(0)) / features.std() @ head
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return features.astype(dtype), labels, probs.astype(dtype)
