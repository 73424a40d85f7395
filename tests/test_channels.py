"""Multi-channel sorting: neighbourhoods from the probe, one event per spike, one unit per neuron."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from deepspike.errors import DeepSpikeError
from deepspike.sorting.multichannel import (
    MultichannelParams,
    clustering_keys,
    deduplicate_events,
    neighbourhood_features,
    neighbourhoods,
    template_match,
)


def _recording(kind: str, num_units: int, seed: int, duration_s: float = 30.0):
    from probeinterface import generate_linear_probe, generate_tetrode
    from spikeinterface.core.generate import generate_ground_truth_recording

    probe = generate_tetrode(r=10) if kind == "tetrode" else generate_linear_probe(num_elec=8, ypitch=25)
    probe.set_device_channel_indices(np.arange(probe.get_contact_count()))
    return generate_ground_truth_recording(
        durations=[duration_s], sampling_frequency=30000.0, num_units=num_units, probe=probe, seed=seed,
        generate_sorting_kwargs={"firing_rates": (4.0, 12.0), "refractory_period_ms": 4.0},
        noise_kwargs={"noise_levels": 10.0, "strategy": "on_the_fly"},
    )  # fmt: skip


def test_neighbourhoods_follow_the_probe_and_its_groups() -> None:
    rec, _ = _recording("linear", 2, 0, 1.0)
    near = neighbourhoods(rec, MultichannelParams(radius_um=60.0))
    assert near[3].tolist() == [False, True, True, True, True, True, False, False]  # 2 on each side at 25 um
    assert (near == near.T).all() and near.diagonal().all()
    assert len(np.unique(clustering_keys(near))) == 8  # a probe: one neighbourhood per channel
    assert neighbourhoods(rec, MultichannelParams(radius_um=60.0, max_channels=3))[3].sum() == 3
    assert not neighbourhoods(rec, MultichannelParams(enabled=False))[~np.eye(8, dtype=bool)].any()
    rec.set_channel_groups([0, 0, 0, 0, 1, 1, 1, 1])  # two shanks: no neighbour across them
    near = neighbourhoods(rec, MultichannelParams(radius_um=60.0))
    assert not near[3, 4] and near[3, 2] and near[4, 5]
    tet, _ = _recording("tetrode", 2, 0, 1.0)
    near = neighbourhoods(tet, MultichannelParams(radius_um=60.0))
    assert near.all() and len(np.unique(clustering_keys(near))) == 1  # a tetrode is one group


def test_no_probe_sorts_channels_alone_with_a_warning() -> None:
    from spikeinterface.core import NumpyRecording

    rec = NumpyRecording(np.zeros((1000, 4), np.float32), sampling_frequency=30000.0)
    with pytest.warns(UserWarning, match="no probe"):
        near = neighbourhoods(rec, MultichannelParams())
    assert (near == np.eye(4, dtype=bool)).all()


def test_one_event_per_spike_keeps_the_largest_peak_in_space_and_time() -> None:
    near = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=bool)  # a line of 3 channels
    t = np.array([100, 101, 100, 500, 503, 900, 900])
    ch = np.array([0, 1, 2, 0, 2, 0, 1])
    amp = np.array([-8.0, -12.0, -6.0, -7.0, 9.0, -5.0, 5.0])
    keep = deduplicate_events(t, ch, amp, near, window=3)
    # 100-101: channel 1 is the largest and neighbours both; 500/503: channels 0 and 2 are not neighbours;
    # 900: a tie keeps the lower channel
    assert keep.tolist() == [False, True, False, True, True, True, False]
    assert deduplicate_events(t, ch, amp, np.eye(3, dtype=bool), window=3).all()


def test_template_match_sees_one_neuron_through_a_shift_and_two_through_their_footprints() -> None:
    rng = np.random.default_rng(0)
    shape = -np.exp(-0.5 * ((np.arange(20) - 8) / 1.5) ** 2) * 10
    a = np.outer([1.0, 0.6, 0.2, 0.0], shape)
    b = np.roll(a, 1, axis=1) + 0.05 * rng.standard_normal(a.shape)
    sim, ratio = template_match(a, b)
    assert sim > 0.95 and ratio < 1.1
    other = np.outer([0.2, 0.6, 1.0, 0.6], shape)  # same shape, another place: another neuron
    assert template_match(a, other)[0] < 0.8


def test_bad_multichannel_options_name_the_key() -> None:
    with pytest.raises(DeepSpikeError, match=r"multichannel\.radius_um"):
        MultichannelParams(radius_um=-1.0)
    with pytest.raises(DeepSpikeError, match=r"multichannel\.combine"):
        MultichannelParams(combine="sum")
    with pytest.raises(DeepSpikeError, match="unknown multichannel option"):
        MultichannelParams.from_dict({"radius": 50})


def test_hybrid_neighbourhood_features_put_the_windows_beside_the_embeddings_at_equal_weight() -> None:
    """features=hybrid on a neighbourhood: the combined embeddings beside the concatenated windows, each block at
    unit total variance, so the encoder's units (here a factor 100) do not decide which block dominates."""
    from deepspike.spec import WindowSpec

    waves = np.random.default_rng(0).normal(size=(300, 4, 20)).astype(np.float32) * 3.0
    params = MultichannelParams(n_components=0)

    def embed(scale: float):
        return lambda x: x[:, :5] * scale  # a stand-in encoder: 5 dimensions per channel

    plain = neighbourhood_features(waves, embed(1.0), params, WindowSpec(), 0)
    hybrid = neighbourhood_features(waves, embed(1.0), params, WindowSpec(), 0, hybrid=True)
    assert plain.shape == (300, 4 * 5) and hybrid.shape == (300, 4 * 5 + 4 * 20)
    for block in (hybrid[:, :20], hybrid[:, 20:]):
        assert block.var(axis=0).sum() == pytest.approx(1.0, rel=1e-3)
    rescaled = neighbourhood_features(waves, embed(100.0), params, WindowSpec(), 0, hybrid=True)
    np.testing.assert_allclose(rescaled, hybrid, atol=1e-5)
    reduced = neighbourhood_features(waves, embed(1.0), MultichannelParams(n_components=6), WindowSpec(), 0, True)
    assert reduced.shape == (300, 6)


