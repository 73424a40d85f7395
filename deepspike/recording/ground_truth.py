"""Ground-truth spike trains beside or inside a recording (SpikeInterface folders, ``.npz``, MountainSort firings,
MATLAB ``spike_times``/``spike_class``, MEArec), realigned to the extracellular peak where they mark the onset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deepspike.errors import RecordingError
from deepspike.recording.arrays import _corrupt, _read_mat
from deepspike.recording.readers import (
    _H5_EXTENSIONS,
    PathLike,
    _extension,
    _si_load,
    _sniff_h5,
    _wrap,
    logger,
    open_recording,
)

_GT_LABEL_KEYS = ("spike_class", "spike_labels", "spike_clusters", "labels")


def load_ground_truth(
    path: PathLike, recording: Any | None = None, gt: PathLike | None = None, *, realign: bool = True
) -> Any | None:
    """Ground truth of the recording at ``path`` as a ``BaseSorting`` (rate = the recording's), or None.

    Sources, first found wins: ``gt=`` (SpikeInterface sorting folder, ``.npz`` with ``spike_times`` in samples
    plus ``spike_class``/``spike_labels``, SpikeForest firings ``.npy`` (3, N), Wave_clus ``times_*.mat`` or a
    Quiroga-layout ``.mat``), a sibling ``<path>.gt/`` folder or ``<path>.gt.npz``, then GT carried by the
    recording file itself (Quiroga / Wave_clus / CBP ``.mat``, MEArec ``.h5``). Quiroga times mark the waveform
    onset, 1-based: with ``realign`` they are moved to the waveform's extremum (see ``_realign_to_peak``).
    Pass ``recording`` (from ``open_recording``) when the file needs ``sampling_frequency=``.
    """
    p = Path(path).expanduser()
    source = _gt_source(p, gt)
    if source is None and _extension(p) not in (".mat", *_H5_EXTENSIONS):
        return None
    if recording is None:
        recording = _recording_for_gt(p)
    fs = float(recording.sampling_frequency)
    if source is not None:
        sorting = _load_gt_file(source, recording, realign=False)
    elif _extension(p) == ".mat":
        sorting = _load_gt_file(p, recording, realign=realign)
    else:
        sorting = _mearec_gt(p)
    if sorting is None:
        return None
    return _check_gt(sorting, recording, fs, source or p)


def _gt_source(p: Path, gt: PathLike | None) -> Path | None:
    """The explicit ``gt=`` path, else a sibling ``<path>.gt/`` / ``<path>.gt.npz`` (with or without suffix)."""
    if gt is not None:
        g = Path(gt).expanduser()
        if not g.exists():
            raise RecordingError(f"{g}: ground-truth path not found; check gt= (given for recording {p})")
        return g
    base = Path(str(p).rstrip("/"))
    for stem in dict.fromkeys((base, base.with_suffix("") if base.suffix else base)):
        for candidate in (Path(f"{stem}.gt"), Path(f"{stem}.gt.npz")):
            if candidate.exists() and candidate != p:
                return candidate
    return None


def _recording_for_gt(p: Path) -> Any:
    try:
        return open_recording(p, check_finite=False)
    except RecordingError as e:
        raise RecordingError(
            f"{e}\n(load_ground_truth needs the recording's rate and length: pass "
            f"recording=open_recording(path, sampling_frequency=...), or recording_options.sampling_frequency=... "
            f"on the command line)"
        ) from e


def _load_gt_file(g: Path, recording: Any, realign: bool) -> Any | None:
    """Dispatch on the GT file type; returns a sorting with the recording's rate."""
    fs = float(recording.sampling_frequency)
    if g.is_dir():
        return _si_sorting(g, fs)
    ext = g.suffix.lower()
    if ext == ".npz":
        return _npz_sorting(g, fs)
    if ext == ".npy":
        return _firings_sorting(g, fs)
    if ext == ".mat":
        return _mat_sorting(g, recording, realign)
    raise RecordingError(
        f"{g}: unknown ground-truth format {ext!r}; pass gt= as a SpikeInterface sorting folder, an .npz with "
        f"spike_times (samples) and spike_class, a SpikeForest firings .npy of shape (3, N), or a .mat"
    )


def _make_sorting(times: np.ndarray, labels: np.ndarray, fs: float) -> Any:
    from spikeinterface.core import NumpySorting

    order = np.argsort(times, kind="stable")
    times, labels = np.asarray(times, np.int64)[order], np.asarray(labels)[order]
    if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    return NumpySorting.from_samples_and_labels([times], [labels], fs)


def _si_sorting(g: Path, fs: float) -> Any:
    from spikeinterface.core import BaseSorting, NumpySorting

    obj = _si_load(g, "sorting")
    if not isinstance(obj, BaseSorting):
        raise RecordingError(
            f"{g}: this SpikeInterface folder holds a {type(obj).__name__}, not a sorting; pass gt= a folder "
            f"saved by sorting.save()"
        )
    if np.isclose(obj.sampling_frequency, fs, rtol=1e-9):
        return obj
    logger.warning("%s: ground truth at %g Hz re-labelled to the recording's %g Hz", g, obj.sampling_frequency, fs)
    return NumpySorting(obj.to_spike_vector(), fs, obj.unit_ids)


def _npz_sorting(g: Path, fs: float) -> Any:
    try:
        z = np.load(g, allow_pickle=False)
        keys = set(z.files)
    except Exception as e:
        raise _corrupt(g, "ground-truth .npz", e) from e
    if "spike_indexes_seg0" in keys:  # SpikeInterface's NpzSortingExtractor layout
        import spikeinterface.extractors as se

        return _si_sorting_from(_wrap(g, "SpikeInterface .npz sorting", se.read_npz_sorting, g), fs)
    label_key = next((k for k in _GT_LABEL_KEYS if k in keys), None)
    if "spike_times" not in keys or label_key is None:
        raise RecordingError(
            f"{g}: ground-truth .npz needs `spike_times` (samples) and `spike_class` or `spike_labels`; found "
            f"{sorted(keys)}: re-save it with np.savez(path, spike_times=..., spike_class=...)"
        )
    times, labels = np.ravel(z["spike_times"]), np.ravel(z[label_key])
    _check_same_length(g, times, labels)
    return _make_sorting(times, labels, fs)


def _si_sorting_from(sorting: Any, fs: float) -> Any:
    from spikeinterface.core import NumpySorting

    return NumpySorting(sorting.to_spike_vector(), fs, sorting.unit_ids)


def _firings_sorting(g: Path, fs: float) -> Any:
    """SpikeForest / MountainSort firings: rows (channel, time in samples, label)."""
    try:
        firings = np.load(g, allow_pickle=False)
    except Exception as e:
        raise _corrupt(g, "SpikeForest firings .npy", e) from e
    if firings.ndim != 2 or firings.shape[0] != 3:
        raise RecordingError(
            f"{g}: firings array of shape {firings.shape}; expected (3, N) rows (channel, time, label), as "
            f"SpikeForest's firings_true: transpose or re-save it"
        )
    return _make_sorting(firings[1], firings[2], fs)


def _check_same_length(g: Path, times: np.ndarray, labels: np.ndarray) -> None:
    if len(times) != len(labels):
        raise RecordingError(
            f"{g}: {len(times)} spike times but {len(labels)} labels; both must have one entry per spike"
        )


def _first_cell(value: Any) -> np.ndarray:
    """Quiroga stores ``spike_times`` / ``spike_class`` in cells; the first cell holds times / classes."""
    while isinstance(value, list | tuple) or (isinstance(value, np.ndarray) and value.dtype == object):
        value = value[0] if len(value) else np.array([])
    return np.atleast_1d(np.asarray(value)).ravel()


def _mat_sorting(g: Path, recording: Any, realign: bool) -> Any | None:
    """GT in a .mat: Quiroga (``spike_times``/``spike_class``), CBP (``true_*``), Wave_clus ``cluster_class``."""
    m = _read_mat(g)
    fs = float(recording.sampling_frequency)
    if "cluster_class" in m:  # Wave_clus output: columns (class, time in ms)
        cc = np.atleast_2d(np.asarray(m["cluster_class"], dtype=float))
        return _make_sorting(np.round(cc[:, 1] * fs / 1000.0), cc[:, 0], fs)
    pairs = (("spike_times", "spike_class"), ("true_spike_times", "true_spike_class"))
    tkey, ckey = next(((t, c) for t, c in pairs if t in m), (None, None))
    if tkey is None:
        return None
    times = _first_cell(m[tkey]).astype(np.int64)
    labels = _first_cell(m[ckey]) if ckey in m else np.ones(len(times), np.int64)
    _check_same_length(g, times, labels)
    one_based = len(times) > 0 and times.min() >= 1  # MATLAB indices; a 0 means the writer used 0-based
    if one_based:
        times = times - 1
    labels = labels.astype(np.int64) if labels.dtype.kind in "iub" else labels
    shifts: dict[Any, int] = {}
    if realign and len(times):
        traces = recording.get_traces(segment_index=0)
        times, shifts = _realign_to_peak(traces, fs, times, labels)
    sorting = _make_sorting(times, labels, fs)
    sorting.annotate(
        gt_source=str(g),
        gt_index_base=1 if one_based else 0,
        gt_time_reference=_time_reference(shifts, labels),
        gt_realign_shift_samples={str(k): int(v) for k, v in shifts.items()},
    )
    if shifts:
        sorting.set_property("realign_shift_samples", np.array([shifts.get(u, 0) for u in sorting.unit_ids]))
    return sorting


def _time_reference(shifts: dict[Any, int], labels: np.ndarray) -> str:
    if not shifts:
        return "as_stored"
    return "peak" if len(shifts) == len(np.unique(labels)) else "mixed"


def _realign_to_peak(
    traces: np.ndarray, fs: float, times: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, dict[Any, int]]:
    """Move onset-marked GT times to the waveform's dominant extremum, one shift per unit.

    Quiroga's ``spike_times`` mark the onset, about 0.9 ms before the peak, while detectors and the canonical
    window are peak-centred. Per unit: band-pass 300-5000 Hz (zero-phase), take the unit's mean snippet over
    +0..+1.5 ms after the stored times to find the dominant channel and polarity, then shift by the median
    per-spike offset of that extremum. A unit whose window holds no clear extremum (mean below
    ``REALIGN_MIN_SNR`` noise sigmas, or at the window's edge) follows another convention (e.g. the Harris
    excerpt marks times 2.8 ms after the trough) and keeps its stored times, with a warning.
    """
    from scipy.signal import butter, sosfiltfilt

    high = min(REALIGN_BAND_HZ[1], 0.45 * fs)
    sos = butter(3, [REALIGN_BAND_HZ[0], high], btype="bandpass", fs=fs, output="sos")
    filtered = sosfiltfilt(sos, np.asarray(traces, dtype=np.float64), axis=0)
    noise = np.median(np.abs(filtered), axis=0) / 0.6745 + 1e-12
    width = round(REALIGN_WINDOW_MS * 1e-3 * fs)
    offsets = np.arange(width + 1)
    out = times.copy()
    shifts: dict[Any, int] = {}
    for unit in np.unique(labels):
        sel = labels == unit
        t = times[sel]
        t = t[(t >= 0) & (t + width < len(filtered))]
        if not len(t):
            continue
        snippets = filtered[t[:, None] + offsets]  # (spikes, offsets, channels)
        mean = snippets.mean(axis=0)
        k, ch = np.unravel_index(np.argmax(np.abs(mean)), mean.shape)
        if abs(mean[k, ch]) < REALIGN_MIN_SNR * noise[ch] or k in (0, width):
            logger.warning(
                "ground-truth unit %s: no clear waveform extremum within +0..+%g ms of its stored times "
                "(%.1f noise sigmas at +%d samples); times kept as stored",
                unit,
                REALIGN_WINDOW_MS,
                abs(mean[k, ch]) / noise[ch],
                k,
            )
            continue
        sign = 1.0 if mean[k, ch] >= 0 else -1.0
        per_spike = np.argmax(sign * snippets[:, :, ch], axis=1)
        shift = int(np.sort(per_spike)[(len(per_spike) - 1) // 2])  # lower median: deterministic on ties
        shifts[unit.item() if hasattr(unit, "item") else unit] = shift
        out[sel] = times[sel] + shift
    return out, shifts


def _mearec_gt(p: Path) -> Any | None:
    """MEArec files carry their ground-truth sorting."""
    try:
        fmt = _sniff_h5(p)
    except RecordingError:
        return None
    if fmt.reader != "read_mearec":
        return None
    import spikeinterface.extractors as se

    return _wrap(p, "MEArec", se.read_mearec, p)[1]


def _check_gt(sorting: Any, recording: Any, fs: float, where: Path) -> Any:
    """Same rate as the recording; spikes outside the recording are dropped with a warning."""
    from spikeinterface.core import NumpySorting

    if not np.isclose(sorting.sampling_frequency, fs, rtol=1e-9):
        sorting = _si_sorting_from(sorting, fs)
    spikes = sorting.to_spike_vector()
    if not len(spikes):
        return sorting
    n = np.array([recording.get_num_samples(s) for s in range(recording.get_num_segments())])
    inside = (spikes["sample_index"] >= 0) & (spikes["sample_index"] < n[spikes["segment_index"]])
    if inside.all():
        return sorting
    if not inside.any():
        raise RecordingError(
            f"{where}: no ground-truth spike falls inside the recording ({n.sum()} samples at {fs:g} Hz); check "
            f"the sampling rate (recording_options.sampling_frequency=) and that the spike times are in samples"
        )
    logger.warning("%s: %d ground-truth spikes outside the recording dropped", where, int((~inside).sum()))
    kept = NumpySorting(spikes[inside], fs, sorting.unit_ids)
    for key in sorting.get_annotation_keys():
        kept.annotate(**{key: sorting.get_annotation(key)})
    for prop in sorting.get_property_keys():
        kept.set_property(prop, sorting.get_property(prop))
    return kept


REALIGN_BAND_HZ = (300.0, 5000.0)  # band used to find the GT waveform extremum


REALIGN_WINDOW_MS = 1.5  # extremum searched within +0..+1.5 ms after the stored (onset) time


REALIGN_MIN_SNR = 4.0  # a unit's mean extremum must reach this many noise sigmas to be realigned
