"""Detect stage: threshold crossings in noise units, one peak per event per channel.

A chunked SpikeInterface node-pipeline detector (the ``by_channel`` rule) finds local extrema beyond
``threshold x noise`` (memory stays flat on hour-long files, ``n_jobs`` parallelizes). With ``polarity="both"``
the trough and the rebound of one spike are both extrema, so a vectorized non-maximum suppression then keeps, on
each channel, only the peak with the largest ``|amplitude| / noise`` among peaks closer than ``dead_time_ms``, or
closer than ``REBOUND_FACTOR x dead_time_ms`` and of opposite sign (a band-passed spike's rebound follows its
trough by 0.3-1 ms; counting it as a second spike would add a spurious, misaligned unit).

Why not ``spikeinterface.sortingcomponents.peak_detection.detect_peaks`` (measured by ``bench/components.py`` on
10 min of one 24 kHz generated channel, 5 units, 2-core CPU; bench/results/components.json): its ``by_channel``
method followed by ``event_index`` finds exactly the same peaks (recall 0.916, 30 false positives) in 0.50 s vs
0.26 s here; ``locally_exclusive`` (numba) + ``event_index``: recall 0.917, 26 false positives, 0.25 s. Either
alone reports every rebound too (18194 / 9035 false positives), so the suppression step stays anyway, and
importing that package takes 4.9 s and loads torch (this module: 0.03 s, no torch; torch slows SpikeInterface's
saves). Detection is ~3 % of the band-pass time of the same data (7.5 s), so the import is the cost that matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from spikeinterface.core.node_pipeline import PeakDetector, run_node_pipeline

from deepspike.defaults import conf_value
from deepspike.errors import DeepSpikeError
from deepspike.recording.preprocess import EXTRACT_CONF, sampling_frequency_of

PEAK_DTYPE = np.dtype([("sample_index", "i8"), ("channel_index", "i4"), ("amplitude", "f4")])
POLARITIES = ("neg", "pos", "both")
REBOUND_FACTOR = 2.0  # opposite-sign peaks closer than this x dead_time_ms are one spike's trough and rebound


def dead_time_samples(dead_time_ms: float, sampling_frequency: float) -> int:
    """Dead time in whole samples (at least 1): peaks on one channel closer than this are one event."""
    return max(1, round(dead_time_ms * sampling_frequency / 1000.0))


def check_detect_params(
    threshold: float, polarity: str, dead_time_ms: float, chunk_duration_s: float, n_jobs: int
) -> None:
    """Raise a DeepSpikeError naming the bad detection parameter and its valid range."""
    if not _finite(threshold) or threshold <= 0:
        raise DeepSpikeError(f"threshold must be > 0 (in noise sigmas, typically 4-6), got {threshold!r}")
    if polarity not in POLARITIES:
        raise DeepSpikeError(f"polarity must be one of {POLARITIES} (sign of the spike peaks), got {polarity!r}")
    if not _finite(dead_time_ms) or dead_time_ms <= 0:
        raise DeepSpikeError(f"dead_time_ms must be > 0 (typically 0.3-1.0 ms), got {dead_time_ms!r}")
    if not _finite(chunk_duration_s) or chunk_duration_s <= 0:
        raise DeepSpikeError(f"chunk_duration_s must be > 0 seconds (e.g. 10.0), got {chunk_duration_s!r}")
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0 or n_jobs < -1:
        raise DeepSpikeError(f"n_jobs must be a positive integer or -1 (all cores), got {n_jobs!r}")


def check_noise(noise: Any, num_channels: int) -> np.ndarray:
    """Noise levels as float64 [num_channels]; raise if the shape is wrong or a value is NaN/negative."""
    arr = np.asarray(noise, dtype=np.float64).reshape(-1)
    if arr.shape != (num_channels,):
        raise DeepSpikeError(
            f"noise must have one value per channel ({num_channels}), got shape {np.shape(noise)}; "
            "compute it with deepspike.recording.preprocess.noise_levels(filtered)"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise DeepSpikeError(f"noise levels must be finite and >= 0, got {arr.tolist()}")
    return arr


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def detect_peaks(
    filtered: Any,
    noise: Any,
    threshold: float | None = None,
    polarity: str | None = None,
    dead_time_ms: float | None = None,
    chunk_duration_s: float | None = None,
    n_jobs: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Peaks of a filtered single-segment recording as a ``PEAK_DTYPE`` array sorted by time then channel.

    ``threshold`` is in units of ``noise`` (per channel, recording units); channels with zero noise (dead) are
    skipped. ``amplitude`` is the signed sample value at the peak, in recording units. None takes the default
    declared in ``conf/extract/default.yaml``.
    """
    plan = plan_detection(filtered, noise, threshold, polarity, dead_time_ms, chunk_duration_s, n_jobs, progress)
    if plan is None:
        return np.zeros(0, dtype=PEAK_DTYPE)
    raw = run_node_pipeline(filtered, [plan.node], plan.job_kwargs, job_name="detect peaks", squeeze_output=True)
    peaks = as_peak_dtype(raw)
    return peaks[event_index(peaks, plan.noise, plan.dead_samples, plan.rebound_samples)]


