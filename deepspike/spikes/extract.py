"""Extract stage: recording -> band-pass -> noise -> peaks -> canonical windows (+ ground-truth labels).

Composes ``preprocess``, ``detect`` and ``windows``; every step is chunked, so the recording is never in memory
at once (memory grows only with the number of spikes). Detection and window cutting run as one SpikeInterface node
pipeline, so the recording is read and filtered once; the result equals ``detect_peaks`` then ``extract_windows``.
The parameters are declared once, with their defaults and ranges, in ``conf/extract/default.yaml``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from deepspike.defaults import conf_field, conf_value, is_number
from deepspike.errors import DeepSpikeError, RecordingError
from deepspike.paths import CONF_DIR
from deepspike.recording.preprocess import bandpass, noise_levels, recording_name, sampling_frequency_of
from deepspike.spec import WindowSpec
from deepspike.spikes.detect import (
    PEAK_DTYPE,
    POLARITIES,
    as_peak_dtype,
    check_detect_params,
    event_index,
    plan_detection,
)
from deepspike.spikes.windows import WindowNode, window_kept, window_margins

log = logging.getLogger(__name__)

DEFAULTS_FILE = CONF_DIR / "extract" / "default.yaml"


def _default(name: str) -> Any:
    return conf_field(DEFAULTS_FILE.relative_to(CONF_DIR).as_posix(), name)


@dataclass
class ExtractParams:
    """Band-pass, threshold and detection parameters (meanings and ranges: ``conf/extract/default.yaml``)."""

    freq_min: float = _default("freq_min")
    freq_max: float = _default("freq_max")
    filtered: bool = _default("filtered")
    threshold: float = _default("threshold")
    polarity: str = _default("polarity")
    dead_time_ms: float = _default("dead_time_ms")
    chunk_duration_s: float = _default("chunk_duration_s")
    chunk_mb: float = _default("chunk_mb")
    n_jobs: int = _default("n_jobs")

    @classmethod
    def from_config(cls, cfg_or_dict: Any = None, **overrides: Any) -> ExtractParams:
        """Params from a Hydra/OmegaConf node or a dict (missing keys keep their defaults), then ``overrides``."""
        values: dict[str, Any] = {}
        if cfg_or_dict is not None:
            if hasattr(cfg_or_dict, "_content") or type(cfg_or_dict).__name__ == "DictConfig":
                from omegaconf import OmegaConf

                cfg_or_dict = OmegaConf.to_container(cfg_or_dict, resolve=True)
            values.update(dict(cfg_or_dict))
        values.update(overrides)
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise DeepSpikeError(f"unknown extract parameter(s) {unknown}; known: {sorted(known)}")
        params = cls(**{k: _coerce(k, v, known[k].default) for k, v in values.items()})
        params.validate()
        return params

    def validate(self) -> ExtractParams:
        """Raise a DeepSpikeError naming the first bad parameter and its valid range; return self."""
        for name in ("freq_min", "freq_max"):
            value = getattr(self, name)
            if not is_number(value) or not math.isfinite(value) or value <= 0:
                raise DeepSpikeError(f"extract.{name} must be a positive number of Hz, got {value!r}")
        if self.freq_min >= self.freq_max:
            raise DeepSpikeError(f"extract.freq_min ({self.freq_min}) must be below extract.freq_max ({self.freq_max})")
        if not isinstance(self.filtered, (bool, np.bool_)):
            raise DeepSpikeError(f"extract.filtered must be true or false, got {self.filtered!r}")
        if not is_number(self.chunk_mb) or not self.chunk_mb > 0:
            raise DeepSpikeError(f"extract.chunk_mb must be > 0 (MB of traces per chunk), got {self.chunk_mb!r}")
        if self.polarity not in POLARITIES:
            raise DeepSpikeError(f"extract.polarity must be one of {POLARITIES}, got {self.polarity!r}")
        try:
            check_detect_params(self.threshold, self.polarity, self.dead_time_ms, self.chunk_duration_s, self.n_jobs)
        except DeepSpikeError as err:
            raise DeepSpikeError(f"extract.{err}") from None
        return self


def chunk_seconds(recording: Any, params: ExtractParams) -> float:
    """Seconds of ``recording`` per chunk: ``chunk_duration_s``, shorter where its channels would take more than
    ``chunk_mb`` of float32 traces (so memory per chunk does not grow with the channel count)."""
    fs = float(recording.get_sampling_frequency())
    by_size = params.chunk_mb * 2**20 / (4.0 * max(1, recording.get_num_channels()) * fs)
    return float(min(params.chunk_duration_s, max(by_size, 0.1)))


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Cast config values (often strings from the command line) to the type of their default."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            return value
        if isinstance(default, int) and not isinstance(value, bool):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float) and not isinstance(value, bool):
            return float(value)
    except (TypeError, ValueError):
        raise DeepSpikeError(
            f"extract.{name} must be a {type(default).__name__} (default {default!r}), got {value!r}"
        ) from None
    return value


@dataclass
class SpikeSet:
    """Detected spikes of one recording: canonical windows plus where and how big each spike was."""

    waves: np.ndarray  # float32 [n, spec.length], noise units, canonical grid
    sample_index: np.ndarray  # int64 [n], peak sample at the native rate (segments concatenated)
    channel: np.ndarray  # int16 [n], channel index of the peak
    amplitude: np.ndarray  # float32 [n], signed peak value in noise units
    labels: np.ndarray  # int64 [n], ground-truth unit (-1 unknown)
    noise_levels: np.ndarray  # float32 [num_channels], robust sigma of the filtered traces, recording units
    sampling_frequency: float  # native rate of the recording, Hz
    spec: WindowSpec = field(default_factory=WindowSpec)

    def __len__(self) -> int:
        return len(self.sample_index)


def check_recording(recording: Any, spec: WindowSpec) -> float:
    """Validate rate and length before any work; return the sampling rate."""
    fs = sampling_frequency_of(recording)
    if recording.get_num_channels() < 1:
        raise RecordingError(f"recording {recording_name(recording)} has no channels")
    before, after = window_margins(spec, fs)
    need = before + after + 1
    n = int(recording.get_total_samples())
    if n < need:
        raise RecordingError(
            f"recording {recording_name(recording)} has {n} samples ({n / fs * 1000:.2f} ms), shorter than one "
            f"spike window ({need} samples at {fs:g} Hz); use a longer recording (seconds or more)"
        )
    return fs


def _single_segment(recording: Any) -> Any:
    if recording.get_num_segments() == 1:
        return recording
    from spikeinterface.core import concatenate_recordings

    log.info("concatenating %d segments of %s", recording.get_num_segments(), recording_name(recording))
    return concatenate_recordings([recording])


def gt_labels(sample_index: np.ndarray, gt: Any, recording: Any, fs: float, tolerance_ms: float) -> np.ndarray:
    """Ground-truth unit of each spike: the unit whose spike is nearest within ``tolerance_ms``, else -1."""
    labels = np.full(len(sample_index), -1, dtype=np.int64)
    if gt is None or len(sample_index) == 0:
        return labels
    vec = gt.to_spike_vector()
    if len(vec) == 0:
        return labels
    seg_starts = np.concatenate(
        [[0], np.cumsum([recording.get_num_samples(s) for s in range(recording.get_num_segments())])]
    )
    gt_fs = float(gt.get_sampling_frequency())
    times = vec["sample_index"].astype(np.float64)
    if abs(gt_fs - fs) > 1e-6 * fs:
        times = times * (fs / gt_fs)
    times = times + seg_starts[np.minimum(vec["segment_index"], len(seg_starts) - 2)]
    unit_labels = unit_id_labels(gt.unit_ids)[vec["unit_index"]]
    order = np.argsort(times, kind="stable")
    times, unit_labels = times[order], unit_labels[order]
    t = sample_index.astype(np.float64)
    pos = np.searchsorted(times, t)
    prev = np.clip(pos - 1, 0, len(times) - 1)
    nxt = np.clip(pos, 0, len(times) - 1)
    use_next = np.abs(times[nxt] - t) < np.abs(times[prev] - t)
    nearest = np.where(use_next, nxt, prev)
    close = np.abs(times[nearest] - t) <= tolerance_ms * fs / 1000.0
    labels[close] = unit_labels[nearest[close]]
    return labels


def unit_id_labels(unit_ids: Any) -> np.ndarray:
    """Integer label per GT unit: the id itself if integer (or an integer string), else the unit's index."""
    ids = np.asarray(unit_ids)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    try:
        as_int = [int(str(u)) for u in ids]
    except ValueError:
        return np.arange(len(ids), dtype=np.int64)
    if len(set(as_int)) == len(as_int) and all(str(u).strip().lstrip("-").isdigit() for u in ids):
        return np.asarray(as_int, dtype=np.int64)
    return np.arange(len(ids), dtype=np.int64)


