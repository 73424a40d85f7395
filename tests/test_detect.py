"""Preprocess + detect: band-pass, robust noise, threshold detection recall on SpikeInterface ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from spikeinterface.core import NumpyRecording

from deepspike.errors import DeepSpikeError
from deepspike.recording.preprocess import bandpass, noise_levels
from deepspike.recording.synthetic import generate_recording
from deepspike.spikes.detect import PEAK_DTYPE, dead_time_samples, detect_peaks, one_peak_per_event

TOL_MS = 0.4


def _white(fs: float = 24000.0, seconds: float = 2.0, sigma: float = 3.0, channels: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    traces = rng.normal(0.0, sigma, (int(fs * seconds), channels)).astype(np.float32)
    return NumpyRecording(traces, sampling_frequency=fs)


def _match(detected: np.ndarray, truth: np.ndarray, tol: float) -> np.ndarray:
    """For each element of ``truth``, whether a detected sample lies within ``tol`` samples."""
    detected = np.sort(detected)
    pos = np.clip(np.searchsorted(detected, truth), 1, max(1, len(detected) - 1))
    near = np.minimum(np.abs(detected[pos - 1] - truth), np.abs(detected[np.minimum(pos, len(detected) - 1)] - truth))
    return near <= tol


@pytest.mark.parametrize(("fs", "seed"), [(24000.0, 3), (30000.0, 4)])
def test_recall_on_ground_truth(fs: float, seed: int) -> None:
    rec, gt = generate_recording(
        seed, duration_s=30.0, sampling_frequency=fs, num_units=3, snr_range=(6.0, 20.0), firing_rates=8.0
    )
    filt = bandpass(rec)
    noise = noise_levels(filt)
    peaks = detect_peaks(filt, noise)
    tol = TOL_MS * fs / 1000.0
    snrs = gt.get_property("gt_snr")
    all_gt = np.sort(gt.to_spike_vector()["sample_index"])
    false = int((~_match(all_gt, peaks["sample_index"], tol)).sum())
    report = []
    for u, unit in enumerate(gt.unit_ids):
        train = gt.get_unit_spike_train(unit)
        recall = _match(peaks["sample_index"], train, tol).mean()
        report.append(f"unit {unit} snr {snrs[u]:.1f} recall {recall:.3f} ({len(train)} spikes)")
        if snrs[u] >= 6.0:
            assert recall >= 0.95, f"{report}; {false} false detections of {len(peaks)}"
    assert false <= 0.03 * len(peaks) + 2, f"{false} false detections of {len(peaks)} peaks; {report}"
    assert peaks.dtype == PEAK_DTYPE
    assert np.all(np.diff(peaks["sample_index"]) >= 0)


def test_one_peak_per_event_and_dead_time() -> None:
    fs = 24000.0
    rec, _ = generate_recording(5, duration_s=10.0, sampling_frequency=fs, num_units=3)
    filt = bandpass(rec)
    noise = noise_levels(filt)
    for polarity in ("both", "neg", "pos"):
        peaks = detect_peaks(filt, noise, threshold=4.0, polarity=polarity, dead_time_ms=0.5)
        gaps = np.diff(peaks["sample_index"])
        assert gaps.size == 0 or gaps.min() > dead_time_samples(0.5, fs), polarity
        if polarity == "neg":
            assert np.all(peaks["amplitude"] < 0)
        if polarity == "pos":
            assert np.all(peaks["amplitude"] > 0)
    # the amplitude is the signed sample value at the peak, in recording units
    traces = filt.get_traces()[:, 0]
    np.testing.assert_allclose(peaks["amplitude"], traces[peaks["sample_index"]], rtol=1e-6)


def test_suppression_is_greedy_per_channel() -> None:
    # A < B < C in a chain (A-B and B-C close, A-C far): C wins, B goes, A survives (greedy NMS, not "local max")
    peaks = np.zeros(5, dtype=PEAK_DTYPE)
    peaks["sample_index"] = [100, 108, 116, 108, 300]
    peaks["channel_index"] = [0, 0, 0, 1, 0]
    peaks["amplitude"] = [-6.0, -7.0, -9.0, -5.0, 8.0]
    out = one_peak_per_event(peaks, np.ones(2), dead_samples=10)
    assert out["sample_index"].tolist() == [100, 108, 116, 300]
    assert out["channel_index"].tolist() == [0, 1, 0, 0]
    # the rebound rule: an opposite-sign peak within rebound_samples is the same spike
    peaks = np.zeros(3, dtype=PEAK_DTYPE)
    peaks["sample_index"] = [100, 118, 130]
    peaks["amplitude"] = [-9.0, 6.0, -6.0]
    assert one_peak_per_event(peaks, np.ones(1), 10, 24)["sample_index"].tolist() == [100, 130]
    assert one_peak_per_event(peaks, np.ones(1), 10, None)["sample_index"].tolist() == [100, 118, 130]


def test_suppression_vectorized_on_many_peaks() -> None:
    rng = np.random.default_rng(0)
    peaks = np.zeros(200_000, dtype=PEAK_DTYPE)
    peaks["sample_index"] = np.sort(rng.integers(0, 10_000_000, peaks.size))
    peaks["channel_index"] = rng.integers(0, 4, peaks.size)
    peaks["amplitude"] = rng.normal(0, 8, peaks.size)
    out = one_peak_per_event(peaks, np.ones(4), dead_samples=12, rebound_samples=24)
    for c in range(4):
        gaps = np.diff(out["sample_index"][out["channel_index"] == c])
        assert gaps.min() > 12


def test_multichannel_detects_on_each_channel() -> None:
    fs = 24000.0
    traces = np.random.default_rng(1).normal(0, 1, (48000, 2)).astype(np.float32)
    traces[10000, 0] = -20.0
    traces[20000, 1] = 15.0
    rec = NumpyRecording(traces, sampling_frequency=fs)
    peaks = detect_peaks(rec, noise_levels(rec), threshold=8.0)
    assert [(int(p["sample_index"]), int(p["channel_index"])) for p in peaks] == [(10000, 0), (20000, 1)]
    # a dead (zero-noise) channel is skipped instead of flooding the output
    peaks = detect_peaks(rec, np.array([1.0, 0.0]), threshold=8.0)
    assert peaks["channel_index"].tolist() == [0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": float("nan")}, "threshold"),
        ({"polarity": "up"}, "polarity"),
        ({"dead_time_ms": -1.0}, "dead_time_ms"),
        ({"chunk_duration_s": 0}, "chunk_duration_s"),
        ({"n_jobs": 0}, "n_jobs"),
    ],
)
def test_bad_detect_params(kwargs: dict, match: str) -> None:
    rec = _white(seconds=0.5)
    with pytest.raises(DeepSpikeError, match=match):
        detect_peaks(rec, np.ones(1), **kwargs)


def test_noise_shape_checked() -> None:
    with pytest.raises(DeepSpikeError, match="one value per channel"):
        detect_peaks(_white(seconds=0.5), np.ones(3))


def test_noise_levels_robust_sigma() -> None:
    rec = _white(sigma=3.0, seconds=4.0, channels=2)
    noise = noise_levels(rec, seed=1)
    assert noise.shape == (2,) and noise.dtype == np.float32
    np.testing.assert_allclose(noise, 3.0, rtol=0.05)
    np.testing.assert_array_equal(noise, noise_levels(rec, seed=1))


def test_bandpass_float32_and_nyquist() -> None:
    rec = NumpyRecording(
        (np.random.default_rng(0).normal(0, 100, (20000, 1))).astype(np.int16), sampling_frequency=10000.0
    )
    with pytest.warns(UserWarning, match="Nyquist"):
        filt = bandpass(rec)  # default freq_max 5000 = Nyquist of 10 kHz: clipped, not an error
    assert filt.get_dtype() == np.float32
    assert filt.get_traces(start_frame=0, end_frame=100).dtype == np.float32
    with pytest.raises(DeepSpikeError, match=r"extract\.freq_min"):
        bandpass(rec, freq_min=3000.0, freq_max=2000.0)
    same = bandpass(rec, filtered=True)
    assert same.get_dtype() == np.float32
    np.testing.assert_array_equal(same.get_traces(end_frame=50), rec.get_traces(end_frame=50).astype(np.float32))
    f32 = _white()
    assert bandpass(f32, filtered=True) is f32


@pytest.mark.parametrize("freq_max", [5000.0, 6000.0])
def test_bandpass_clips_any_freq_max_above_nyquist(freq_max: float) -> None:
    """A 10 kHz recording: freq_max at (5000) or above (6000) Nyquist is clipped to just below it with a warning,
    whatever its value (it used to be clipped only when it equalled the hard-coded default, else an error)."""
    rec = NumpyRecording(
        (np.random.default_rng(0).normal(0, 100, (20000, 1))).astype(np.int16), sampling_frequency=10000.0
    )
    with pytest.warns(UserWarning, match=r"extract\.freq_max.*Nyquist"):
        filt = bandpass(rec, freq_max=freq_max)
    used = filt._kwargs["freq_max"]
    assert 0.9 * 5000.0 < used < 5000.0
    below = bandpass(rec, freq_max=used)  # the clipped value itself is valid: same filter, no warning
    np.testing.assert_array_equal(filt.get_traces(end_frame=2000), below.get_traces(end_frame=2000))
