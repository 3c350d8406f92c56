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


def ref_logme(features, labels, rank=None):
    """LogME with the full D x D SVD of F^T F (the variant that is right for N < D).

    ``rank``: the rank of the features when known (e.g. the number of distinct rows of a bootstrap draw); the
    singular values beyond it are set to 0, as in exact arithmetic, instead of the rounding the SVD returns."""
    f = np.asarray(features, dtype=np.float64)
    y, n_classes = encode_labels(labels)
    fh = f
    f = f.transpose()
    d, n = f.shape
    v, s, vh = np.linalg.svd(f @ fh, full_matrices=True)
    if rank is not None:
        s[rank:] = 0.0
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


# -- the opt-in scores: literal ports of each paper's code (SFDA, PARC, TransRate, ETran, PACTran) and of the
# -- documented baselines (k-NN, linear probe, ImageNet top-1), for tests/test_scores_extra.py --------------


def ref_stratified_subsample(labels, max_samples, seed):
    """The documented draw of medxfer.scores' PARC and k-NN, written out with loops."""
    import math
    from fractions import Fraction

    y, n_classes = encode_labels(labels)
    n = len(y)
    if n <= max_samples:
        return np.arange(n)
    order = np.random.default_rng(seed).permutation(n)
    counts = [int(np.sum(y == c)) for c in range(n_classes)]
    first_seen = {}
    for position, index in enumerate(order):
        first_seen.setdefault(int(y[index]), position)
    floors = [min(count, 2) for count in counts]
    quotas = [Fraction(count * max_samples, n) for count in counts]  # exact: equal remainders tie
    allocation = [min(max(math.floor(q), fl), count) for q, fl, count in zip(quotas, floors, counts)]
    while sum(allocation) != max_samples:
        if sum(allocation) < max_samples:
            open_classes = [c for c in range(n_classes) if allocation[c] < counts[c]]
            open_classes.sort(key=lambda c: (-(quotas[c] - allocation[c]), first_seen[c]))
            for c in open_classes[: max_samples - sum(allocation)]:
                allocation[c] += 1
        else:
            open_classes = [c for c in range(n_classes) if allocation[c] > floors[c]]
            open_classes.sort(key=lambda c: (quotas[c] - allocation[c], first_seen[c]))
            for c in open_classes[: sum(allocation) - max_samples]:
                allocation[c] -= 1
    chosen = []
    for c in range(n_classes):
        members = [int(index) for index in order if y[index] == c]
        chosen.extend(members[: allocation[c]])
    return np.array(sorted(chosen))


def _sfda_cov(x, shrinkage=-1):
    emp_cov = np.cov(np.asarray(x).T, bias=1)
    if shrinkage < 0:
        return emp_cov
    n_features = emp_cov.shape[0]
    mu = np.trace(emp_cov) / n_features
    shrunk_cov = (1.0 - shrinkage) * emp_cov
    shrunk_cov.flat[:: n_features + 1] += shrinkage * mu
    return shrunk_cov


def _sfda_softmax(x):
    x = np.copy(x)
    x -= np.max(x, axis=1).reshape((-1, 1))
    np.exp(x, x)
    x /= np.sum(x, axis=1).reshape((-1, 1))
    return x


def _sfda_iterative_a(a, max_iterations=3):
    x = a.sum(axis=1)
    for _ in range(max_iterations):
        temp = np.dot(a, x)
        y = temp / np.linalg.norm(temp, 2)
        temp = np.dot(a, y)
        x = temp / np.linalg.norm(temp, 2)
    return np.dot(np.dot(x.T, a), y)