def test_neighbour_windows_of_the_peak_channel_equal_the_detected_windows() -> None:
    from deepspike.recording.preprocess import bandpass, noise_levels
    from deepspike.spec import WindowSpec
    from deepspike.spikes.extract import extract_spikes
    from deepspike.spikes.windows import extract_neighbour_windows

    rec, _ = _recording("tetrode", 3, 1, 5.0)
    spikes = extract_spikes(rec)
    filtered = bandpass(rec, 300.0, 5000.0, False)
    chans = np.tile(np.arange(4), (len(spikes), 1))
    w = extract_neighbour_windows(
        filtered, spikes.sample_index, spikes.channel, chans, noise_levels(filtered), WindowSpec(), 2.0
    )
    assert w.shape == (len(spikes), 4, 20)
    own = w[np.arange(len(spikes)), spikes.channel.astype(np.int64)]
    np.testing.assert_allclose(own, spikes.waves, atol=1e-4)


def _gt_snr(rec, gt) -> dict:
    """Peak |template| of each ground-truth unit on its best channel, in noise sigmas of the band-passed traces."""
    from deepspike.recording.preprocess import bandpass, noise_levels

    filtered = bandpass(rec, 300.0, 5000.0, False)
    traces = filtered.get_traces() / noise_levels(filtered)
    out = {}
    for u in gt.unit_ids:
        t = gt.get_unit_spike_train(u)
        t = t[(t > 30) & (t < len(traces) - 30)]
        out[u] = float(np.abs(np.mean([traces[i - 15 : i + 15] for i in t], axis=0)).max())
    return out


@pytest.mark.parametrize(("kind", "units", "seed"), [("tetrode", 5, 3), ("linear", 6, 4)])
def test_each_neuron_is_one_unit(kind: str, units: int, seed: int, tmp_path) -> None:
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    rec, gt = _recording(kind, units, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        multi = run_sort(rec, None, SortParams())
        single = run_sort(rec, None, SortParams(multichannel={"enabled": False}))
    cmp = compare_sorter_to_ground_truth(gt, multi.sorting, exhaustive_gt=True)
    counts = cmp.count_units_categories()
    assert counts["num_redundant"] <= 1 and len(multi.unit_ids) <= units + 1
    visible = [u for u, snr in _gt_snr(rec, gt).items() if snr >= 6.0]  # the generator also places units out of reach
    assert len(visible) >= 3
    assert cmp.get_performance()["accuracy"].loc[visible].astype(float).mean() >= 0.85
    assert len(single.unit_ids) > len(multi.unit_ids)  # per channel, a neuron is one unit per channel it reaches
    n_ch = rec.get_num_channels()
    assert multi.templates.shape == (len(multi.unit_ids), 20, n_ch) and single.templates is None
    peak = np.abs(multi.templates).max(axis=1).argmax(axis=1)  # each unit's template peaks on its peak channel
    assert (peak == multi.units_table()["peak_channel"].to_numpy()).mean() >= 0.8
    for u in multi.unit_ids:  # a spike seen on several channels is reported once
        t = np.sort(multi.sample_index[multi.labels == u])
        assert np.diff(t).min() > 0.0005 * 30000.0
    from deepspike.sorting.outputs import write_outputs

    write_outputs(multi, tmp_path / "out", plots=False)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "templates.npy"), multi.templates)


