"""Motion stage: band-passed probe recording -> the same recording with the probe's drift taken out.

A probe moves in the tissue (breathing, settling): every unit shifts along the shank, so one neuron's spikes move
from channel to channel over minutes and per-neighbourhood clustering splits it into several units (issue 24: a
+-25 um zigzag drift took a 128-contact sort from 0.874 to 0.206). This stage uses SpikeInterface's motion module
as its ``correct_motion`` does, with no method of its own: ``compute_motion`` (detect and localize peaks, then
``estimate_motion`` with a preset: dredge, rigid_fast, kilosort_like, ...) gives a ``Motion`` (displacement per
time bin and depth window), and ``interpolate_motion`` returns a lazy recording whose traces are kriged back onto
the probe at rest; every later stage (detection, neighbourhood windows, templates, matching) reads it.

The channels stay those of the recording (``border_mode="force_extrapolate"``, whatever the preset says): the sort's
channel indices, neighbourhoods and outputs refer to the recording's own probe. ``motion.enabled=auto`` corrects
only a probe with the depth to estimate drift (:func:`can_correct`); options in ``conf/sort.yaml`` (``motion:``).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepspike.defaults import conf_field, is_number, known_options
from deepspike.errors import DeepSpikeError
from deepspike.sorting.multichannel import channel_groups

log = logging.getLogger(__name__)

CONF = "sort.yaml"
# SpikeInterface's presets that run in 0.105.3 ("dredge" fails there: its batching_mode="offline" is refused)
PRESETS = ("dredge_fast", "rigid_fast", "nonrigid_fast_and_accurate", "nonrigid_accurate", "kilosort_like")
RIGID_PRESETS = ("rigid_fast",)  # one displacement for the whole probe: no depth windows to size
OPTIONAL_PRESETS = {"medicine": "medicine"}  # preset: the package it needs (not a DeepSpike dependency)
RIGID_FALLBACK = "Switching to rigid motion"  # SpikeInterface's warning when the probe is shorter than 2 depth windows
PEAK_DTYPE = np.dtype([("time_s", "f8"), ("depth_um", "f4"), ("amplitude", "f4")])  # the raster of plots/motion.png


@dataclass
class MotionParams:
    """``motion:`` block of ``conf/sort.yaml`` (meanings and ranges are documented there)."""

    enabled: Any = conf_field(CONF, "motion.enabled")  # "auto" | True | False
    preset: str = conf_field(CONF, "motion.preset")
    min_channels: int = conf_field(CONF, "motion.min_channels")
    min_extent_um: float = conf_field(CONF, "motion.min_extent_um")
    max_width_um: float = conf_field(CONF, "motion.max_width_um")
    bin_s: float | None = conf_field(CONF, "motion.bin_s")
    win_step_um: float | None = conf_field(CONF, "motion.win_step_um")
    win_scale_um: float | None = conf_field(CONF, "motion.win_scale_um")

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> DeepSpikeError:
            return DeepSpikeError(f"motion.{name}={getattr(self, name)!r}: {why}")

        if isinstance(self.enabled, np.bool_):
            self.enabled = bool(self.enabled)
        if not (isinstance(self.enabled, bool) or self.enabled == "auto"):
            raise bad("enabled", "choose auto (on where the probe has the depth for it), true or false")
        if self.preset not in PRESETS + tuple(OPTIONAL_PRESETS):
            raise bad("preset", f"choose one of {PRESETS} (SpikeInterface's motion presets)")
        if not is_number(self.min_extent_um) or self.min_extent_um <= 0:
            raise bad("min_extent_um", "must be > 0 micrometres (e.g. 200: least vertical extent of a shank)")
        if not is_number(self.max_width_um) or self.max_width_um <= 0:
            raise bad("max_width_um", "must be > 0 micrometres (e.g. 100: most width across a shank)")
        if isinstance(self.min_channels, bool) or not isinstance(self.min_channels, (int, np.integer)):
            raise bad("min_channels", "must be an integer >= 2 (least contacts of a shank)")
        if self.min_channels < 2:
            raise bad("min_channels", "must be an integer >= 2 (least contacts of a shank)")
        if self.bin_s is not None and (not is_number(self.bin_s) or self.bin_s <= 0):
            raise bad("bin_s", "must be > 0 seconds (time bin of the displacement), or null for the preset's")
        for name in ("win_step_um", "win_scale_um"):
            value = getattr(self, name)
            if value is not None and (not is_number(value) or value <= 0):
                raise bad(name, "must be > 0 micrometres (depth windows of a non-rigid estimate, e.g. 100), or "
                          "null for the preset's")  # fmt: skip

    @classmethod
    def from_dict(cls, d: Any) -> MotionParams:
        """From a (Hydra) mapping; unknown keys are rejected with the list of known ones."""
        if isinstance(d, cls):
            return d
        d = known_options(cls, d, "motion")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MotionCorrection:
    """What the stage did: the recording later stages read, the estimate (None when not corrected), the peaks it
    came from (``PEAK_DTYPE``: time, depth before correction, amplitude) and a plain-type summary (``info``)."""

    recording: Any
    motion: Any = None
    peaks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=PEAK_DTYPE))
    info: dict[str, Any] = field(default_factory=dict)


def can_correct(recording: Any, params: MotionParams) -> tuple[bool, str]:
    """(whether ``auto`` corrects this recording, why). Drift is estimated from how the depths of many peaks move
    together, so it takes one group (shank) of at least ``min_channels`` contacts spanning ``min_extent_um`` in
    depth, and no wider than ``max_width_um`` (a shank, along which the correction runs; not a 2-D grid)."""
    n = recording.get_num_channels()
    if n < 2:
        return False, "one channel: no depth to estimate drift along"
    if not recording.has_probe():
        return False, "no probe geometry: contact depths unknown"
    pos = np.asarray(recording.get_channel_locations(), dtype=np.float64)
    groups = channel_groups(recording)
    shapes = [(int((groups == g).sum()), np.ptp(pos[groups == g, 1]), np.ptp(pos[groups == g, 0]))
              for g in np.unique(groups)]  # fmt: skip
    for count, depth, width in sorted(shapes, reverse=True):
        if count >= params.min_channels and depth >= params.min_extent_um and width <= params.max_width_um:
            return True, f"{count} contacts over {depth:.0f} um, {width:.0f} um wide"
    count, depth, width = max(shapes)
    return False, (
        f"largest group: {count} contacts over {depth:.0f} um, {width:.0f} um wide; auto needs >= "
        f"{params.min_channels} contacts (motion.min_channels) over >= {params.min_extent_um:g} um "
        f"(motion.min_extent_um), <= {params.max_width_um:g} um wide (motion.max_width_um)"
    )


def _refused(recording: Any) -> str | None:
    """Why ``enabled=true`` cannot correct ``recording`` (None: it can)."""
    if recording.get_num_channels() < 2:
        return "the recording has one channel"
    if not recording.has_probe():
        return "the recording has no probe geometry (pass probe=... or attach one)"
    depth = np.asarray(recording.get_channel_locations(), dtype=np.float64)[:, 1]
    if np.ptp(depth) <= 0:
        return "all contacts are at one depth"
    return None


def correct_motion(
    filtered: Any, params: MotionParams, n_jobs: int = 1, progress: bool = False, cache_mb: float = 0.0,
    estimate: Any = None,
) -> MotionCorrection:  # fmt: skip
    """Estimate the drift of ``filtered`` (band-passed, float32, one segment) and return the corrected recording
    (in memory when it fits ``cache_mb`` float32 MB, as the band-passed one), or ``filtered`` itself when off.

    ``enabled=auto`` skips a probe without the depth for it (:func:`can_correct`) and, if the estimate fails (too
    few peaks), warns and sorts uncorrected; ``enabled=true`` raises :class:`DeepSpikeError` in both cases.
    ``estimate`` replaces the estimation (same arguments and result as ``estimate_motion``: the sort's stage cache).
    """
    if params.enabled is False:
        return MotionCorrection(filtered, info={"corrected": False, "reason": "motion.enabled=false"})
    if params.enabled is True:
        refused = _refused(filtered)
        if refused:
            raise DeepSpikeError(
                f"motion.enabled=true: cannot correct drift, {refused}; set motion.enabled=auto or false"
            )
        why = "motion.enabled=true"
    else:
        ok, why = can_correct(filtered, params)
        if not ok:
            log.info("no motion correction: %s", why)
            return MotionCorrection(filtered, info={"corrected": False, "reason": why})
    _check_preset(params.preset)
    try:
        motion, peaks, run_times = (estimate or estimate_motion)(filtered, params, n_jobs, progress)
    except Exception as e:  # SpikeInterface raises RuntimeError / ValueError / AssertionError on too few peaks
        if params.enabled is True:
            raise DeepSpikeError(
                f"motion.enabled=true: motion estimation failed ({type(e).__name__}: {e}); try another motion.preset "
                "or set motion.enabled=false"
            ) from e
        warnings.warn(f"motion estimation failed ({type(e).__name__}: {e}); sorting without correction", stacklevel=3)
        return MotionCorrection(filtered, info={"corrected": False, "reason": f"estimation failed: {e}"})
    corrected = _interpolated(filtered, motion, params.preset, cache_mb, n_jobs)
    info = {"corrected": True, "reason": why, "preset": params.preset, **motion_summary(motion), "n_peaks": len(peaks),
            "run_times_s": {k: round(float(v), 3) for k, v in run_times.items()}}  # fmt: skip
    log.info("motion: %s, displacement up to %.1f um", params.preset, info["max_abs_displacement_um"])
    return MotionCorrection(corrected, motion, peaks, info)


def _check_preset(preset: str) -> None:
    package = OPTIONAL_PRESETS.get(preset)
    if package is None:
        return
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise DeepSpikeError(f"motion.preset={preset}: needs the `{package}` package (pip install {package})")


def estimate_kwargs(params: MotionParams) -> dict[str, float]:
    """The preset's ``estimate_motion`` arguments that ``motion:`` overrides (``bin_s``, the depth windows; a rigid
    preset has no depth windows, so it keeps ``bin_s`` only)."""
    keys = ("bin_s",) if params.preset in RIGID_PRESETS else ("bin_s", "win_step_um", "win_scale_um")
    return {k: float(getattr(params, k)) for k in keys if getattr(params, k) is not None}


def estimate_motion(
    filtered: Any, params: MotionParams, n_jobs: int, progress: bool
) -> tuple[Any, np.ndarray, dict]:  # fmt: skip
    """SpikeInterface's ``compute_motion`` with the preset (and :func:`estimate_kwargs`: ``bin_s``, the depth
    windows); returns the Motion, the peaks it used (``PEAK_DTYPE``) and its run times."""
    from spikeinterface.core import get_noise_levels
    from spikeinterface.preprocessing import compute_motion

    # computed (and cached on the recording) here: compute_motion's own call would show SpikeInterface's progress bar
    get_noise_levels(filtered, return_in_uV=False, n_jobs=1, progress_bar=False)
    estimate = estimate_kwargs(params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        motion, info = compute_motion(
            filtered, preset=params.preset, estimate_motion_kwargs=estimate, output_motion_info=True,
            n_jobs=int(n_jobs), chunk_duration="1s", progress_bar=bool(progress),
        )  # fmt: skip
    for w in caught:  # a probe shorter than the preset's depth windows is estimated rigid: expected, not a warning
        if RIGID_FALLBACK in str(w.message):
            log.info("motion: %s", w.message)
        else:
            warnings.warn(w.message, w.category, stacklevel=4)
    found, where = info["peaks"], info["peak_locations"]
    peaks = np.zeros(len(found), dtype=PEAK_DTYPE)
    peaks["time_s"] = found["sample_index"] / filtered.get_sampling_frequency()
    peaks["depth_um"] = where["y"]
    peaks["amplitude"] = found["amplitude"]
    return motion, peaks, info["run_times"]


def _interpolated(filtered: Any, motion: Any, preset: str, cache_mb: float, n_jobs: int) -> Any:
    """The preset's interpolation on the recording's own channels (``force_extrapolate``: none removed), computed
    into memory when it fits ``cache_mb``: later stages read it up to 7 times, and kriging costs as much as filtering.
    """
    from deepspike.recording.preprocess import in_memory

    return in_memory(corrected_view(filtered, motion, preset), cache_mb, n_jobs=n_jobs)


def corrected_view(filtered: Any, motion: Any, preset: str) -> Any:
    """The lazy drift-corrected recording: ``preset``'s interpolation of ``filtered`` by ``motion`` on the
    recording's own channels (``force_extrapolate``: none removed), as the sort read it."""
    from spikeinterface.preprocessing.motion import motion_options_preset
    from spikeinterface.sortingcomponents.motion import interpolate_motion

    kwargs = {**motion_options_preset[preset]["interpolate_motion_kwargs"], "border_mode": "force_extrapolate"}
    return interpolate_motion(filtered, motion, **kwargs)


