"""Clustering on plain arrays (no model, no recording): methods, noise handling, merging, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from deepspike.errors import DeepSpikeError
from deepspike.sorting.clustering.cleanup import secondary_peaks
from deepspike.sorting.clustering.cluster import cluster_spikes
from deepspike.sorting.clustering.merge import merge_similar_units, valley_ratio
from deepspike.sorting.clustering.params import METHODS, NOISE, ClusterParams

L = 20
T = np.arange(L) - 8.0


def _templates() -> np.ndarray:
    """Three clearly different shapes in noise units: narrow negative, broad positive, slow biphasic."""
    return np.stack(
        [
            -20 * np.exp(-0.5 * (T / 1.5) ** 2),
            12 * np.exp(-0.5 * (T / 3.0) ** 2),
            -9 * np.exp(-0.5 * (T / 4.0) ** 2) + 4 * np.exp(-0.5 * ((T - 8) / 2.0) ** 2),
        ]
    ).astype(np.float32)


def _blobs(n_per: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, waves, true labels): waves are templates + unit noise; features their first 6 PCs."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per)
    waves = (_templates()[y] + rng.normal(0, 1, (len(y), L))).astype(np.float32)
    centered = waves - waves.mean(0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    return centered @ vt[:6].T, waves, y


def _purity(labels: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of spikes whose unit's majority truth equals their truth (noise counts as wrong)."""
    good = 0
    for u in np.unique(labels[labels >= 0]):
        good += np.bincount(truth[labels == u]).max()
    return good / len(truth)


@pytest.mark.parametrize("branch_dims", [0, 4])
@pytest.mark.parametrize("method", METHODS)
def test_methods_recover_three_units(method: str, branch_dims: int) -> None:
    """Every method, with and without the branch re-split (whose local fits are GMM-BIC for any method: HDBSCAN's
    own made each lone unit noise, a DP mixture cut each into pieces)."""
    x, waves, y = _blobs()
    res = cluster_spikes(x, waves, params=ClusterParams(method=method, branch_dims=branch_dims))
    assert res.n_units == 3, res.info
    assert _purity(res.labels, y) > 0.95


def test_deterministic_per_seed() -> None:
    x, waves, _ = _blobs(seed=1)
    a = cluster_spikes(x, waves, params=ClusterParams(method="gmm", seed=3)).labels
    b = cluster_spikes(x, waves, params=ClusterParams(method="gmm", seed=3)).labels
    np.testing.assert_array_equal(a, b)


def test_subsampled_fit_predicts_every_spike() -> None:
    x, waves, y = _blobs(n_per=400)
    res = cluster_spikes(x, waves, params=ClusterParams(max_fit_spikes=300))
    assert res.n_units == 3 and _purity(res.labels, y) > 0.95


def test_noise_cluster_gets_no_unit() -> None:
    """Scattered, incoherent events (artifacts) must not be spread over the real units."""
    _x, waves, y = _blobs()
    rng = np.random.default_rng(5)
    junk = rng.normal(0, 6, (120, L)).astype(np.float32)
    junk[:, 8] = 8 * np.sign(rng.normal(size=120))  # peak-aligned, like detected artifacts
    all_waves = np.concatenate([waves, junk])
    c = all_waves - all_waves.mean(0)
    feats = c @ np.linalg.svd(c, full_matrices=False)[2][:6].T
    res = cluster_spikes(feats, all_waves, params=ClusterParams(method="gmm"))
    labels = res.labels
    assert res.n_units == 3, res.info
    assert (labels[len(y) :] == NOISE).mean() > 0.8
    assert _purity(labels[: len(y)], y) > 0.9


