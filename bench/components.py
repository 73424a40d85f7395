"""Hand-written components against the library functions that could replace them: speed AND quality, same data.

1. Detection (deepspike.spikes.detect vs spikeinterface.sortingcomponents.peak_detection.detect_peaks, methods
   ``by_channel`` and ``locally_exclusive``): 10 min of one 24 kHz channel from SpikeInterface's ground-truth
   generator (recording.synthetic.generate_recording: 5 units, peak SNR 4-20), band-passed once and held in memory
   so only the detector is timed. Same threshold (5 sigma, same noise levels), both polarities, same 0.5 ms sweep.
   A detection is a hit when it is the first within ``TOL_MS`` of a ground-truth spike; every other detection
   is a false positive. SpikeInterface's peaks are also scored after deepspike's one-peak-per-event step.
2. Resampling onto the canonical grid (Keys cubic convolution in deepspike.spikes.windows vs scipy's CubicSpline,
   ndimage.map_coordinates (cubic B-spline) and signal.resample_poly): a trace of analytic spikes (known
   continuous waveform, peak at a known sub-sample time) sampled at 20/25/30/30.03/40 kHz; windows on the 24 kHz
   grid around the true peak are compared with the analytic waveform there (RMS error / peak amplitude), and the
   time to cut the windows of 60 s (10 s chunks, as extraction reads them) is measured.

Run: ``python bench/components.py``; prints a table and writes bench/results/components.json.
"""

from __future__ import annotations

import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

TOL_MS = 0.4  # ground-truth matching tolerance (conf/corpus.yaml gt_tolerance_ms)
THRESHOLD, DEAD_MS = 5.0, 0.5
RATES = (20000.0, 25000.0, 30000.0, 30030.0, 40000.0)


# ------------------------------------------------------------------------------------------------ detection
def score(detected: np.ndarray, truth: np.ndarray, fs: float) -> dict[str, float]:
    """Recall and false positives: each GT spike takes at most one detection (the nearest within TOL_MS)."""
    tol = TOL_MS * fs / 1000.0
    truth = np.sort(truth)
    pos = np.clip(np.searchsorted(truth, detected), 1, len(truth) - 1)
    nearest = np.where(np.abs(truth[pos] - detected) < np.abs(truth[pos - 1] - detected), pos, pos - 1)
    close = np.abs(truth[nearest] - detected) <= tol
    hit = np.unique(nearest[close])
    return {
        "recall": len(hit) / len(truth),
        "false_pos": int(len(detected) - len(hit)),
        "detections": len(detected),
    }


