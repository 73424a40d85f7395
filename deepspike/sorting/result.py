"""What a sort produced (``SortResult``: per-spike arrays, labels, timings) and its SpikeInterface sorting with
per-unit properties; ``SnippetSortResult`` for pre-cut snippets; the per-stage timer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from deepspike.sorting.params import SortParams
from deepspike.spec import WindowSpec

SPIKE_COLUMNS = ["sample_index", "time_s", "unit", "channel", "amplitude"]


UNIT_COLUMNS = ["unit", "spike_count", "rate_hz", "snr", "peak_channel"]


QUALITY_UNIT_COLUMNS = [*UNIT_COLUMNS, "amplitude", "amplitude_uv", "isi_violations_ratio", "isi_violations_count",
                        "presence_ratio", "amplitude_cutoff", "label", "label_reason"]  # fmt: skip  # units.csv


@dataclass
class SortResult:
    """Everything a sort produced; ``labels`` has one entry per spike (``-1`` = noise/unassigned)."""

    sorting: Any
    recording: Any
    sample_index: np.ndarray
    channel: np.ndarray
    amplitude: np.ndarray  # signed peak, recording units
    waves: np.ndarray  # [n, window] noise units
    embeddings: np.ndarray
    labels: np.ndarray
    noise_levels: np.ndarray
    sampling_frequency: float
    duration_s: float
    spec: WindowSpec
    params: SortParams
    checkpoint: str | None
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    finetuned: Any = None  # the adapted Encoder when finetune=True (written as encoder_finetuned.safetensors)
    templates: np.ndarray | None = None  # multi-channel: [units, samples, channels] noise units (templates.npy)
    motion: Any = None  # the estimated drift (SpikeInterface Motion) when motion correction ran (motion/)
    motion_peaks: np.ndarray | None = None  # the peaks it was estimated from (sorting.motion.PEAK_DTYPE)

    @property
    def unit_ids(self) -> list[int]:
        return sorted(int(u) for u in np.unique(self.labels) if u >= 0)

    def spikes_table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "sample_index": self.sample_index.astype(np.int64),
                "time_s": self.sample_index / self.sampling_frequency,
                "unit": self.labels.astype(np.int64),
                "channel": self.channel.astype(np.int64),
                "amplitude": self.amplitude.astype(np.float64),
            }
        )[SPIKE_COLUMNS]

    def units_table(self) -> pd.DataFrame:
        """One row per unit: :data:`UNIT_COLUMNS`, ``amplitude`` (median signed peak, recording units), the quality
        metrics (``quality.METRIC_COLUMNS``: µV amplitude where the gain is known, ISI violations, presence ratio,
        amplitude cutoff) and the curation ``label`` / ``label_reason`` (thresholds: ``params.curation``).

        ``snr`` is the template peak in noise sigmas: on every channel of the probe when a multi-channel template
        exists (a unit's spikes peak on several channels, whose averaged windows would understate it), else the
        mean of its windows.
        """
        from deepspike.sorting.quality import label_units, recording_gains, unit_quality

        ids = self.unit_ids
        rows = []
        for u, idx in self._unit_slices(ids):  # one sort, then a slice per unit: O(spikes), not O(spikes x units)
            rows.append(
                {
                    "unit": u,
                    "spike_count": len(idx),
                    "rate_hz": float(len(idx) / self.duration_s) if self.duration_s > 0 else float("nan"),
                    "snr": self._snr(u, idx),
                    "peak_channel": int(np.bincount(self.channel[idx]).argmax()),
                    "amplitude": float(np.median(self.amplitude[idx])),
                }
            )
        table = pd.DataFrame(rows, columns=[*UNIT_COLUMNS, "amplitude"]).set_index("unit", drop=False)
        metrics = unit_quality(
            self.sample_index, self.labels, self.amplitude, self.channel, ids, self.sampling_frequency,
            round(self.duration_s * self.sampling_frequency), self.params.curation, recording_gains(self.recording),
        )  # fmt: skip
        table = table.join(metrics)
        table = table.join(label_units(table, self.params.curation))
        return table.reset_index(drop=True)[QUALITY_UNIT_COLUMNS]

    def _unit_slices(self, ids: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(unit, its spike rows in time order) for each of ``ids``."""
        order = np.argsort(self.labels, kind="stable")
        sorted_labels = self.labels[order]
        starts = np.searchsorted(sorted_labels, ids, side="left")
        stops = np.searchsorted(sorted_labels, ids, side="right")
        for u, start, stop in zip(ids, starts, stops, strict=True):
            yield u, order[start:stop]

    def _snr(self, unit: int, idx: np.ndarray) -> float:
        if self.templates is not None and unit < len(self.templates):
            return float(np.max(np.abs(self.templates[unit])))
        return float(np.max(np.abs(self.waves[idx].mean(0)))) if self.waves.size and len(idx) else float("nan")


@dataclass
class SnippetSortResult:
    """A clustering of pre-cut snippets: one label per snippet (``-1`` = unassigned), in input order."""

    labels: np.ndarray
    embeddings: np.ndarray
    waves: np.ndarray  # [n, window] the snippets on the encoder's grid, noise units
    noise: float  # noise sigma used, in the snippets' units
    spec: WindowSpec
    params: SortParams
    timings: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    finetuned: Any = None


def build_sorting(result: SortResult) -> Any:
    """NumpySorting with one unit per label (plus a ``noise`` unit if ``noise_unit``) and per-unit properties."""
    from spikeinterface.core import NumpySorting

    labels = result.labels
    unit_ids = result.unit_ids
    keep = labels >= 0
    noise_id = None
    if result.params.noise_unit and (~keep).any():
        noise_id = (max(unit_ids) + 1) if unit_ids else 0
        labels = np.where(keep, labels, noise_id)
        keep = np.ones(len(labels), dtype=bool)
    all_ids = [*unit_ids, *([noise_id] if noise_id is not None else [])]
    order = np.argsort(result.sample_index[keep], kind="stable")
    sorting = NumpySorting.from_samples_and_labels(
        [result.sample_index[keep][order]],
        [labels[keep][order]],
        result.sampling_frequency,
        unit_ids=np.asarray(all_ids, dtype=np.int64),
    )
    if all_ids:
        _set_unit_properties(sorting, result, all_ids, labels, noise_id)
    sorting.deepspike = result
    return sorting


SORTING_PROPERTIES = ("isi_violations_ratio", "presence_ratio", "amplitude_cutoff", "amplitude_uv")


def _set_unit_properties(sorting: Any, result: SortResult, ids: list[int], labels: np.ndarray, noise_id: Any) -> None:
    """``channel``, ``amplitude``, ``snr``, ``is_noise``, ``embedding`` and the curation: ``quality`` (good / mua /
    noise, SpikeInterface's and Phy's name for it) and :data:`SORTING_PROPERTIES` (NaN on the noise unit)."""
    table = result.units_table().set_index("unit")
    dim = result.embeddings.shape[1] if result.embeddings.ndim == 2 else 0
    chan, amp, snr, emb = [], [], [], np.zeros((len(ids), dim), dtype=np.float32)
    for i, u in enumerate(ids):
        m = labels == u
        if u == noise_id:
            chan.append(int(np.bincount(result.channel[m]).argmax()))
            amp.append(float(np.median(result.amplitude[m])))
            snr.append(float(np.max(np.abs(result.waves[m].mean(0)))) if result.waves.size else 0.0)
        else:
            chan.append(int(table.at[u, "peak_channel"]))
            amp.append(float(table.at[u, "amplitude"]))
            snr.append(float(table.at[u, "snr"]))
        if dim:
            emb[i] = result.embeddings[m].mean(0)
    sorting.set_property("channel", np.asarray(chan, dtype=np.int64))
    sorting.set_property("amplitude", np.asarray(amp))
    sorting.set_property("snr", np.asarray(snr))
    sorting.set_property("is_noise", np.asarray([u == noise_id for u in ids]))
    sorting.set_property("quality", np.asarray(["noise" if u == noise_id else table.at[u, "label"] for u in ids]))
    for name in SORTING_PROPERTIES:
        values = [np.nan if u == noise_id else table.at[u, name] for u in ids]
        sorting.set_property(name, np.asarray(values, dtype=np.float64))
    if dim:
        sorting.set_property("embedding", emb)


@contextmanager
def timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0