def test_merge_near_duplicates() -> None:
    _, waves, y = _blobs()
    split = np.where(y == 0, np.arange(len(y)) % 2 * 3, y)  # unit 0 split into 0 and 3
    merged, pairs = merge_similar_units(split, waves, 0.95)  # the default (1.0) merges none: tested below
    assert pairs == [(0, 3)]
    assert len(np.unique(merged)) == 3
    same_shape_bigger = np.concatenate([waves, 2 * waves[y == 0]])
    labels = np.concatenate([y, np.full((y == 0).sum(), 5)])
    _, pairs = merge_similar_units(labels, same_shape_bigger, 0.95)
    assert pairs == []  # same shape, twice the amplitude: another unit


def test_secondary_peaks() -> None:
    t = np.array([100, 130, 1000, 1020, 5000])
    amp = np.array([-30.0, 6.0, -8.0, -7.0, 5.5])
    echo = secondary_peaks(t, np.zeros(5, int), amp, window=24, ratio=2.0)
    np.testing.assert_array_equal(echo, [False, False, False, False, False])
    echo = secondary_peaks(t, np.zeros(5, int), amp, window=40, ratio=2.0)
    np.testing.assert_array_equal(echo, [False, True, False, False, False])
    echo = secondary_peaks(t, np.array([0, 1, 0, 0, 0]), amp, window=40, ratio=2.0)
    assert not echo.any()  # other channel: not an echo


def test_too_few_spikes_warns_not_crashes() -> None:
    x, waves, _ = _blobs(n_per=8)
    with pytest.warns(UserWarning, match="allow at most"):
        res = cluster_spikes(x, waves, params=ClusterParams(min_spikes=10))
    assert res.n_units <= 2
    with pytest.warns(UserWarning, match="no unit formed"):
        res = cluster_spikes(x[:5], waves[:5])
    assert res.n_units == 0 and (res.labels == NOISE).all()
    empty = cluster_spikes(np.zeros((0, 6)), np.zeros((0, L), np.float32))
    assert empty.n_units == 0 and empty.labels.shape == (0,)


def test_per_channel_units_are_distinct() -> None:
    x, waves, _y = _blobs(n_per=100)
    ch = np.r_[np.zeros(150, int), np.ones(150, int)]
    res = cluster_spikes(x, waves, channel=ch)
    for u in np.unique(res.labels[res.labels >= 0]):
        assert len(np.unique(ch[res.labels == u])) == 1


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"method": "spectral"}, "unknown clustering method"),
        ({"max_units": 0}, "positive integer"),
        ({"merge_similarity": 1.5}, "merge_similarity"),
        ({"merge_valley": 0}, "merge_valley"),
        ({"bogus": 1}, "unknown cluster option"),
        ({"branch_dims": -1}, "branch_dims"),
    ],
)
def test_params_are_validated(options: dict, match: str) -> None:
    with pytest.raises(DeepSpikeError, match=match):
        ClusterParams.from_dict(options)


def test_bad_embeddings() -> None:
    with pytest.raises(DeepSpikeError, match="NaN"):
        cluster_spikes(np.full((30, 3), np.nan))
    with pytest.raises(DeepSpikeError, match="2-D"):
        cluster_spikes(np.zeros(30))


def test_merge_keeps_units_the_features_separate() -> None:
    """Same template shape, 10 % apart in size: templates alone merge them; the d' gate keeps them apart."""
    from deepspike.sorting.clustering.merge import dprime, merge_similar_units

    rng = np.random.default_rng(0)
    shape = np.sin(np.linspace(0, np.pi, 20))
    labels = np.repeat([0, 1], 300)
    waves = np.where(labels[:, None] == 0, 10.0, 11.0) * shape + rng.normal(0, 0.3, (600, 20))
    feats = np.c_[np.where(labels == 0, 0.0, 8.0), np.zeros(600)] + rng.normal(0, 1, (600, 2))
    assert dprime(feats[labels == 0], feats[labels == 1]) > 6
    merged, pairs = merge_similar_units(labels, waves, 0.95, 1.25)
    assert pairs == [(0, 1)] and set(merged) == {0}
    kept, pairs = merge_similar_units(labels, waves, 0.95, 1.25, feats, max_dprime=3.0)
    assert pairs == [] and np.array_equal(kept, labels)
    halves = np.c_[rng.normal(0, 1, 600), np.zeros(600)]  # one blob cut in two: overlapping halves
    split = (halves[:, 0] > 0).astype(int)
    assert merge_similar_units(split, np.tile(10 * shape, (600, 1)), 0.95, 1.25, halves, 3.0)[1] == [(0, 1)]


