"""Preprocess stage: band-pass filter and robust per-channel noise level.

Both stay lazy and chunked (SpikeInterface preprocessors): nothing here loads a whole recording. Noise is the
robust ``MAD / 0.6745`` of the *filtered* traces, the unit every later stage (threshold, windows) is expressed in.
"""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from typing import Any

import numpy as np

from deepspike.defaults import conf_value
from deepspike.errors import DeepSpikeError, RecordingError

log = logging.getLogger(__name__)

EXTRACT_CONF = "extract/default.yaml"  # declares freq_min, freq_max and filtered (ExtractParams reads it too)
NYQUIST_CLIP = 0.95  # a freq_max at or above Nyquist is clipped to this fraction of it (Butterworth needs < Nyquist)


def sampling_frequency_of(recording: Any) -> float:
    """Validated sampling rate of ``recording`` (Hz); raise a RecordingError when it is missing or not positive."""
    fs = recording.get_sampling_frequency()
    try:
        fs = float(fs)
    except (TypeError, ValueError):
        fs = float("nan")
    if not np.isfinite(fs) or fs <= 0:
        raise RecordingError(
            f"recording {recording_name(recording)} has an invalid sampling rate {fs!r} Hz; pass the right one "
            "(e.g. open_recording(path, sampling_frequency=30000.0) or recording_options.sampling_frequency=...)"
        )
    return fs


def recording_name(recording: Any) -> str:
    """Best human-readable name of a recording (its file or folder if known) for error messages."""
    rec = recording
    for _ in range(16):
        kwargs = getattr(rec, "_kwargs", None) or {}
        for key in ("file_path", "folder_path", "file_paths", "path"):
            if kwargs.get(key):
                return repr(str(kwargs[key]))
        parent = (
            kwargs.get("recording") or kwargs.get("parent_recording") or (kwargs.get("recording_list") or [None])[0]
        )
        if parent is None or not hasattr(parent, "get_sampling_frequency"):
            break
        rec = parent
    name = getattr(recording, "name", None)
    return repr(name) if name else f"<{type(recording).__name__}>"


def _check_band(freq_min: float, freq_max: float, fs: float) -> float:
    """Validate the pass band for rate ``fs``; return freq_max, clipped (with a warning) below Nyquist."""
    nyquist = fs / 2.0
    for key, value in (("freq_min", freq_min), ("freq_max", freq_max)):
        if not (np.isfinite(value) and value > 0):
            raise DeepSpikeError(
                f"extract.{key} must be a positive number of Hz, got {value!r} "
                f"(declared default: {conf_value(EXTRACT_CONF, key)})"
            )
    if freq_max >= nyquist:
        clipped = NYQUIST_CLIP * nyquist
        warnings.warn(
            f"extract.freq_max={freq_max:g} Hz is at or above the Nyquist frequency ({nyquist:g} Hz) of this "
            f"{fs:g} Hz recording: using {clipped:g} Hz (set extract.freq_max below {nyquist:g} to silence this)",
            stacklevel=3,
        )
        freq_max = clipped
    if freq_min >= freq_max:
        raise DeepSpikeError(
            f"extract.freq_min={freq_min:g} Hz must be below extract.freq_max={freq_max:g} Hz (after clipping to "
            f"{NYQUIST_CLIP:g} x Nyquist on a {fs:g} Hz recording); lower extract.freq_min"
        )
    return float(freq_max)


def bandpass(
    recording: Any,
    freq_min: float | None = None,
    freq_max: float | None = None,
    filtered: bool | None = None,
) -> Any:
    """Lazy float32 band-pass (zero-phase Butterworth, SpikeInterface) of ``recording``.

    None takes the default declared in ``conf/extract/default.yaml``. ``filtered=True`` marks data that is already
    band-passed (it is only cast to float32). A ``freq_max`` at or above Nyquist is clipped to 0.95 x Nyquist with
    a warning, so one configuration serves recordings of every rate.
    """
    import spikeinterface.preprocessing as spre

    freq_min = conf_value(EXTRACT_CONF, "freq_min") if freq_min is None else freq_min
    freq_max = conf_value(EXTRACT_CONF, "freq_max") if freq_max is None else freq_max
    filtered = conf_value(EXTRACT_CONF, "filtered") if filtered is None else filtered
    fs = sampling_frequency_of(recording)
    if filtered:
        if np.dtype(recording.get_dtype()) == np.float32:
            return recording
        return spre.astype(recording, "float32")
    freq_max = _check_band(float(freq_min), float(freq_max), fs)
    return spre.bandpass_filter(
        recording, freq_min=float(freq_min), freq_max=freq_max, dtype="float32", ignore_low_freq_error=True
    )


def noise_levels(recording: Any, seed: int = 0) -> np.ndarray:
    """Robust noise sigma (``MAD / 0.6745``) per channel, in recording units, from random chunks (seeded).

    Computed on the recording as given, so pass the filtered one. Recomputed on every call (not SpikeInterface's
    cached property) so that ``seed`` is honoured.
    """
    from spikeinterface.core import get_noise_levels

    params = inspect.signature(get_noise_levels).parameters
    units_kw = {"return_in_uV": False} if "return_in_uV" in params else {"return_scaled": False}
    noise = get_noise_levels(
        recording,
        method="mad",
        force_recompute=True,
        random_slices_kwargs={"seed": int(seed)},
        n_jobs=1,
        progress_bar=False,
        **units_kw,
    )
    return np.asarray(noise, dtype=np.float32)


