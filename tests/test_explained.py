"""Units that other units' templates explain (collisions, duplicate events) are dropped; neurons are kept."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from deepspike.sorting.explained import coupling, drop_explained_units, pursuit_residual

FS = 30000.0


def _template(centre: float, width_ms: float, amplitude: float, channels: int = 8) -> np.ndarray:
    """A biphasic spike ``[samples, channels]`` (1.5 ms before, 2 ms after the trough) decaying away from ``centre``."""
    t = (np.arange(105) - 45) / FS * 1000.0
    wave = -np.exp(-0.5 * (t / (0.25 * width_ms)) ** 2) + 0.35 * np.exp(
        -0.5 * ((t - 0.6 * width_ms) / (0.4 * width_ms)) ** 2
    )
    space = np.exp(-0.5 * ((np.arange(channels) - centre) / 1.5) ** 2)
    return (amplitude * wave[:, None] * space[None, :]).astype(np.float32)


def _train(rng: np.random.Generator, rate: float, duration_s: float) -> np.ndarray:
    """Spike samples of a neuron firing at ``rate`` Hz with a 4 ms refractory period."""
    isi = rng.exponential(FS / rate, int(rate * duration_s * 2)) + 0.004 * FS
    t = np.cumsum(isi).astype(np.int64)
    return t[(t > 200) & (t < duration_s * FS - 200)]


def _collisions_recording(seed: int = 0, duration_s: float = 40.0):
    """Three neurons on 8 channels (a, b large; d with a's waveform, one channel away, half as large, firing almost
    as often) and the units a per-neighbourhood clustering made of their overlaps: a's spikes with one of b's
    0.2-1 ms away (a collision unit; b's spike, if more than 0.5 ms away, is an event of b's unit too), and a
    second event 1 ms before some of a's spikes (a duplicate unit). Returns (recording, labels, sample_index)."""
    from spikeinterface.core import NumpyRecording

    rng = np.random.default_rng(seed)
    tpl = {"a": _template(2.0, 1.0, 20.0), "b": _template(5.5, 1.6, 15.0), "d": _template(3.0, 1.0, 10.0)}
    a, b, d = _train(rng, 15.0, duration_s), _train(rng, 10.0, duration_s), _train(rng, 12.0, duration_s)
    collide = np.zeros(len(a), dtype=bool)
    collide[rng.choice(len(a), 80, replace=False)] = True
    lag = rng.choice([-1, 1], 80) * rng.integers(6, 30, 80)  # b fires 0.2-1 ms before or after a
    echo = rng.choice(np.flatnonzero(~collide), 60, replace=False)
    traces = rng.normal(size=(int(duration_s * FS), 8)).astype(np.float32)
    for key, train in (("a", a), ("b", np.concatenate([b, a[collide] + lag])), ("d", d)):
        for s in train:
            traces[s - 45 : s + 60] += tpl[key]
    b_all = np.sort(np.concatenate([b, (a[collide] + lag)[np.abs(lag) > 15]]))
    times = np.concatenate([a[~collide], b_all, d, a[collide], a[echo] - 30])  # one event per spike, and the echoes
    labels = np.repeat([0, 1, 2, 3, 4], [int((~collide).sum()), len(b_all), len(d), 80, 60])
    order = np.argsort(times, kind="stable")
    return NumpyRecording(traces, sampling_frequency=FS), labels[order], times[order]


def test_pursuit_explains_a_sum_of_two_templates_at_their_lags() -> None:
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(4, 75, 6)).astype(np.float32)
    x = 0.1 * rng.normal(size=(10, 75 + 60, 6)).astype(np.float32)
    x[:, 10:85] += 1.2 * bank[2]
    x[:, 40:115] += 0.9 * bank[0]
    floor = 0.01 * 75 * 6
    (one, first), (two, _) = pursuit_residual(x, bank, 30, 1), pursuit_residual(x, bank, 30, 2)
    assert (one > 20 * floor).all() and (two < 1.5 * floor).all()
    assert (first == 2).all()  # the larger of the two first