def _banana(n: int, rng: np.random.Generator) -> np.ndarray:
    """One curved, unimodal cloud (an arc of radius 6, 120 degrees), like a unit whose shape drifts with amplitude."""
    angle = rng.uniform(-np.pi / 3, np.pi / 3, n)
    return np.c_[6 * np.cos(angle), 6 * np.sin(angle)] + rng.normal(0, 0.4, (n, 2))


def test_valley_ratio_tells_one_cloud_from_two() -> None:
    from deepspike.sorting.clustering.merge import valley_ratio

    rng = np.random.default_rng(0)
    arc = _banana(2000, rng)
    piece = (arc[:, 1] > 0).astype(int)  # the arc cut in the middle: no dip between the halves
    assert valley_ratio(arc[piece == 0], arc[piece == 1]) > 0.8
    a, b = rng.normal(0, 1, (1500, 2)), rng.normal(0, 1, (300, 2)) + np.array([5.0, 0.0])  # two units, unequal sizes
    assert valley_ratio(a, b) < 0.2


def test_unimodal_merge_undoes_bic_oversplitting() -> None:
    """A curved unit makes BIC split it into pieces; merge_valley puts them back, a real unit stays apart."""
    rng = np.random.default_rng(1)
    feats = np.r_[_banana(1500, rng), rng.normal(0, 0.5, (500, 2)) + np.array([-3.0, 0.0])]
    truth = np.repeat([0, 1], [1500, 500])
    off = cluster_spikes(feats, params=ClusterParams(merge_valley=1.0, min_spikes=15))
    on = cluster_spikes(feats, params=ClusterParams(merge_valley=0.6, min_spikes=15))  # default 0.8 keeps the arc split
    assert off.n_units >= 3  # the arc alone takes several Gaussian components
    assert on.n_units == 2 and on.info["channels"][0]["merged_unimodal"]
    assert adjusted_rand_score(truth, on.labels) > 0.95


def test_merge_defaults_follow_the_config() -> None:
    """Called with its defaults, ``merge_similar_units`` uses conf/cluster/common.yaml's merge_max_dprime (2.0),
    so it keeps two units its features separate (it used to default to d' = inf and merged them)."""
    rng = np.random.default_rng(0)
    shape = np.sin(np.linspace(0, np.pi, 20))
    labels = np.repeat([0, 1], 300)
    waves = np.where(labels[:, None] == 0, 10.0, 11.0) * shape + rng.normal(0, 0.3, (600, 20))
    feats = np.c_[np.where(labels == 0, 0.0, 8.0), np.zeros(600)] + rng.normal(0, 1, (600, 2))
    kept, pairs = merge_similar_units(labels, waves, 0.95, features=feats)
    assert pairs == [] and np.array_equal(kept, labels)
    p = ClusterParams()
    explicit = merge_similar_units(labels, waves, 0.95, p.merge_amplitude_ratio, feats, 1e9)
    assert explicit[1] == [(0, 1)]  # the same call with the d' gate off merges: the default is what keeps them


