"""Training-time health of an embedding: how well a GMM separates labelled units (``gmm_scores``) and whether
the parent encoder's well-separated groups stay apart (``split_purity``), combined in ``CollapseMetric``, which
validation, the collapse guard and in-memory fine-tuning read.
"""

from __future__ import annotations

import numpy as np

from deepspike.evaluation.compare import matched_accuracy


def gmm_scores(emb: np.ndarray, labels: np.ndarray, seed: int = 0, max_spikes: int = 5000) -> tuple[float, float]:
    """GMM on embeddings with as many components as ground-truth units -> (matched accuracy, ARI).

    Uses the true unit count: the metric tracks how separable the embedding makes the units, not model
    selection (that is the sorter's job). Non-finite embeddings score -1 (a collapsed or diverged net).
    """
    from sklearn.metrics import adjusted_rand_score

    from deepspike.sorting.clustering.mixture import fit_gmm

    emb, labels = np.asarray(emb, dtype=np.float64), np.asarray(labels)
    if not np.all(np.isfinite(emb)):
        return -1.0, -1.0
    keep = labels >= 0
    emb, labels = emb[keep], labels[keep]
    if len(labels) > max_spikes:
        idx = np.random.default_rng(seed).choice(len(labels), max_spikes, replace=False)
        emb, labels = emb[idx], labels[idx]
    k = len(np.unique(labels))
    if k < 2 or len(labels) < 4 * k:
        return float("nan"), float("nan")
    pred = fit_gmm(emb, k, seed=seed).predict(emb)
    return matched_accuracy(labels, pred), float(adjusted_rand_score(labels, pred))


def reference_clusters(emb: np.ndarray, seed: int = 0, max_k: int = 8) -> tuple[int, np.ndarray]:
    """(k, labels): the parent embedding's well-separated groups, the label-free collapse guard's reference.

    k maximizes the silhouette of a k-GMM (not BIC: BIC over-splits units into arbitrary sub-clusters, whose
    boundaries move under any harmless change, so "recovering" them measures noise). Merging well-separated
    groups is what a collapse does, and what the guard must catch.
    """
    from sklearn.metrics import silhouette_score

    from deepspike.sorting.clustering.mixture import fit_gmm

    x = np.asarray(emb, dtype=np.float64)
    best: tuple[float, int, np.ndarray] = (-np.inf, 1, np.zeros(len(x), dtype=np.int64))
    for k in range(2, max_k + 1):
        if len(x) < 10 * k:
            break
        labels = fit_gmm(x, k, seed=seed).predict(x)
        if len(np.unique(labels)) < 2:
            continue
        sil = float(silhouette_score(x, labels))
        if sil > best[0]:
            best = (sil, k, labels)
    return best[1], best[2]


def split_purity(emb: np.ndarray, reference: np.ndarray, k: int, seed: int = 0, max_spikes: int = 3000) -> float:
    """Fraction of spikes whose component of a ``2k``-GMM on ``emb`` is mostly their own ``reference`` group.

    1.0 when every reference group stays apart (however it is split), lower when groups are merged: a collapse.
    """
    from deepspike.sorting.clustering.mixture import fit_gmm

    emb = np.asarray(emb, dtype=np.float64)
    reference = np.asarray(reference)
    if not np.all(np.isfinite(emb)):
        return -1.0
    if len(emb) > max_spikes:
        idx = np.random.default_rng(seed).choice(len(emb), max_spikes, replace=False)
        emb, reference = emb[idx], reference[idx]
    if k < 2 or len(emb) < 20 * k:
        return float("nan")
    pred = fit_gmm(emb, 2 * k, seed=seed).predict(emb)
    kept = sum(int(np.bincount(reference[pred == c]).max()) for c in np.unique(pred))
    return kept / len(emb)


class CollapseMetric:
    """The collapse guard's score of embeddings of fixed held-out spikes; higher is better.

    With ground-truth ``labels``: GMM matched accuracy at the true unit count (``gmm_scores``). Without: the first
    embedding scored (the parent's) fixes the reference, its well-separated groups (``reference_clusters``), and
    every embedding is scored by ``split_purity`` against them. Splitting a group is allowed (that is what
    adaptation is for); merging groups is a collapse. Shared by the sort path (``finetune``) and the corpus path
    (``train.CollapseGuard``).
    """

    def __init__(self, labels: np.ndarray | None = None, seed: int = 0, max_spikes: int = 3000) -> None:
        self.labels = None if labels is None or not (np.asarray(labels) >= 0).any() else np.asarray(labels)
        self.seed, self.max_spikes = seed, max_spikes
        self.k: int | None = None
        self.reference: np.ndarray | None = None

    @property
    def name(self) -> str:
        return "gmm_accuracy" if self.labels is not None else f"parent_split_purity_k{self.k}"

    def __call__(self, emb: np.ndarray) -> float:
        if self.labels is not None:
            return gmm_scores(emb, self.labels, self.seed, self.max_spikes)[0]
        if self.reference is None:
            self.k, self.reference = reference_clusters(emb, self.seed)
        return split_purity(emb, self.reference, self.k, self.seed, self.max_spikes)