def motion_arrays(motion: Any, peaks: np.ndarray) -> dict[str, np.ndarray]:
    """A one-segment ``Motion`` and its peaks as plain arrays (the stage cache: no pickle)."""
    return {
        "displacement": np.asarray(motion.displacement[0]), "temporal_bins_s": np.asarray(motion.temporal_bins_s[0]),
        "spatial_bins_um": np.asarray(motion.spatial_bins_um), "peaks": np.asarray(peaks),
    }  # fmt: skip


def motion_from_arrays(arrays: dict[str, np.ndarray]) -> tuple[Any, np.ndarray]:
    """The ``Motion`` and peaks :func:`motion_arrays` saved."""
    from spikeinterface.core.motion import Motion

    motion = Motion([arrays["displacement"]], [arrays["temporal_bins_s"]], arrays["spatial_bins_um"], direction="y")
    return motion, arrays["peaks"]


def motion_summary(motion: Any) -> dict[str, Any]:
    """Plain numbers about a ``Motion`` (``result.info["motion"]``, the console): bins and displacement range."""
    disp = np.asarray(motion.displacement[0], dtype=np.float64)
    return {
        "rigid": bool(np.allclose(disp, disp[:, :1])),  # one depth window, or all windows moving alike
        "temporal_bins": int(disp.shape[0]),
        "spatial_bins": int(disp.shape[1]),
        "max_abs_displacement_um": float(np.max(np.abs(disp))) if disp.size else 0.0,
        "displacement_range_um": float(np.ptp(disp)) if disp.size else 0.0,
    }