def test_many_units_on_one_channel_are_all_found() -> None:
    """28 well-separated clusters of one channel: the units cap (cluster.max_units, 10 before: 10 units found) lets
    BIC find them all."""
    rng = np.random.default_rng(0)
    k, per, d = 28, 120, 8
    centres = rng.normal(size=(k, d)) * 12.0
    emb = np.concatenate([c + rng.normal(size=(per, d)) for c in centres])
    truth = np.repeat(np.arange(k), per)
    result = cluster_spikes(emb, params=ClusterParams(seed=0))
    assert abs(result.n_units - k) <= 2, result.info
    # the found units are the true clusters: each holds spikes of one true cluster
    purity = [np.bincount(truth[result.labels == u]).max() / (result.labels == u).sum() for u in range(result.n_units)]
    assert np.median(purity) > 0.95


def test_valley_ratio_of_tight_far_clusters_is_a_gap() -> None:
    """Two tight clusters far apart (degenerate features of noise crossings): a gap, not a grid of 10^12 bins."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1e-9, (200, 2)), rng.normal(0, 1e-9, (200, 2)) + np.array([5.0, 0.0])
    assert valley_ratio(a, b) == 0.0


def test_branch_splits_a_unit_whose_parts_differ_in_a_low_variance_direction() -> None:
    """Two units 6 sigma apart along one axis, sharing a broad spread along another: re-clustered in their own
    principal components they come apart; a single Gaussian cloud stays whole."""
    from deepspike.sorting.clustering.cluster import _branch

    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1], 400)
    x = rng.normal(0, 1, (800, 8))
    x[:, 0] *= 4.0  # the shared broad direction (e.g. amplitude)
    x[:, 5] += np.where(truth == 0, -3.0, 3.0)
    p = ClusterParams(branch_dims=3)
    split = _branch(x, np.zeros(800, dtype=np.int64), p)
    assert len(np.unique(split[split >= 0])) == 2
    assert adjusted_rand_score(truth[split >= 0], split[split >= 0]) > 0.95
    whole = _branch(x[truth == 0], np.zeros(400, dtype=np.int64), p)
    assert set(np.unique(whole)) <= {0, NOISE} and (whole == 0).mean() > 0.99


def test_branch_finds_more_of_a_crowded_channel() -> None:
    """Ten generated units on one channel (a seed outside bench/embedding.py's draws): the re-split recovers units
    the global fit leaves merged."""
    from deepspike.evaluation.compare import compare_labels
    from deepspike.recording.synthetic import generate_recording
    from deepspike.sorting.features import pca_features
    from deepspike.spec import WindowSpec
    from deepspike.spikes.extract import extract_spikes

    rec, gt = generate_recording(4242, duration_s=20.0, num_units=10, snr_range=(5.0, 30.0))
    spikes = extract_spikes(rec, spec=WindowSpec(), gt=gt)
    keep = spikes.labels >= 0
    waves, truth = spikes.waves[keep], spikes.labels[keep]
    feats = pca_features(waves, WindowSpec(), 8)
    acc = {
        dims: float(
            compare_labels(truth, cluster_spikes(feats, waves, params=ClusterParams(branch_dims=dims)).labels)[
                "accuracy"
            ].mean()
        )
        for dims in (0, 4)
    }
    assert acc[4] > acc[0] + 0.1, acc


def test_branch_never_splits_off_a_part_too_small_to_be_a_unit() -> None:
    """A 30-spike unit whose local fit would cut off 10 spikes stays whole: the part would be dropped as noise below
    cluster.min_spikes=15, losing those spikes (a whole unit of the Quiroga excerpt was lost this way)."""
    from deepspike.sorting.clustering.cluster import _branch

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (30, 6))
    x[:10, 2] += 8.0
    labels = _branch(x, np.zeros(30, dtype=np.int64), ClusterParams(branch_dims=3, min_spikes=15))
    assert (labels == 0).all()
    bigger = np.r_[x, rng.normal(0, 1, (20, 6)) + np.eye(6)[2] * 8.0]  # now 30 + 20: both parts are units
    assert len(np.unique(_branch(bigger, np.zeros(50, dtype=np.int64), ClusterParams(branch_dims=3)))) == 2
