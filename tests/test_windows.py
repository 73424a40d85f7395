"""Windows + extract: canonical-grid resampling, edges, chunking, recording validation, params, GT labels."""

from __future__ import annotations

from dataclasses import asdict, fields

import numpy as np
import pytest
import yaml
from spikeinterface.core import NumpyRecording, NumpySorting

from deepspike.errors import DeepSpikeError, RecordingError
from deepspike.recording.synthetic import generate_recording
from deepspike.spec import WindowSpec
from deepspike.spikes.detect import PEAK_DTYPE
from deepspike.spikes.extract import DEFAULTS_FILE, ExtractParams, SpikeSet, extract_spikes, gt_labels, unit_id_labels
from deepspike.spikes.windows import extract_windows, keys_weights

SPEC = WindowSpec()


def _peaks(samples, channels=None) -> np.ndarray:
    peaks = np.zeros(len(samples), dtype=PEAK_DTYPE)
    peaks["sample_index"] = samples
    peaks["channel_index"] = 0 if channels is None else channels
    return peaks


def _spike(t_ms: np.ndarray) -> np.ndarray:
    """Analytic band-limited-ish spike: a trough at about 0 ms and a broad rebound."""
    return -10.0 * np.exp(-(t_ms**2) / (2 * 0.12**2)) + 3.0 * np.exp(-((t_ms - 0.45) ** 2) / (2 * 0.25**2))


def test_keys_kernel_partition_of_unity() -> None:
    frac = np.linspace(0, 1, 101, endpoint=False)
    w = keys_weights(frac)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(keys_weights(np.zeros(1)), [[0.0, 1.0, 0.0, 0.0]])


def test_exact_copy_at_24k_integer_peaks() -> None:
    rng = np.random.default_rng(0)
    traces = rng.normal(0, 2.0, (24000, 2)).astype(np.float32)
    samples = np.array([100, 5000, 12345, 23000])
    chans = np.array([0, 1, 0, 1])
    for s, c in zip(samples, chans, strict=True):  # symmetric neighbours: the parabola's vertex is on the sample
        traces[s, c] = -30.0
        traces[s + 1, c] = traces[s - 1, c] = -12.0
    rec = NumpyRecording(traces, sampling_frequency=24000.0)
    noise = np.array([2.0, 4.0])
    waves, kept = extract_windows(rec, _peaks(samples, chans), noise, SPEC)
    assert kept.all() and waves.dtype == np.float32 and waves.shape == (4, SPEC.length)
    expected = np.stack([traces[s - 8 : s + 12, c] / noise[c] for s, c in zip(samples, chans, strict=True)])
    np.testing.assert_array_equal(waves, expected.astype(np.float32))
    # without alignment any integer peak is an exact copy
    samples = rng.integers(50, 23900, 200)
    waves, _ = extract_windows(rec, _peaks(samples), noise, SPEC, align=False)
    np.testing.assert_array_equal(waves, np.stack([traces[s - 8 : s + 12, 0] / 2.0 for s in samples]))


@pytest.mark.parametrize("fs", [20000.0, 24000.0, 25000.0, 30000.0, 30030.0, 40000.0, 24414.0625])
def test_resampled_windows_match_the_24k_grid(fs: float) -> None:
    fine = np.linspace(-0.3, 0.3, 600001)
    t_peak = fine[np.argmin(_spike(fine))]
    rng = np.random.default_rng(1)
    t0 = 5.0 + np.arange(30) * 2.0 + rng.uniform(0, 0.1, 30)  # ms, random sub-sample phases
    t = np.arange(int(0.07 * fs)) / fs * 1000.0
    traces = sum(_spike(t - s) for s in t0)[:, None].astype(np.float32)
    rec = NumpyRecording(traces, sampling_frequency=fs)
    peaks = _peaks(np.round((t0 + t_peak) * fs / 1000.0).astype(np.int64))
    waves, kept = extract_windows(rec, peaks, np.ones(1), SPEC)
    ideal = _spike(t_peak + (np.arange(SPEC.length) - SPEC.n_before) / 24.0)
    assert kept.all()
    err = np.abs(waves - ideal[None, :]).max()
    assert err < 0.1, f"{fs} Hz: max deviation {err:.3f} from the 24 kHz grid (peak amplitude 10)"