class _RefSFDA:
    """TencentARC/SFDA's SFDA class (regularised FDA), without its print."""

    def __init__(self, shrinkage=None):
        self.shrinkage = shrinkage

    def fit(self, x, y):
        from scipy import linalg

        classes, y_t = np.unique(y, return_inverse=True)
        self.priors_ = np.bincount(y_t) / float(len(y))
        cnt = np.bincount(y_t)
        means = np.zeros(shape=(len(classes), x.shape[1]))
        np.add.at(means, y_t, x)
        means /= cnt[:, None]
        self.means_ = means
        cov = np.zeros(shape=(x.shape[1], x.shape[1]))
        for idx, group in enumerate(classes):
            cov += self.priors_[idx] * np.atleast_2d(_sfda_cov(x[y == group, :]))
        sw = cov
        if self.shrinkage is None:
            self.shrinkage = max(np.exp(-5 * _sfda_iterative_a(sw, max_iterations=3)), 1e-10)
        st = _sfda_cov(x, shrinkage=self.shrinkage)
        n_features = sw.shape[0]
        mu = np.trace(sw) / n_features
        shrunk_sw = (1.0 - self.shrinkage) * sw
        shrunk_sw.flat[:: n_features + 1] += self.shrinkage * mu
        sb = st - shrunk_sw
        evals, evecs = linalg.eigh(sb, shrunk_sw)
        evecs = evecs[:, np.argsort(evals)[::-1]]
        self.coef_ = np.dot(self.means_, evecs).dot(evecs.T)
        self.intercept_ = -0.5 * np.diag(np.dot(self.means_, self.coef_.T)) + np.log(self.priors_)
        return self

    def predict_proba(self, x):
        return _sfda_softmax(np.dot(x, self.coef_.T) + self.intercept_)


def ref_sfda(features, labels, log_prob=False):
    """SFDA_Score of TencentARC/SFDA (on a float64 copy; the code overwrites its input with the mixed features).

    ``log_prob=True`` averages log p(y|x) (the paper's formula) instead of p(y|x) (the code)."""
    x = np.array(features, dtype=np.float64)
    y, num_classes = encode_labels(labels)
    n = len(y)
    first = _RefSFDA()
    prob = first.fit(x, y).predict_proba(x)
    prob = np.exp(prob) / np.exp(prob).sum(axis=1, keepdims=True)
    means = np.array([x[y == c].mean(axis=0) for c in range(num_classes)])
    means_ = np.array([(means.sum(axis=0) - means[c]) / (num_classes - 1) for c in range(num_classes)])
    for c in range(num_classes):
        indices = np.where(y == c)[0]
        y_prob = prob[indices, c].reshape(-1, 1)
        x[indices] = y_prob * x[indices] + (1 - y_prob) * means_[c]
    second = _RefSFDA(shrinkage=first.shrinkage)
    prob = second.fit(x, y).predict_proba(x)
    true_class = prob[np.arange(n), y]
    return float(np.mean(np.log(true_class)) if log_prob else np.sum(true_class) / n)


def ref_parc(features, labels, n_dims=32, max_samples=2000, seed=0):
    """PARC of dbolya/parc on the documented subsample, exact PCA to min(n_dims, M - 1, D) components."""
    from scipy.stats import spearmanr
    from sklearn.preprocessing import StandardScaler

    chosen = ref_stratified_subsample(labels, max_samples, seed)
    f = np.asarray(features, dtype=np.float64)[chosen]
    y, n_classes = encode_labels(np.asarray(labels)[chosen])
    n_components = min(n_dims, f.shape[0] - 1, f.shape[1])
    reduced = PCA(n_components=n_components, svd_solver="full").fit_transform(f)
    reduced = StandardScaler().fit_transform(reduced)
    one_hot = np.eye(n_classes)[y]
    rdm1 = 1 - np.corrcoef(reduced)
    # The code's 1 - np.corrcoef(one_hot) comes out 0 for the same-class pairs of some classes and 2.2e-16 for
    # those of others, so Spearman ranks rounding noise (PARC moves by up to ~6 %); the exact values are 0
    # and 1 + 1 / (C - 1), restored by rounding.
    rdm2 = np.round(1 - np.corrcoef(one_hot), 12)
    upper = np.triu_indices(rdm1.shape[0], 1)
    return float(spearmanr(rdm1[upper], rdm2[upper])[0] * 100)


