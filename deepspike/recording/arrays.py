"""Recordings from plain arrays: ``.npy`` (memory-mapped), raw interleaved binary (``.dat``/``.bin``/``.raw``) and
Wave_clus / Quiroga ``.mat`` files, plus the checks of the rate and layout options such files need.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deepspike.errors import RecordingError

logger = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    """``NpyRecording`` is built on first use, so importing the readers does not import SpikeInterface."""
    if name == "NpyRecording":  # then cached in globals(): this hook only runs for names not found there
        cls = _npy_recording_class()
        cls.__module__, cls.__qualname__, cls.__name__ = __name__, name, name
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _open_npy(p: Path, fs: float | None, num_channels: int | None) -> Any:
    """Memory-map the .npy payload as a binary recording, so an hour-long file never lands in RAM."""
    fs = _require_rate(p, fs, "NumPy .npy")
    try:
        arr = np.load(p, mmap_mode="r")
    except Exception as e:
        raise _corrupt(p, "NumPy .npy", e) from e
    if not isinstance(arr, np.memmap) or arr.dtype.kind not in "iuf":
        raise RecordingError(
            f"{p}: holds {type(arr).__name__} of dtype {getattr(arr, 'dtype', '?')}, not a numeric array; "
            f"save the traces with np.save(path, traces) as integers or floats"
        )
    if arr.ndim not in (1, 2):
        raise RecordingError(
            f"{p}: array of shape {arr.shape}; expected 1-D (one channel) or 2-D (samples x channels): reshape it"
        )
    channels_first = _channels_first(p, arr.shape, num_channels) if arr.ndim == 2 else False
    if arr.size == 0:
        raise RecordingError(f"{p}: empty array of shape {arr.shape}; the file holds no samples")
    # Memory order decides the layout of the flat payload: C-order samples x channels is interleaved.
    fortran = arr.ndim == 2 and arr.flags.f_contiguous and not arr.flags.c_contiguous
    if arr.ndim == 2 and channels_first != fortran:  # each channel contiguous: not SpikeInterface's binary layout
        return _wrap(p, "NumPy .npy", __getattr__("NpyRecording"), str(p), fs, channels_first)
    from spikeinterface.core import BinaryRecordingExtractor

    n_channels = 1 if arr.ndim == 1 else (arr.shape[0] if channels_first else arr.shape[1])
    return _wrap(
        p,
        "NumPy .npy",
        BinaryRecordingExtractor,
        file_paths=[p],
        sampling_frequency=fs,
        dtype=arr.dtype.str,
        num_channels=n_channels,
        time_axis=0,
        file_offset=int(arr.offset),
    )


def _npy_recording_class() -> type:
    """A recording over a memory-mapped 2-D .npy whose channels are contiguous (channels x samples in C order,
    samples x channels in Fortran order).

    SpikeInterface's binary reader with ``time_axis=1`` is right only for whole-file reads: its chunks take a
    contiguous byte range, i.e. samples of other channels and times. Slicing the memmap is right for any chunk.
    """
    from spikeinterface.core import BaseRecording, BaseRecordingSegment

    class _Segment(BaseRecordingSegment):
        def __init__(self, traces: np.ndarray, fs: float) -> None:
            super().__init__(sampling_frequency=fs)
            self._traces = traces  # (samples, channels) view of the memmap: nothing is read until sliced

        def get_num_samples(self) -> int:
            return int(self._traces.shape[0])

        def get_traces(self, start_frame: Any = None, end_frame: Any = None, channel_indices: Any = None) -> Any:
            block = self._traces[start_frame:end_frame]
            if channel_indices is not None:
                block = block[:, channel_indices]
            return np.ascontiguousarray(block)

    class Recording(BaseRecording):
        def __init__(self, file_path: str, sampling_frequency: float, channels_first: bool) -> None:
            arr = np.load(file_path, mmap_mode="r", allow_pickle=False)
            traces = arr.T if channels_first else arr
            super().__init__(sampling_frequency, list(range(traces.shape[1])), arr.dtype)
            self.add_recording_segment(_Segment(traces, sampling_frequency))
            self._kwargs = {
                "file_path": str(Path(file_path).absolute()),
                "sampling_frequency": float(sampling_frequency),
                "channels_first": bool(channels_first),
            }

    return Recording


def _channels_first(p: Path, shape: tuple[int, ...], num_channels: int | None) -> bool:
    """Whether a 2-D array is channels x samples: an explicit ``num_channels`` decides, else its shape."""
    rows, cols = shape
    if num_channels is not None and num_channels in (rows, cols) and rows != cols:
        return num_channels == rows
    if rows < cols and rows <= _MAX_CHANNELS_FIRST:
        logger.info("%s: array of shape %s read as channels x samples (%d channels)", p, shape, rows)
        return True
    return False


def _open_binary(p: Path, fs: float | None, dtype: Any, num_channels: int | None, kw: dict[str, Any]) -> Any:
    """Raw interleaved samples: rate, dtype and channel count must come from the caller."""
    fs = _require_rate(p, fs, "raw binary")
    missing = [name for name, v in (("dtype", dtype), ("num_channels", num_channels)) if v is None]
    if missing:
        raise RecordingError(
            f"{p}: raw binary files do not store {' or '.join(missing)}; pass them, "
            f"e.g. {_how(sampling_frequency=fs, dtype='int16', num_channels=32)}"
        )
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError as e:
        raise RecordingError(f"{p}: dtype={dtype!r} is not a NumPy dtype; pass e.g. {_how(dtype='int16')}") from e
    if not isinstance(num_channels, int | np.integer) or num_channels < 1:
        raise RecordingError(f"{p}: num_channels={num_channels!r}; pass a positive count, e.g. {_how(num_channels=32)}")
    payload = p.stat().st_size - int(kw.get("file_offset", 0))
    frame = itemsize * int(num_channels)
    if payload <= 0:
        raise RecordingError(f"{p}: empty file (no samples after file_offset); check the path")
    if payload % frame:
        raise RecordingError(
            f"{p}: size {payload} bytes is not a whole number of frames of {num_channels} x {np.dtype(dtype)} "
            f"({frame} bytes); check recording_options.dtype= and recording_options.num_channels= "
            f"(and file_offset= for a header)"
        )
    import spikeinterface.extractors as se

    return _wrap(
        p, "raw binary", se.read_binary, p, sampling_frequency=fs, dtype=dtype, num_channels=num_channels, **kw
    )


def _read_mat(p: Path) -> dict[str, Any]:
    """Variables of a MATLAB file as plain arrays / dicts (v5 via scipy, v7.3 via h5py)."""
    import scipy.io

    try:
        major, _minor = scipy.io.matlab.matfile_version(str(p))
    except Exception as e:
        raise _corrupt(p, "MATLAB .mat", e) from e
    if major == 2:
        return _read_mat_h5(p)
    try:
        return scipy.io.loadmat(str(p), simplify_cells=True)
    except Exception as e:
        raise _corrupt(p, "MATLAB .mat", e) from e


def _read_mat_h5(p: Path) -> dict[str, Any]:
    """MATLAB v7.3 files are HDF5; arrays are stored transposed (column-major)."""
    try:
        import h5py
    except ImportError as e:
        raise RecordingError(f"{p}: is a MATLAB v7.3 (HDF5) file; reading it needs h5py: `pip install h5py`") from e

    def convert(f: Any, node: Any) -> Any:
        if isinstance(node, h5py.Group):
            return {k: convert(f, v) for k, v in node.items() if not k.startswith("#")}
        value = node[()]
        if isinstance(value, np.ndarray) and value.dtype == h5py.ref_dtype:  # cell array: follow references
            return [convert(f, f[ref]) for ref in value.T.ravel()]
        value = np.asarray(value).T
        return value.item() if value.size == 1 else np.squeeze(value) if 1 in value.shape else value

    try:
        with h5py.File(p, "r") as f:
            return {k: convert(f, v) for k, v in f.items() if not k.startswith("#")}
    except OSError as e:
        raise _corrupt(p, "MATLAB v7.3 .mat", e) from e


def _mat_rate(p: Path, m: dict[str, Any]) -> float | None:
    """Rate from the Wave_clus / Quiroga / CBP fields: samplingInterval (ms), sr, par.sr (Hz), dt (s)."""
    if "samplingInterval" in m:
        interval = _valid_rate(p, m["samplingInterval"], "its `samplingInterval` (ms)")
        return _snap_rate(p, 1000.0 / interval, interval)
    par = m.get("par")
    for where, value in (("sr", m.get("sr")), ("par.sr", par.get("sr") if isinstance(par, dict) else None)):
        if value is not None:
            return _valid_rate(p, value, f"its `{where}` (Hz)")
    for key in ("fs", "Fs", "sampling_frequency", "srate"):
        if key in m:
            return _valid_rate(p, m[key], f"its `{key}` (Hz)")
    if "dt" in m:
        return 1.0 / _valid_rate(p, m["dt"], "its `dt` (s)")
    return None


def _snap_rate(p: Path, fs: float, interval_ms: float) -> float:
    """Quiroga files round the interval (0.0417 ms); snap to the whole kHz it stands for."""
    nearest = round(fs / 1000.0) * 1000.0
    if nearest > 0 and fs != nearest and abs(fs - nearest) / nearest < 2e-3 and round(interval_ms, 4) == interval_ms:
        logger.info("%s: samplingInterval %s ms read as %g Hz (rounded interval)", p, interval_ms, nearest)
        return nearest
    return fs


def _as_samples_by_channels(p: Path, data: Any) -> np.ndarray:
    arr = np.asarray(data)
    if arr.dtype.kind not in "iuf":
        raise RecordingError(f"{p}: `data` is {arr.dtype}, not numeric traces; store `data` as a numeric matrix")
    arr = np.squeeze(arr)
    if arr.ndim == 1:
        return arr[:, None]
    if arr.ndim != 2:
        raise RecordingError(f"{p}: `data` has shape {arr.shape}; store it as channels x samples (or 1 x N)")
    return arr.T if _channels_first(p, arr.shape, None) else arr


def _open_mat(p: Path, fs: float | None) -> Any:
    """Wave_clus / Quiroga layout: ``data`` (1 x N or channels x N) plus a rate field (or ``sampling_frequency=``)."""
    m = _read_mat(p)
    if "data" not in m:
        names = sorted(k for k in m if not k.startswith("__"))
        raise RecordingError(
            f"{p}: no `data` variable (found {names}); the Wave_clus / Quiroga layout stores the trace in `data`: "
            f"rename it, or save the traces as .npy"
        )
    file_fs = _mat_rate(p, m)
    if fs is None and file_fs is None:
        raise RecordingError(
            f"{p}: no samplingInterval / sr / par.sr / dt field; pass the rate, e.g. {_how(sampling_frequency=24000.0)}"
        )
    if fs is not None and file_fs is not None and not np.isclose(fs, file_fs, rtol=1e-6):
        logger.info("%s: sampling_frequency=%g overrides the file's %g Hz", p, fs, file_fs)
    traces = np.ascontiguousarray(_as_samples_by_channels(p, m["data"]), dtype=np.float32)
    if traces.size == 0:
        raise RecordingError(f"{p}: `data` is empty; the file holds no samples")
    from spikeinterface.core import NumpyRecording

    recording = NumpyRecording([traces], sampling_frequency=fs if fs is not None else file_fs)
    recording.annotate(source_path=str(p), source_format="wave_clus_mat")
    return recording


_MAX_CHANNELS_FIRST = 512  # a 2-D array with fewer rows than columns and <= this many rows is channels x samples


def _how(**options: Any) -> str:
    """How to pass reader options, on the command line (``recording_options.KEY=``) and in Python."""
    cli = " ".join(f"recording_options.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items())
    api = ", ".join(f"{k}={v!r}" for k, v in options.items())
    return f"{cli} on the command line (open_recording(path, {api}) in Python)"


def _valid_rate(p: Path, fs: Any, where: str) -> float:
    """A finite positive float, or an error that names ``sampling_frequency=``."""
    try:
        value = float(np.asarray(fs).ravel()[0]) if np.size(fs) == 1 else float("nan")
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value) or value <= 0:
        raise RecordingError(
            f"{p}: invalid sampling rate {fs!r} from {where}; pass a positive rate in Hz, "
            f"e.g. {_how(sampling_frequency=30000.0)}"
        )
    return value


# Rates a user may give (recording_options.sampling_frequency): extracellular spikes need 5 kHz at least (the
# 300-5000 Hz band); beyond 100 kHz a rate is almost surely a typo (an extra zero). A wrong rate is otherwise silent:
# a .dat given 3 kHz instead of 30 kHz sorted as a 10x longer recording, with only a Nyquist warning.
PLAUSIBLE_RATE_HZ = (5000.0, 100000.0)


def _plausible_rate(p: Path, fs: float) -> float:
    """A rate the user gave, within ``PLAUSIBLE_RATE_HZ``, or an error naming the key."""
    low, high = PLAUSIBLE_RATE_HZ
    if not low <= fs <= high:
        raise RecordingError(
            f"{p}: recording_options.sampling_frequency={fs:g} Hz is not a plausible rate for spike recordings "
            f"({low:g}-{high:g} Hz); give the rate the file was acquired at, e.g. {_how(sampling_frequency=30000.0)}"
        )
    return fs


def _require_rate(p: Path, fs: float | None, what: str) -> float:
    if fs is None:
        raise RecordingError(
            f"{p}: {what} files do not store a sampling rate; pass it in Hz, e.g. {_how(sampling_frequency=30000.0)}"
        )
    return fs


def _wrap(p: Path, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """Call a library reader; turn its errors into RecordingError naming the file and the fix."""
    try:
        return fn(*args, **kw)
    except RecordingError:
        raise
    except ImportError as e:
        pkg = getattr(e, "name", None) or "the missing package"
        raise RecordingError(
            f"{p}: reading {what} needs an optional package that is not installed ({e}); "
            f"install it, e.g. `pip install {pkg}`"
        ) from e
    except TypeError as e:
        if "unexpected keyword" in str(e) or "positional argument" in str(e):
            raise RecordingError(
                f"{p}: the {what} reader rejected the extra arguments {sorted(kw)} ({e}); remove them"
            ) from e
        raise _corrupt(p, what, e) from e
    except Exception as e:
        if "several streams" in str(e):
            raise RecordingError(
                f"{p} holds several {what} streams; pick one with {_how(stream_name='NAME')} ({e})"
            ) from e
        raise _corrupt(p, what, e) from e


def _corrupt(p: Path, what: str, e: Exception) -> RecordingError:
    return RecordingError(
        f"{p}: cannot read it as {what} ({type(e).__name__}: {e}). The file may be truncated or corrupt, or not "
        f"a {what} file: check it opens in its acquisition software, or re-export it"
    )