@dataclass
class DetectionPlan:
    """What a chunked detection run needs: the SpikeInterface node, job kwargs and the NMS windows."""

    node: Any  # ThresholdDetector
    job_kwargs: dict[str, Any]
    noise: np.ndarray  # float64 [num_channels], recording units
    dead_samples: int
    rebound_samples: int | None  # opposite-sign suppression window (polarity "both" only)


def plan_detection(
    filtered: Any,
    noise: Any,
    threshold: float | None = None,
    polarity: str | None = None,
    dead_time_ms: float | None = None,
    chunk_duration_s: float | None = None,
    n_jobs: int | None = None,
    progress: bool = False,
) -> DetectionPlan | None:
    """Validate the inputs and build the detector node (None when every channel is dead). Lets other stages add
    their own nodes after the detector (windows in ``extract``) so the recording is filtered only once. None
    takes the default declared in ``conf/extract/default.yaml``."""
    threshold, polarity, dead_time_ms, chunk_duration_s, n_jobs = (
        conf_value(EXTRACT_CONF, key) if value is None else value
        for key, value in (
            ("threshold", threshold),
            ("polarity", polarity),
            ("dead_time_ms", dead_time_ms),
            ("chunk_duration_s", chunk_duration_s),
            ("n_jobs", n_jobs),
        )
    )
    check_detect_params(threshold, polarity, dead_time_ms, chunk_duration_s, n_jobs)
    fs = sampling_frequency_of(filtered)
    if filtered.get_num_segments() != 1:
        raise DeepSpikeError(
            f"detect_peaks needs a single-segment recording, got {filtered.get_num_segments()} segments; "
            "concatenate them (spikeinterface.concatenate_recordings) or use deepspike.spikes.extract.extract_spikes"
        )
    noise = check_noise(noise, filtered.get_num_channels())
    usable = noise > 0
    if not usable.any():
        return None
    sweep = dead_time_samples(dead_time_ms, fs)
    node = ThresholdDetector(filtered, np.where(usable, noise * float(threshold), np.inf), polarity, sweep)
    chunk_size = max(int(chunk_duration_s * fs), 4 * sweep + 16)
    job_kwargs = {"n_jobs": int(n_jobs), "chunk_size": chunk_size, "progress_bar": bool(progress)}
    rebound = dead_time_samples(REBOUND_FACTOR * dead_time_ms, fs) if polarity == "both" else None
    return DetectionPlan(node, job_kwargs, noise, sweep, rebound)


def as_peak_dtype(raw: np.ndarray) -> np.ndarray:
    """SpikeInterface peaks (with segment_index) as ``PEAK_DTYPE``."""
    peaks = np.zeros(len(raw), dtype=PEAK_DTYPE)
    for name in PEAK_DTYPE.names:
        peaks[name] = raw[name]
    return peaks


def one_peak_per_event(
    peaks: np.ndarray, noise: np.ndarray, dead_samples: int, rebound_samples: int | None = None
) -> np.ndarray:
    """Greedy non-maximum suppression per channel: keep the largest ``|amplitude|/noise`` peak, drop every peak
    within ``dead_samples`` of it (and every opposite-sign peak within ``rebound_samples``: the trough and the
    rebound of one spike), repeat on the rest. Vectorized: a few passes over shifted arrays, no per-peak loop.
    """
    return peaks[event_index(peaks, noise, dead_samples, rebound_samples)]


def event_index(
    peaks: np.ndarray, noise: np.ndarray, dead_samples: int, rebound_samples: int | None = None
) -> np.ndarray:
    """Indices into ``peaks`` of the peaks ``one_peak_per_event`` keeps, ordered by sample then channel."""
    if len(peaks) == 0:
        return np.zeros(0, dtype=np.int64)
    rebound = max(dead_samples, rebound_samples or dead_samples)
    chan = peaks["channel_index"].astype(np.int64)
    samples = peaks["sample_index"].astype(np.int64)
    order = np.lexsort((samples, chan))
    chan, samples, amplitude = chan[order], samples[order], peaks["amplitude"][order]
    span = int(samples.max()) + 2 * rebound + 2
    key = chan * span + samples  # sorted; peaks of different channels are never within `rebound` in key space
    crowded = np.searchsorted(key, key + rebound, side="right") - np.searchsorted(key, key - rebound) > 1
    keep = np.ones(len(key), dtype=bool)  # isolated peaks are events; the NMS only runs on the crowded ones
    sub = np.flatnonzero(crowded)
    if sub.size:
        score = np.abs(amplitude[sub].astype(np.float64)) / np.maximum(noise[chan[sub]], 1e-30)
        keep[sub] = _suppress(key[sub], amplitude[sub] > 0, score, dead_samples, rebound)
    kept = np.flatnonzero(keep)  # positions in the (channel, sample) order
    return order[kept[np.lexsort((chan[kept], samples[kept]))]]