def test_collision_and_duplicate_units_are_dropped_and_neurons_kept() -> None:
    rec, labels, times = _collisions_recording()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out, tests = drop_explained_units(rec, labels, times, np.ones(8), 0.1)
    share = {u: t["share"] for u, t in tests.items()}
    assert share[3] < 0.05 and share[4] < 0.05  # nothing of their spikes needs their own template
    assert share[1] > 0.5 and share[2] > 0.25  # d, a's waveform one channel away (cosine 0.9): still a neuron
    assert tests[3]["partner"] == tests[4]["partner"] == 0  # a's spikes, with b's, or seen 1 ms early
    assert tests[3]["excess"] < 0.2 and tests[4]["excess"] < 0.2  # noise variances per sample: nothing left
    assert tests[3]["together"] > 0.4 and tests[4]["together"] > 0.9  # beside another unit's spike
    assert tests[2]["together"] < 2 * tests[2]["chance"]  # d fires on its own
    assert (out[np.isin(labels, [3, 4])] == -1).all()
    assert np.unique(out[out >= 0]).tolist() == [0, 1, 2]  # renumbered
    for u in (0, 1, 2):  # each neuron keeps its spikes, under one label
        assert len(np.unique(out[labels == u])) == 1
    same, none = drop_explained_units(rec, labels, times, np.ones(8), 0.0)
    np.testing.assert_array_equal(same, labels)
    assert none == {}


def test_a_neuron_explained_by_a_similar_one_is_kept_by_its_timing() -> None:
    """d's spikes are explained by a's template to 0.6 of their energy: a share threshold above that would drop it,
    but d fires on its own (its spikes beside the larger units' no more often than chance), which no collision or
    duplicate event does: kept even without the residual check (``min_excess``)."""
    rec, labels, times = _collisions_recording()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept, tests = drop_explained_units(rec, labels, times, np.ones(8), 0.9, min_excess=np.inf)
    assert tests[2]["share"] < 0.9 and not tests[2]["dropped"] and (kept[labels == 2] >= 0).all()
    assert tests[3]["dropped"] and tests[4]["dropped"]


def test_coupling_tells_spikes_beside_others_from_independent_ones() -> None:
    rng = np.random.default_rng(0)
    duration = int(600 * FS)
    others = np.sort(rng.integers(0, duration, 6000))  # 10 Hz
    independent = np.sort(rng.integers(0, duration, 300))
    beside = others[rng.choice(len(others), 60, replace=False)] + rng.integers(-30, 30, 60)
    window = 75  # 2.5 ms
    share, chance, coupled = coupling(independent, others, window, duration)
    assert not coupled and abs(share - chance) < 0.05 and 0.04 < chance < 0.06  # 1 - exp(-10 Hz x 5 ms)
    share, _, coupled = coupling(beside, others, window, duration)
    assert coupled and share == 1.0
    mixed = np.sort(np.concatenate([independent[:100], beside[:20]]))  # 1/6 beside + chance: below COUPLED
    share, chance, coupled = coupling(mixed, others, window, duration)
    assert not coupled and share > chance + 0.1
    assert coupling(np.array([5, 10]), np.array([8]), 3, 100)[:2] == (1.0, pytest.approx(1 - np.exp(-7 / 100)))


