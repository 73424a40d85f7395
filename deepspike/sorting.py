"""Sort stage: recording -> spikes -> frozen-encoder embeddings -> units -> outputs.

``sort(recording, checkpoint=None, **options)`` is the Python API and returns a SpikeInterface sorting, so
DeepSpike drops into SpikeInterface workflows. Per-unit properties on it: ``channel`` (peak channel),
``amplitude`` (median signed peak, recording units), ``snr`` (template peak in noise sigma), ``embedding``
(mean embedding), ``is_noise``. Per-spike arrays (embeddings, channel, amplitude, labels including ``-1`` noise)
ride along as ``sorting.deepspike``, a :class:`SortResult`, and are written to disk by :func:`write_outputs`.

``python sort.py ...`` (``main``) is the Hydra app over the same code, configured by ``conf/sort.yaml``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepspike.channels import MultichannelParams, is_multichannel, nearest_gap
from deepspike.cluster import NOISE, ClusterParams, cluster_spikes, fits_in_threads, secondary_peaks, templates
from deepspike.defaults import conf_field
from deepspike.errors import DeepSpikeError, OutputExistsError, RecordingError, SpecMismatchError, cli_errors
from deepspike.matching import MatchParams
from deepspike.paths import CHECKPOINT_DIR, CONF_DIR, DATA_DIR
from deepspike.paths import REPO_ROOT as REPO
from deepspike.spec import WindowSpec, normalize

# Windows up to which the CPU encoder runs in numpy; beyond, torch's faster kernels repay its import (1.4 s):
# bundled MLP, 2-core machine, 22 vs 11 us per window (numpy's erf is the difference), crossover about 130 k.
NUMPY_MAX_WINDOWS = 100_000

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "deepspike_synth_v1.safetensors"
DEMO_RECORDING = DATA_DIR / "demo" / "demo_recording"
DEMO_GT = DATA_DIR / "demo" / "demo_recording.gt"
FEATURES = ("encoder", "pca")
DEVICES = ("auto", "cpu", "cuda")
SPIKE_COLUMNS = ["sample_index", "time_s", "unit", "channel", "amplitude"]
UNIT_COLUMNS = ["unit", "spike_count", "rate_hz", "snr", "peak_channel"]
RESULT_MARKER = ".deepspike-result"
CONF = "sort.yaml"  # every option's default and comment; the dataclasses below read them from there
FINETUNED_NAME = "encoder_finetuned.safetensors"  # the adapted encoder in `out` (+ .json sidecar), finetune=true


@dataclass
class SortParams:
    """Pipeline options of ``sort()``; documented once, with comments, in ``conf/sort.yaml``."""

    features: str = conf_field(CONF, "features")
    pca_components: int = conf_field(CONF, "pca_components")
    device: str = conf_field(CONF, "device")
    batch_size: int = conf_field(CONF, "batch_size")
    seed: int = conf_field(CONF, "seed")
    noise_unit: bool = conf_field(CONF, "noise_unit")
    echo_ms: float = conf_field(CONF, "echo_ms")
    echo_ratio: float = conf_field(CONF, "echo_ratio")
    progress: bool = conf_field(CONF, "progress")
    finetune: bool = conf_field(CONF, "finetune")
    filter_cache_mb: float = conf_field(CONF, "filter_cache_mb")
    n_jobs: int = conf_field(CONF, "n_jobs")
    finetune_options: dict[str, Any] = conf_field("finetuning/default.yaml")
    extract: dict[str, Any] = conf_field("extract/default.yaml")
    cluster: ClusterParams = field(default_factory=ClusterParams)
    matching: MatchParams = field(default_factory=MatchParams)
    multichannel: MultichannelParams = field(default_factory=MultichannelParams)

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise DeepSpikeError(
                f"features={self.features!r}: choose 'encoder' (the frozen model) or 'pca' (model-free baseline)"
            )
        if self.device not in DEVICES:
            raise DeepSpikeError(f"device={self.device!r}: choose one of {DEVICES}")
        if (
            isinstance(self.filter_cache_mb, bool)
            or not isinstance(self.filter_cache_mb, (int, float))
            or (self.filter_cache_mb < 0)
        ):
            raise DeepSpikeError(f"filter_cache_mb={self.filter_cache_mb!r}: must be >= 0 MB (0 = never cache)")
        if isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, int) or self.n_jobs == 0 or self.n_jobs < -1:
            raise DeepSpikeError(f"n_jobs={self.n_jobs!r}: must be an integer >= 1, or -1 for all cores")
        if int(self.batch_size) < 1 or int(self.pca_components) < 1:
            raise DeepSpikeError("batch_size and pca_components must be positive integers")
        if self.echo_ms < 0 or (self.echo_ratio != 0 and self.echo_ratio < 1):
            raise DeepSpikeError(
                f"echo_ms={self.echo_ms} must be >= 0 and echo_ratio={self.echo_ratio} 0 (off) or >= 1 "
                "(an echo is an event within echo_ms of one echo_ratio times larger)"
            )
        if isinstance(self.cluster, str):
            self.cluster = ClusterParams(method=self.cluster, seed=self.seed)
        elif not isinstance(self.cluster, ClusterParams):
            self.cluster = ClusterParams.from_dict({"seed": self.seed, **dict(self.cluster or {})})
        self.matching = MatchParams.from_dict(self.matching)
        self.multichannel = MultichannelParams.from_dict(self.multichannel)
        self.extract = dict(self.extract or {})
        self.finetune_options = dict(self.finetune_options or {})
        if self.finetune and self.features != "encoder":
            raise DeepSpikeError("finetune=true adapts the encoder: it needs features=encoder, not features=pca")
        if self.finetune:
            from deepspike.finetune import FinetuneParams

            FinetuneParams.from_options(self.finetune_params())  # fail early on bad options

    def workers(self) -> int:
        """``n_jobs`` as a count (-1: the CPUs this process may use)."""
        if self.n_jobs > 0:
            return int(self.n_jobs)
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def finetune_params(self) -> dict[str, Any]:
        """``finetune_options`` with the sort's seed and device where they say null / auto."""
        opts = dict(self.finetune_options)
        if opts.get("seed") is None:
            opts["seed"] = self.seed
        if opts.get("device", "auto") == "auto":
            opts["device"] = self.device
        return opts

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SortParams:
        """``sort(**options)``: pipeline keys here, unknown keys are rejected with the list of known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise DeepSpikeError(
                f"unknown sort option(s) {unknown}; known: {sorted(known)} (clustering options go in cluster={{...}})"
            )
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cluster"] = self.cluster.to_dict()
        d["matching"] = self.matching.to_dict()
        d["multichannel"] = self.multichannel.to_dict()
        return d


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
        """unit, spike_count, rate_hz, snr (template peak / noise sigma), peak_channel (+ median amplitude)."""
        tpl = templates(self.labels, self.waves)
        rows = []
        for u in self.unit_ids:
            m = self.labels == u
            rows.append(
                {
                    "unit": u,
                    "spike_count": int(m.sum()),
                    "rate_hz": float(m.sum() / self.duration_s) if self.duration_s > 0 else float("nan"),
                    "snr": float(np.max(np.abs(tpl[u]))),
                    "peak_channel": int(np.bincount(self.channel[m]).argmax()),
                    "amplitude": float(np.median(self.amplitude[m])),
                }
            )
        return pd.DataFrame(rows, columns=[*UNIT_COLUMNS, "amplitude"])


# --------------------------------------------------------------------------------------------- pipeline


def sort(recording: Any, checkpoint: str | os.PathLike | None = None, **options: Any) -> Any:
    """Sort ``recording`` (a SpikeInterface recording or a path) and return a SpikeInterface sorting.

    ``checkpoint``: an exported encoder (``.safetensors``); None = the bundled one. Options: see
    :class:`SortParams` (``features``, ``device``, ``seed``, ``extract={...}``, ``cluster="dpgmm"`` or
    ``cluster={"method": "hdbscan", ...}``, ``finetune=True`` to adapt the encoder to this recording first,
    ``finetune_options={...}``). The full :class:`SortResult` is ``sorting.deepspike`` (the adapted encoder:
    ``sorting.deepspike.finetuned``).
    """
    return run_sort(recording, checkpoint, SortParams.from_options(options)).sorting


def run_sort(
    recording: Any,
    checkpoint: str | os.PathLike | None = None,
    params: SortParams | None = None,
    recording_options: dict[str, Any] | None = None,
) -> SortResult:
    """The pipeline with per-stage wall times in ``result.timings`` (load, extract, encode, cluster)."""
    params = params or SortParams()
    timings: dict[str, float] = {}
    source = recording if isinstance(recording, (str, os.PathLike)) else None
    with _timed(timings, "load"):
        encoder = _load_encoder(checkpoint, params) if params.features == "encoder" else None
        recording = _open(recording, recording_options)
    spec = encoder.window_spec if encoder is not None else WindowSpec()
    with _timed(timings, "filter"):
        filtered = _filtered(recording, params)
    spikes, extract_timings = _extract(filtered, params, spec)
    timings.update(extract_timings)
    near, spikes = _one_event_per_spike(recording, spikes, params)
    multi = is_multichannel(near)
    waves = np.asarray(spikes.waves, dtype=np.float32)
    finetuned = None
    if params.finetune and encoder is not None:
        from deepspike.corpus import recording_record

        with _timed(timings, "finetune"):
            data = recording_record(recording, source, len(waves))
            encoder = finetuned = _finetune(encoder, waves, params, data)
    with _timed(timings, "encode"):
        emb = _features(encoder, waves, params, spec)
    noise = np.asarray(spikes.noise_levels, dtype=np.float64).reshape(-1)
    channel = np.asarray(spikes.channel, dtype=np.int64)
    amp_noise = np.asarray(spikes.amplitude, dtype=np.float64)
    with _timed(timings, "cluster"):
        fs = float(recording.get_sampling_frequency())
        sample_index = np.asarray(spikes.sample_index, dtype=np.int64)
        echo = secondary_peaks(sample_index, channel, amp_noise, int(params.echo_ms * fs / 1000), params.echo_ratio)
        ok = ~echo
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if multi:
                clustered = _cluster_neighbourhoods(
                    filtered, encoder, params, spec, near, noise, sample_index[ok], channel[ok], amp_noise[ok]
                )
            else:
                clustered = cluster_spikes(
                    emb[ok],
                    waves[ok],
                    channel[ok],
                    amp_noise[ok],
                    params.cluster,
                    _threshold(params.extract),
                    params.workers(),
                )
        labels = np.full(len(waves), NOISE, dtype=np.int64)
        labels[ok] = clustered.labels
        clustered.info["n_echo"] = int(echo.sum())
        for w in caught:  # re-emit once, from the public call site, so users see why units are few
            warnings.warn(str(w.message), w.category, stacklevel=3)
        if len(waves) == 0:
            warnings.warn(
                "no spike detected: the sorting is empty (check the threshold and the recording)", stacklevel=3
            )
    if params.matching.enabled and (labels >= 0).any():
        with _timed(timings, "match"):
            sample_index, channel, amp_noise, waves, labels, order = _match(
                filtered, params, spec, noise, sample_index, channel, amp_noise, waves, labels, near
            )
            n_new = len(order) - len(emb)
            clustered.info["n_matched_new"] = n_new
        if n_new:
            with _timed(timings, "encode"):
                if encoder is not None:  # the frozen encoder embeds each spike alone: embed only the added ones
                    added = waves[np.argsort(order, kind="stable")[len(emb) :]]
                    emb = np.concatenate([emb, _features(encoder, added, params, spec)])[order]
                else:  # PCA is fitted on all spikes: refit
                    emb = _features(encoder, waves, params, spec)
    result = SortResult(
        sorting=None,
        recording=recording,
        sample_index=sample_index,
        channel=channel,
        amplitude=amp_noise * (noise[channel] if noise.size else 1.0),
        waves=waves,
        embeddings=np.asarray(emb, dtype=np.float32),
        labels=labels,
        noise_levels=noise,
        sampling_frequency=fs,
        duration_s=float(recording.get_total_duration()),
        spec=spec,
        params=params,
        checkpoint=None if encoder is None else str(_checkpoint_path(checkpoint)),
        timings=timings,
        info=clustered.info,
        finetuned=finetuned,
    )
    if multi and (labels >= 0).any():
        with _timed(timings, "write"):
            result.templates = _multichannel_templates(result, filtered, params)
    result.sorting = build_sorting(result)
    return result


def _multichannel_templates(result: SortResult, filtered: Any, params: SortParams) -> np.ndarray:
    """Each unit's template on every channel, ``[units, samples, channels]`` on the encoder's window grid in noise
    units (mean of at most 200 spikes, cut at their peak channel's peak time), unit ``i`` = label ``i``."""
    from deepspike.channels import unit_templates
    from deepspike.extract import ExtractParams

    chunk = ExtractParams.from_config(params.extract).chunk_duration_s
    units, tpl, _ = unit_templates(
        filtered, result.labels, result.sample_index, result.channel, result.noise_levels, result.spec, chunk,
        params.seed,
    )  # fmt: skip
    out = np.zeros((max(result.unit_ids) + 1, tpl.shape[2], tpl.shape[1]), dtype=np.float32)
    out[units] = tpl.transpose(0, 2, 1)
    return out


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


def sort_snippets(
    snippets: Any,
    sampling_frequency: float,
    peak_index: int,
    checkpoint: str | os.PathLike | None = None,
    noise: float | None = None,
    **options: Any,
) -> SnippetSortResult:
    """Cluster pre-cut spike snippets ``[n, samples]`` (no recording, no spike times): what acquisition systems
    that store only snippets, and published benchmarks of GT-labelled frames, provide.

    The snippets go onto the encoder's window grid (``windows.conform_snippets``: resampled from
    ``sampling_frequency``, re-peaked near ``peak_index``, divided by ``noise`` or its estimate), then the same
    stages as ``sort``: optional fine-tuning on them (``finetune=True``), embedding, clustering. Options as
    :func:`sort` (``extract`` and ``echo_*`` do not apply). Score with ``evaluate.compare_labels``.
    """
    from deepspike.windows import conform_snippets

    params = SortParams.from_options(options)
    timings: dict[str, float] = {}
    with _timed(timings, "load"):
        encoder = _load_encoder(checkpoint, params) if params.features == "encoder" else None
    spec = encoder.window_spec if encoder is not None else WindowSpec()
    waves, sigma = conform_snippets(snippets, sampling_frequency, spec, peak_index, noise=noise)
    finetuned = None
    if params.finetune and encoder is not None:
        with _timed(timings, "finetune"):
            data = {"snippets": len(waves), "sampling_frequency": float(sampling_frequency), "noise": sigma}
            encoder = finetuned = _finetune(encoder, waves, params, data)
    with _timed(timings, "encode"):
        emb = _features(encoder, waves, params, spec)
    with _timed(timings, "cluster"):
        clustered = cluster_spikes(emb, waves, None, waves[:, spec.n_before], params.cluster, n_jobs=params.workers())
    return SnippetSortResult(
        labels=clustered.labels, embeddings=np.asarray(emb, dtype=np.float32), waves=waves, noise=sigma, spec=spec,
        params=params, timings=timings, info=clustered.info, finetuned=finetuned,
    )  # fmt: skip


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - t0


def _open(recording: Any, options: dict[str, Any] | None) -> Any:
    if hasattr(recording, "get_traces"):
        return recording
    from deepspike.io import open_recording

    opts = {k: v for k, v in (options or {}).items() if v is not None}
    return open_recording(recording, **opts)


def _checkpoint_path(checkpoint: str | os.PathLike | None) -> Path:
    return Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT


def _load_encoder(checkpoint: str | os.PathLike | None, params: SortParams | None = None) -> Any:
    """The frozen encoder artifact; a clear error (with the ways out) when it is missing.

    In numpy (``deepspike.inference``, no torch import: about 1.3 s less start-up) when torch would run it on the
    CPU anyway and nothing trains it; else with torch (``export.load_encoder``).
    """
    path = _checkpoint_path(checkpoint)
    if not path.exists():
        what = "the bundled checkpoint" if checkpoint is None else "checkpoint"
        raise DeepSpikeError(
            f"{what} {str(path)!r} not found: pass checkpoint=PATH to an exported encoder (.safetensors, see "
            "deepspike.export), or features=pca for the model-free PCA baseline"
        )
    encoder = _load_for(path, params or SortParams())
    in_dim = encoder.spec.get("arch", {}).get("in_dim")
    spec = encoder.window_spec
    if in_dim is not None and int(in_dim) != spec.length:
        raise SpecMismatchError(
            f"encoder artifact {str(path)!r} is inconsistent: its window spec ({spec.n_before} before + "
            f"{spec.n_after} after at {spec.sampling_frequency} Hz = {spec.length} samples) does not match its "
            f"network input ({in_dim} samples); re-export it with the window it was trained on"
        )
    return encoder


def _load_for(path: Path, params: SortParams) -> Any:
    from deepspike import inference

    cpu = params.device == "cpu" or (params.device == "auto" and not inference.torch_accelerator_build())
    if cpu and not params.finetune and inference.numpy_capable(path):
        return inference.load_numpy_encoder(path)
    from deepspike.export import load_encoder

    return load_encoder(path)


def _extract(filtered: Any, params: SortParams, spec: WindowSpec) -> tuple[Any, dict[str, float]]:
    """Foundation stages (detect, windows; chunked) on the band-passed recording, with the encoder's window spec."""
    from deepspike.extract import ExtractParams, extract_spikes

    timings: dict[str, float] = {}
    with _timed(timings, "extract"):
        ex = ExtractParams.from_config(params.extract, filtered=True)  # already band-passed by _filtered
        spikes = extract_spikes(filtered, params=ex, spec=spec, progress=params.progress)
    spikes_spec = getattr(spikes, "spec", None)
    if spikes_spec is not None:
        spec.check_compatible(spikes_spec, what="extracted windows")
    return spikes, timings


def _filtered(recording: Any, params: SortParams) -> Any:
    """The band-passed recording, one segment: in memory when it fits ``filter_cache_mb`` (every later stage reads
    it again), else lazy (traces are filtered when read)."""
    from deepspike.extract import ExtractParams
    from deepspike.preprocess import bandpass, in_memory

    ex = ExtractParams.from_config(params.extract)
    filtered = bandpass(recording, ex.freq_min, ex.freq_max, ex.filtered)
    if filtered.get_num_segments() > 1:
        from spikeinterface.core import concatenate_recordings

        filtered = concatenate_recordings([filtered])
    return in_memory(filtered, params.filter_cache_mb, ex.chunk_duration_s, params.workers())


def _one_event_per_spike(recording: Any, spikes: Any, params: SortParams) -> tuple[np.ndarray, Any]:
    """Channel neighbourhoods (``deepspike.channels``) and the detected spikes with one event per spike across
    neighbouring channels (its largest peak); single-channel sorting keeps every peak."""
    from deepspike.channels import deduplicate_events, neighbourhoods

    near = neighbourhoods(recording, params.multichannel)
    if not is_multichannel(near) or len(spikes) == 0:
        return near, spikes
    fs = float(recording.get_sampling_frequency())
    window = round(params.multichannel.dedup_ms * fs / 1000)
    keep = deduplicate_events(spikes.sample_index, spikes.channel, spikes.amplitude, near, window)
    log.info("%d of %d peaks are one event per spike across neighbouring channels", int(keep.sum()), len(keep))
    for name in ("waves", "sample_index", "channel", "amplitude", "labels"):
        setattr(spikes, name, getattr(spikes, name)[keep])
    return near, spikes


def _cluster_neighbourhoods(
    filtered: Any,
    encoder: Any,
    params: SortParams,
    spec: WindowSpec,
    near: np.ndarray,
    noise: np.ndarray,
    sample_index: np.ndarray,
    channel: np.ndarray,
    amplitude: np.ndarray,
) -> Any:
    """Cluster the events of each neighbourhood on their multi-channel features, then merge the units of
    neighbouring channels that are one neuron (``deepspike.channels``)."""
    from deepspike.channels import clustering_keys, merge_across_neighbourhoods, neighbourhood_features
    from deepspike.cluster import ClusterResult
    from deepspike.extract import ExtractParams
    from deepspike.windows import extract_neighbour_windows

    chunk = ExtractParams.from_config(params.extract).chunk_duration_s
    keys = clustering_keys(near)[channel]
    layout = np.full((len(near), int(near.sum(axis=1).max())), -1, dtype=np.int64)  # each channel's neighbours
    for c in range(len(near)):
        layout[c, : near[c].sum()] = np.flatnonzero(near[c])
    every = extract_neighbour_windows(filtered, sample_index, channel, layout[channel], noise, spec, chunk)  # one pass
    cluster = replace(params.cluster, covariance_type=params.multichannel.covariance_type)
    embed = None if encoder is None else (lambda x: _features(encoder, x, params, spec))
    labels = np.full(len(sample_index), NOISE, dtype=np.int64)
    info: dict[str, Any] = {"method": params.cluster.method, "neighbourhoods": {}}

    def one(key: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        idx = np.flatnonzero(keys == key)
        chans = np.flatnonzero(near[channel[idx[0]]])
        w = every[idx, : len(chans)]
        feats = neighbourhood_features(w, embed, params.multichannel, spec, params.seed)
        res = cluster_spikes(
            feats, w.reshape(len(idx), -1), None, amplitude[idx], cluster, _threshold(params.extract), inner
        )
        return idx, res.labels, {"channels": chans.tolist(), **res.info}

    next_id = 0
    unique_keys = np.unique(keys)
    outer = max(1, min(params.workers(), len(unique_keys)))  # threads: numpy and scikit-learn release the GIL
    inner = max(1, params.workers() // outer)  # a tetrode (one neighbourhood): its BIC sweep in threads instead
    with fits_in_threads(), ThreadPoolExecutor(max_workers=outer) as pool:
        for key, (idx, lab, key_info) in zip(unique_keys, pool.map(one, unique_keys), strict=True):
            info["neighbourhoods"][int(key)] = key_info
            labels[idx[lab >= 0]] = lab[lab >= 0] + next_id
            next_id += int(lab.max()) + 1 if (lab >= 0).any() else 0
    labels, info["merged_across"] = merge_across_neighbourhoods(
        filtered, labels, sample_index, channel, near, noise, spec, params.multichannel, chunk, params.seed
    )
    info["n_units"] = int(labels.max()) + 1 if (labels >= 0).any() else 0
    info["n_noise"] = int((labels == NOISE).sum())
    return ClusterResult(labels=labels, info=info)


def _match(
    filtered: Any,
    params: SortParams,
    spec: WindowSpec,
    noise: np.ndarray,
    sample_index: np.ndarray,
    channel: np.ndarray,
    amp_noise: np.ndarray,
    waves: np.ndarray,
    labels: np.ndarray,
    near: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Template matching (``deepspike.matching``) over the clustered units; the spikes it finds decide the units.

    A detected spike that a matched spike pairs with takes that spike's unit if it had none (noise, outlier) or
    with ``matching.relabel`` (else it keeps its cluster label); a matched spike that the detector missed is added
    (its window cut like the others'). Returns the per-spike arrays (time order) and ``order``: row i is row
    ``order[i]`` of the detected spikes followed by the added ones.
    """
    from deepspike.detect import dead_time_samples
    from deepspike.extract import ExtractParams
    from deepspike.matching import find_unit_spikes, pair_with_detected
    from deepspike.windows import extract_windows

    ex = ExtractParams.from_config(params.extract)
    fs = float(filtered.get_sampling_frequency())
    footprint = params.multichannel.footprint_sigma if is_multichannel(near) else 0.0
    found = find_unit_spikes(
        filtered, sample_index, labels, channel, noise, params.matching, params.seed, near, params.workers(), footprint
    )
    pair, new = pair_with_detected(sample_index, channel, found, dead_time_samples(ex.dead_time_ms, fs), near)
    take = (pair >= 0) & (params.matching.relabel | (labels < 0))
    labels = labels.copy()
    labels[take] = found["unit"][pair[take]]
    added = found[new]
    added = added[_not_repeated(added, sample_index, labels, dead_time_samples(ex.dead_time_ms, fs))]
    peaks = np.zeros(len(added), dtype=[("sample_index", "i8"), ("channel_index", "i8")])
    peaks["sample_index"], peaks["channel_index"] = added["sample_index"], added["channel"]
    new_waves, kept = extract_windows(filtered, peaks, noise, spec, ex.chunk_duration_s)
    added = added[kept]
    sample_index = np.concatenate([sample_index, added["sample_index"]])
    order = np.argsort(sample_index, kind="stable")
    return (
        sample_index[order],
        np.concatenate([channel, added["channel"]])[order],
        np.concatenate([amp_noise, new_waves[:, spec.n_before]])[order],
        np.concatenate([waves, new_waves.astype(waves.dtype)])[order],
        np.concatenate([labels, added["unit"]])[order],
        order,
    )


def _not_repeated(added: np.ndarray, sample_index: np.ndarray, labels: np.ndarray, dead: int) -> np.ndarray:
    """Mask of the matched-only spikes to add: not within ``dead`` samples of a spike of the same unit (detected,
    or added just before): the matcher sometimes fits one template twice to one spike, a unit firing twice
    within the dead time is a duplicate, not a neuron."""
    keep = np.ones(len(added), dtype=bool)
    for u in np.unique(added["unit"]):
        rows = np.flatnonzero(added["unit"] == u)
        rows = rows[np.argsort(added["sample_index"][rows], kind="stable")]
        t = added["sample_index"][rows]
        keep[rows[nearest_gap(np.sort(sample_index[labels == u]), t) <= dead]] = False
        last = -(10**18)
        for r, ti in zip(rows, t, strict=True):
            if keep[r] and ti - last <= dead:
                keep[r] = False
            elif keep[r]:
                last = ti
    return keep


def _threshold(extract: dict[str, Any]) -> float:
    """The detection threshold (noise sigmas) the spikes were found with."""
    from deepspike.extract import ExtractParams

    return float(ExtractParams.from_config(extract).threshold)


def _finetune(encoder: Any, waves: np.ndarray, params: SortParams, data: dict[str, Any]) -> Any:
    """Adapt the encoder to these spikes (already in memory) before embedding them; ``data`` goes to provenance."""
    from deepspike.finetune import finetune_on_windows

    return finetune_on_windows(encoder, waves, params.finetune_params(), data=data)


def _features(encoder: Any, waves: np.ndarray, params: SortParams, spec: WindowSpec) -> np.ndarray:
    """The clustering features: the encoder's embeddings, or the PCA baseline without an encoder."""
    if encoder is not None:
        return embed_waves(encoder, waves, params.batch_size, params.device)
    return pca_features(waves, spec, params.pca_components, params.seed)


def embed_waves(encoder: Any, waves: np.ndarray, batch_size: int = 16384, device: str = "auto") -> np.ndarray:
    """Frozen-encoder embeddings, batched (bounded memory), in numpy or under ``torch.inference_mode``."""
    from deepspike.inference import NumpyEncoder

    if len(waves) == 0:
        return np.zeros((0, int(encoder.latent_dim)), dtype=np.float32)
    if isinstance(encoder, NumpyEncoder) and device in ("auto", "cpu") and len(waves) <= NUMPY_MAX_WINDOWS:
        return encoder.embed(waves, batch_size=batch_size, spec=encoder.window_spec)
    import torch

    if isinstance(encoder, NumpyEncoder):
        from deepspike.export import load_encoder

        encoder = load_encoder(encoder.path)

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DeepSpikeError("device=cuda but CUDA is not available; use device=cpu or device=auto")
    with torch.inference_mode():
        emb = encoder.embed(waves, batch_size=batch_size, device=device, spec=encoder.window_spec)
    return np.asarray(emb, dtype=np.float32)


def pca_features(waves: np.ndarray, spec: WindowSpec, n_components: int = 8, seed: int = 0) -> np.ndarray:
    """Model-free baseline features: PCA of the normalized windows (fitted on at most 50k spikes)."""
    from sklearn.decomposition import PCA

    x = normalize(np.asarray(waves, dtype=np.float32), spec)
    k = int(min(n_components, x.shape[1] if x.ndim == 2 else 0, len(x)))
    if k < 1:
        return np.zeros((len(x), n_components), dtype=np.float32)
    rng = np.random.default_rng(seed)
    fit = rng.choice(len(x), size=min(len(x), 50000), replace=False)
    pca = PCA(n_components=k, random_state=seed).fit(x[fit])
    return pca.transform(x).astype(np.float32)


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


def _set_unit_properties(sorting: Any, result: SortResult, ids: list[int], labels: np.ndarray, noise_id: Any) -> None:
    dim = result.embeddings.shape[1] if result.embeddings.ndim == 2 else 0
    chan, amp, snr, emb = [], [], [], np.zeros((len(ids), dim), dtype=np.float32)
    for i, u in enumerate(ids):
        m = labels == u
        chan.append(int(np.bincount(result.channel[m]).argmax()))
        amp.append(float(np.median(result.amplitude[m])))
        snr.append(float(np.max(np.abs(result.waves[m].mean(0)))) if result.waves.size else 0.0)
        if dim:
            emb[i] = result.embeddings[m].mean(0)
    sorting.set_property("channel", np.asarray(chan, dtype=np.int64))
    sorting.set_property("amplitude", np.asarray(amp))
    sorting.set_property("snr", np.asarray(snr))
    sorting.set_property("is_noise", np.asarray([u == noise_id for u in ids]))
    if dim:
        sorting.set_property("embedding", emb)


# ---------------------------------------------------------------------------------------------- outputs


def check_output(out: str | os.PathLike, overwrite: bool, inputs: Sequence[Any] = ()) -> Path:
    """Fail early, before any work, unless ``out`` can take a result without losing anything.

    Only a folder that DeepSpike wrote (it holds ``RESULT_MARKER``) is ever replaced, only with ``overwrite``, and
    never one that holds an input (``inputs``: recording, ground truth, checkpoint); the folder (or the nearest
    existing one above it) must be writable, so a bad ``out`` is reported before the sort, not after it.
    """
    out = Path(out)
    existing = next(p for p in (out, *out.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        what = "exists and is a file" if existing == out else f"cannot be created: {str(existing)!r} is a file"
        raise OutputExistsError(f"output {str(out)!r} {what}; choose another out=DIR")
    _check_no_input_inside(out, inputs)
    if out.is_dir() and any(out.iterdir()):
        if not (out / RESULT_MARKER).is_file():
            raise OutputExistsError(
                f"output folder {str(out)!r} holds files DeepSpike did not write (no {RESULT_MARKER} marker); it is "
                "never replaced, even with overwrite=true: choose another out=DIR (e.g. a new subfolder)"
            )
        if not overwrite:
            raise OutputExistsError(
                f"output folder {str(out)!r} already holds a result; pass overwrite=true to replace it "
                "or choose another out=DIR"
            )
    for folder in dict.fromkeys((existing, existing if existing != out else out.parent)):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DeepSpikeError(
                f"output {str(out)!r}: folder {str(folder)!r} is not writable; make it writable or choose another "
                "out=DIR"
            )
    return out


def _check_no_input_inside(out: Path, inputs: Sequence[Any]) -> None:
    """``out`` (which replacing would delete) must not be, or hold, one of the run's inputs."""
    target = out.resolve()
    for item in inputs:
        if item is None or str(item) == "":
            continue
        path = Path(item).resolve()
        if path == target or target in path.parents:
            raise OutputExistsError(
                f"output folder {str(out)!r} holds the input {str(item)!r}; DeepSpike never writes over its input: "
                "choose another out=DIR (e.g. a new subfolder)"
            )


def write_outputs(
    result: SortResult,
    out: str | os.PathLike,
    overwrite: bool = False,
    config: dict[str, Any] | None = None,
    gt_sorting: Any = None,
    data_file: str = "",
    delta_time_ms: float = 0.4,
    export_phy: bool = False,
    plots: bool = True,
    inputs: Sequence[Any] = (),
) -> dict[str, float]:
    """Write every output into a temporary sibling folder, then rename it to ``out`` (atomic on one filesystem).

    ``out`` may exist only as an earlier DeepSpike result (with ``overwrite``) that holds none of ``inputs``
    (see :func:`check_output`); the marker file ``RESULT_MARKER`` goes into every result.
    Returns the wall time per part (``write``, ``plots``, ``phy``, ``metrics``).
    """
    out = check_output(out, overwrite, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))  # a new name: nothing else is touched
    timings: dict[str, float] = {}
    try:
        with _timed(timings, "write"):
            _write_tables(result, tmp, config)
            (tmp / RESULT_MARKER).write_text("written by DeepSpike sort; overwrite=true may replace this folder\n")
        if gt_sorting is not None:
            with _timed(timings, "metrics"):
                from deepspike.evaluate import compare_to_ground_truth

                metrics = compare_to_ground_truth(result.sorting, gt_sorting, delta_time_ms, data_file=data_file)
                metrics.to_csv(tmp / "metrics.csv", index=False)
                result.info["metrics"] = metrics
        if plots:
            with _timed(timings, "plots"):
                from deepspike.plots import plot_all

                plot_all(result, tmp)
        if export_phy:
            with _timed(timings, "phy"):
                _export_phy(result, tmp / "phy")
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return timings


def _write_tables(result: SortResult, folder: Path, config: dict[str, Any] | None) -> None:
    import yaml

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not serializable.*")  # an in-memory sorting: no provenance
        result.sorting.save(folder=folder / "sorting")
    result.spikes_table().to_csv(folder / "spikes.csv", index=False, float_format="%.6g")
    result.units_table().to_csv(folder / "units.csv", index=False, float_format="%.6g")
    np.save(folder / "embeddings.npy", result.embeddings)
    if result.templates is not None:
        np.save(folder / "templates.npy", result.templates)
    if result.finetuned is not None:
        from deepspike.export import save_encoder

        save_encoder(result.finetuned, folder / FINETUNED_NAME)
    resolved = dict(config) if config is not None else {"params": result.params.to_dict()}
    resolved.setdefault("window", result.spec.to_dict())
    resolved.setdefault("checkpoint_resolved", result.checkpoint)
    (folder / "config.yaml").write_text(yaml.safe_dump(_plain(resolved), sort_keys=False))


def _plain(x: Any) -> Any:
    """YAML-safe copy (Paths, numpy scalars and tuples to plain types)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


def _replace(tmp: Path, out: Path) -> None:
    """Swap ``tmp`` in as ``out``; an old result is only deleted once the new one is in place."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.replace(old)  # onto the empty folder just made: a name nobody else uses
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _export_phy(result: SortResult, folder: Path) -> None:
    """Phy folder via SpikeInterface's exporter (a SortingAnalyzer on the band-passed recording).

    A multi-channel recording with a probe gets a sparse analyzer (each unit's channels within
    ``_phy_radius_um`` of its best contact), so Phy shows each unit where it is on the probe and
    channel_positions.npy holds the probe's contact positions; one channel (or no geometry) stays dense.
    """
    from spikeinterface.core import create_sorting_analyzer
    from spikeinterface.exporters import export_to_phy

    from deepspike.preprocess import bandpass

    sorting = result.sorting
    if len(sorting.unit_ids) == 0:
        warnings.warn("no unit to export to Phy; skipped", stacklevel=3)
        return
    filt = bandpass(result.recording, **_band(result.params.extract))
    sparse = filt.get_num_channels() > 1 and filt.has_probe()
    radius = {"method": "radius", "radius_um": _phy_radius_um(filt.get_channel_locations())} if sparse else None
    analyzer = create_sorting_analyzer(sorting, filt, format="memory", sparse=sparse, sparsity_kwargs=radius)
    analyzer.compute(["random_spikes", "waveforms", "templates", "noise_levels"])
    export_to_phy(
        analyzer, output_folder=folder, compute_pc_features=False, compute_amplitudes=True, copy_binary=True,
        use_relative_path=True, verbose=False,
    )  # fmt: skip  # relative dat_path, no "Run: phy ..." line: the result is written in a temporary folder, renamed


PHY_RADIUS_CONTACTS = 3.0  # sparse Phy export: a unit's channels lie within this many contact pitches of its best


def _phy_radius_um(positions: np.ndarray) -> float:
    """Sparsity radius of the Phy export: ``PHY_RADIUS_CONTACTS`` x the probe's median nearest-contact distance.

    A tetrode (contacts 14-20 um apart) keeps all 4 channels; a 22 um-pitch shank keeps about a dozen neighbours.
    """
    d = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float(PHY_RADIUS_CONTACTS * np.median(d.min(axis=1)))


def _band(extract: dict[str, Any]) -> dict[str, Any]:
    return {k: extract[k] for k in ("freq_min", "freq_max") if extract.get(k) is not None}


# ------------------------------------------------------------------------------------------ Hydra app


@dataclass
class SortConfig:
    """Validated ``conf/sort.yaml`` (each key is documented there)."""

    recording: str | None = conf_field(CONF, "recording")
    checkpoint: str | None = conf_field(CONF, "checkpoint")
    out: str | None = conf_field(CONF, "out")
    gt: str | None = conf_field(CONF, "gt")
    overwrite: bool = conf_field(CONF, "overwrite")
    delta_time_ms: float = conf_field(CONF, "delta_time_ms")
    export_phy: bool = conf_field(CONF, "export_phy")
    plots: bool = conf_field(CONF, "plots")
    quiet: bool = conf_field(CONF, "quiet")
    debug: bool = conf_field(CONF, "debug")
    recording_options: dict[str, Any] = conf_field(CONF, "recording_options")
    params: SortParams = field(default_factory=SortParams)

    @classmethod
    def from_cfg(cls, cfg: Any) -> SortConfig:
        from omegaconf import DictConfig, OmegaConf

        d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        d.pop("hydra", None)
        top = {f.name for f in fields(cls)} - {"params"}
        pipeline = {f.name for f in fields(SortParams)}
        unknown = sorted(set(d) - top - pipeline)
        if unknown:
            raise DeepSpikeError(f"unknown sort option(s) {unknown}; see conf/sort.yaml for the documented keys")
        params = SortParams(**{k: v for k, v in d.items() if k in pipeline})
        return cls(params=params, **{k: v for k, v in d.items() if k in top})

    def validate(self) -> None:
        if self.delta_time_ms <= 0:
            raise DeepSpikeError(f"delta_time_ms must be > 0 ms, got {self.delta_time_ms}")
        if self.recording is not None and not Path(self.recording).exists():
            raise RecordingError(f"recording {self.recording!r} not found; pass recording=PATH to an existing file")
        if self.gt is not None and not Path(self.gt).exists():
            raise DeepSpikeError(f"ground truth {self.gt!r} not found; pass gt=PATH or leave it out")
        if self.checkpoint is not None and not Path(self.checkpoint).exists():
            raise DeepSpikeError(
                f"checkpoint {self.checkpoint!r} not found; pass checkpoint=PATH to an exported encoder"
            )


def run_from_config(cfg: Any) -> SortResult:
    """What ``python sort.py`` does: validate, sort, write outputs, print a summary."""
    conf = SortConfig.from_cfg(cfg)
    conf.validate()
    demo = conf.recording is None
    recording_path = str(DEMO_RECORDING) if demo else conf.recording
    if demo and not DEMO_RECORDING.exists():
        raise RecordingError(f"bundled demo recording {str(DEMO_RECORDING)!r} is missing; pass recording=PATH")
    gt_path = str(DEMO_GT) if demo and conf.gt is None and DEMO_GT.exists() else conf.gt
    out = Path(conf.out) if conf.out else REPO / "outputs" / "sort" / _stem(recording_path)
    inputs = [recording_path, gt_path, conf.checkpoint]
    check_output(out, conf.overwrite, inputs)  # before any work: a refusal touches nothing
    result = run_sort(recording_path, conf.checkpoint, conf.params, conf.recording_options)
    gt_sorting = _ground_truth(recording_path, result.recording, gt_path)
    config = _resolved_config(cfg, recording_path, out, gt_path, result)
    result.timings.update(
        write_outputs(
            result,
            out,
            overwrite=conf.overwrite,
            config=config,
            gt_sorting=gt_sorting,
            data_file=Path(recording_path).name,
            delta_time_ms=conf.delta_time_ms,
            export_phy=conf.export_phy,
            plots=conf.plots,
            inputs=inputs,
        )
    )
    if not conf.quiet:
        print(summary(result, out))
    return result


def _resolved_config(cfg: Any, recording: str, out: Path, gt: str | None, result: SortResult) -> dict[str, Any]:
    """The run's config as sort.yaml keys, with defaults filled in (re-runnable as is)."""
    from omegaconf import DictConfig, OmegaConf

    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    d.pop("hydra", None)
    d.update(recording=recording, out=str(out), gt=gt, checkpoint=result.checkpoint)
    if result.finetuned is not None:
        ft = result.finetuned.spec["provenance"]["finetune"]
        d["finetuned_encoder"] = {"path": str(out / FINETUNED_NAME), "steps": ft.get("steps"), "kept": ft.get("kept"),
                                  "seconds": ft.get("seconds")}  # fmt: skip
    d["extract"] = {**result.params.extract, **d.get("extract", {})}
    d["cluster"] = result.params.cluster.to_dict()
    return d


def _stem(path: str) -> str:
    name = Path(path.rstrip("/")).name
    for suffix in (".safetensors", ".mat", ".npy", ".bin", ".dat", ".nwb", ".raw"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or "recording"


def _ground_truth(recording_path: str, recording: Any, gt: str | None) -> Any:
    """GT from ``gt=PATH`` or carried by the recording's format (``deepspike.io.load_ground_truth``)."""
    from deepspike.io import load_ground_truth

    return load_ground_truth(recording_path, recording=recording, gt=gt)


def summary(result: SortResult, out: Path | None = None) -> str:
    """Human summary: units, spikes per unit, time per stage (and accuracy when GT was scored)."""
    units = result.units_table()
    n_noise = int((result.labels == NOISE).sum())
    lines = [
        f"DeepSpike sort: {len(result.labels)} spikes -> {len(units)} units, {n_noise} noise/unassigned "
        f"({result.duration_s:.1f} s, {result.params.features} features, {result.params.cluster.method})",
    ]
    if result.finetuned is not None:
        ft = result.finetuned.spec["provenance"]["finetune"]
        lines.append(f"  fine-tuned encoder: kept {ft.get('kept')} ({ft.get('reason')}), {ft.get('seconds', 0):.1f}s")
    for row in units.itertuples(index=False):
        lines.append(
            f"  unit {row.unit:3d}: {row.spike_count:7d} spikes  {row.rate_hz:6.2f} Hz  "
            f"snr {row.snr:5.1f}  ch {row.peak_channel}"
        )
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    lines.append(f"  time: {stages} (total {sum(result.timings.values()):.2f}s)")
    metrics = result.info.get("metrics")
    if metrics is not None and len(metrics):
        acc = ", ".join(f"{u}: {a:.3f}" for u, a in zip(metrics["gt_unit"], metrics["accuracy"], strict=True))
        lines.append(f"  ground truth accuracy (mean {metrics['accuracy'].mean():.3f}): {acc}")
    if out is not None:
        lines.append(f"  outputs: {out}")
    return "\n".join(lines)


def main() -> None:
    """Console entry (``deepspike-sort`` / ``python sort.py``): Hydra over ``conf/sort.yaml``."""
    import hydra

    @hydra.main(config_path=str(CONF_DIR), config_name="sort", version_base="1.3")
    def _app(cfg: Any) -> None:
        with cli_errors("sort", bool(cfg.get("debug", False))):  # one line naming the file and the fix
            run_from_config(cfg)

    _app()