def _suppress(key: np.ndarray, positive: np.ndarray, score: np.ndarray, dead: int, rebound: int) -> np.ndarray:
    """Keep mask of greedy NMS over sorted ``key``: items conflict within ``dead``, or within ``rebound`` when of
    opposite sign. Each pass keeps the active items that outrank all their active conflicts and deactivates those
    conflicts; the best active item always wins, so it ends after a few passes. Memory: n bytes per shift."""
    n = len(key)
    idx = np.arange(n)
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((-idx, score))] = idx  # unique; ties: the earlier peak wins
    left = np.searchsorted(key, key - rebound, side="left")
    right = np.searchsorted(key, key + rebound, side="right")
    shifts = []  # (signed shift, conflict mask) for every shift within reach
    for d in range(1, int(max((right - idx - 1).max(), (idx - left).max())) + 1):
        for step, valid in ((d, idx + d < right), (-d, idx - d >= left)):
            jj = np.clip(idx + step, 0, n - 1)
            near = np.abs(key[jj] - key) <= dead
            shifts.append((step, valid & (near | (positive[jj] != positive))))
    active = np.ones(n, dtype=bool)
    keep = np.zeros(n, dtype=bool)
    while active.any():
        winners = active.copy()
        for step, conflict in shifts:
            jj = np.clip(idx + step, 0, n - 1)
            winners &= ~(conflict & active[jj] & (rank[jj] > rank))
        keep |= winners
        active &= ~winners
        for step, conflict in shifts:
            active &= ~(conflict & winners[np.clip(idx + step, 0, n - 1)])
    return keep


class ThresholdDetector(PeakDetector):
    """SpikeInterface PeakDetector node (chunked, parallel): local extrema beyond +-threshold that are the most
    extreme sample within +-``sweep`` samples on their channel (SpikeInterface's ``by_channel`` rule; its own
    module imports torch, which costs seconds and slows SI saves afterwards, so extraction stays torch-free).
    """

    def __init__(self, recording: Any, thresholds: np.ndarray, polarity: str, sweep: int) -> None:
        PeakDetector.__init__(self, recording, return_output=True)
        self.thresholds = np.asarray(thresholds, dtype=np.float32)
        self.polarity, self.sweep = polarity, int(sweep)
        self._kwargs.update(thresholds=self.thresholds, polarity=polarity, sweep=self.sweep)

    def get_margin(self) -> int:
        return self.sweep

    def compute(
        self, traces: np.ndarray, start_frame: int, end_frame: int, segment_index: int, max_margin: int
    ) -> tuple[np.ndarray]:
        m = self.sweep
        center = traces[m : traces.shape[0] - m]
        found = [_extrema(traces, center, m, self.thresholds, sign) for sign in _SIGNS[self.polarity]]
        sample = np.concatenate([f[0] for f in found])
        chan = np.concatenate([f[1] for f in found])
        if len(found) > 1:
            order = np.lexsort((chan, sample))
            sample, chan = sample[order], chan[order]
        out = np.zeros(sample.size, dtype=self.get_dtype())
        out["sample_index"] = sample + m
        out["channel_index"] = chan
        out["amplitude"] = center[sample, chan]
        out["segment_index"] = segment_index
        return (out,)


_SIGNS = {"pos": (1.0,), "neg": (-1.0,), "both": (1.0, -1.0)}


def _extrema(
    traces: np.ndarray, center: np.ndarray, m: int, thresholds: np.ndarray, sign: float
) -> tuple[np.ndarray, np.ndarray]:
    """(sample, channel) of samples beyond threshold (in the direction ``sign``) strictly more extreme than the
    m previous samples and at least as extreme as the m next ones; samples index ``center``.

    Only the few samples beyond threshold are compared with their neighbours (a gather of [k, 2m]), not the
    whole chunk shifted 2m times: detection then costs about one pass over the traces.
    """
    beyond = center > thresholds[None, :] if sign > 0 else center < -thresholds[None, :]
    flat = np.flatnonzero(beyond)  # much faster than 2-D nonzero
    s, c = np.divmod(flat, center.shape[1])
    if s.size == 0:
        return s, c
    value = center[s, c] * sign
    left = traces[s[:, None] + np.arange(m), c[:, None]] * sign  # the m samples before (traces has a margin m)
    right = traces[s[:, None] + m + 1 + np.arange(m), c[:, None]] * sign  # the m samples after
    ok = (value[:, None] > left).all(1) & (value[:, None] >= right).all(1)
    return s[ok], c[ok]
