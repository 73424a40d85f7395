"""Windows stage: cut each peak onto the canonical window grid, in noise units.

Every sampling rate goes through the same path: the peak time is refined to a fraction of a sample (parabola
through the extremum and its two neighbours), then the canonical grid ``t_peak + (k - n_before) / spec_fs`` is
sampled from the native-rate trace with Keys' cubic convolution (a = -0.5). That handles 20, 25, 30, 30.03, 40 kHz
and 24414.0625 Hz alike, and is an exact copy of the samples at 24 kHz when the peak sits on a sample. The
recording is read in chunks (with margins), so an hour-long file is never in memory at once.

Why Keys and not scipy (``bench/components.py``, analytic spikes sampled at 20-40 kHz, 6000 windows per rate, 2-core
CPU; bench/results/components.json): RMS error vs the analytic waveform on the 24 kHz grid is 8e-4 of the trough
depth at 20 kHz (2e-4 at 30 kHz), i.e. < 0.5 % of the noise sigma of a unit at the detection threshold;
``ndimage.map_coordinates`` (cubic B-spline) and ``interpolate.CubicSpline`` are 10x more accurate (8e-5) but 1-4x
and 12-25x slower, and their global prefilter makes a window depend on where the chunk boundaries fall (up to
3e-6 here), while 4 local taps give bit-identical windows for any chunking or ``n_jobs``. ``signal.resample_poly``
works on a fixed output grid, so windows lose the sub-sample peak alignment (error 0.039 of the trough).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from spikeinterface.core.node_pipeline import PipelineNode

from deepspike.defaults import conf_value
from deepspike.errors import DeepSpikeError, RecordingError
from deepspike.recording.preprocess import EXTRACT_CONF, recording_name, sampling_frequency_of
from deepspike.spec import WindowSpec
from deepspike.spikes.detect import check_noise

KEYS_A = -0.5
_TAPS = np.arange(-1, 3)  # the 4 native samples around each grid point: floor(x) - 1 .. floor(x) + 2


def keys_weights(frac: np.ndarray, a: float = KEYS_A) -> np.ndarray:
    """Cubic-convolution weights [..., 4] for samples floor(x)-1..floor(x)+2, given frac = x - floor(x)."""
    d = np.abs(frac[..., None] - _TAPS)  # distances 1+f, f, 1-f, 2-f
    near = ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
    far = ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
    return np.where(d <= 1.0, near, np.where(d < 2.0, far, 0.0))


def window_margins(spec: WindowSpec, sampling_frequency: float) -> tuple[int, int]:
    """Native samples needed before and after a peak sample (interpolation taps and +-0.5 alignment included)."""
    ratio = sampling_frequency / spec.sampling_frequency
    before = math.ceil(spec.n_before * ratio + 0.5) + 1
    after = math.ceil((spec.n_after - 1) * ratio + 0.5) + 3
    return before, max(after, 2)


def grid_offsets(spec: WindowSpec, sampling_frequency: float) -> np.ndarray:
    """The canonical grid's points relative to the peak, in native-rate samples."""
    return (np.arange(spec.length) - spec.n_before) * (sampling_frequency / spec.sampling_frequency)


