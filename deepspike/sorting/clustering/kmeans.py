"""``cluster.method=kmeans``: k-means for k = 1..kmax, k chosen by silhouette or by the BIC of the spherical
mixture k-means fits (options: ``conf/cluster/kmeans.yaml``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from deepspike.sorting.clustering.mixture import fit_subset
from deepspike.sorting.clustering.params import ClusterParams


def propose(X: np.ndarray, kmax: int, p: ClusterParams, n_jobs: int = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """The best k-means partition of k = 1..kmax by ``kmeans_criterion``; ``n_jobs`` unused."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    fit = fit_subset(len(X), p)
    Xf = X[fit]
    rng = np.random.default_rng(p.seed)
    score_idx = rng.choice(len(Xf), size=min(len(Xf), 5000), replace=False)
    best, best_score, scores = None, -np.inf, {}
    for k in range(1, kmax + 1):
        model = KMeans(n_clusters=k, n_init=3, random_state=p.seed).fit(Xf)
        if p.kmeans_criterion == "bic":
            score = -_kmeans_bic(model, Xf)
        elif k == 1:
            score = p.kmeans_min_silhouette  # one unit wins unless a split separates better than this
        elif len(np.unique(model.labels_[score_idx])) < 2:
            continue
        else:
            score = float(silhouette_score(Xf[score_idx], model.labels_[score_idx]))
        scores[k] = score
        if score > best_score:
            best, best_score = model, score
    return best.predict(X).astype(np.int64), {"n_components": int(best.n_clusters), "scores": scores}


def _kmeans_bic(model: Any, X: np.ndarray) -> float:
    """BIC of the spherical, equal-variance Gaussian mixture that k-means implicitly fits."""
    n, d = X.shape
    k = model.n_clusters
    var = max(model.inertia_ / max(n - k, 1) / d, 1e-12)
    counts = np.bincount(model.labels_, minlength=k)
    loglik = float(np.sum(counts[counts > 0] * np.log(counts[counts > 0] / n))) - 0.5 * n * d * (
        np.log(2 * np.pi * var) + 1
    )
    return -2 * loglik + (k * (d + 1)) * np.log(n)