def _timed(fn: Any, repeat: int = 3) -> tuple[Any, float]:
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def bench_detection(duration_s: float) -> dict[str, Any]:
    from spikeinterface.core import NumpyRecording
    from spikeinterface.sortingcomponents.peak_detection import detect_peaks as si_detect_peaks

    from deepspike.recording.preprocess import bandpass, noise_levels
    from deepspike.recording.synthetic import generate_recording
    from deepspike.spikes.detect import dead_time_samples, detect_peaks, event_index

    rec, gt = generate_recording(7, duration_s=duration_s, sampling_frequency=24000.0, num_units=5, snr_range=(4, 20))
    fs = rec.get_sampling_frequency()
    traces, t_filter = _timed(lambda: bandpass(rec).get_traces(), repeat=1)  # in memory: detectors timed alone
    filt = NumpyRecording(traces, sampling_frequency=fs)
    filt.set_probe(rec.get_probe())  # locally_exclusive needs channel locations
    noise = noise_levels(filt)
    truth = gt.to_spike_vector()["sample_index"].astype(np.int64)
    job = {"n_jobs": 1, "chunk_duration": "10s", "progress_bar": False}
    ours, t_ours = _timed(lambda: detect_peaks(filt, noise, THRESHOLD, "both", DEAD_MS, 10.0, 1))
    out: dict[str, Any] = {"detect_data": f"{duration_s / 60:g} min, 1 channel, 24 kHz, 5 units, SNR 4-20"}
    out["bandpass_seconds"] = round(t_filter, 3)  # generating + filtering the same data, for scale
    out["detect_deepspike"] = {**score(ours["sample_index"], truth, fs), "seconds": round(t_ours, 3)}
    for method in ("by_channel", "locally_exclusive"):
        kwargs = {
            "peak_sign": "both",
            "detect_threshold": THRESHOLD,
            "exclude_sweep_ms": DEAD_MS,
            "noise_levels": noise,
        }
        if method == "locally_exclusive":
            kwargs["radius_um"] = 50.0
        peaks, t = _timed(lambda m=method, k=kwargs: si_detect_peaks(filt, method=m, method_kwargs=k, job_kwargs=job))
        out[f"detect_si_{method}"] = {**score(peaks["sample_index"], truth, fs), "seconds": round(t, 3)}
        dead = dead_time_samples(DEAD_MS, fs)
        nms, t_nms = _timed(lambda p=peaks, d=dead: p[event_index(p, noise, d, dead_time_samples(2 * DEAD_MS, fs))])
        same = len(nms) == len(ours) and bool(np.array_equal(nms["sample_index"], ours["sample_index"]))
        out[f"detect_si_{method}_plus_event_nms"] = {
            **score(nms["sample_index"], truth, fs),
            "seconds": round(t + t_nms, 3),
            "same_peaks_as_deepspike": same,
        }
    out["import_s_deepspike_detect"], out["import_torch_deepspike_detect"] = _import_cost("deepspike.spikes.detect")
    out["import_s_si_peak_detection"], out["import_torch_si_peak_detection"] = _import_cost(
        "spikeinterface.sortingcomponents.peak_detection"
    )
    return out


def _import_cost(module: str) -> tuple[float, bool]:
    """Seconds to import ``module`` in a fresh interpreter (after spikeinterface.core), and whether torch came too."""
    code = (
        "import time, sys, spikeinterface.core; t = time.perf_counter(); "
        f"import {module}; print(time.perf_counter() - t, 'torch' in sys.modules)"
    )
    best, torch_loaded = np.inf, False
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        best, torch_loaded = min(best, float(out[0])), out[1] == "True"
    return round(best, 3), torch_loaded


# ----------------------------------------------------------------------------------------------- resampling
def spike(t_ms: np.ndarray) -> np.ndarray:
    """An analytic, smooth biphasic spike (trough at 0 of depth 1, rebound after), t in ms."""
    return -np.exp(-0.5 * (t_ms / 0.12) ** 2) + 0.35 * np.exp(-0.5 * ((t_ms - 0.35) / 0.22) ** 2)


