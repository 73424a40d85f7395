"""Match stage: templates of the clustered units -> their spikes found again in the band-passed recording.

Clustering only sees spikes the detector caught, cut one by one. Template matching (SpikeInterface's
``sortingcomponents.matching.find_spikes_from_templates``) goes back to the traces with each unit's mean waveform
(estimated at the native rate from its clustered spikes, ``estimate_templates``) and finds that unit's spikes
again: those below the detection threshold (low-SNR units) and those hidden in overlaps, which a peeler
subtracts before looking again. Each found spike keeps the unit of its template.

Without a probe, units stay per channel, as DeepSpike clusters them: a template is zero outside its unit's
channel and the matcher sees the channels as far apart (each one a contact 10 mm from the next). On a probe
(``near``), a template spans the unit's neighbourhood and the channels beyond it where the unit still shows
(``multichannel.footprint_sigma``), on the probe's own geometry. The options are declared once, with comments,
in ``conf/sort.yaml`` (``matching:``); the choice of method and defaults is measured by ``bench/sorter_v2.py``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from deepspike.defaults import conf_field, is_number, known_options
from deepspike.errors import DeepSpikeError
from deepspike.sorting.multichannel import is_multichannel

log = logging.getLogger(__name__)

CONF = "sort.yaml"
METHODS = ("circus-omp", "tdc-peeler", "wobble")  # "nearest" needs sparse templates in SpikeInterface 0.105
CHANNEL_SPACING_UM = 10_000.0  # channels this far apart never share a template (per-channel units)
SPIKE_DTYPE = np.dtype([("sample_index", "i8"), ("unit", "i8"), ("channel", "i8"), ("scale", "f8")])


@dataclass
class MatchParams:
    """``matching:`` block of ``conf/sort.yaml`` (meanings and ranges are documented there)."""

    enabled: bool = conf_field(CONF, "matching.enabled")
    method: str = conf_field(CONF, "matching.method")
    threshold: float = conf_field(CONF, "matching.threshold")
    ms_before: float = conf_field(CONF, "matching.ms_before")
    ms_after: float = conf_field(CONF, "matching.ms_after")
    max_spikes_per_unit: int = conf_field(CONF, "matching.max_spikes_per_unit")
    approx_rank: int = conf_field(CONF, "matching.approx_rank")
    relabel: bool = conf_field(CONF, "matching.relabel")
    method_kwargs: dict[str, Any] = conf_field(CONF, "matching.method_kwargs")

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> DeepSpikeError:
            return DeepSpikeError(f"matching.{name}={getattr(self, name)!r}: {why}")

        for name in ("enabled", "relabel"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise bad(name, "must be true or false")
        if self.method not in METHODS:
            raise bad("method", f"unknown matching method; choose one of {METHODS} (SpikeInterface matchers)")
        if not is_number(self.threshold) or self.threshold <= 0:
            raise bad("threshold", "must be > 0 noise sigmas (the matcher's detection threshold, e.g. 4.0)")
        for name in ("ms_before", "ms_after"):
            if not is_number(getattr(self, name)) or getattr(self, name) <= 0:
                raise bad(name, "must be > 0 ms (template extent around the peak, e.g. 1.0 before, 1.5 after)")
        if isinstance(self.max_spikes_per_unit, bool) or int(self.max_spikes_per_unit) < 10:
            raise bad("max_spikes_per_unit", "must be an integer >= 10 (spikes averaged into each template)")
        if (
            not isinstance(self.approx_rank, (int, np.integer))
            or isinstance(self.approx_rank, bool)
            or self.approx_rank < 1
        ):
            raise bad("approx_rank", "must be an integer >= 1 (wobble: spatial components kept of each template)")
        if not isinstance(self.method_kwargs, dict):
            raise bad("method_kwargs", "must be a mapping of extra arguments of the matcher, e.g. {max_peeler_loop: 2}")
        reserved = {"noise_levels", "templates", "return_output"} & set(self.method_kwargs)
        if reserved:
            raise bad("method_kwargs", f"{sorted(reserved)} are set by DeepSpike; remove them")

    @classmethod
    def from_dict(cls, d: Any) -> MatchParams:
        """From a (Hydra) mapping; unknown keys are rejected with the list of known ones."""
        if isinstance(d, cls):
            return d
        d = known_options(cls, d, "matching")
        if "method_kwargs" in d:
            d["method_kwargs"] = dict(d["method_kwargs"] or {})
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_unit_spikes(
    filtered: Any,
    sample_index: np.ndarray,
    labels: np.ndarray,
    channel: np.ndarray,
    noise: np.ndarray,
    params: MatchParams,
    seed: int = 0,
    near: np.ndarray | None = None,
    n_jobs: int = 1,
    footprint_sigma: float = 0.0,
    progress: bool = False,
    chunk_duration_s: float = 10.0,
) -> np.ndarray:
    """Spikes of the clustered units found by template matching in ``filtered`` (band-passed, one segment).

    ``sample_index``/``labels``/``channel``: the clustered spikes (label ``-1`` = noise, not a template);
    ``noise``: robust sigma per channel in the traces' units (matching runs on the traces in noise units).
    ``near`` (``[C, C]`` neighbourhoods, ``deepspike.sorting.multichannel``): a unit's template spans its main channel's
    neighbourhood on the recording's own probe, and its footprint beyond (``footprint_sigma``, see
    ``matching_templates``); None (or one channel each): per-channel templates.
    ``n_jobs``: worker processes of the matcher (SpikeInterface's job_kwargs).
    Returns a ``SPIKE_DTYPE`` array sorted by time: sample, unit (a label of the input), channel (the unit's),
    scale (fitted amplitude / template's, where the method reports it, else 1).
    """
    with _torch_probe_hidden(params):
        from spikeinterface.sortingcomponents.matching import find_spikes_from_templates

    units = np.asarray(sorted(int(u) for u in np.unique(labels) if u >= 0), dtype=np.int64)
    if units.size == 0:
        return np.zeros(0, dtype=SPIKE_DTYPE)
    rec = _in_noise_units(filtered if is_multichannel(near) else _per_channel_geometry(filtered), noise)
    templates, unit_channel = matching_templates(
        rec, sample_index, labels, channel, units, params, seed, near, footprint_sigma
    )
    kwargs = _method_kwargs(params, rec.get_num_channels())
    found = find_spikes_from_templates(
        rec,
        templates,
        method=params.method,
        method_kwargs=kwargs,
        job_kwargs={"n_jobs": n_jobs, "chunk_duration": f"{chunk_duration_s:g}s", "progress_bar": progress},
    )
    found = found[found["cluster_index"] >= 0]
    out = np.zeros(len(found), dtype=SPIKE_DTYPE)
    out["sample_index"] = found["sample_index"]
    out["unit"] = units[found["cluster_index"]]
    out["channel"] = unit_channel[found["cluster_index"]]
    scale = np.asarray(found["amplitude"], dtype=np.float64)
    out["scale"] = np.where(np.isfinite(scale) & (scale != 0), scale, 1.0)
    return out[np.argsort(out["sample_index"], kind="stable")]


@contextmanager
def _torch_probe_hidden(params: MatchParams) -> Iterator[None]:
    """Import SpikeInterface's matchers without importing torch, when torch is not loaded yet and no torch engine
    is asked for.

    Their modules probe ``importlib.util.find_spec("torch.nn")`` at import time, which imports torch: 1.3 s of
    a 6 s fresh-process sort of 60 s of one channel (2-core machine), for engines DeepSpike does not use (the
    matchers run their numpy engines by default). While the import runs, ``sys.modules["torch"]`` is None, so
    the probe finds no torch; afterwards torch imports normally, and only those modules' torch engines stay off.
    """
    engine = str(dict(params.method_kwargs.get("parameters") or {}).get("engine", params.method_kwargs.get("engine")))
    if "torch" in sys.modules or engine in ("torch", "auto"):
        yield
        return
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]


def _method_kwargs(params: MatchParams, num_channels: int) -> dict[str, Any]:
    """The matcher's arguments: DeepSpike's (both polarities, ``threshold``, noise 1 in these traces), then the
    user's ``method_kwargs`` (a nested ``parameters`` mapping of wobble is merged, not replaced)."""
    user = dict(params.method_kwargs)
    if params.method == "tdc-peeler":
        own = {"noise_levels": np.ones(num_channels, np.float32), "peak_sign": "both",
               "detect_threshold": params.threshold}  # fmt: skip
        return {**own, **user}
    if params.method == "wobble":
        own = {"threshold": params.threshold, "approx_rank": int(params.approx_rank)}
        return {**user, "parameters": {**own, **dict(user.get("parameters") or {})}}
    return user


def _in_noise_units(filtered: Any, noise: np.ndarray) -> Any:
    """Traces divided by each channel's noise sigma: one threshold means the same on every recording."""
    from spikeinterface.preprocessing import scale

    noise = np.asarray(noise, dtype=np.float32)
    gain = np.where(noise > 0, 1.0 / np.where(noise > 0, noise, 1.0), 0.0).astype(np.float32)
    return scale(filtered, gain=gain, dtype="float32")


def matching_templates(
    filtered: Any,
    sample_index: np.ndarray,
    labels: np.ndarray,
    channel: np.ndarray,
    units: np.ndarray,
    params: MatchParams,
    seed: int = 0,
    near: np.ndarray | None = None,
    footprint_sigma: float = 0.0,
) -> tuple[Any, np.ndarray]:
    """SpikeInterface ``Templates`` of ``units`` at the native rate (mean of at most ``max_spikes_per_unit``
    spikes each, chunked), zero outside each unit's channel (given ``near``: its neighbourhood, and with
    ``footprint_sigma`` > 0 every channel of its group where the template peaks at least that many noise sigmas:
    the matcher then subtracts the whole spike, leaving no far-channel remnant for another unit to claim); and each
    unit's channel (where most of its spikes peak)."""
    from spikeinterface.core import Templates
    from spikeinterface.core.waveform_tools import estimate_templates

    fs = float(filtered.get_sampling_frequency())
    nb, na = max(1, round(params.ms_before * fs / 1000)), max(1, round(params.ms_after * fs / 1000))
    n_total = filtered.get_num_samples(0)
    rng = np.random.default_rng(seed)
    rows, unit_channel = [], np.zeros(len(units), dtype=np.int64)
    for i, u in enumerate(units):
        idx = np.flatnonzero((labels == u) & (sample_index >= nb) & (sample_index < n_total - na))
        unit_channel[i] = int(np.bincount(channel[labels == u]).argmax())
        if len(idx) > params.max_spikes_per_unit:
            idx = np.sort(rng.choice(idx, params.max_spikes_per_unit, replace=False))
        rows.append(np.stack([sample_index[idx], np.full(len(idx), i)], axis=1))
    picked = np.concatenate(rows) if rows else np.zeros((0, 2), dtype=np.int64)
    picked = picked[np.argsort(picked[:, 0], kind="stable")]
    spikes = np.zeros(len(picked), dtype=[("sample_index", "i8"), ("unit_index", "i8"), ("segment_index", "i8")])
    spikes["sample_index"], spikes["unit_index"] = picked[:, 0], picked[:, 1]
    arr = estimate_templates(filtered, spikes, units, nb, na, return_in_uV=False, n_jobs=1, progress_bar=False)
    own = np.zeros((len(units), filtered.get_num_channels()), dtype=bool)
    own[np.arange(len(units)), unit_channel] = True
    if near is not None:
        own |= np.asarray(near, dtype=bool)[unit_channel]
        if footprint_sigma > 0:
            from deepspike.sorting.multichannel import channel_groups

            groups = channel_groups(filtered)
            same = groups[None, :] == groups[unit_channel][:, None]
            own |= same & (np.abs(arr).max(axis=1) >= footprint_sigma)
    arr = np.where(own[:, None, :], arr, 0.0).astype(np.float32)
    templates = Templates(
        templates_array=arr, sampling_frequency=fs, nbefore=nb, is_in_uV=False, channel_ids=filtered.channel_ids,
        unit_ids=units, probe=filtered.get_probe(),
    )  # fmt: skip
    return templates, unit_channel


def _per_channel_geometry(filtered: Any) -> Any:
    """The recording with a probe whose contacts lie ``CHANNEL_SPACING_UM`` apart: matching per channel."""
    from probeinterface import Probe

    n = filtered.get_num_channels()
    probe = Probe(ndim=2, si_units="um")
    probe.set_contacts(positions=np.stack([np.zeros(n), np.arange(n) * CHANNEL_SPACING_UM], axis=1))
    probe.set_device_channel_indices(np.arange(n))
    rec = filtered.clone()  # set_probe works in place: the caller's recording keeps its own geometry
    rec.set_probe(probe)
    return rec


def pair_with_detected(
    sample_index: np.ndarray, channel: np.ndarray, found: np.ndarray, tolerance: int, near: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pair matched spikes with detected ones (same channel, or given ``near``, a detected peak on a channel of the
    unit's neighbourhood; peaks at most ``tolerance`` samples apart, one to one, nearest first). Returns (index of
    the found spike paired with each detected spike or -1, mask of found spikes that paired with none: spikes the
    detector missed)."""
    n = len(sample_index)
    pair = np.full(n, -1, dtype=np.int64)
    taken = np.zeros(len(found), dtype=bool)
    if n == 0 or len(found) == 0:
        return pair, ~taken
    t = np.asarray(sample_index, dtype=np.int64)
    for ch in np.unique(found["channel"]):
        det = np.flatnonzero(np.asarray(near)[ch][channel] if near is not None else np.asarray(channel) == ch)
        fnd = np.flatnonzero(found["channel"] == ch)
        if det.size == 0:
            continue
        det = det[np.argsort(t[det], kind="stable")]
        cand = []  # (distance, found index, detected index) of each found spike's two nearest detected peaks
        pos = np.searchsorted(t[det], found["sample_index"][fnd])
        for side in (pos - 1, pos):
            ok = (side >= 0) & (side < det.size)
            d = np.abs(t[det[side[ok]]] - found["sample_index"][fnd[ok]])
            close = d <= tolerance
            cand.append(np.stack([d[close], fnd[ok][close], det[side[ok][close]]], axis=1))
        c = np.concatenate(cand)
        for _, f, k in c[np.lexsort((c[:, 1], c[:, 0]))]:  # greedy, nearest pairs first
            if pair[k] < 0 and not taken[f]:
                pair[k], taken[f] = f, True
    return pair, ~taken
