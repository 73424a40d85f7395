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

Given spike ``times`` (single-channel sorts), the merges also ask the spikes' timing (``cluster.refractory_*``),
a test whose answer does not grow with the spike count as BIC, d' and density valleys do: two neurons firing along
each other leave about the chance count of near-coincident spikes (0.5-2 ms apart) between their clusters, pieces of
one neuron leave none. Pieces of one neuron (similar templates: cut by BIC on tens of thousands of spikes, or by a
slow amplitude drift) are merged whatever their amplitude ratio and d'; pairs that fire as two neurons are never
merged; a small cluster whose spikes sit next to a much larger unit's far more often than chance (collisions, echoes:
thousands in an hour) is noise.

The published iterative scheme (``iterative=True``) runs before step 1: for thresholds from high to low, the
spikes above the threshold are split in two and the component that looks like noise (low template SNR, large
residual or broad) is dropped; the survivors then get the final clustering.

Before all this, ``secondary_peaks`` flags echoes (threshold crossings of a big spike's ringing just after the
detector's dead time) so they do not form fake units.

Everything is seeded by ``seed``: the same input and parameters give the same labels.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from deepspike.errors import DeepSpikeError
from deepspike.sorting.clustering.cleanup import (
    _drop_incoherent,
    _drop_low_snr,
    _drop_small,
    drop_threshold_pileups,
    residual_variance,
)
from deepspike.sorting.clustering.gmm import _gmm
from deepspike.sorting.clustering.merge import (
    Refractory,
    drop_overlap_units,
    merge_similar_units,
    merge_unimodal_units,
)
from deepspike.sorting.clustering.methods import propose
from deepspike.sorting.clustering.mixture import fit_subset, quiet_fit
from deepspike.sorting.clustering.params import NOISE, ClusterParams

log = logging.getLogger(__name__)

FEW_UNITS = 5  # a channel whose spikes allow fewer units than this (at cluster.min_spikes each) gets a warning
BRANCH_DEPTH = 3  # re-split levels of cluster.branch_dims (the dev draw's choice was made with 3)


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
    times: np.ndarray | None = None,
) -> ClusterResult:
    """Cluster spikes channel by channel; ``waves`` (noise units) enable the SNR check and the merge;
    ``amplitude`` (noise units) with the detection ``threshold`` the pile-up check (``cluster.noise_margin``);
    ``n_jobs`` threads fit the mixtures of the BIC sweep (same result for any count); ``times`` (seconds) the
    refractory test of the merges (``cluster.refractory_*``)."""
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
        t = None if times is None else np.asarray(times, dtype=np.float64)
        if t is not None and t.shape != (n,):
            raise DeepSpikeError(f"times must hold one time (seconds) per spike ({n}), got shape {t.shape}")
        return _cluster_channels(emb, waves, channel, amplitude, params, threshold, n_jobs, t)


def _cluster_channels(
    emb: np.ndarray,
    waves: np.ndarray | None,
    channel: np.ndarray,
    amplitude: np.ndarray | None,
    params: ClusterParams,
    threshold: float | None = None,
    n_jobs: int = 1,
    times: np.ndarray | None = None,
) -> ClusterResult:
    n = emb.shape[0]
    labels = np.full(n, NOISE, dtype=np.int64)
    info: dict[str, Any] = {"method": params.method, "channels": {}}
    next_id = 0
    for ch in np.unique(channel):
        idx = np.flatnonzero(channel == ch)
        w = None if waves is None else waves[idx]
        a = None if amplitude is None else np.asarray(amplitude)[idx]
        t = None if times is None else times[idx]
        lab, ch_info = _cluster_one_channel(emb[idx], w, a, params, threshold, n_jobs, t)
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
    times: np.ndarray | None = None,
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
    sub, sub_info = propose(X[keep], kmax, p, n_jobs)
    info.update(sub_info)
    if p.branch_dims:
        sub = _branch(X[keep], sub, p, n_jobs=n_jobs)
        info["branch_units"] = int(sub.max()) + 1 if (sub >= 0).any() else 0
    labels[keep] = sub
    labels = _drop_small(labels, p.min_spikes)
    if amplitude is not None and threshold is not None:
        labels, info["dropped_pileup"] = drop_threshold_pileups(labels, amplitude, threshold, p.noise_margin)
    refractory = _refractory(times, p)
    if waves is not None:
        labels, info["dropped_low_snr"] = _drop_low_snr(labels, waves, p.min_snr)
        labels, info["dropped_incoherent"] = _drop_incoherent(labels, waves, p.max_residual)
        labels, info["merged"] = merge_similar_units(
            labels, waves, p.merge_similarity, p.merge_amplitude_ratio, X, p.merge_max_dprime, refractory
        )
    labels, info["merged_unimodal"] = merge_unimodal_units(labels, X, p.merge_valley, p.seed, refractory)
    if refractory is not None and np.isfinite(p.refractory_overlap):
        labels, info["dropped_overlap"] = drop_overlap_units(labels, refractory, p.refractory_overlap)
    return labels, info


def _refractory(times: np.ndarray | None, p: ClusterParams) -> Refractory | None:
    """The merges' refractory test, when spike times are known and ``cluster.refractory_ms`` is set."""
    if times is None or p.refractory_ms is None:
        return None
    lags = (float(p.refractory_ms[0]), float(p.refractory_ms[1]))
    return Refractory(times, lags, p.refractory_split, p.refractory_merge, p.merge_turns)


def _standardize(emb: np.ndarray) -> np.ndarray:
    """Center and divide by one global scale: keeps the geometry (no per-dim whitening of noise dims)."""
    X = emb - np.median(emb, axis=0)
    scale = float(np.sqrt(np.mean(np.var(X, axis=0))))
    return X / scale if scale > 0 else X


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
    gmm = replace(p, method="gmm")
    sub, _ = propose(local, max(1, min(p.max_units, n // p.min_spikes)), gmm, n_jobs)
    sizes = np.bincount(sub[sub >= 0])
    if np.count_nonzero(sizes) <= 1 or sizes[sizes > 0].min() < p.min_spikes:
        # one cloud, or a split leaving a part too small to be a unit (it would be dropped as noise and the unit
        # lost: the 30-spike unit of the Quiroga excerpt, tests/test_sort.py): the unit stays whole
        return np.zeros(n, dtype=np.int64)
    return _branch(X, sub, p, depth + 1, n_jobs)


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
    fit = fit_subset(len(X), p, salt=salt)
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


def _renumber_by_size(labels: np.ndarray) -> np.ndarray:
    """Units 0..k-1, largest first (ties by old id): stable, readable numbering."""
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    lut = np.full(int(labels.max()) + 2 if labels.size else 1, NOISE, dtype=np.int64)
    lut[order] = np.arange(len(order))
    return np.where(labels >= 0, lut[np.maximum(labels, 0)], NOISE).astype(np.int64)