def analytic_trace(fs: float, seconds: float, rate_hz: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples at ``fs`` of a sum of spikes at continuous times (>= 3 ms apart); returns (trace, peak times s)."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.uniform(3e-3, 2.0 / rate_hz - 3e-3, int(seconds * rate_hz)))
    times = times[(times > 0.01) & (times < seconds - 0.01)]
    n = int(seconds * fs)
    trace = np.zeros(n)
    half = int(np.ceil(2e-3 * fs))
    for t in times:  # each spike only touches +-2 ms
        i = int(t * fs)
        k = np.arange(max(0, i - half), min(n, i + half))
        trace[k] += spike((k / fs - t) * 1000.0)
    return trace, times


def keys(trace: np.ndarray, x: np.ndarray) -> np.ndarray:
    """spikes.windows' Keys cubic convolution at fractional sample positions x (same arithmetic as ``_cut``)."""
    from deepspike.spikes.windows import _TAPS, keys_weights

    base = np.floor(x)
    return np.einsum("nlk,nlk->nl", trace[base.astype(np.int64)[..., None] + _TAPS], keys_weights(x - base))


def cubic_spline(trace: np.ndarray, x: np.ndarray) -> np.ndarray:
    from scipy.interpolate import CubicSpline

    return CubicSpline(np.arange(len(trace)), trace)(x)


def map_coords(trace: np.ndarray, x: np.ndarray) -> np.ndarray:
    from scipy.ndimage import map_coordinates

    return map_coordinates(trace, x.reshape(1, -1), order=3, mode="nearest").reshape(x.shape)


def resample_poly_nearest(trace: np.ndarray, x: np.ndarray, fs: float, spec_fs: float) -> np.ndarray:
    """Resample the trace to spec_fs (polyphase FIR), then take the samples nearest each window position: the
    grid is fixed at k / spec_fs, so sub-sample peak alignment is lost (up to half a 24 kHz sample)."""
    from fractions import Fraction

    from scipy.signal import resample_poly

    frac = Fraction(spec_fs / fs).limit_denominator(2000)
    out = resample_poly(trace, frac.numerator, frac.denominator)
    return out[np.clip(np.rint(x * spec_fs / fs).astype(np.int64), 0, len(out) - 1)]


def _cut_chunked(f: Any, trace: np.ndarray, x: np.ndarray, chunk: int, margin: int, peak: int) -> np.ndarray:
    """Windows cut chunk by chunk like extraction: a window goes with the chunk of its peak (column ``peak`` of
    ``x``), read with ``margin`` samples either side."""
    vals = np.empty_like(x)
    for a in range(0, len(trace), chunk):
        sel = (x[:, peak] >= a) & (x[:, peak] < a + chunk)
        lo, hi = max(0, a - margin), min(len(trace), a + chunk + margin)
        vals[sel] = f(trace[lo:hi], x[sel] - lo)
    return vals


def bench_resampling() -> dict[str, Any]:
    from deepspike.spec import WindowSpec
    from deepspike.spikes.windows import window_margins

    spec = WindowSpec()
    k_ms = (np.arange(spec.length) - spec.n_before) / spec.sampling_frequency * 1000.0
    names = ("keys", "cubic_spline", "map_coordinates", "resample_poly")
    err: dict[str, dict[str, float]] = {m: {} for m in names}
    secs: dict[str, dict[str, float]] = {m: {} for m in names}
    chunking: dict[str, dict[str, float]] = {m: {} for m in names}
    for fs in RATES:
        trace, times = analytic_trace(fs, 60.0, 100.0, seed=int(fs))
        x = times[:, None] * fs + k_ms[None, :] * fs / 1000.0  # native sample positions of the 24 kHz grid
        ref = spike(np.broadcast_to(k_ms, x.shape))
        margin = max(window_margins(spec, fs)) + 2  # what the pipeline reads around a chunk (+ the +-1 alignment)
        fns = {
            "keys": keys,
            "cubic_spline": cubic_spline,
            "map_coordinates": map_coords,
            "resample_poly": lambda tr, xx, fs=fs: resample_poly_nearest(tr, xx, fs, spec.sampling_frequency),
        }
        rate = f"{fs / 1000:g}kHz"
        for name, f in fns.items():
            vals, t = _timed(partial(_cut_chunked, f, trace, x, int(10 * fs), margin, spec.n_before))
            small = _cut_chunked(f, trace, x, int(0.05 * fs), margin, spec.n_before)  # 50 ms chunks: same windows?
            err[name][rate] = round(float(np.sqrt(np.mean((vals - ref) ** 2))), 6)
            secs[name][rate] = round(t, 4)
            chunking[name][rate] = float(f"{np.max(np.abs(vals - small)):.2g}")
    return {
        "resample_data": "60 s analytic spike trains (100 Hz, 6000 windows) per native rate; error = RMS vs the "
        "analytic waveform on the 24 kHz grid, in units of the trough depth; seconds = cutting all windows in 10 s "
        "chunks; chunk_dependence = max |difference| between 10 s and 50 ms chunks (pipeline margins)",
        "resample_rms_error": err,
        "resample_seconds": secs,
        "resample_chunk_dependence": chunking,
    }


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the detection recording")
    args = ap.parse_args()
    figures = {**bench_detection(args.minutes * 60.0), **bench_resampling()}
    write_results("components", figures)


if __name__ == "__main__":
    main()
