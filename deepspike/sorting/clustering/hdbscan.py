"""``cluster.method=hdbscan``: density clustering with the hdbscan library; its noise label maps to ``-1``
(options: ``conf/cluster/hdbscan.yaml``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from deepspike.sorting.clustering.mixture import fit_subset
from deepspike.sorting.clustering.params import NOISE, ClusterParams


def propose(X: np.ndarray, kmax: int, p: ClusterParams, n_jobs: int = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """Cluster a subsample, then place the other spikes with ``approximate_predict``; ``kmax`` and ``n_jobs`` unused."""
    import hdbscan

    fit = fit_subset(len(X), p)
    mcs = max(2, min(p.hdbscan_min_cluster_size, len(fit) // 2))
    model = hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=p.hdbscan_min_samples, prediction_data=len(fit) < len(X))
    labels = np.full(len(X), NOISE, dtype=np.int64)
    labels[fit] = model.fit_predict(X[fit])
    if len(fit) < len(X):
        rest = np.setdiff1d(np.arange(len(X)), fit)
        labels[rest], _ = hdbscan.approximate_predict(model, X[rest])
    return labels, {"n_components": int(labels.max()) + 1}