def test_rates_agree_with_each_other() -> None:
    """The same analytic signal at 20, 24 and 30 kHz gives (nearly) the same canonical windows."""
    t0 = np.array([3.0123, 7.4567, 11.891])
    out = {}
    for fs in (20000.0, 24000.0, 30000.0):
        t = np.arange(int(0.015 * fs)) / fs * 1000.0
        traces = sum(_spike(t - s) for s in t0)[:, None].astype(np.float32)
        rec = NumpyRecording(traces, sampling_frequency=fs)
        out[fs], _ = extract_windows(rec, _peaks(np.round(t0 * fs / 1000.0).astype(np.int64)), np.ones(1), SPEC)
    np.testing.assert_allclose(out[20000.0], out[24000.0], atol=0.1)
    np.testing.assert_allclose(out[30000.0], out[24000.0], atol=0.1)


def test_edge_spikes_dropped_and_order_kept() -> None:
    fs = 30000.0
    traces = np.random.default_rng(2).normal(0, 1, (3000, 1)).astype(np.float32)
    rec = NumpyRecording(traces, sampling_frequency=fs)
    samples = np.array([2000, 3, 500, 2995, 11, 1500])
    waves, kept = extract_windows(rec, _peaks(samples), np.ones(1), SPEC, align=False)
    assert kept.tolist() == [True, False, True, False, False, True]
    ref, _ = extract_windows(rec, _peaks(samples[kept]), np.ones(1), SPEC, align=False)
    np.testing.assert_array_equal(waves, ref)


def test_chunking_does_not_change_windows() -> None:
    rec, _ = generate_recording(0, duration_s=3.0, sampling_frequency=30000.0)
    samples = np.sort(np.random.default_rng(3).integers(0, rec.get_num_samples(), 300))
    big, kept_big = extract_windows(rec, _peaks(samples), np.ones(1), SPEC, chunk_duration_s=10.0)
    small, kept_small = extract_windows(rec, _peaks(samples), np.ones(1), SPEC, chunk_duration_s=0.01)
    np.testing.assert_array_equal(kept_big, kept_small)
    np.testing.assert_allclose(big, small, rtol=1e-6, atol=1e-6)


def test_nan_recording_raises() -> None:
    traces = np.random.default_rng(4).normal(0, 1, (48000, 1)).astype(np.float32)
    traces[30000:30010] = np.nan
    rec = NumpyRecording(traces, sampling_frequency=24000.0)
    with pytest.raises(RecordingError, match="NaN"):
        extract_windows(rec, _peaks([1000]), np.ones(1), SPEC)
    with pytest.raises(RecordingError, match=r"NaN.*frame_slice"):
        extract_spikes(rec)


def test_short_or_bad_rate_recording_raises() -> None:
    rec = NumpyRecording(np.zeros((15, 1), np.float32), sampling_frequency=24000.0)
    with pytest.raises(RecordingError, match="shorter than one spike window"):
        extract_spikes(rec)
    rec = NumpyRecording(np.zeros((48000, 1), np.float32), sampling_frequency=0.0)
    with pytest.raises(RecordingError, match="sampling rate"):
        extract_spikes(rec)


def test_params_from_yaml_config_and_validation() -> None:
    declared = yaml.safe_load(DEFAULTS_FILE.read_text())
    assert asdict(ExtractParams()) == declared
    assert {f.name for f in fields(ExtractParams)} == set(declared)
    p = ExtractParams.from_config({"threshold": "4.5", "filtered": "true"}, polarity="neg", n_jobs="2")
    assert (p.threshold, p.filtered, p.polarity, p.n_jobs) == (4.5, True, "neg", 2)
    from omegaconf import OmegaConf

    assert ExtractParams.from_config(OmegaConf.create({"freq_max": 6000})).freq_max == 6000.0
    with pytest.raises(DeepSpikeError, match="unknown extract parameter"):
        ExtractParams.from_config({"treshold": 4})
    with pytest.raises(DeepSpikeError, match=r"extract\.threshold"):
        ExtractParams.from_config(threshold=-1)
    with pytest.raises(DeepSpikeError, match="freq_min"):
        ExtractParams.from_config(freq_min=7000.0)
    with pytest.raises(DeepSpikeError, match="polarity"):
        ExtractParams(polarity="negative").validate()
    with pytest.raises(DeepSpikeError, match="n_jobs"):
        ExtractParams.from_config(n_jobs=1.5)


