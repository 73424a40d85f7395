"""Gaussian-mixture building blocks shared by the mixture methods (``gmm``, ``dpgmm``), the branch re-split and the
model's validation metric: the one ``GaussianMixture`` constructor, fitting on a subsample, and turning a fitted
mixture into labels with its outliers and broad (noise) components set to ``-1``."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from deepspike.sorting.clustering.params import NOISE, ClusterParams


def gaussian_mixture(
    k: int, seed: int = 0, covariance_type: str = "full", n_init: int = 1, tol: float = 1e-3, max_iter: int = 100
) -> Any:
    """The one place a ``GaussianMixture`` is configured (sorter, validation metric, collapse guard, benches).

    ``reg_covar=1e-4`` keeps components of tight clusters (big, stereotyped units) from becoming singular.
    """
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(
        n_components=k, covariance_type=covariance_type, reg_covar=1e-4, n_init=n_init, max_iter=max_iter, tol=tol,
        random_state=seed,
    )  # fmt: skip


def fit_gmm(X: np.ndarray, k: int, seed: int = 0, n_init: int = 1, **kw: Any) -> Any:
    """``gaussian_mixture(k, ...)`` fitted on ``X`` (float64); convergence warnings on tiny components muted."""
    with quiet_fit():
        return gaussian_mixture(k, seed=seed, n_init=n_init, **kw).fit(np.asarray(X, dtype=np.float64))


@contextmanager
def quiet_fit() -> Iterator[None]:
    """Every warning muted around a mixture fit (scikit-learn's ConvergenceWarning on tiny components is expected).

    ``warnings.catch_warnings`` swaps process-wide state, so two threads inside it at once can leave each other's
    filters behind: a worker thread enters nothing and runs under the filter its spawning thread set with
    ``fits_in_threads``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextmanager
def fits_in_threads() -> Iterator[None]:
    """Around a thread pool that fits mixtures: scikit-learn's ConvergenceWarning and numpy's RuntimeWarnings of
    degenerate components muted for its workers (see ``quiet_fit``); DeepSpike's own warnings from them still show."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _mahalanobis2(model: Any, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each spike to its own component."""
    d2 = np.empty(len(X))
    for k in np.unique(labels):
        m = labels == k
        diff = X[m] - model.means_[k]
        pc = model.precisions_cholesky_[k]
        y = diff @ pc if pc.ndim == 2 else diff * pc
        d2[m] = np.sum(y * y, axis=1)
    return d2


def _drop_outliers(model: Any, X: np.ndarray, labels: np.ndarray, q: float) -> tuple[np.ndarray, int]:
    if q >= 1.0 or len(X) == 0:
        return labels, 0
    from scipy.stats import chi2

    out = _mahalanobis2(model, X, labels) > chi2.ppf(q, X.shape[1])
    labels = labels.copy()
    labels[out] = NOISE
    return labels, int(out.sum())


def _component_volumes(model: Any) -> np.ndarray:
    """Per-dimension variance scale of each component: ``det(cov) ** (1/d)``, from the precision Cholesky."""
    pc = model.precisions_cholesky_
    d = model.means_.shape[1]
    logdet_prec = (
        2 * np.log(np.abs(np.diagonal(pc, axis1=1, axis2=2))).sum(1) if pc.ndim == 3 else 2 * np.log(pc).sum(1)
    )
    return np.exp(-logdet_prec / d)


def _drop_broad(model: Any, labels: np.ndarray, factor: float) -> tuple[np.ndarray, list[int]]:
    """Components far broader than the others model scattered noise/artifacts, not a unit."""
    present = [k for k in np.unique(labels) if k >= 0]
    if len(present) < 2:
        return labels, []
    vol = _component_volumes(model)
    broad = []
    for k in present:
        others = [vol[j] for j in present if j != k]
        if vol[k] > factor * float(np.median(others)):
            broad.append(int(k))
    if broad:
        labels = np.where(np.isin(labels, broad), NOISE, labels)
    return labels, broad


def fit_subset(n: int, p: ClusterParams, salt: int = 0) -> np.ndarray:
    if n <= p.max_fit_spikes:
        return np.arange(n)
    rng = np.random.default_rng([p.seed, salt])
    return np.sort(rng.choice(n, size=p.max_fit_spikes, replace=False))


def mixture_labels(model: Any, X: np.ndarray, p: ClusterParams) -> tuple[np.ndarray, dict[str, Any]]:
    """Labels of every spike under a fitted mixture, with far outliers and much broader components as noise."""
    labels = model.predict(X).astype(np.int64)
    info: dict[str, Any] = {"n_components": int(model.n_components)}
    if hasattr(model, "bic_curve"):
        info["bic"] = model.bic_curve
    labels, info["outliers"] = _drop_outliers(model, X, labels, p.outlier_quantile)
    labels, info["broad_components"] = _drop_broad(model, labels, p.broad_factor)
    return labels, info
