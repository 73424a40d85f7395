"""Quality metrics and a curation label (``good`` / ``mua`` / ``noise``) per unit: which units to trust.

The metrics are SpikeInterface's own per-unit functions (``spikeinterface.metrics.quality``: ``isi_violations``
(Hill et al. 2011 / Llobet et al. 2022), ``presence_ratio``, ``amplitude_cutoff`` (Hill et al. 2011)) applied to the
sort's spike times and peak amplitudes. They are not computed through a ``SortingAnalyzer``: the sort already holds
every spike's amplitude, so no second pass over the traces is needed and an hour-long recording costs O(spikes)
(32 channels x 60 s, 12 units, 8,800 spikes: 10 ms here against 14.5 s on one core for an analyzer's
``random_spikes``, ``templates``, ``noise_levels``, ``spike_amplitudes`` and ``quality_metrics``, which read the
traces again; the same ISI and amplitude-cutoff values, SNRs within 5 % on isolated units). Presence is counted in
bins of ``presence_bin_s`` but at least ``MIN_PRESENCE_BINS`` of them, so a short recording still has a meaningful
ratio (SpikeInterface's 60 s bins give one bin, ratio 1, on a one-minute recording).

The thresholds are declared once, with comments and their conventions, in the ``curation:`` block of
``conf/sort.yaml`` (:class:`CurationParams`). A unit failing a ``noise`` rule is ``noise``, else one failing a
``mua`` rule is ``mua``, else ``good``; a metric that cannot be computed (NaN: too few spikes) fails no rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from deepspike.defaults import conf_field, is_number, known_options
from deepspike.errors import DeepSpikeError

CONF = "sort.yaml"
LABELS = ("good", "mua", "noise")
METRIC_COLUMNS = ["amplitude_uv", "isi_violations_ratio", "isi_violations_count", "presence_ratio", "amplitude_cutoff"]
LABEL_COLUMNS = ["label", "label_reason"]
MIN_PRESENCE_BINS = 10  # a recording shorter than this many presence_bin_s bins is cut into this many bins


# (label, metric column, CurationParams field, "min" = the metric must be at least it / "max" = at most it)
RULES = (
    ("noise", "snr", "noise_max_snr", "min"),
    ("mua", "snr", "min_snr", "min"),
    ("mua", "spike_count", "min_spikes", "min"),
    ("mua", "isi_violations_ratio", "max_isi_violations_ratio", "max"),
    ("mua", "presence_ratio", "min_presence_ratio", "min"),
    ("mua", "amplitude_cutoff", "max_amplitude_cutoff", "max"),
)


@dataclass
class CurationParams:
    """``curation:`` block of ``conf/sort.yaml`` (meanings, conventions and ranges are documented there)."""

    isi_threshold_ms: float = conf_field(CONF, "curation.isi_threshold_ms")
    presence_bin_s: float = conf_field(CONF, "curation.presence_bin_s")
    noise_max_snr: float = conf_field(CONF, "curation.noise_max_snr")
    min_snr: float = conf_field(CONF, "curation.min_snr")
    min_spikes: int = conf_field(CONF, "curation.min_spikes")
    max_isi_violations_ratio: float = conf_field(CONF, "curation.max_isi_violations_ratio")
    min_presence_ratio: float = conf_field(CONF, "curation.min_presence_ratio")
    max_amplitude_cutoff: float = conf_field(CONF, "curation.max_amplitude_cutoff")

    def __post_init__(self) -> None:
        ranges = {  # (low, high, what it is): the message names the key and the range
            "isi_threshold_ms": (0.0, None, "ms, the refractory period, e.g. 1.5"),
            "presence_bin_s": (0.0, None, "seconds per presence bin, e.g. 60"),
            "noise_max_snr": (0.0, None, "noise sigmas, e.g. 3"),
            "min_snr": (0.0, None, "noise sigmas, e.g. 5"),
            "min_spikes": (0, None, "spikes, e.g. 50"),
            "max_isi_violations_ratio": (0.0, None, "Hill's ratio, e.g. 0.5"),
            "min_presence_ratio": (0.0, 1.0, "a fraction of the recording, e.g. 0.9"),
            "max_amplitude_cutoff": (0.0, 0.5, "a fraction of missed spikes, at most 0.5, e.g. 0.1"),
        }
        for name, (low, high, what) in ranges.items():
            value = getattr(self, name)
            if not is_number(value) or value < low or (high is not None and value > high):
                span = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"
                raise DeepSpikeError(f"curation.{name}={value!r}: must be a number {span} ({what})")
        if not isinstance(self.min_spikes, (int, np.integer)):
            raise DeepSpikeError(f"curation.min_spikes={self.min_spikes!r}: must be an integer >= 0 (spikes)")
        for name in ("isi_threshold_ms", "presence_bin_s"):
            if getattr(self, name) == 0:
                raise DeepSpikeError(f"curation.{name}={getattr(self, name)!r}: must be > 0")
        if self.noise_max_snr > self.min_snr:
            raise DeepSpikeError(
                f"curation.noise_max_snr={self.noise_max_snr!r} must be <= curation.min_snr={self.min_snr!r} "
                "(below noise_max_snr a unit is noise, below min_snr it is mua)"
            )

    @classmethod
    def from_dict(cls, d: Any) -> CurationParams:
        """From a (Hydra) mapping; unknown keys are rejected with the list of known ones."""
        if isinstance(d, cls):
            return d
        d = known_options(cls, d, "curation")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unit_quality(
    sample_index: np.ndarray,
    labels: np.ndarray,
    amplitude: np.ndarray,
    channel: np.ndarray,
    unit_ids: list[int],
    sampling_frequency: float,
    num_samples: int,
    params: CurationParams,
    gains: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per unit of ``unit_ids`` with :data:`METRIC_COLUMNS` (index = unit id).

    ``amplitude``: each spike's signed peak in recording units; ``gains``: µV per recording unit per channel, or
    None when the recording does not say (``amplitude_uv`` is then NaN). O(spikes): one sort and one pass.
    """
    from spikeinterface.metrics.quality.misc_metrics import amplitude_cutoff, isi_violations, presence_ratio

    duration = num_samples / sampling_frequency
    n_bins = max(MIN_PRESENCE_BINS, int(np.ceil(duration / params.presence_bin_s)))
    edges = np.linspace(0, num_samples, n_bins + 1)
    order = np.lexsort((sample_index, labels))  # by unit, then time: each unit's spikes are one slice
    starts = np.searchsorted(labels[order], unit_ids, side="left")
    stops = np.searchsorted(labels[order], unit_ids, side="right")
    rows = []
    for start, stop in zip(starts, stops, strict=True):
        idx = order[start:stop]
        times = sample_index[idx]
        ratio, _, count = isi_violations([times / sampling_frequency], duration, params.isi_threshold_ms / 1000)
        amps = amplitude[idx]
        uv = np.nan if gains is None or not len(idx) else float(np.median(amps * gains[channel[idx]]))
        rows.append(
            {
                "amplitude_uv": uv,
                "isi_violations_ratio": float(ratio),
                "isi_violations_count": int(count) if len(idx) else 0,
                "presence_ratio": float(presence_ratio(times, bin_edges=edges)) if len(idx) else np.nan,
                "amplitude_cutoff": float(amplitude_cutoff(-amps if np.median(amps) < 0 else amps))
                if len(idx)
                else np.nan,
            }
        )
    return pd.DataFrame(rows, index=pd.Index(unit_ids, name="unit"), columns=METRIC_COLUMNS)


