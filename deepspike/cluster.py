"""Clustering of spike embeddings into units.

Works on any ``[n, d]`` embedding array (the frozen encoder's, or PCA features for a model-free baseline), so it
is testable without a model. Spikes of different channels are clustered separately (the windows are
single-channel), then the per-channel units are cleaned up with the waveforms:

1. a method proposes clusters: ``gmm`` (number of components chosen by BIC), ``dpgmm`` (Dirichlet-process
   Bayesian mixture), ``hdbscan`` or ``kmeans`` (number chosen by silhouette or BIC). Mixtures are fitted on a
   random subsample of at most ``max_fit_spikes`` spikes and then predict every spike, so an hour of
   recording clusters in seconds;
2. noise goes to no unit (label ``-1``) instead of being spread over real units: spikes far outside their
   mixture component (Mahalanobis distance beyond a chi-square quantile), components much broader than the
   others, clusters smaller than ``min_spikes``, units whose template peak is below ``min_snr`` noise sigma and
   units whose spikes scatter around their template by more than ``max_residual`` (noise sigma^2; overlaps,
   artifacts);
3. near-duplicate units (templates with cosine similarity above ``merge_similarity`` and peak-to-peak ratio
   below ``merge_amplitude_ratio``, whose clusters also overlap in feature space: d' < ``merge_max_dprime``)
   are merged, which undoes the over-splitting BIC does on non-Gaussian clusters without merging distinct
   units of near-equal size that the embedding separates;
4. units whose union is unimodal in the embedding are merged (``merge_valley``): projected on the axis that
   best separates them (Fisher's discriminant), two real units leave a density dip between their centres, two
   pieces of one skewed or curved cluster do not. This is the split/merge test of ISO-SPLIT (MountainSort),
   here as a kernel-density valley-to-peak ratio. BIC alone split noisy units into up to 9 clusters for 3.

The published iterative scheme (``iterative=True``) runs before step 1: for thresholds from high to low, the
spikes above the threshold are split in two and the component that looks like noise (low template SNR, large
residual or broad) is dropped; the survivors then get the final clustering.

Before all this, ``secondary_peaks`` flags echoes (threshold crossings of a big spike's ringing just after the
detector's dead time) so they do not form fake units.

Everything is seeded by ``seed``: the same input and parameters give the same labels.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from deepspike.defaults import conf_field
from deepspike.errors import DeepSpikeError

log = logging.getLogger(__name__)

METHODS = ("gmm", "dpgmm", "hdbscan", "kmeans")
MAX_BANDWIDTHS = (
    200.0  # valley_ratio: clusters whose centres lie farther apart than this many KDE bandwidths have a gap
)
FEW_UNITS = 5  # a channel whose spikes allow fewer units than this (at cluster.min_spikes each) gets a warning
NOISE = -1
BRANCH_DEPTH = 3  # re-split levels of cluster.branch_dims (the dev draw's choice was made with 3)


COMMON = "cluster/common.yaml"  # options of every method; a method's own are in cluster/<method>.yaml


@dataclass
class ClusterParams:
    """Clustering options. Their defaults, meanings and ranges are declared once, in ``conf/cluster/*.yaml``
    (shared options in ``common.yaml``, a method's own in its file); the fields read them from there."""

    method: str = conf_field(COMMON, "method")
    max_units: int = conf_field(COMMON, "max_units")
    max_fit_spikes: int = conf_field(COMMON, "max_fit_spikes")
    min_spikes: int = conf_field(COMMON, "min_spikes")
    min_snr: float = conf_field(COMMON, "min_snr")
    noise_margin: float = conf_field(COMMON, "noise_margin")
    max_residual: float = conf_field(COMMON, "max_residual")
    outlier_quantile: float = conf_field(COMMON, "outlier_quantile")
    broad_factor: float = conf_field(COMMON, "broad_factor")
    merge_similarity: float = conf_field(COMMON, "merge_similarity")
    merge_amplitude_ratio: float = conf_field(COMMON, "merge_amplitude_ratio")
    merge_max_dprime: float = conf_field(COMMON, "merge_max_dprime")
    merge_valley: float = conf_field(COMMON, "merge_valley")
    covariance_type: str = conf_field(COMMON, "covariance_type")
    n_init: int = conf_field(COMMON, "n_init")
    dpgmm_concentration: float = conf_field("cluster/dpgmm.yaml", "dpgmm_concentration")
    hdbscan_min_cluster_size: int = conf_field("cluster/hdbscan.yaml", "hdbscan_min_cluster_size")
    hdbscan_min_samples: int | None = conf_field("cluster/hdbscan.yaml", "hdbscan_min_samples")
    kmeans_criterion: str = conf_field("cluster/kmeans.yaml", "kmeans_criterion")
    kmeans_min_silhouette: float = conf_field("cluster/kmeans.yaml", "kmeans_min_silhouette")
    branch_dims: int = conf_field(COMMON, "branch_dims")
    iterative: bool = conf_field(COMMON, "iterative")
    iterative_thresholds: list[float] = conf_field(COMMON, "iterative_thresholds")
    seed: int = conf_field("sort.yaml", "seed")  # the run's seed (top-level `seed`), not a cluster.* key

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> DeepSpikeError:
            return DeepSpikeError(f"cluster.{name}={getattr(self, name)!r}: {why}")

        if self.method not in METHODS:
            raise bad("method", f"unknown clustering method; choose one of {METHODS}")
        if self.covariance_type not in ("full", "diag"):
            raise bad("covariance_type", "choose 'full' or 'diag'")
        if self.kmeans_criterion not in ("silhouette", "bic"):
            raise bad("kmeans_criterion", "choose 'silhouette' or 'bic'")
        for name in ("max_units", "max_fit_spikes", "min_spikes", "n_init", "hdbscan_min_cluster_size"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be a positive integer")
        if self.max_fit_spikes < 100:
            raise bad("max_fit_spikes", "must be >= 100 (a mixture needs enough spikes to fit)")
        if not 0.5 < self.outlier_quantile <= 1.0:
            raise bad("outlier_quantile", "must be in (0.5, 1]; 1 keeps every spike")
        if self.broad_factor <= 1:
            raise bad("broad_factor", "must be > 1 (ratio of a component's volume to the others' median)")
        if not 0.0 < self.merge_similarity <= 1.0:
            raise bad("merge_similarity", "must be in (0, 1]; 1 disables merging")
        if self.merge_amplitude_ratio < 1.0:
            raise bad("merge_amplitude_ratio", "must be >= 1")
        if not 0.0 < self.merge_valley <= 1.0:
            raise bad(
                "merge_valley", "must be in (0, 1] (density valley/peak ratio above which units merge; 1 = never)"
            )
        if not self.merge_max_dprime > 0:
            raise bad("merge_max_dprime", "must be > 0 (.inf merges on templates alone)")
        if self.max_residual <= 1:
            raise bad("max_residual", "must be > 1 (noise alone leaves a residual variance of about 1 noise sigma^2)")
        if not 0 <= self.noise_margin < 5:
            raise bad("noise_margin", "must be in [0, 5) noise sigmas (0 = keep units piled up at the threshold)")
        if self.min_snr < 0 or self.dpgmm_concentration <= 0:
            raise DeepSpikeError("cluster.min_snr must be >= 0 and cluster.dpgmm_concentration > 0")
        if not isinstance(self.branch_dims, (int, np.integer)) or self.branch_dims < 0:
            raise bad("branch_dims", "must be an integer >= 0 (principal components of each unit's re-split; 0 = off)")
        if self.hdbscan_min_samples is not None and self.hdbscan_min_samples < 1:
            raise bad("hdbscan_min_samples", "must be null or a positive integer")
        self.iterative_thresholds = sorted((float(t) for t in self.iterative_thresholds), reverse=True)
        if any(t <= 0 for t in self.iterative_thresholds):
            raise bad("iterative_thresholds", "thresholds are noise-sigma amplitudes, all > 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ClusterParams:
        """Build from a (Hydra) mapping, rejecting unknown keys with the list of known ones."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DeepSpikeError(f"unknown cluster option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ClusterResult:
    """Labels (``-1`` = noise/unassigned, units numbered 0..n-1 by channel then size) and what was chosen."""

    labels: np.ndarray
    info: dict[str, Any]

    @property
    def n_units(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.size and self.labels.max() >= 0 else 0


def cluster_spikes(
    embeddings: np.ndarray,
    waves: np.ndarray | None = None,
    channel: np.ndarray | None = None,
    amplitude: np.ndarray | None = None,
    params: ClusterParams | None = None,
    threshold: float | None = None,
    n_jobs: int = 1,
) -> ClusterResult:
    """Cluster spikes channel by channel; ``waves`` (noise units) enable the SNR check and the merge;
    ``amplitude`` (noise units) with the detection ``threshold`` the pile-up check (``cluster.noise_margin``);
    ``n_jobs`` threads fit the mixtures of the BIC sweep (same result for any count)."""
    params = params or ClusterParams()
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2:
        raise DeepSpikeError(f"embeddings must be a 2-D array [spikes, dims], got shape {emb.shape}")
    n = emb.shape[0]
    if not np.all(np.isfinite(emb)):
        raise DeepSpikeError("embeddings contain NaN or Inf; check the encoder and the input windows")
    channel = np.zeros(n, dtype=np.int64) if channel is None else np.asarray(channel)
    from threadpoolctl import threadpool_limits

    # Small dense algebra (d <= ~16): BLAS threads only add overhead (measured 3-6x slower with 2+ threads).
    with threadpool_limits(limits=1):
        return _cluster_channels(emb, waves, channel, amplitude, params, threshold, n_jobs)


def _cluster_channels(
    emb: np.ndarray,
    waves: np.ndarray | None,
    channel: np.ndarray,
    amplitude: np.ndarray | None,
    params: ClusterParams,
    threshold: float | None = None,
    n_jobs: int = 1,
) -> ClusterResult:
    n = emb.shape[0]
    labels = np.full(n, NOISE, dtype=np.int64)
    info: dict[str, Any] = {"method": params.method, "channels": {}}
    next_id = 0
    for ch in np.unique(channel):
        idx = np.flatnonzero(channel == ch)
        w = None if waves is None else waves[idx]
        a = None if amplitude is None else np.asarray(amplitude)[idx]
        lab, ch_info = _cluster_one_channel(emb[idx], w, a, params, threshold, n_jobs)
        info["channels"][int(ch)] = ch_info
        lab = _renumber_by_size(lab)
        labels[idx[lab >= 0]] = lab[lab >= 0] + next_id
        next_id += int(lab.max()) + 1 if (lab >= 0).any() else 0
    info["n_units"] = next_id
    info["n_noise"] = int((labels == NOISE).sum())
    return ClusterResult(labels=labels, info=info)


def _cluster_one_channel(
    emb: np.ndarray,
    waves: np.ndarray | None,
    amplitude: np.ndarray | None,
    p: ClusterParams,
    threshold: float | None,
    n_jobs: int = 1,
) -> tuple[np.ndarray, dict[str, Any]]:
    n = emb.shape[0]
    labels = np.full(n, NOISE, dtype=np.int64)
    info: dict[str, Any] = {"n_spikes": n}
    if n < p.min_spikes:
        if n:
            warnings.warn(
                f"only {n} spikes on a channel (< cluster.min_spikes={p.min_spikes}): no unit formed there",
                stacklevel=3,
            )
        return labels, info
    X = _standardize(emb)
    keep = np.ones(n, dtype=bool)
    if p.iterative and amplitude is not None:
        keep = _iterative_prune(X, waves, np.asarray(amplitude, dtype=np.float64), p)
        info["iterative_dropped"] = int((~keep).sum())
    kmax = max(1, min(p.max_units, int(keep.sum()) // p.min_spikes))  # the cap grows with the spike count
    info["max_units"] = kmax
    if kmax < min(p.max_units, FEW_UNITS):  # only a handful of units possible: say why
        warnings.warn(
            f"{int(keep.sum())} spikes allow at most {kmax} unit(s) of >= {p.min_spikes} spikes "
            f"(cluster.max_units={p.max_units})",
            stacklevel=3,
        )
    sub, sub_info = _propose(X[keep], kmax, p, n_jobs)
    info.update(sub_info)
    if p.branch_dims:
        sub = _branch(X[keep], sub, p, n_jobs=n_jobs)
        info["branch_units"] = int(sub.max()) + 1 if (sub >= 0).any() else 0
    labels[keep] = sub
    labels = _drop_small(labels, p.min_spikes)
    if amplitude is not None and threshold is not None:
        labels, info["dropped_pileup"] = drop_threshold_pileups(labels, amplitude, threshold, p.noise_margin)
    if waves is not None:
        labels, info["dropped_low_snr"] = _drop_low_snr(labels, waves, p.min_snr)
        labels, info["dropped_incoherent"] = _drop_incoherent(labels, waves, p.max_residual)
        labels, info["merged"] = merge_similar_units(
            labels, waves, p.merge_similarity, p.merge_amplitude_ratio, X, p.merge_max_dprime
        )
    labels, info["merged_unimodal"] = merge_unimodal_units(labels, X, p.merge_valley, p.seed)
    return labels, info


def _standardize(emb: np.ndarray) -> np.ndarray:
    """Center and divide by one global scale: keeps the geometry (no per-dim whitening of noise dims)."""
    X = emb - np.median(emb, axis=0)
    scale = float(np.sqrt(np.mean(np.var(X, axis=0))))
    return X / scale if scale > 0 else X


def _fit_subset(n: int, p: ClusterParams, salt: int = 0) -> np.ndarray:
    if n <= p.max_fit_spikes:
        return np.arange(n)
    rng = np.random.default_rng([p.seed, salt])
    return np.sort(rng.choice(n, size=p.max_fit_spikes, replace=False))


def _propose(X: np.ndarray, kmax: int, p: ClusterParams, n_jobs: int = 1) -> tuple[np.ndarray, dict[str, Any]]:
    """Run the chosen method; returns labels (``-1`` for noise) and what it chose."""
    if p.method == "hdbscan":
        return _hdbscan(X, p)
    if p.method == "kmeans":
        return _kmeans(X, kmax, p)
    fit = _fit_subset(len(X), p)
    model = _gmm_bic(X[fit], kmax, p, n_jobs) if p.method == "gmm" else _dpgmm(X[fit], kmax, p)
    labels = model.predict(X).astype(np.int64)
    info: dict[str, Any] = {"n_components": int(model.n_components)}
    if hasattr(model, "bic_curve"):
        info["bic"] = model.bic_curve
    labels, info["outliers"] = _drop_outliers(model, X, labels, p.outlier_quantile)
    labels, info["broad_components"] = _drop_broad(model, labels, p.broad_factor)
    return labels, info


def _branch(X: np.ndarray, labels: np.ndarray, p: ClusterParams, depth: int = 1, n_jobs: int = 1) -> np.ndarray:
    """Each unit of ``labels`` re-clustered on its own (``_local_split``); returns the refined labels, renumbered.

    A global fit spends its dimensions on what separates the big or distant units; two units that differ only in a
    direction of small global variance stay one. In the unit's own principal components that direction is a top one.
    """
    out = np.full(len(labels), NOISE, dtype=np.int64)
    next_id = 0
    for u in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == u)
        sub = _local_split(X[idx], p, depth, n_jobs)
        kept = sub >= 0
        out[idx[kept]] = sub[kept] + next_id
        next_id += int(sub.max()) + 1 if kept.any() else 0
    return out


def _local_split(X: np.ndarray, p: ClusterParams, depth: int, n_jobs: int) -> np.ndarray:
    """One unit's spikes clustered in their top ``p.branch_dims`` principal components by the GMM-BIC whatever
    ``cluster.method`` is (its 1-component fit says "one unit"; HDBSCAN would call a lone cloud noise, a DP mixture
    cuts it in pieces); parts split again, down to ``BRANCH_DEPTH`` levels, and outliers of a taken split are
    noise. Too few spikes for two units: left whole."""
    n = len(X)
    if depth > BRANCH_DEPTH or n < 2 * p.min_spikes:
        return np.zeros(n, dtype=np.int64)
    from sklearn.decomposition import PCA

    local = PCA(n_components=p.branch_dims, random_state=p.seed).fit_transform(X) if X.shape[1] > p.branch_dims else X
    gmm = p if p.method == "gmm" else replace(p, method="gmm")
    sub, _ = _propose(local, max(1, min(p.max_units, n // p.min_spikes)), gmm, n_jobs)
    sizes = np.bincount(sub[sub >= 0])
    if np.count_nonzero(sizes) <= 1 or sizes[sizes > 0].min() < p.min_spikes:
        # one cloud, or a split leaving a part too small to be a unit (it would be dropped as noise and the unit
        # lost: the 30-spike unit of the Quiroga excerpt, tests/test_sort.py): the unit stays whole
        return np.zeros(n, dtype=np.int64)
    return _branch(X, sub, p, depth + 1, n_jobs)


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


def _gmm(k: int, p: ClusterParams) -> Any:
    # tol is per-spike log-likelihood; BIC gaps between k are far larger, so a coarse fit chooses the same k
    return gaussian_mixture(k, seed=p.seed, covariance_type=p.covariance_type, n_init=p.n_init, tol=1e-2)


def _gmm_bic(X: np.ndarray, kmax: int, p: ClusterParams, n_jobs: int = 1) -> Any:
    """Fit 1..kmax components and keep the lowest BIC; stop after 2 non-improving k (BIC is near convex).

    ``n_jobs`` consecutive k are fitted at once in threads (numpy releases the GIL: 33 fits of a 4,289-event
    tetrode, 12-D, 1.73 -> 1.25 s with 2); the stopping rule reads them in order, so the choice is the same."""
    n_jobs = max(1, min(int(n_jobs), kmax))
    best, best_bic, curve, worse = None, np.inf, {}, 0
    with fits_in_threads(), ThreadPoolExecutor(max_workers=n_jobs) if n_jobs > 1 else nullcontext() as pool:
        fit_all = pool.map if pool is not None else map

        def fitted() -> Iterator[tuple[int, Any]]:  # (k, model) in order of k, n_jobs at a time
            for start in range(1, kmax + 1, n_jobs):
                batch = range(start, min(kmax, start + n_jobs - 1) + 1)
                yield from zip(batch, fit_all(lambda k: _fit_bic(X, k, p), batch), strict=True)

        for k, model in fitted():
            curve[k] = model.bic_value
            if model.bic_value < best_bic:
                best, best_bic, worse = model, model.bic_value, 0
            else:
                worse += 1
                if worse >= 2:
                    break
    best.bic_curve = curve
    return best


def _fit_bic(X: np.ndarray, k: int, p: ClusterParams) -> Any:
    """A ``k``-component mixture fitted on ``X``, its BIC in ``bic_value``."""
    with quiet_fit():  # ConvergenceWarning on tiny components is expected and harmless
        model = _gmm(k, p).fit(X)
    model.bic_value = float(model.bic(X))
    return model


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


def _hdbscan(X: np.ndarray, p: ClusterParams) -> tuple[np.ndarray, dict[str, Any]]:
    import hdbscan

    fit = _fit_subset(len(X), p)
    mcs = max(2, min(p.hdbscan_min_cluster_size, len(fit) // 2))
    model = hdbscan.HDBSCAN(min_cluster_size=mcs, min_samples=p.hdbscan_min_samples, prediction_data=len(fit) < len(X))
    labels = np.full(len(X), NOISE, dtype=np.int64)
    labels[fit] = model.fit_predict(X[fit])
    if len(fit) < len(X):
        rest = np.setdiff1d(np.arange(len(X)), fit)
        labels[rest], _ = hdbscan.approximate_predict(model, X[rest])
    return labels, {"n_components": int(labels.max()) + 1}


def _kmeans(X: np.ndarray, kmax: int, p: ClusterParams) -> tuple[np.ndarray, dict[str, Any]]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    fit = _fit_subset(len(X), p)
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


def _iterative_prune(X: np.ndarray, waves: np.ndarray | None, amp: np.ndarray, p: ClusterParams) -> np.ndarray:
    """Published iterative scheme: thresholds high -> low, two-way split, drop the noise-like half.

    Each level splits the kept spikes above its threshold, one polarity at a time (units of opposite sign never
    share a cluster, so a split cannot pair them into a fake mess), and drops a half only when it looks like
    noise (see ``_noise_half``).
    """
    keep = np.ones(len(X), dtype=bool)
    for level, thr in enumerate(p.iterative_thresholds):
        for sign in (-1.0, 1.0):
            sel = np.flatnonzero(keep & (amp * sign >= thr))
            if len(sel) < 2 * p.min_spikes:
                continue
            lab = _split_two(X[sel], p, salt=level + 1)
            if lab is None:
                continue
            noisy = _noise_half(X[sel], lab, None if waves is None else waves[sel], p, level)
            if noisy is not None:
                keep[sel[lab == noisy]] = False
                log.debug("iterative level %.1f: dropped %d noise-like spikes", thr, int((lab == noisy).sum()))
    return keep


def _split_two(X: np.ndarray, p: ClusterParams, salt: int) -> np.ndarray | None:
    fit = _fit_subset(len(X), p, salt=salt)
    with quiet_fit():
        lab = _gmm(2, p).fit(X[fit]).predict(X)
    return lab if len(np.unique(lab)) == 2 else None


def _noise_half(X: np.ndarray, lab: np.ndarray, waves: np.ndarray | None, p: ClusterParams, level: int) -> int | None:
    """The half that is noise: low template SNR, or scattered (large residual) while the other half is clean and
    splitting it once more does not give two clean halves (two real units would)."""
    if waves is None:
        return None
    snr = [float(np.max(np.abs(waves[lab == k].mean(0)))) for k in (0, 1)]
    if min(snr) < p.min_snr:
        return int(np.argmin(snr))
    res = residual_variance(lab, waves)
    messy = [k for k in (0, 1) if res[k] > p.max_residual]
    if len(messy) != 1:
        return None
    k = messy[0]
    m = lab == k
    if m.sum() >= 2 * p.min_spikes:
        sub = _split_two(X[m], p, salt=100 + level)
        if sub is not None and all(v <= p.max_residual for v in residual_variance(sub, waves[m]).values()):
            return None
    return k


def _drop_small(labels: np.ndarray, min_spikes: int) -> np.ndarray:
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    small = ids[counts < min_spikes]
    return np.where(np.isin(labels, small), NOISE, labels) if small.size else labels


def drop_threshold_pileups(
    labels: np.ndarray, amplitude: np.ndarray, threshold: float, margin: float
) -> tuple[np.ndarray, list[int]]:
    """Units whose median |amplitude| lies less than ``margin`` noise sigma above the detection ``threshold`` are
    noise: threshold crossings of the noise pile up just above it (median about ``threshold + 0.7 / threshold``),
    while even a unit whose mean amplitude is the threshold has its detected half's median ~0.67 sigma above."""
    amp = np.abs(np.asarray(amplitude, dtype=np.float64))
    low = [int(k) for k in np.unique(labels) if k >= 0 and np.median(amp[labels == k]) < threshold + margin]
    return (np.where(np.isin(labels, low), NOISE, labels) if low else labels), low


def templates(labels: np.ndarray, waves: np.ndarray) -> dict[int, np.ndarray]:
    """Mean waveform per unit (noise units)."""
    return {int(k): waves[labels == k].mean(0) for k in np.unique(labels) if k >= 0}


def _drop_low_snr(labels: np.ndarray, waves: np.ndarray, min_snr: float) -> tuple[np.ndarray, list[int]]:
    """Waves are in noise units, so a template's peak |value| is its SNR; a low one is a noise cluster."""
    low = [k for k, t in templates(labels, waves).items() if float(np.max(np.abs(t))) < min_snr]
    return (np.where(np.isin(labels, low), NOISE, labels) if low else labels), low


def residual_variance(labels: np.ndarray, waves: np.ndarray) -> dict[int, float]:
    """Mean squared deviation of a unit's spikes from its template, in noise sigma^2 (about 1 for a clean unit)."""
    out = {}
    for k in np.unique(labels):
        if k >= 0:
            w = waves[labels == k]
            out[int(k)] = float(np.mean((w - w.mean(0)) ** 2))
    return out


def _drop_incoherent(labels: np.ndarray, waves: np.ndarray, max_residual: float) -> tuple[np.ndarray, list[int]]:
    """A cluster of overlaps or artifacts has spikes far from its mean: noise, not a unit."""
    bad = [k for k, v in residual_variance(labels, waves).items() if v > max_residual]
    return (np.where(np.isin(labels, bad), NOISE, labels) if bad else labels), bad


def merge_similar_units(
    labels: np.ndarray,
    waves: np.ndarray,
    similarity: float | None = None,
    amplitude_ratio: float | None = None,
    features: np.ndarray | None = None,
    max_dprime: float | None = None,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Merge unit pairs whose templates have cosine >= ``similarity`` and peak-to-peak ratio <= ``amplitude_ratio``
    and, given ``features``, whose clusters overlap there (d' along the line between their means < ``max_dprime``):
    similar templates alone also merge distinct units of near-equal size, which the embedding still separates.
    None takes the ``ClusterParams`` default (``cluster.merge_similarity``, ``merge_amplitude_ratio``,
    ``merge_max_dprime``).

    Greedy, most similar pair first, templates recomputed after each merge; returns (labels, merged pairs).
    """
    d = ClusterParams()
    similarity = d.merge_similarity if similarity is None else similarity
    amplitude_ratio = d.merge_amplitude_ratio if amplitude_ratio is None else amplitude_ratio
    max_dprime = d.merge_max_dprime if max_dprime is None else max_dprime
    labels = labels.copy()
    merged: list[tuple[int, int]] = []
    if similarity >= 1.0:
        return labels, merged
    while True:
        tpl = templates(labels, waves)
        ids = sorted(tpl)
        best, best_sim = None, similarity
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                sim, ratio = _template_similarity(tpl[a], tpl[b])
                if sim >= best_sim and ratio <= amplitude_ratio:
                    if features is not None and dprime(features[labels == a], features[labels == b]) >= max_dprime:
                        continue
                    best, best_sim = (a, b), sim
        if best is None:
            return labels, merged
        labels[labels == best[1]] = best[0]
        merged.append(best)


def merge_unimodal_units(
    labels: np.ndarray, features: np.ndarray, max_ratio: float | None = None, seed: int | None = None
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Merge unit pairs with no density dip between them (``valley_ratio`` above ``max_ratio``), the flattest
    pair first, ratios recomputed after each merge; returns (labels, merged pairs). ``max_ratio >= 1``: never.
    None takes the ``ClusterParams`` default (``cluster.merge_valley``, ``seed``)."""
    d = ClusterParams()
    max_ratio = d.merge_valley if max_ratio is None else max_ratio
    seed = d.seed if seed is None else seed
    labels = labels.copy()
    merged: list[tuple[int, int]] = []
    if max_ratio >= 1.0:
        return labels, merged
    rng = np.random.default_rng(seed)
    cache: dict[tuple[int, int], float] = {}
    while True:
        ids = [int(k) for k in np.unique(labels) if k >= 0]
        best, best_ratio = None, max_ratio
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                if (a, b) not in cache:
                    cache[(a, b)] = valley_ratio(features[labels == a], features[labels == b], rng)
                if cache[(a, b)] > best_ratio:
                    best, best_ratio = (a, b), cache[(a, b)]
        if best is None:
            return labels, merged
        labels[labels == best[1]] = best[0]
        merged.append(best)
        cache = {pair: r for pair, r in cache.items() if best[0] not in pair and best[1] not in pair}


def valley_ratio(xa: np.ndarray, xb: np.ndarray, rng: np.random.Generator | None = None, max_n: int = 3000) -> float:
    """Lowest density between two clusters' centres over the lower of the densities at the centres, in [0, 1].

    The spikes of both are projected on Fisher's discriminant axis; the density is a Gaussian KDE (Silverman's
    bandwidth from the within-cluster spread) binned on a fine grid. About 1: one unimodal cloud cut in two;
    near 0: two clusters with a gap. Each cluster is subsampled to ``max_n`` spikes (speed on hour-long data).
    """
    rng = rng or np.random.default_rng(0)
    if len(xa) < 3 or len(xb) < 3:
        return 0.0
    xa = xa[rng.choice(len(xa), max_n, replace=False)] if len(xa) > max_n else xa
    xb = xb[rng.choice(len(xb), max_n, replace=False)] if len(xb) > max_n else xb
    d = xa.shape[1]
    scatter = np.cov(xa.T).reshape(d, d) + np.cov(xb.T).reshape(d, d) + 1e-3 * np.eye(d)
    axis = np.linalg.solve(scatter, xa.mean(0) - xb.mean(0))
    axis /= np.linalg.norm(axis) or 1.0
    pa, pb = xa @ axis, xb @ axis
    p = np.concatenate([pa, pb])
    h = 1.06 * float(np.sqrt(0.5 * (pa.var() + pb.var()))) * len(p) ** -0.2
    if not h > 0:
        return 1.0
    lo, hi = sorted((float(np.median(pa)), float(np.median(pb))))
    if hi - lo > MAX_BANDWIDTHS * h:  # centres hundreds of kernel widths apart: a gap (and a grid too big to bin)
        return 0.0
    step = h / 8  # binned KDE: linear in the spikes, exact to well under 1 % at this bin width
    edges = np.arange(lo - 4 * h, hi + 4 * h + step, step)
    counts = np.histogram(p, bins=edges)[0].astype(np.float64)
    kernel = np.exp(-0.5 * (np.arange(-32, 33) * step / h) ** 2)
    dens = np.convolve(counts, kernel, mode="same")
    centres = 0.5 * (edges[:-1] + edges[1:])
    between = dens[(centres >= lo) & (centres <= hi)]
    if between.size < 2:
        return 1.0
    peak = min(between[0], between[-1])
    return float(between.min() / peak) if peak > 0 else 1.0


def dprime(xa: np.ndarray, xb: np.ndarray) -> float:
    """Separation of two clusters: distance of their means over the pooled std along the line joining them."""
    d = xa.mean(axis=0) - xb.mean(axis=0)
    norm = float(np.linalg.norm(d))
    if norm == 0:
        return 0.0
    pa, pb = xa @ (d / norm), xb @ (d / norm)
    spread = float(np.sqrt(0.5 * (pa.var() + pb.var())))
    return norm / spread if spread > 0 else float("inf")


def _template_similarity(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    cos = float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0
    pa, pb = float(np.ptp(a)), float(np.ptp(b))
    ratio = max(pa, pb) / min(pa, pb) if min(pa, pb) > 0 else np.inf
    return cos, ratio


def secondary_peaks(
    sample_index: np.ndarray, channel: np.ndarray, amplitude: np.ndarray, window: int, ratio: float
) -> np.ndarray:
    """Mask of echo events: within ``window`` samples of an event on the same channel at least ``ratio`` x larger.

    Band-pass ringing and after-potentials of a big spike cross the threshold again just after the dead time;
    clustered, those echoes would form extra, fake units. A true spike overlapping a much larger one is lost too
    (rare, and the price of clean units). ``ratio <= 0`` or ``window <= 0`` disables the check.
    """
    n = len(sample_index)
    echo = np.zeros(n, dtype=bool)
    if n < 2 or window <= 0 or ratio <= 0:
        return echo
    order = np.lexsort((sample_index, channel))
    t = np.asarray(sample_index, dtype=np.int64)[order]
    c = np.asarray(channel)[order]
    a = np.abs(np.asarray(amplitude, dtype=np.float64))[order]
    out = np.zeros(n, dtype=bool)
    for k in range(1, n):
        near = (c[k:] == c[:-k]) & (t[k:] - t[:-k] <= window)
        if not near.any():
            break
        i, j = np.flatnonzero(near), np.flatnonzero(near) + k  # pairs (i earlier, j later)
        out[i[a[j[:]] >= ratio * a[i]]] = True
        out[j[a[i] >= ratio * a[j]]] = True
    echo[order] = out
    return echo


def _renumber_by_size(labels: np.ndarray) -> np.ndarray:
    """Units 0..k-1, largest first (ties by old id): stable, readable numbering."""
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    lut = np.full(int(labels.max()) + 2 if labels.size else 1, NOISE, dtype=np.int64)
    lut[order] = np.arange(len(order))
    return np.where(labels >= 0, lut[np.maximum(labels, 0)], NOISE).astype(np.int64)