def subsample_offset(prev: np.ndarray, center: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Vertex of the parabola through 3 samples, relative to the middle one, clipped to [-0.5, 0.5]."""
    denom = prev - 2.0 * center + nxt
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = np.where(denom != 0.0, 0.5 * (prev - nxt) / denom, 0.0)
    return np.clip(np.nan_to_num(delta), -0.5, 0.5)


def _check_peaks(peaks: Any, num_channels: int) -> tuple[np.ndarray, np.ndarray]:
    names = getattr(getattr(peaks, "dtype", None), "names", None) or ()
    if "sample_index" not in names or "channel_index" not in names:
        raise DeepSpikeError("peaks must be a structured array with sample_index and channel_index (PEAK_DTYPE)")
    samples = np.asarray(peaks["sample_index"], dtype=np.int64)
    chans = np.asarray(peaks["channel_index"], dtype=np.int64)
    if len(chans) and (chans.min() < 0 or chans.max() >= num_channels):
        raise DeepSpikeError(
            f"peak channel_index out of range [0, {num_channels}): the peaks are not of this recording"
        )
    return samples, chans


def _delta(traces: np.ndarray, local: np.ndarray, chans: np.ndarray, align: bool) -> np.ndarray:
    """Sub-sample peak offset of each peak on its own channel (0 without ``align``)."""
    if not align:
        return np.zeros(len(local))
    return subsample_offset(
        traces[local - 1, chans].astype(np.float64),
        traces[local, chans].astype(np.float64),
        traces[local + 1, chans].astype(np.float64),
    )


def _cut(
    traces: np.ndarray,
    local: np.ndarray,
    chans: np.ndarray,
    offsets: np.ndarray,
    scale: np.ndarray,
    align: bool,
) -> np.ndarray:
    """Windows [n, L] for peaks at local sample ``local`` on ``chans`` of a trace block [T, C]."""
    return _cut_at(traces, local + _delta(traces, local, chans, align), chans, offsets, scale)


def _cut_at(
    traces: np.ndarray, x0: np.ndarray, chans: np.ndarray, offsets: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """Windows [n, L] centred on the fractional samples ``x0`` of ``chans`` (Keys' cubic convolution)."""
    x = x0[:, None] + offsets[None, :]  # [n, L] native-rate sample positions
    base = np.floor(x)
    weights = keys_weights(x - base)  # [n, L, 4]
    idx = base.astype(np.int64)[..., None] + _TAPS  # [n, L, 4]
    vals = traces[idx, chans[:, None, None]]
    return (np.einsum("nlk,nlk->nl", vals, weights) * scale[:, None]).astype(np.float32)


def _blocks(
    filtered: Any, sorted_samples: np.ndarray, spec: WindowSpec, chunk_duration_s: float, skip_empty: bool
) -> Iterator[tuple[int, int, np.ndarray, int]]:
    """The recording in chunks with the margins a window needs: ``(lo, hi, traces, r0)``, where rows ``lo:hi`` of
    ``sorted_samples`` peak inside the chunk and ``traces`` starts at sample ``r0``. Every chunk read is checked for
    NaN/Inf; ``skip_empty`` does not read chunks without a peak."""
    fs = sampling_frequency_of(filtered)
    n_total = filtered.get_num_samples(0)
    before, after = window_margins(spec, fs)
    chunk = max(int(chunk_duration_s * fs), 1)
    for start in range(0, n_total, chunk):
        stop = min(n_total, start + chunk)
        lo, hi = np.searchsorted(sorted_samples, [start, stop])
        if skip_empty and hi <= lo:
            continue
        r0, r1 = max(0, start - before), min(n_total, stop + after)
        traces = filtered.get_traces(segment_index=0, start_frame=r0, end_frame=r1)
        check_finite_traces(traces, recording_name(filtered), f" between {r0 / fs:.3f} s and {r1 / fs:.3f} s")
        yield int(lo), int(hi), traces, r0


def extract_neighbour_windows(
    filtered: Any,
    sample_index: np.ndarray,
    peak_channel: np.ndarray,
    channels: np.ndarray,
    noise: Any,
    spec: WindowSpec,
    chunk_duration_s: float,
) -> np.ndarray:
    """Windows ``[n, K, spec.length]`` (noise units) of each event on the K ``channels`` of its row, all cut at
    the peak channel's sub-sample peak time, so the spike's spatial footprint is kept; a channel index -1 gives a
    row of zeros. The events' windows must lie inside the recording (as the detected ones do)."""
    fs = sampling_frequency_of(filtered)
    noise = check_noise(noise, filtered.get_num_channels())
    samples = np.asarray(sample_index, dtype=np.int64)
    peak_channel = np.asarray(peak_channel, dtype=np.int64)
    channels = np.asarray(channels, dtype=np.int64)
    channels = channels.reshape(len(samples), -1) if channels.ndim != 2 else channels  # [n, K]; n may be 0
    n, k = channels.shape
    n_total = filtered.get_num_samples(0)
    before, after = window_margins(spec, fs)
    if n and (samples.min() - before < 0 or samples.max() + after > n_total):
        raise DeepSpikeError("extract_neighbour_windows: an event's window leaves the recording")
    offsets = grid_offsets(spec, fs)
    inv_noise = np.where(noise > 0, 1.0 / np.where(noise > 0, noise, 1.0), 0.0)
    waves = np.zeros((n, k, spec.length), dtype=np.float32)
    order = np.argsort(samples, kind="stable")
    for lo, hi, traces, r0 in _blocks(filtered, samples[order], spec, chunk_duration_s, skip_empty=True):
        sel = order[lo:hi]
        local = samples[sel] - r0
        x0 = local + _delta(traces, local, peak_channel[sel], True)
        for j in range(k):
            ch = channels[sel, j]
            ok = ch >= 0
            if ok.any():
                waves[sel[ok], j] = _cut_at(traces, x0[ok], ch[ok], offsets, inv_noise[ch[ok]])
    return waves


def extract_windows(
    filtered: Any,
    peaks: np.ndarray,
    noise: Any,
    spec: WindowSpec,
    chunk_duration_s: float | None = None,
    *,
    align: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Windows ``[n_kept, spec.length]`` float32 in noise units, and the ``kept`` mask over ``peaks``.

    Each peak uses its own channel. Peaks whose window would leave the recording, or that lie on a channel with
    zero noise, are dropped (``kept=False``); rows follow the order of the kept peaks. Every chunk is checked
    for NaN/Inf (RecordingError). ``align=False`` skips the sub-sample alignment. ``chunk_duration_s=None``
    takes ``extract.chunk_duration_s`` from ``conf/extract/default.yaml``.
    """
    if chunk_duration_s is None:
        chunk_duration_s = conf_value(EXTRACT_CONF, "chunk_duration_s")
    fs = sampling_frequency_of(filtered)
    if filtered.get_num_segments() != 1:
        raise DeepSpikeError("extract_windows needs a single-segment recording; concatenate the segments first")
    if not (math.isfinite(float(chunk_duration_s)) and chunk_duration_s > 0):
        raise DeepSpikeError(f"chunk_duration_s must be > 0 seconds (e.g. 10.0), got {chunk_duration_s!r}")
    noise = check_noise(noise, filtered.get_num_channels())
    samples, chans = _check_peaks(peaks, filtered.get_num_channels())
    n_total = filtered.get_num_samples(0)
    kept = window_kept(samples, chans, noise, n_total, spec, fs)
    waves = np.zeros((len(samples), spec.length), dtype=np.float32)
    offsets = grid_offsets(spec, fs)
    inv_noise = 1.0 / np.where(noise > 0, noise, 1.0)
    order = np.argsort(samples, kind="stable")
    order = order[kept[order]]
    for lo, hi, traces, r0 in _blocks(filtered, samples[order], spec, chunk_duration_s, skip_empty=False):
        if hi > lo:
            sel = order[lo:hi]
            waves[sel] = _cut(traces, samples[sel] - r0, chans[sel], offsets, inv_noise[chans[sel]], align)
    return waves[kept], kept


def window_kept(
    samples: np.ndarray, chans: np.ndarray, noise: np.ndarray, n_total: int, spec: WindowSpec, fs: float
) -> np.ndarray:
    """Peaks whose window lies inside the recording, on a channel with a usable (non-zero) noise level."""
    before, after = window_margins(spec, fs)
    return (samples - before >= 0) & (samples + after <= n_total) & (noise[chans] > 0)


def check_finite_traces(traces: np.ndarray, name: str, where: str = "") -> None:
    """Raise a RecordingError if a block of (filtered) traces holds NaN/Inf."""
    if not np.all(np.isfinite(traces)):
        raise RecordingError(
            f"recording {name} has NaN/Inf samples{where} (after filtering); replace them (e.g. spikeinterface."
            "preprocessing.remove_artifacts) or cut that stretch out (recording.frame_slice) before extracting spikes"
        )


class WindowNode(PipelineNode):
    """SpikeInterface pipeline node cutting the windows of its parent detector's peaks from the same chunk, so
    detection and windows share one read (and one filtering) of the recording. Peaks near the recording edges
    see zero padding here: drop them with ``window_kept``."""

    def __init__(self, recording: Any, parents: list, noise: np.ndarray, spec: WindowSpec, align: bool = True):
        PipelineNode.__init__(self, recording, return_output=True, parents=parents)
        self.fs = sampling_frequency_of(recording)
        self.margin = max(window_margins(spec, self.fs))
        self.offsets = grid_offsets(spec, self.fs)
        self.inv_noise = 1.0 / np.where(noise > 0, noise, 1.0)
        self.align, self.length, self.name = align, spec.length, recording_name(recording)

    def get_margin(self) -> int:
        return self.margin

    def get_dtype(self) -> np.dtype:
        return np.dtype("float32")

    def compute(self, traces: np.ndarray, peaks: np.ndarray) -> np.ndarray:
        check_finite_traces(traces, self.name)
        local = peaks["sample_index"].astype(np.int64)  # relative to this chunk (margins included)
        chans = peaks["channel_index"].astype(np.int64)
        if local.size == 0:
            return np.zeros((0, self.length), dtype=np.float32)
        return _cut(traces, local, chans, self.offsets, self.inv_noise[chans], self.align)


# ------------------------------------------------------------------------------------------- pre-cut snippets
SNIPPET_NOISE_GAP_MS = 0.25  # samples closer than this before the peak carry the spike's onset: not noise


def snippet_noise(frames: np.ndarray, sampling_frequency: float, peak_index: int) -> float:
    """Robust noise sigma of pre-cut snippets, from their samples at least 0.25 ms before the peak.

    Per sample position the median is removed first (the mean spike still leaks into the earliest samples),
    then 1.4826 x the median absolute value over frames, and the median over those positions.
    """
    last = int(peak_index - math.ceil(SNIPPET_NOISE_GAP_MS * 1e-3 * sampling_frequency))
    if last < 1:
        raise DeepSpikeError(
            f"snippets have only {peak_index} sample(s) before the peak at {sampling_frequency:g} Hz: too few to "
            f"estimate the noise (need samples >= {SNIPPET_NOISE_GAP_MS} ms before it); pass noise= (the recording's "
            "noise sigma in the snippets' units)"
        )
    pre = np.asarray(frames[:, :last], dtype=np.float64)
    mad = 1.4826 * np.median(np.abs(pre - np.median(pre, axis=0)), axis=0)
    return float(np.median(mad))


def conform_snippets(
    frames: Any,
    sampling_frequency: float,
    spec: WindowSpec,
    peak_index: int,
    noise: float | None = None,
    search: int = 1,
    name: str = "snippets",
) -> tuple[np.ndarray, float]:
    """Pre-cut spike snippets ``[n, m]`` (e.g. an acquisition system's, or a published benchmark's) onto the
    canonical window grid in noise units; returns (windows ``[n, spec.length]``, noise sigma used).

    The snippets were already aligned by whoever cut them, on the extremum at ``peak_index``: each is re-peaked
    only within ``search`` samples of it on the same sign (not on the largest |value|, which jumps between the
    trough and the peak of biphasic units and splits them), refined to a fraction of a sample and resampled like
    a recording's windows (``_cut``: each frame is one "channel" of a trace block). Frames too short for the
    window are edge-padded. ``noise`` (sigma, in the frames' units) defaults to ``snippet_noise``.
    """
    x = np.asarray(frames)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] < 3:
        raise DeepSpikeError(f"{name}: snippets must be a 2-D array [spikes, samples] with >= 3 samples, got {x.shape}")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(x), axis=1))[0])
        raise RecordingError(f"{name}: snippet {bad} holds NaN/Inf samples; drop or repair those snippets first")
    fs = float(sampling_frequency)
    if not (math.isfinite(fs) and fs > 0):
        raise DeepSpikeError(f"{name}: sampling_frequency must be a positive number of Hz, got {sampling_frequency!r}")
    if not 0 <= int(peak_index) < x.shape[1]:
        raise DeepSpikeError(f"{name}: peak_index={peak_index} is outside the {x.shape[1]}-sample snippets")
    sigma = snippet_noise(x, fs, int(peak_index)) if noise is None else float(noise)
    if not (math.isfinite(sigma) and sigma > 0):
        raise DeepSpikeError(f"{name}: noise sigma must be > 0 (got {sigma!r}); pass noise= explicitly")
    before, after = window_margins(spec, fs)
    pad = max(before, after) + int(search) + 1
    xp = np.pad(x, ((0, 0), (pad, pad)), mode="edge")
    c = int(peak_index) + pad
    sign = np.where(xp[:, c] < 0, -1.0, 1.0)[:, None]
    local = c - int(search) + np.argmax(sign * xp[:, c - int(search) : c + int(search) + 1], axis=1)
    offsets = grid_offsets(spec, fs)
    waves = _cut(xp.T, local, np.arange(len(xp)), offsets, np.full(len(xp), 1.0 / sigma), True)
    return waves, sigma