def test_extract_spikes_labels_and_fields() -> None:
    rec, gt = generate_recording(7, duration_s=15.0, sampling_frequency=25000.0, num_units=3)
    spikes = extract_spikes(rec, gt=gt)
    assert isinstance(spikes, SpikeSet) and len(spikes) > 100
    assert spikes.waves.dtype == np.float32 and spikes.waves.shape == (len(spikes), SPEC.length)
    assert spikes.sample_index.dtype == np.int64 and spikes.channel.dtype == np.int16
    assert spikes.amplitude.dtype == np.float32 and spikes.labels.dtype == np.int64
    assert spikes.sampling_frequency == 25000.0 and spikes.spec == SPEC
    assert np.all(np.abs(spikes.amplitude) >= 5.0)
    # the trough sits at n_before of the canonical window
    assert np.all(np.abs(spikes.waves[:, SPEC.n_before]) >= np.abs(spikes.waves).max(1) - 1e-4)
    # each labelled spike's nearest GT spike belongs to that unit
    vec = gt.to_spike_vector()
    nearest = np.abs(spikes.sample_index[:, None] - vec["sample_index"][None, :]).argmin(1)
    labelled = spikes.labels >= 0
    assert labelled.mean() > 0.95
    np.testing.assert_array_equal(spikes.labels[labelled], vec["unit_index"][nearest[labelled]])
    # units are separable by amplitude alone on this easy recording
    for u in range(3):
        amps = spikes.amplitude[spikes.labels == u]
        assert amps.std() < 0.2 * np.abs(amps.mean())


def test_gt_labels_nearest_within_tolerance_and_id_mapping() -> None:
    fs = 30000.0
    rec = NumpyRecording(np.zeros((30000, 1), np.float32), sampling_frequency=fs)
    gt = NumpySorting.from_unit_dict({"a": np.array([100, 1000]), "b": np.array([110, 5000])}, sampling_frequency=fs)
    detected = np.array([99, 108, 1011, 1013, 5000, 20000])
    assert gt_labels(detected, gt, rec, fs, 0.4).tolist() == [0, 1, 0, -1, 1, -1]
    gt_int = NumpySorting.from_unit_dict({7: np.array([100]), 3: np.array([300])}, sampling_frequency=fs)
    assert gt_labels(np.array([101, 299]), gt_int, rec, fs, 0.4).tolist() == [7, 3]
    assert unit_id_labels(np.array(["0", "1", "12"])).tolist() == [0, 1, 12]
    assert unit_id_labels(np.array(["u1", "u2"])).tolist() == [0, 1]
    assert gt_labels(detected, None, rec, fs, 0.4).tolist() == [-1] * 6


def test_fused_extract_equals_detect_then_windows() -> None:
    from deepspike.recording.preprocess import bandpass, noise_levels
    from deepspike.spikes.detect import detect_peaks

    rec, _ = generate_recording(8, duration_s=12.0, sampling_frequency=30000.0, num_units=3)
    params = ExtractParams(chunk_duration_s=2.5)
    spikes = extract_spikes(rec, params=params)
    filt = bandpass(rec)
    noise = noise_levels(filt)
    peaks = detect_peaks(filt, noise, chunk_duration_s=2.5)
    waves, kept = extract_windows(filt, peaks, noise, SPEC, chunk_duration_s=3.0)
    np.testing.assert_array_equal(spikes.sample_index, peaks["sample_index"][kept])
    np.testing.assert_allclose(spikes.waves, waves, atol=1e-4)
    np.testing.assert_allclose(spikes.noise_levels, noise)