def _coding_rate(z, eps):
    n, d = z.shape
    _, rate = np.linalg.slogdet(np.eye(d) + 1 / (n * eps) * z.transpose() @ z)
    return 0.5 * rate


def ref_transrate(features, labels, eps=1e-4):
    """TransRate as printed in Huang et al. (ICML 2022)."""
    z = np.asarray(features, dtype=np.float64)
    y, n_classes = encode_labels(labels)
    z = z - np.mean(z, axis=0, keepdims=True)
    rate = _coding_rate(z, eps)
    class_rates = 0.0
    for c in range(n_classes):
        class_rates += _coding_rate(z[(y == c).flatten()], eps)
    return float(rate - class_rates / n_classes)


def ref_etran(features, labels=None, percent=0.5):
    """Energy_Score(features, percent, 'bot') of mgholamikn/ETran, in float64, at least one sample."""
    import torch

    energy = torch.logsumexp(torch.from_numpy(np.asarray(features, dtype=np.float64)), dim=-1).numpy()
    count = max(int(percent * 10) * len(energy) // 1000, 1)
    chosen = list(np.argsort(energy)[0:count])
    return float(energy[chosen].mean())


def ref_pactran(features, labels, lda_factor=1.0, max_iter=100, tol=1e-6):
    """-calculate_pac_gauss(...)[0][0][1] of google-research/pactran_metrics, started from zeros."""
    import scipy.optimize
    import scipy.special

    features_np_all = np.array(features, dtype=np.float64)
    y, nclasses = encode_labels(labels)
    label_np_all = np.zeros((y.size, nclasses))
    label_np_all[np.arange(y.size), y] = 1.0
    features_np_all -= np.mean(features_np_all, axis=0, keepdims=True)
    bs = features_np_all.shape[0]
    kd = features_np_all.shape[-1] * nclasses
    ldas2 = lda_factor * bs
    dinv = 1.0 / float(features_np_all.shape[-1])
    d = features_np_all.shape[-1]

    def pac_loss_fn(theta):
        theta = np.reshape(theta, [d + 1, nclasses])
        w, b = theta[:d, :], theta[d:, :]
        logits = np.matmul(features_np_all, w) + b
        log_qz = logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)
        xent = np.sum(np.sum(label_np_all * (np.log(label_np_all + 1e-10) - log_qz), axis=-1)) / bs
        return xent + 0.5 * np.sum(np.square(w)) / ldas2

    def pac_grad_fn(theta):
        theta = np.reshape(theta, [d + 1, nclasses])
        w, b = theta[:d, :], theta[d:, :]
        logits = np.matmul(features_np_all, w) + b
        grad_f = scipy.special.softmax(logits, axis=-1)
        grad_f -= label_np_all
        grad_f /= bs
        grad_w = np.matmul(features_np_all.transpose(), grad_f) + w / ldas2
        grad_b = np.sum(grad_f, axis=0, keepdims=True)
        return np.ravel(np.concatenate([grad_w, grad_b], axis=0))

    def pac_grad2(theta):
        theta = np.reshape(theta, [d + 1, nclasses])
        w, b = theta[:d, :], theta[d:, :]
        logits = np.matmul(features_np_all, w) + b
        prob_logits = scipy.special.softmax(logits, axis=-1)
        grad2_f = prob_logits - np.square(prob_logits)
        xx = np.square(features_np_all)
        grad2_w = np.matmul(xx.transpose(), grad2_f) + 1.0 / ldas2
        grad2_b = np.sum(grad2_f, axis=0, keepdims=True)
        return np.ravel(np.concatenate([grad2_w, grad2_b], axis=0))

    theta_1d = np.zeros((d + 1) * nclasses)
    theta_1d = scipy.optimize.minimize(
        pac_loss_fn, theta_1d, method="L-BFGS-B", jac=pac_grad_fn, options=dict(maxiter=max_iter), tol=tol
    ).x
    pac_opt = pac_loss_fn(theta_1d)
    sigma2_inv = np.sum(pac_grad2(theta_1d)) * ldas2 / kd + 1e-10
    s2 = 100.0 * lda_factor * dinv
    return float(-(pac_opt + 0.5 * kd / ldas2 * s2 * np.log(sigma2_inv)))


