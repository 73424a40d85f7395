"""``cluster.method=dpgmm``: a Dirichlet-process Bayesian Gaussian mixture of at most kmax components, which
switches off the components it does not need (options: ``conf/cluster/dpgmm.yaml``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from deepspike.sorting.clustering.mixture import fit_subset, mixture_labels, quiet_fit
from deepspike.sorting.clustering.params import ClusterParams


def _dpgmm(X: np.ndarray, kmax: int, p: ClusterParams) -> Any:
    from sklearn.mixture import BayesianGaussianMixture

    model = BayesianGaussianMixture(
        n_components=kmax,
        covariance_type=p.covariance_type,
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=p.dpgmm_concentration,
        reg_covar=1e-4,
        n_init=p.n_init,
        max_iter=500,
        random_state=p.seed,
    )
    with quiet_fit():
        return model.fit(X)


def propose(X: np.ndarray, kmax: int, p: ClusterParams, n_jobs: int = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """Fit the mixture on a subsample and label every spike (noise ``-1``); ``n_jobs`` is unused (one fit)."""
    fit = fit_subset(len(X), p)
    return mixture_labels(_dpgmm(X[fit], kmax, p), X, p)
