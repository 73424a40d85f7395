"""Merge tests between units: near-identical templates whose clusters overlap (d'), pairs whose union is
unimodal on their discriminant axis (``valley_ratio``, ISO-SPLIT's test as a density valley-to-peak ratio), and,
given spike times, the refractory test (``coincidence_ratio``): the union of two neurons holds as many near-coincident
spikes as chance gives, one neuron's pieces hold none, whatever their spike counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepspike.sorting.clustering.cleanup import templates
from deepspike.sorting.clustering.params import ClusterParams

MAX_BANDWIDTHS = (
    200.0  # valley_ratio: clusters whose centres lie farther apart than this many KDE bandwidths have a gap
)
MIN_EXPECTED = 10.0  # coincidence_ratio: fewer chance coincidences than this expected: the test says nothing
MIN_EXPECTED_ABSENT = 50.0  # ... to read "none" (merge, or collisions) it needs more: similar neurons' collisions
# hide in the dead time, so a crowded minute (~10-50 expected) showed few; the report draw's 15-16-unit channels lost
# 2 units each at 10 (0.466 -> 0.316); an hour of two ~10 Hz units expects thousands
COLLISION_SHARE = 0.2  # drop_overlap_units: a collision cluster holds at most this share of its partner's spikes (an
# echo unit or a synchronous neuron as large as its partner is kept: the dev set's easy_00 lost two units without it)


@dataclass(frozen=True)
class Refractory:
    """Spike times (seconds) of the clustered spikes and the timing tests' options (``cluster.refractory_*``,
    ``cluster.merge_turns``)."""

    times: np.ndarray
    lags_ms: tuple[float, float]
    split: float  # coincidence ratio at or above which two units are two neurons (never merged)
    merge: float  # ratio at or below which two units with matching shapes are one neuron (merged)
    turns: float = 0.0  # time_overlap at or below which two units with matching shapes are one neuron (0 = off)
    span: float | None = None  # the recording's length (s); None = up to the last spike

    def ratio(self, a: np.ndarray, b: np.ndarray, min_expected: float = MIN_EXPECTED) -> float | None:
        """``coincidence_ratio`` of the spikes selected by masks ``a`` and ``b``."""
        return coincidence_ratio(self.times[a], self.times[b], self.lags_ms, min_expected)

    def two_neurons(self, a: np.ndarray, b: np.ndarray) -> bool:
        r = self.ratio(a, b)
        return r is not None and r >= self.split

    def one_neuron(self, a: np.ndarray, b: np.ndarray) -> bool:
        r = self.ratio(a, b, MIN_EXPECTED_ABSENT)
        return r is not None and r <= self.merge

    def take_turns(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether the two units fire in turns (the parts of one neuron that drift cut by amplitude)."""
        if self.turns <= 0:
            return False
        span = self.span if self.span is not None else float(self.times.max(initial=0.0))
        return time_overlap(np.sort(self.times[a]), np.sort(self.times[b]), span) <= self.turns