def test_a_tetrode_near_twin_is_kept() -> None:
    """The default bench set's tetrode_02 (seed 0): a neuron whose template is another's at 0.75 of its amplitude
    (cosine 0.99, share 0.005). Dropped on its share alone it was lost (tetrode mean 0.991 -> 0.668); its spikes fire
    on their own, so it stays a unit and every neuron is found."""
    from deepspike.evaluation.compare import compare_with_categories
    from deepspike.recording.synthetic import generate_probe_recording
    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    rec, gt = generate_probe_recording(1012200320, 60.0, probe="tetrode", num_units=4, snr_range=(4.0, 20.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = run_sort(rec, None, SortParams(multichannel={"explained_share": 0.1}))
    rows, _ = compare_with_categories(res.sorting, gt)
    assert (rows["accuracy"] > 0.9).all()
    twins = [t for t in res.info["explained"].values() if t["share"] < 0.1 and not t["dropped"]]
    assert twins and all(t["together"] < 2 * t["chance"] for t in twins)


def test_a_probe_sort_reports_no_collision_units() -> None:
    """bench/scale.py's probe (Neuropixels-1.0-like, 32 channels, 8 neurons), one minute: the neighbourhood
    clustering makes units of collisions and of a big spike's other phase, which template matching kept (4 false
    positives, 11 units for 8 neurons); dropped, the units are the neurons."""
    from spikeinterface.core import generate_ground_truth_recording

    from deepspike.evaluation.compare import compare_with_categories
    from deepspike.recording.probes import probe_from_spec
    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    probe = probe_from_spec("staggered:4x20", 32).probes[0]
    rec, gt = generate_ground_truth_recording(durations=[60.0], num_units=8, probe=probe, seed=11,
                                              sampling_frequency=30000.0)  # fmt: skip
    rec = rec.save(format="memory", shared=False)  # the generator's noise computed once, for both sorts
    outcome = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for share in (0.0, 0.1):
            res = run_sort(rec, None, SortParams(multichannel={"explained_share": share}))
            rows, cats = compare_with_categories(res.sorting, gt)
            outcome[share] = (len(res.unit_ids), cats["num_false_positive"], float(rows["accuracy"].mean()), res.info)
    (units0, fp0, acc0, _), (units, fp, acc, info) = outcome[0.0], outcome[0.1]
    assert fp0 >= 2 and units0 > 8 + 1  # the over-splitting this guards against, reproduced
    assert fp == 0 and units <= 8 and acc >= acc0 - 0.01
    assert len(info["dropped_explained"]) >= fp0 and all(
        t["share"] < 0.1 for t in info["explained"].values() if t["dropped"]
    )


def test_explained_share_is_validated() -> None:
    from deepspike.errors import DeepSpikeError
    from deepspike.sorting.multichannel import MultichannelParams

    with pytest.raises(DeepSpikeError, match=r"multichannel\.explained_share"):
        MultichannelParams(explained_share=1.0)
    assert MultichannelParams(explained_share=0).explained_share == 0


def test_a_piece_that_takes_turns_with_its_neuron_is_dropped() -> None:
    """One neuron whose spikes a drifting probe gave two units, one per half of the recording: the smaller one is
    explained by the larger one's template and fires in turns with it (a piece of that neuron, not a twin), so it
    goes with the turn test (``turns``, multichannel.merge_turns) and stays without it (it is not a collision)."""
    from spikeinterface.core import NumpyRecording

    rng = np.random.default_rng(1)
    duration_s = 40.0
    a, b = _train(rng, 15.0, duration_s), _train(rng, 10.0, duration_s)
    traces = rng.normal(size=(int(duration_s * FS), 8)).astype(np.float32)
    for tpl, train in ((_template(2.0, 1.0, 20.0), a), (_template(5.5, 1.6, 15.0), b)):
        for s in train:
            traces[s - 45 : s + 60] += tpl
    late = a > 0.6 * duration_s * FS
    times = np.concatenate([a[~late], b, a[late]])
    labels = np.repeat([0, 1, 2], [int((~late).sum()), len(b), int(late.sum())])
    order = np.argsort(times, kind="stable")
    rec = NumpyRecording(traces, sampling_frequency=FS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept, without = drop_explained_units(rec, labels[order], times[order], np.ones(8), 0.1)
        dropped, tests = drop_explained_units(rec, labels[order], times[order], np.ones(8), 0.1, turns=0.35)
    assert without[2]["share"] < 0.1 and not without[2]["dropped"] and (kept[labels[order] == 2] >= 0).all()
    assert tests[2]["overlap"] < 0.1 and tests[2]["dropped"] and (dropped[labels[order] == 2] == -1).all()
    assert (dropped[labels[order] != 2] >= 0).all()  # a's first part and b keep their units