def _detect_and_cut(
    filtered: Any, noise: np.ndarray, params: ExtractParams, spec: WindowSpec, progress: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``detect_peaks`` then ``extract_windows`` fused in one SpikeInterface pipeline (one filtering pass, same
    chunking and ``n_jobs``): windows are cut for every candidate peak, then the one-peak-per-event selection and
    the edge rule pick the rows. Returns (all event peaks, waves of the kept ones, kept mask)."""
    from spikeinterface.core.node_pipeline import run_node_pipeline

    plan = plan_detection(
        filtered,
        noise,
        threshold=params.threshold,
        polarity=params.polarity,
        dead_time_ms=params.dead_time_ms,
        chunk_duration_s=chunk_seconds(filtered, params),
        n_jobs=params.n_jobs,
        progress=progress,
    )
    if plan is None:
        return np.zeros(0, dtype=PEAK_DTYPE), np.zeros((0, spec.length), np.float32), np.zeros(0, bool)
    cutter = WindowNode(filtered, [plan.node], plan.noise, spec)
    raw, waves = run_node_pipeline(
        filtered, [plan.node, cutter], plan.job_kwargs, job_name="extract spikes", squeeze_output=False
    )
    peaks = as_peak_dtype(raw)
    idx = event_index(peaks, plan.noise, plan.dead_samples, plan.rebound_samples)
    peaks = peaks[idx]
    chans = peaks["channel_index"].astype(np.int64)
    fs = float(filtered.get_sampling_frequency())
    kept = window_kept(peaks["sample_index"], chans, plan.noise, filtered.get_num_samples(0), spec, fs)
    return peaks, np.asarray(waves)[idx][kept], kept


def extract_spikes(
    recording: Any,
    params: ExtractParams | None = None,
    spec: WindowSpec | None = None,
    gt: Any = None,
    tolerance_ms: float | None = None,
    progress: bool = False,
) -> SpikeSet:
    """Detect the spikes of ``recording`` and cut them on the canonical window (see the module docstring).

    Multi-segment recordings are filtered per segment and then concatenated: ``sample_index`` counts from the
    start of the first segment. ``gt`` (a SpikeInterface sorting) labels spikes within ``tolerance_ms`` (None:
    ``gt_tolerance_ms`` of ``conf/corpus.yaml``); others get -1.
    """
    params = (params or ExtractParams()).validate()
    spec = spec or WindowSpec()
    tolerance_ms = conf_value("corpus.yaml", "gt_tolerance_ms") if tolerance_ms is None else tolerance_ms
    if not (is_number(tolerance_ms) and tolerance_ms >= 0):
        raise DeepSpikeError(f"tolerance_ms must be >= 0 ms (e.g. 0.4), got {tolerance_ms!r}")
    fs = check_recording(recording, spec)
    name = recording_name(recording)
    filtered = _single_segment(bandpass(recording, params.freq_min, params.freq_max, params.filtered))
    noise = noise_levels(filtered)
    if not np.all(np.isfinite(noise)):
        raise RecordingError(
            f"recording {name} has NaN/Inf samples (noise level {noise.tolist()}); replace them "
            "(e.g. spikeinterface.preprocessing.remove_artifacts) or cut them out (recording.frame_slice)"
        )
    if np.any(noise <= 0):
        log.warning("recording %s: channels %s are flat (zero noise) and are skipped", name, np.flatnonzero(noise <= 0))
    peaks, waves, kept = _detect_and_cut(filtered, noise, params, spec, progress)
    peaks = peaks[kept]
    chans = peaks["channel_index"].astype(np.int64)
    sample_index = peaks["sample_index"].astype(np.int64)
    log.info("%s: %d spikes (%d dropped at the edges)", name, len(peaks), int((~kept).sum()))
    return SpikeSet(
        waves=waves,
        sample_index=sample_index,
        channel=chans.astype(np.int16),
        amplitude=(peaks["amplitude"] / noise[chans]).astype(np.float32),
        labels=gt_labels(sample_index, gt, recording, fs, float(tolerance_ms)),
        noise_levels=noise.astype(np.float32),
        sampling_frequency=fs,
        spec=spec,
    )