def bar(items: Any, show: bool, total: int | None = None, desc: str = "") -> Any:
    """``items`` with a tqdm progress bar on stderr when ``show`` (sort's ``progress`` option), else as they are."""
    if not show:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, desc=desc, leave=False)


def cached(
    filtered: Any, max_mb: float, folder: Any, chunk_duration_s: float = 10.0, n_jobs: int = 1, key: str = "",
    progress: bool = False,
) -> Any:  # fmt: skip
    """``filtered`` computed once: in memory when its float32 traces fit ``max_mb`` (``in_memory``), else into a
    float32 file in ``folder`` (None: stay lazy) when the disk there has room for it, read back memory-mapped.

    Lazily, every pass filters again: a 64-channel, 60 s recording sorted in 76 s with lazy traces and 30 s with
    them computed once (same units). Beyond memory, a file keeps RSS flat while every pass after the first reads
    instead of filtering; ``key`` names what it holds, so a resumed sort reuses it.
    """
    out = in_memory(filtered, max_mb, chunk_duration_s, n_jobs, progress)
    if out is not filtered or folder is None or filtered.get_num_segments() != 1:
        return out
    return on_disk(filtered, folder, chunk_duration_s, n_jobs, key, progress)


def on_disk(
    filtered: Any, folder: Any, chunk_duration_s: float = 10.0, n_jobs: int = 1, key: str = "", progress: bool = False
) -> Any:
    """The band-passed traces written once to ``folder/filtered.raw`` (float32, interleaved) in chunks, returned as
    a memory-mapped recording with the same metadata; ``filtered`` itself when the disk lacks room (a warning). A
    file already there with the same ``key`` (``filtered.json``, written after the file is complete) is reused."""
    import shutil
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n, c = filtered.get_num_samples(0), filtered.get_num_channels()
    size = n * c * 4
    path, meta = folder / "filtered.raw", folder / "filtered.json"
    done = meta.is_file() and path.is_file() and path.stat().st_size == size
    if done and json.loads(meta.read_text()).get("key") == key:
        return _binary(filtered, path)
    meta.unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    free = shutil.disk_usage(folder).free
    if size * 1.1 + 2**30 > free:
        warnings.warn(
            f"band-passed traces ({size / 2**30:.1f} GB) do not fit the free disk in {folder} ({free / 2**30:.1f} GB): "
            "each pass filters again (slower; set filter_cache_mb higher if memory allows)",
            stacklevel=2,
        )
        return filtered
    traces = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, c))
    _fill(filtered, traces, chunk_duration_s, n_jobs, progress, "band-pass to disk")
    traces.flush()
    meta.write_text(json.dumps({"key": key}))
    return _binary(filtered, path)


def _fill(filtered: Any, traces: np.ndarray, chunk_duration_s: float, n_jobs: int, progress: bool, what: str) -> None:
    """Compute ``filtered``'s traces into ``traces`` (``[samples, channels]``, in memory or memory-mapped) chunk by
    chunk, ``n_jobs`` threads at once (scipy's filters release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    n = traces.shape[0]
    step = max(1, int(chunk_duration_s * filtered.get_sampling_frequency()))

    def fill(start: int) -> None:
        stop = min(n, start + step)
        traces[start:stop] = filtered.get_traces(segment_index=0, start_frame=start, end_frame=stop)

    with ThreadPoolExecutor(max(1, int(n_jobs))) as pool:
        starts = range(0, n, step)
        list(bar(pool.map(fill, starts), progress, len(starts), what))


def _same_identity(filtered: Any, computed: Any) -> Any:
    """``computed`` (its traces computed once) with ``filtered``'s channels, probe and properties, and its name, so
    error messages keep naming the file."""
    filtered.copy_metadata(computed)
    name = recording_name(filtered)
    computed.annotate(name=name[1:-1] if name[:1] in "'\"" else name)
    return computed


def _binary(filtered: Any, path: Any) -> Any:
    """The float32 file ``path`` as a memory-mapped recording with ``filtered``'s channels, probe and name."""
    from spikeinterface.core import BinaryRecordingExtractor

    disk = BinaryRecordingExtractor(
        file_paths=[str(path)], sampling_frequency=filtered.get_sampling_frequency(),
        num_channels=filtered.get_num_channels(), dtype="float32", channel_ids=filtered.channel_ids, time_axis=0,
    )  # fmt: skip
    return _same_identity(filtered, disk)


def in_memory(
    filtered: Any, max_mb: float, chunk_duration_s: float = 10.0, n_jobs: int = 1, progress: bool = False
) -> Any:
    """``filtered`` (a lazy band-passed, single-segment recording) computed once into memory when its float32
    traces take at most ``max_mb`` MB; else ``filtered`` itself.

    Sorting reads the band-passed traces up to 7 times (detection, neighbourhood windows, templates, matching, the
    windows of matched spikes); lazily, each read filters again: 8.4 of 18.5 s on a 32-channel, 60 s recording.
    Channel ids, probe and properties are kept (``copy_metadata``). ``n_jobs`` threads filter chunks in parallel
    (scipy's filters release the GIL).
    """

    from spikeinterface.core import NumpyRecording

    n, c = filtered.get_num_samples(0), filtered.get_num_channels()
    if filtered.get_num_segments() != 1 or n * c * 4 > max_mb * 2**20:
        return filtered
    traces = np.empty((n, c), dtype=np.float32)
    _fill(filtered, traces, chunk_duration_s, n_jobs, progress, "band-pass")
    cached = NumpyRecording([traces], sampling_frequency=filtered.get_sampling_frequency(),
                            channel_ids=filtered.channel_ids)  # fmt: skip
    return _same_identity(filtered, cached)