def merge_similar_units(
    labels: np.ndarray,
    waves: np.ndarray,
    similarity: float | None = None,
    amplitude_ratio: float | None = None,
    features: np.ndarray | None = None,
    max_dprime: float | None = None,
    refractory: Refractory | None = None,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Merge unit pairs whose templates have cosine >= ``similarity`` and peak-to-peak ratio <= ``amplitude_ratio``
    and, given ``features``, whose clusters overlap there (d' along the line between their means < ``max_dprime``):
    similar templates alone also merge distinct units of near-equal size, which the embedding still separates.
    Given ``refractory``, a pair whose union fires as two neurons do is never merged, and a pair of similar
    templates whose union keeps the refractory period is merged whatever its amplitude ratio and d' (pieces of one
    neuron cut by amplitude drift). None takes the ``ClusterParams`` default (``cluster.merge_similarity``,
    ``merge_amplitude_ratio``, ``merge_max_dprime``).

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
                if sim >= best_sim and _mergeable(labels == a, labels == b, ratio, features, refractory,
                                                  amplitude_ratio, max_dprime):  # fmt: skip
                    best, best_sim = (a, b), sim
        if best is None:
            return labels, merged
        labels[labels == best[1]] = best[0]
        merged.append(best)


def _mergeable(
    a: np.ndarray,
    b: np.ndarray,
    ratio: float,
    features: np.ndarray | None,
    refractory: Refractory | None,
    amplitude_ratio: float,
    max_dprime: float,
) -> bool:
    """Whether two units of similar templates (masks ``a``, ``b``) are one: see ``merge_similar_units``."""
    if refractory is not None:
        if refractory.two_neurons(a, b):
            return False
        if refractory.one_neuron(a, b) or refractory.take_turns(a, b):
            return True
    if ratio > amplitude_ratio:
        return False
    return features is None or dprime(features[a], features[b]) < max_dprime


def merge_unimodal_units(
    labels: np.ndarray,
    features: np.ndarray,
    max_ratio: float | None = None,
    seed: int | None = None,
    refractory: Refractory | None = None,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Merge unit pairs with no density dip between them (``valley_ratio`` above ``max_ratio``), the flattest
    pair first, ratios recomputed after each merge; returns (labels, merged pairs). ``max_ratio >= 1``: never.
    Given ``refractory``, a pair whose union fires as two neurons do is not merged (two neurons drifting through the
    same amplitudes leave no dip). None takes the ``ClusterParams`` default (``cluster.merge_valley``, ``seed``)."""
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
                    ma, mb = labels == a, labels == b
                    two = refractory is not None and refractory.two_neurons(ma, mb)
                    cache[(a, b)] = 0.0 if two else valley_ratio(features[ma], features[mb], rng)
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


def drop_overlap_units(labels: np.ndarray, refractory: Refractory, max_ratio: float) -> tuple[np.ndarray, list[int]]:
    """Units whose spikes fall near the spikes of a unit ``1 / COLLISION_SHARE`` times larger ``max_ratio`` times more
    often than chance (collisions of two spikes, echoes of a big one) set to noise; template matching then resolves
    those spikes. Their number grows with the recording (thousands in an hour), so unlike in a minute they form
    clusters of their own."""
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    order = [int(u) for u in ids[np.argsort(-counts, kind="stable")]]
    size = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    dropped: list[int] = []
    for i, u in enumerate(order):
        mu = labels == u
        for v in order[:i]:
            small = size[u] <= COLLISION_SHARE * size[v]
            r = refractory.ratio(mu, labels == v, MIN_EXPECTED_ABSENT) if small and v not in dropped else None
            if r is not None and r >= max_ratio:
                dropped.append(u)
                break
    return (np.where(np.isin(labels, dropped), -1, labels) if dropped else labels), dropped


def time_overlap(ta: np.ndarray, tb: np.ndarray, span: float, per_bin: int = 10, max_bins: int = 50) -> float:
    """Share of two spike trains' time histograms in common, in [0, 1]: about 1 for two neurons firing through the
    recording, near 0 for the parts of one neuron that drift split, which fire in turns (one while the probe is
    up, the other while it is down). Bins hold ``per_bin`` spikes of the smaller train on average (at most
    ``max_bins``); below 4 bins the trains are too short to tell and 1 is returned (no merge).

    Measured on generated drifting probes (dev seeds 101, 102: 64 channels, 60 s, +-25 um, corrected): the split
    parts of one neuron 0.00-0.35, two neurons with matching templates 0.45-0.89, fragments of a static unit 0.65+.
    Times in any unit, ``span`` (the recording's length) in the same.
    """
    bins = min(max_bins, min(len(ta), len(tb)) // per_bin)
    if bins < 4:
        return 1.0
    ha = np.histogram(ta, bins, (0.0, span))[0] / len(ta)
    hb = np.histogram(tb, bins, (0.0, span))[0] / len(tb)
    return float(np.minimum(ha, hb).sum())


def coincidence_ratio(
    ta: np.ndarray, tb: np.ndarray, lags_ms: tuple[float, float], min_expected: float = MIN_EXPECTED
) -> float | None:
    """Near-coincident spikes of two trains (times in seconds: consecutive spikes of their union at lags in
    ``lags_ms``) over the count two independent trains give by chance; None when chance gives under
    ``min_expected`` (too few spikes or too short a recording to tell). About 1: two neurons; about 0: one neuron's
    pieces (its refractory period). The lower lag skips the detector's dead time, where no pair survives."""
    if len(ta) == 0 or len(tb) == 0:
        return None
    lo, hi = lags_ms[0] / 1000.0, lags_ms[1] / 1000.0
    t = np.concatenate([ta, tb])
    span = float(np.ptp(t))
    expected = 2.0 * (hi - lo) * len(ta) * len(tb) / span if span > 0 else 0.0
    if expected < min_expected:
        return None
    order = np.argsort(t, kind="stable")
    which = np.concatenate([np.zeros(len(ta), bool), np.ones(len(tb), bool)])[order]
    gaps = np.diff(t[order])
    cross = (which[1:] != which[:-1]) & (gaps >= lo) & (gaps < hi)
    return float(cross.sum()) / expected


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