def motion_errors_um(
    motion: Any, times_s: np.ndarray, displacement_um: np.ndarray, depths_um: np.ndarray
) -> np.ndarray:
    """RMS error (um) of the estimated displacement at each unit's depth (``depths_um`` ``[units]``) against its true
    displacement (``displacement_um`` ``[times, units]`` at ``times_s``), both with their mean over time removed (the
    estimate's reference depth is arbitrary). For benchmarks and tests on generated drift, where the truth is known."""
    out = []
    for u, depth in enumerate(depths_um):
        est = motion.get_displacement_at_time_and_depth(times_s, np.full(len(times_s), depth))
        true = displacement_um[:, u]
        out.append(np.sqrt(np.mean(((est - est.mean()) - (true - true.mean())) ** 2)))
    return np.asarray(out)


def save_motion(motion: Any, peaks: np.ndarray, folder: str | Path) -> None:
    """``folder``: SpikeInterface's ``Motion.save`` format (``spatial_bins_um.npy``, ``displacement_seg0.npy``
    [time bins, depth bins] um, ``temporal_bins_s_seg0.npy``, ``spikeinterface_info.json``; load with
    ``spikeinterface.core.motion.Motion.load``) plus ``peaks.npy`` (``PEAK_DTYPE``: the peaks it was estimated
    from)."""
    folder = Path(folder)
    motion.save(folder)
    np.save(folder / "peaks.npy", peaks)