def ref_knn(features, labels, k=5, metric="cosine", max_samples=2000, seed=0):
    """Leave-one-out k-NN balanced accuracy on the documented subsample, one sample at a time."""
    from sklearn.metrics import balanced_accuracy_score

    chosen = ref_stratified_subsample(labels, max_samples, seed)
    f = np.asarray(features, dtype=np.float64)[chosen]
    y, _ = encode_labels(np.asarray(labels)[chosen])
    m = len(y)
    predictions = []
    for i in range(m):
        others = [j for j in range(m) if j != i]
        if metric == "cosine":
            norm_i = np.linalg.norm(f[i])
            keys = []
            for j in others:
                norm_j = np.linalg.norm(f[j])
                similarity = 0.0 if norm_i == 0 or norm_j == 0 else np.dot(f[i], f[j]) / (norm_i * norm_j)
                keys.append((-similarity, j))
        else:
            keys = [(float(np.sum((f[i] - f[j]) ** 2)), j) for j in others]
        nearest = [j for _, j in sorted(keys)[:k]]
        votes = {}
        for position, j in enumerate(nearest):
            count, first = votes.get(y[j], (0, position))
            votes[y[j]] = (count + 1, first)
        best = max(votes.items(), key=lambda item: (item[1][0], -item[1][1]))
        predictions.append(best[0])
    return float(balanced_accuracy_score(y, predictions))


def ref_linear_probe(features, labels, test_size=0.2, seed=0, C=1.0, max_iter=1000):
    """Stratified split, StandardScaler, LogisticRegression(lbfgs), held-out balanced accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    f = np.asarray(features, dtype=np.float64)
    y, _ = encode_labels(labels)
    f_train, f_test, y_train, y_test = train_test_split(f, y, test_size=test_size, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(f_train)
    model = LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter).fit(scaler.transform(f_train), y_train)
    return float(balanced_accuracy_score(y_test, model.predict(scaler.transform(f_test))))


def ref_nleep_seeds(features, labels, seeds):
    """(mean, sample std) of N-LEEP over GaussianMixture(random_state=seed) fits, as the paper's code per seed."""
    f = np.asarray(features, dtype=np.float64)
    _, n_classes = encode_labels(labels)
    features_pca = PCA(n_components=0.8, random_state=42).fit_transform(f)
    values = []
    for seed in seeds:
        gmm = GaussianMixture(n_components=5 * n_classes, random_state=seed).fit(features_pca)
        values.append(ref_leep(gmm.predict_proba(features_pca), labels))
    return float(np.mean(values)), float(np.std(values, ddof=1))


EXTRA_REFERENCE_SCORES = {
    "sfda": lambda f, y, p, **options: ref_sfda(f, y, **options),
    "parc": lambda f, y, p, **options: ref_parc(f, y, **options),
    "transrate": lambda f, y, p, **options: ref_transrate(f, y, **options),
    "etran": lambda f, y, p, **options: ref_etran(f, y, **options),
    "pactran": lambda f, y, p, **options: ref_pactran(f, y, **options),
    "knn": lambda f, y, p, **options: ref_knn(f, y, **options),
    "linear_probe": lambda f, y, p, **options: ref_linear_probe(f, y, **options),
    "imagenet_top1": lambda f, y, p, top1=None: float(top1),
}

__all__ += [
    "EXTRA_REFERENCE_SCORES",
    "ref_etran",
    "ref_knn",
    "ref_linear_probe",
    "ref_nleep_seeds",
    "ref_pactran",
    "ref_parc",
    "ref_sfda",
    "ref_stratified_subsample",
    "ref_transrate",
]
