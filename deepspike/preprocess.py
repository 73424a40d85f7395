"""Preprocess stage: band-pass filter and robust per-channel noise level.

Both stay lazy and chunked (SpikeInterface preprocessors): nothing here loads a whole recording. Noise is the
robust ``MAD / 0.6745`` of the *filtered* traces, the unit every later stage (threshold, windows) is expressed in.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import numpy as np

from deepspike.errors import DeepSpikeError, RecordingError

log = logging.getLogger(__name__)

DEFAULT_FREQ_MIN = 300.0
DEFAULT_FREQ_MAX = 5000.0
NYQUIST_CLIP = 0.95  # the default freq_max is clipped to this fraction of Nyquist on low-rate recordings


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
    """Validate the pass band for rate ``fs``; return the (possibly clipped) freq_max."""
    nyquist = fs / 2.0
    if not (np.isfinite(freq_min) and freq_min > 0):
        raise DeepSpikeError(f"freq_min must be a positive number of Hz, got {freq_min!r} (the default is 300.0)")
    if not np.isfinite(freq_max) or freq_max <= 0:
        raise DeepSpikeError(f"freq_max must be a positive number of Hz, got {freq_max!r} (the default is 5000.0)")
    if freq_max >= nyquist:
        if freq_max != DEFAULT_FREQ_MAX:
            raise DeepSpikeError(
                f"freq_max={freq_max} Hz is at or above the Nyquist frequency ({nyquist:g} Hz) of this {fs:g} Hz "
                f"recording; set freq_max below {nyquist:g} (e.g. extract.freq_max={0.9 * nyquist:g})"
            )
        clipped = NYQUIST_CLIP * nyquist
        log.info("freq_max %.0f Hz >= Nyquist of a %g Hz recording: using %.1f Hz", freq_max, fs, clipped)
        freq_max = clipped
    if freq_min >= freq_max:
        raise DeepSpikeError(
            f"freq_min={freq_min} Hz must be below freq_max={freq_max:g} Hz; lower freq_min or raise freq_max"
        )
    return float(freq_max)


def bandpass(
    recording: Any,
    freq_min: float = DEFAULT_FREQ_MIN,
    freq_max: float = DEFAULT_FREQ_MAX,
    filtered: bool = False,
) -> Any:
    """Lazy float32 band-pass (zero-phase Butterworth, SpikeInterface) of ``recording``.

    ``filtered=True`` marks data that is already band-passed (it is only cast to float32). The default
    ``freq_max`` is clipped to 0.95 x Nyquist on low-rate recordings; an explicit one above Nyquist is an error.
    """
    import spikeinterface.preprocessing as spre

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
