"""Hour-long channels (issue 24): a unit's spike count or slow amplitude drift does not cut it into several units,
and two concurrent neurons still split. Synthetic waveforms and spike times, no recording (fast)."""

from __future__ import annotations

import numpy as np
import pytest

from deepspike.errors import DeepSpikeError
from deepspike.sorting.clustering.cluster import cluster_spikes
from deepspike.sorting.clustering.merge import MIN_EXPECTED_ABSENT, coincidence_ratio
from deepspike.sorting.clustering.params import ClusterParams

L = 20
T = np.arange(L) - 8.0
HOUR = 3600.0


def _train(rate: float, rng: np.random.Generator, duration: float = HOUR) -> np.ndarray:
    """Spike times (s) of a neuron with a 3 ms refractory period."""
    isi = 0.003 + rng.exponential(1.0 / rate, int(rate * duration * 1.2))
    t = np.cumsum(isi)
    return t[t < duration]


def _unit(template: np.ndarray, times: np.ndarray, gain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (gain[:, None] * template + rng.normal(0, 1, (len(times), L))).astype(np.float32)


def _features(waves: np.ndarray) -> np.ndarray:
    centered = waves - waves.mean(0)
    _, _, vt = np.linalg.svd(centered[:: max(1, len(waves) // 5000)], full_matrices=False)
    return centered @ vt[:6].T


def _sort(waves: np.ndarray, times: np.ndarray, **kw: float) -> np.ndarray:
    order = np.argsort(times)
    res = cluster_spikes(_features(waves[order]), waves[order], params=ClusterParams(**kw), times=times[order])
    labels = np.empty_like(res.labels)
    labels[order] = res.labels
    return labels


def test_coincidences_tell_one_neuron_from_two() -> None:
    rng = np.random.default_rng(0)
    a, b = _train(12.0, rng), _train(15.0, rng)
    assert 0.7 < coincidence_ratio(a, b, (0.5, 2.0)) < 1.3  # two independent neurons: chance
    half = rng.random(len(a)) < 0.5
    assert coincidence_ratio(a[half], a[~half], (0.5, 2.0)) == 0.0  # one neuron's pieces: refractory
    assert coincidence_ratio(a[:5], b[:5], (0.5, 2.0)) is None  # too few spikes to tell


def test_a_crowded_minute_is_too_short_to_read_no_coincidence_as_one_neuron() -> None:
    """Two 8 Hz neurons over 60 s expect ~12 chance coincidences: enough to call them two, not to merge on none."""
    rng = np.random.default_rng(4)
    a, b = _train(8.0, rng, 60.0), _train(8.0, rng, 60.0)
    assert coincidence_ratio(a, b, (0.5, 2.0)) is not None
    assert coincidence_ratio(a, b, (0.5, 2.0), MIN_EXPECTED_ABSENT) is None


def test_unit_of_forty_thousand_spikes_stays_one() -> None:
    """A third of its spikes at 0.65 of the amplitude (bursts attenuate later spikes): on tens of thousands of spikes
    BIC and the density-valley test find two clouds, the amplitude ratio (1.5) blocks the template merge; its
    spikes keep the refractory period, so it is one neuron."""
    rng = np.random.default_rng(1)
    t = _train(11.0, rng)
    gain = np.where(rng.random(len(t)) < 1 / 3, 0.65, 1.0) * rng.normal(1.0, 0.03, len(t))
    waves = _unit(-14 * np.exp(-0.5 * (T / 1.5) ** 2), t, gain, rng)
    labels = _sort(waves, t)
    assert len(t) > 35_000
    assert len(np.unique(labels[labels >= 0])) == 1
    assert (labels >= 0).mean() > 0.95


def test_slowly_drifting_unit_stays_one() -> None:
    """Amplitude 0.75 -> 1.25 of its mean (a chronic wire): steady, a 10-minute drift mid-hour, steady again; beside
    a steady unit. The two plateaus are two clouds with a valley between them, 1.67x apart in amplitude."""
    rng = np.random.default_rng(2)
    t1, t2 = _train(12.0, rng), _train(8.0, rng)
    drift = 1.0 + 0.25 * np.clip((t1 - HOUR / 2) / 300.0, -1, 1)
    w1 = _unit(-14 * np.exp(-0.5 * (T / 1.5) ** 2), t1, drift, rng)
    w2 = _unit(10 * np.exp(-0.5 * (T / 3.0) ** 2), t2, np.ones(len(t2)), rng)
    labels = _sort(np.concatenate([w1, w2]), np.concatenate([t1, t2]))
    truth = np.repeat([0, 1], [len(t1), len(t2)])
    assert len(np.unique(labels[labels >= 0])) == 2
    for k in (0, 1):
        lab = labels[truth == k]
        assert np.bincount(lab[lab >= 0]).max() > 0.95 * len(lab)


@pytest.mark.parametrize("turns", [0.0, 0.35])
def test_concurrent_neurons_of_one_shape_stay_two(turns: float) -> None:
    """Same shape, amplitudes 1.6x apart, firing all along: two neurons (their union breaks the refractory period,
    and they fire together, not in turns)."""
    rng = np.random.default_rng(3)
    t1, t2 = _train(10.0, rng, 600.0), _train(10.0, rng, 600.0)
    shape = -np.exp(-0.5 * (T / 1.5) ** 2)
    waves = np.concatenate([_unit(16 * shape, t1, np.ones(len(t1)), rng), _unit(10 * shape, t2, np.ones(len(t2)), rng)])
    labels = _sort(waves, np.concatenate([t1, t2]), merge_turns=turns)
    truth = np.repeat([0, 1], [len(t1), len(t2)])
    assert len(np.unique(labels[labels >= 0])) == 2
    assert len(np.unique(labels[truth == 0][labels[truth == 0] >= 0])) == 1


def test_a_sparse_neuron_cut_by_drift_is_merged_by_its_turns() -> None:
    """A 2 Hz neuron whose amplitude steps from 0.75 to 1.25 of its mean mid-way through 10 minutes: two clouds 1.67x
    apart, too few spikes for the refractory test (far below MIN_EXPECTED_ABSENT chance coincidences); its two parts
    fire in turns, so cluster.merge_turns makes them one unit again, and without it they stay two."""
    rng = np.random.default_rng(5)
    t = _train(2.0, rng, 600.0)
    gain = np.where(t < 300.0, 0.75, 1.25)
    waves = _unit(-14 * np.exp(-0.5 * (T / 1.5) ** 2), t, gain, rng)
    assert len(np.unique((off := _sort(waves, t, merge_turns=0.0))[off >= 0])) == 2
    on = _sort(waves, t, merge_turns=0.35)
    assert len(np.unique(on[on >= 0])) == 1 and (on >= 0).mean() > 0.95


@pytest.mark.parametrize(
    ("key", "value"),
    [("refractory_ms", [2.0, 1.0]), ("refractory_merge", 0.9), ("refractory_overlap", 0.5)],
)
def test_refractory_options_are_checked(key: str, value: object) -> None:
    with pytest.raises(DeepSpikeError, match=f"cluster.{key}"):
        ClusterParams(**{key: value})


def test_times_must_match_the_spikes() -> None:
    with pytest.raises(DeepSpikeError, match="times"):
        cluster_spikes(np.zeros((30, 3)), times=np.zeros(10))


@pytest.mark.slow
def test_bench_hour_sorts_into_its_three_units() -> None:
    """``bench/sort.py``'s hour of one channel (3 units, ~72,000 spikes each; 0.876 with 6 units before issue 24)."""
    from deepspike.evaluation.compare import compare_to_ground_truth
    from deepspike.recording.synthetic import templated_recording
    from deepspike.sorting.pipeline import run_sort

    units = [(-160.0, 0.10, 0.15, 0.4), (110.0, 0.20, 0.15, 0.6), (-100.0, 0.28, 0.1, 0.8)]
    rec, gt = templated_recording(units, [20.0, 25.0, 15.0], HOUR, seed=0)
    result = run_sort(rec)
    assert len(result.unit_ids) == 3
    assert compare_to_ground_truth(result.sorting, gt)["accuracy"].mean() >= 0.977