def test_band_pass_cache_keeps_the_probe_and_the_sort() -> None:
    from deepspike.recording.preprocess import bandpass, in_memory
    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    rec, _ = _recording("tetrode", 3, 5, 10.0)
    lazy = bandpass(rec, 300.0, 5000.0, False)
    cached = in_memory(lazy, 256, chunk_duration_s=2.0, n_jobs=2)
    assert type(cached).__name__ == "NumpyRecording" and in_memory(lazy, 0.1) is lazy  # too big: stays lazy
    assert cached.has_probe() and (cached.get_channel_locations() == lazy.get_channel_locations()).all()
    a, b = cached.get_traces(start_frame=5000, end_frame=9000), lazy.get_traces(start_frame=5000, end_frame=9000)
    assert np.abs(a - b).max() < 1e-3 * np.abs(b).std()  # chunk margins only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = run_sort(rec, None, SortParams(filter_cache_mb=0, n_jobs=1))
        two = run_sort(rec, None, SortParams())
    np.testing.assert_array_equal(one.sample_index, two.sample_index)
    np.testing.assert_array_equal(one.labels, two.labels)
    with pytest.raises(DeepSpikeError, match="n_jobs"):
        SortParams(n_jobs=0)


def test_one_neuron_split_in_two_keeps_its_refractory_period_two_neurons_do_not() -> None:
    from deepspike.sorting.multichannel import one_neuron

    rng = np.random.default_rng(0)
    span, window = 60 * 30000.0, 45.0  # 60 s at 30 kHz, 1.5 ms
    isi = rng.exponential(30000 / 20.0, 1500) + 90  # 20 Hz with a 3 ms refractory period
    train = np.cumsum(isi)
    train = train[train < span]
    part = rng.random(len(train)) < 0.5  # its spikes split between two peak channels
    assert one_neuron(np.sort(train[part]), np.sort(train[~part]), window, span)
    other = np.sort(rng.uniform(0, span, len(train)))  # an independent neuron of the same rate
    assert not one_neuron(np.sort(train), other, window, span)
    assert one_neuron(np.array([10.0, 5000.0]), np.array([20.0]), window, span)  # too sparse to tell: allowed


def test_a_large_unit_matched_on_its_whole_footprint_is_not_reported_twice() -> None:
    """A unit that reaches past radius_um: with its matching template cut at its neighbourhood, the spike's remnant
    on the far channels stayed in the residual and a second unit took those spikes again (redundant)."""
    from spikeinterface.comparison import compare_sorter_to_ground_truth

    from deepspike.recording.synthetic import generate_probe_recording
    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    rec, gt = generate_probe_recording(0, duration_s=20.0, probe="shank", num_channels=16, num_units=6,
                                       snr_range=(10.0, 25.0))  # fmt: skip
    outcome = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sigma in (0.0, MultichannelParams().footprint_sigma):
            res = run_sort(rec, None, SortParams(multichannel={"footprint_sigma": sigma}))
            cmp = compare_sorter_to_ground_truth(gt, res.sorting, exhaustive_gt=True)
            outcome[sigma] = (len(cmp.get_redundant_units()), float(cmp.get_performance()["accuracy"].mean()))
    cut, whole = outcome[0.0], outcome[MultichannelParams().footprint_sigma]
    assert cut[0] >= 1  # the failure this guards against, reproduced
    assert whole[0] == 0 and whole[1] >= cut[1] + 0.1


def test_neighbourhoods_clustered_in_threads_give_the_labels_of_one_thread() -> None:
    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    rec, _ = _recording("linear", 4, 6, 10.0)  # 8 channels: several neighbourhoods, clustered concurrently
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = run_sort(rec, None, SortParams(n_jobs=1))
        two = run_sort(rec, None, SortParams(n_jobs=2))
    assert len(one.info["neighbourhoods"]) > 1
    np.testing.assert_array_equal(one.labels, two.labels)


def test_threaded_clustering_leaves_the_warning_filters_as_they_were() -> None:
    """catch_warnings swaps process-wide state: entered by several threads at once it can leave a thread's "ignore"
    filter behind after the sort, silencing the user's warnings."""
    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    rec, _ = _recording("linear", 4, 6, 10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        before = list(warnings.filters)
        for _ in range(3):
            run_sort(rec, None, SortParams(n_jobs=2))
        assert warnings.filters == before


def test_a_probe_recording_without_spikes_sorts_to_no_unit() -> None:
    """It crashed in the neighbourhood windows (reshape of zero events) instead of returning an empty sorting."""
    from probeinterface import generate_linear_probe
    from spikeinterface.core import NumpyRecording

    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    traces = np.random.default_rng(0).normal(0.0, 1.0, (30000 * 3, 8)).astype(np.float32)  # noise only
    rec = NumpyRecording([traces], sampling_frequency=30000.0)
    probe = generate_linear_probe(num_elec=8, ypitch=25)
    probe.set_device_channel_indices(np.arange(8))
    rec.set_probe(probe, in_place=True)
    with pytest.warns(UserWarning, match="no spike detected"):
        result = run_sort(rec, None, SortParams(features="pca"))
    assert len(result.sorting.unit_ids) == 0 and len(result.labels) == 0