def label_units(metrics: pd.DataFrame, params: CurationParams) -> pd.DataFrame:
    """``label`` (good / mua / noise) and ``label_reason`` (the rules failed, naming the threshold's key) per row of
    ``metrics`` (which holds the columns of :data:`RULES`)."""
    labels, reasons = [], []
    for _, row in metrics.iterrows():
        failed = {"noise": [], "mua": []}
        for label, column, key, kind in RULES:
            value, limit = float(row[column]), float(getattr(params, key))
            if np.isfinite(value) and (value < limit if kind == "min" else value > limit):
                sign = "<" if kind == "min" else ">"
                failed[label].append(f"{column} {value:.3g} {sign} curation.{key}={limit:g}")
        label = "noise" if failed["noise"] else "mua" if failed["mua"] else "good"
        labels.append(label)
        reasons.append("; ".join(failed[label]) if label != "good" else "")
    return pd.DataFrame({"label": labels, "label_reason": reasons}, index=metrics.index)


def recording_gains(recording: Any) -> np.ndarray | None:
    """µV per recording unit per channel, or None when the recording has no known gain."""
    if recording is None or not recording.has_scaleable_traces():
        return None
    return np.asarray(recording.get_channel_gains(), dtype=np.float64)


def label_counts(labels: Any) -> dict[str, int]:
    """Units per label, in :data:`LABELS` order (every label present, 0 when none)."""
    values = list(labels)
    return {lab: sum(v == lab for v in values) for lab in LABELS}
