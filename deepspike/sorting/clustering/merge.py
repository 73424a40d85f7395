"""Merge tests between units: near-identical templates whose clusters overlap (d'), and pairs whose union is
unimodal on their discriminant axis (``valley_ratio``, ISO-SPLIT's test as a density valley-to-peak ratio).
"""

from __future__ import annotations

import numpy as np

from deepspike.sorting.clustering.cleanup import templates
from deepspike.sorting.clustering.params import ClusterParams

MAX_BANDWIDTHS = (
    200.0  # valley_ratio: clusters whose centres lie farther apart than this many KDE bandwidths have a gap
)


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
