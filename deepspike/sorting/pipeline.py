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
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from deepspike.recording.preprocess import bar
from deepspike.recording.probes import attach_probe
from deepspike.sorting.cache import StageCache, digest, path_identity
from deepspike.sorting.clustering.cleanup import secondary_peaks
from deepspike.sorting.clustering.cluster import cluster_spikes
from deepspike.sorting.clustering.mixture import fits_in_threads
from deepspike.sorting.clustering.params import NOISE
from deepspike.sorting.features import (
    checkpoint_path,
    embed_waves,
    finetune_encoder,
    load_sort_encoder,
    spike_features,
)
from deepspike.sorting.motion import correct_motion
from deepspike.sorting.multichannel import is_multichannel, nearest_gap
from deepspike.sorting.params import SortParams
from deepspike.sorting.result import SnippetSortResult, SortResult, build_sorting, timed
from deepspike.spec import WindowSpec

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- pipeline


def sort(
    recording: Any,
    checkpoint: str | os.PathLike | None = None,
    *,
    out: str | os.PathLike | None = None,
    gt: Any = None,
    overwrite: bool | None = None,
    plots: bool | None = None,
    export_phy: bool | None = None,
    delta_time_ms: float | None = None,
    **options: Any,
) -> Any:
    """Sort ``recording`` (a SpikeInterface recording or a path) and return a SpikeInterface sorting.

    ``checkpoint``: an exported encoder (``.safetensors``); None = the bundled one. Options: see
    :class:`SortParams` (``features``, ``device``, ``seed``, ``extract={...}``, ``cluster="dpgmm"`` or
    ``cluster={"method": "hdbscan", ...}``, ``curation={...}``, ``finetune=True`` to adapt the encoder to this
    recording first, ``finetune_options={...}``). The full :class:`SortResult` is ``sorting.deepspike`` (the
    adapted encoder: ``sorting.deepspike.finetuned``).

    ``out=DIR`` also writes the result folder ``sort.py`` writes (tables, config.yaml, plots, ``metrics.csv``
    against ``gt``: a sorting or a path, by default found beside a recording path as sort.py does; the Phy
    export with ``export_phy=True``); ``overwrite``, ``plots``, ``export_phy`` and ``delta_time_ms`` default to
    ``conf/sort.yaml``. ``out`` is checked before the sort starts.
    """
    params = SortParams.from_options(options)
    given = {"gt": gt, "overwrite": overwrite, "plots": plots, "export_phy": export_phy, "delta_time_ms": delta_time_ms}
    if out is None:
        if any(v is not None for v in given.values()):
            from deepspike.errors import DeepSpikeError

            named = sorted(k for k, v in given.items() if v is not None)
            raise DeepSpikeError(f"sort(): {named} apply to the files written with out=DIR; pass out=DIR too")
        return run_sort(recording, checkpoint, params).sorting
    from deepspike.sorting.outputs import output_options, write_sort_folder

    opts = output_options(overwrite=overwrite, plots=plots, export_phy=export_phy, delta_time_ms=delta_time_ms)
    source = recording if isinstance(recording, (str, os.PathLike)) else None
    return write_sort_folder(
        lambda cache: run_sort(recording, checkpoint, params, cache_dir=cache), out, source, checkpoint, gt, opts
    )


def run_sort(
    recording: Any,
    checkpoint: str | os.PathLike | None = None,
    params: SortParams | None = None,
    recording_options: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> SortResult:
    """The pipeline with per-stage wall times in ``result.timings`` (load, filter, motion, extract, encode, cluster).

    ``cache_dir`` (``sort.py`` and ``sort(out=DIR)`` pass ``DIR/.deepspike-cache``) keeps each finished stage of a
    recording given by path (``sorting.cache``), so a killed sort resumes there, and the band-passed traces when they
    are too large for memory; without it they go to a temporary folder, removed at the end.
    """
    params = params or SortParams()
    with ExitStack() as stack:
        work = Path(cache_dir) if cache_dir is not None else None
        if work is None and params.filter_cache_disk:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="deepspike-sort-")))
        return _run(recording, checkpoint, params, recording_options, cache_dir, work)


def _run(
    recording: Any, checkpoint: Any, params: SortParams, recording_options: dict[str, Any] | None, cache_dir: Any,
    work: Path | None,
) -> SortResult:  # fmt: skip
    timings: dict[str, float] = {}
    source = recording if isinstance(recording, (str, os.PathLike)) else None
    with timed(timings, "load"):
        encoder = load_sort_encoder(checkpoint, params) if params.features != "pca" else None
        recording = _open(recording, recording_options)
        recording = attach_probe(recording, params.probe, source, required=params.needs_geometry())
    spec = encoder.window_spec if encoder is not None else WindowSpec()
    identity = path_identity(source)
    cache = StageCache(cache_dir if identity is not None else None)
    base = digest(identity, recording_options, str(params.probe), params.extract)
    with timed(timings, "filter"):
        filtered = _filtered(recording, params, work if params.filter_cache_disk else None, base)
    motion_key = digest(base, params.motion.to_dict())
    with timed(timings, "motion"):
        moved = correct_motion(
            filtered, params.motion, params.workers(), params.progress, params.filter_cache_mb,
            estimate=_cached_motion(cache, motion_key),
        )  # fmt: skip
    filtered = moved.recording  # drift taken out (or the band-passed recording itself): every later stage reads it
    spikes_key = digest(motion_key, params.multichannel.to_dict(), spec.to_dict())
    near, sp = _spikes(recording, filtered, params, spec, cache, spikes_key, timings)
    multi = is_multichannel(near)
    waves, noise, channel, amp_noise, sample_index = (
        sp["waves"], sp["noise"], sp["channel"], sp["amplitude"], sp["sample_index"]
    )  # fmt: skip
    fs = float(recording.get_sampling_frequency())
    echo = secondary_peaks(sample_index, channel, amp_noise, int(params.echo_ms * fs / 1000), params.echo_ratio)
    ok = ~echo
    units_key = digest(
        spikes_key, params.to_dict(), None if encoder is None else path_identity(checkpoint_path(checkpoint))
    )
    resumable = not params.finetune  # an adapted encoder is not cached: fine-tuning resumes from the spikes

    def features_and_units(enc: Any) -> tuple[np.ndarray, Any]:
        with timed(timings, "encode"):
            emb = spike_features(enc, waves, params, spec)
        with timed(timings, "cluster"):
            if multi:
                return emb, _cluster_neighbourhoods(
                    filtered, enc, params, spec, near, noise, sample_index[ok], channel[ok], amp_noise[ok]
                )
            return emb, cluster_spikes(
                emb[ok], waves[ok], channel[ok], amp_noise[ok], params.cluster, _threshold(params.extract),
                params.workers(), times=sample_index[ok] / fs,
            )  # fmt: skip

    finetuned = None
    done = cache.load("sorted", units_key) if resumable else None
    clustered_cached = None if done is not None or not resumable else cache.load("clustered", units_key)
    caught: list[Any] = []
    if done is None and clustered_cached is None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            emb, clustered = features_and_units(encoder)
            if params.finetune and encoder is not None:
                from deepspike.provenance import recording_record

                with timed(timings, "finetune"):
                    data = recording_record(recording, source, len(waves))
                    finetuned = finetune_encoder(encoder, waves, params, data)
                emb, clustered, finetuned = _checked_finetune(encoder, finetuned, (emb, clustered),
                                                              features_and_units, params)  # fmt: skip
                encoder = finetuned
        labels = np.full(len(waves), NOISE, dtype=np.int64)
        labels[ok] = clustered.labels
        info = clustered.info
        info["n_echo"] = int(echo.sum())
        if resumable:
            cache.save("clustered", units_key, {"labels": labels, "emb": np.asarray(emb)}, info)
    elif done is None:
        labels, emb, info = clustered_cached["labels"], clustered_cached["emb"], cache.info("clustered")
    for w in caught:  # re-emit once, from the public call site, so users see why units are few
        warnings.warn(str(w.message), w.category, stacklevel=2)
    if len(waves) == 0:
        warnings.warn("no spike detected: the sorting is empty (check the threshold and the recording)", stacklevel=2)
    if done is not None:
        sample_index, channel, amp_noise, waves, labels, emb = (
            done["sample_index"], done["channel"], done["amplitude"], done["waves"], done["labels"], done["emb"]
        )  # fmt: skip
        info = cache.info("sorted")
    elif params.matching.enabled and (labels >= 0).any():
        with timed(timings, "match"):
            sample_index, channel, amp_noise, waves, labels, order = _match(
                filtered, params, spec, noise, sample_index, channel, amp_noise, waves, labels, near
            )
            n_new = len(order) - len(emb)
            info["n_matched_new"] = n_new
        if n_new:
            with timed(timings, "encode"):
                if params.features == "encoder":  # the frozen encoder embeds each spike alone: only the added ones
                    added = waves[np.argsort(order, kind="stable")[len(emb) :]]
                    emb = np.concatenate([emb, spike_features(encoder, added, params, spec)])[order]
                else:  # PCA (alone or in hybrid features) is fitted on all spikes: refit
                    emb = spike_features(encoder, waves, params, spec)
    if done is None and resumable:
        arrays = {"sample_index": sample_index, "channel": channel, "amplitude": amp_noise, "waves": waves,
                  "labels": labels, "emb": np.asarray(emb)}  # fmt: skip
        cache.save("sorted", units_key, arrays, info)
    info["resumed"] = list(cache.loaded)
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
        checkpoint=None if encoder is None else str(checkpoint_path(checkpoint)),
        timings=timings,
        info=info,
        finetuned=finetuned,
        motion=moved.motion,
        motion_peaks=moved.peaks if moved.motion is not None else None,
    )
    result.info["motion"] = moved.info
    if multi and (labels >= 0).any():
        with timed(timings, "write"):
            result.templates = _multichannel_templates(result, filtered, params)
    result.sorting = build_sorting(result)
    return result


def _cached_motion(cache: StageCache, key: str) -> Any:
    """The motion estimate through the stage cache (``motion`` stage: the displacement and its peaks)."""
    from deepspike.sorting.motion import estimate_motion, motion_arrays, motion_from_arrays

    def estimate(filtered: Any, params: Any, n_jobs: int, progress: bool) -> tuple[Any, np.ndarray, dict]:
        got = cache.load("motion", key)
        if got is not None:
            return (*motion_from_arrays(got), {})
        motion, peaks, run_times = estimate_motion(filtered, params, n_jobs, progress)
        cache.save("motion", key, motion_arrays(motion, peaks))
        return motion, peaks, run_times

    return estimate


def _spikes(
    recording: Any, filtered: Any, params: SortParams, spec: WindowSpec, cache: StageCache, key: str,
    timings: dict[str, float],
) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # fmt: skip
    """Detected spikes, one event per spike (``near``: the channel neighbourhoods), from the cache when it holds
    them for ``key``."""
    got = cache.load("spikes", key)
    if got is not None:
        near = got.pop("near")
        return near, got
    spikes, extract_timings = _extract(filtered, params, spec)
    timings.update(extract_timings)
    near, spikes = _one_event_per_spike(recording, spikes, params)
    arrays = {
        "waves": np.asarray(spikes.waves, dtype=np.float32),
        "noise": np.asarray(spikes.noise_levels, dtype=np.float64).reshape(-1),
        "channel": np.asarray(spikes.channel, dtype=np.int64),
        "amplitude": np.asarray(spikes.amplitude, dtype=np.float64),
        "sample_index": np.asarray(spikes.sample_index, dtype=np.int64),
    }
    cache.save("spikes", key, {**arrays, "near": np.asarray(near)})
    return near, arrays


def _checked_finetune(
    parent: Any, adapted: Any, parent_run: tuple[np.ndarray, Any], run: Any, params: SortParams
) -> tuple[np.ndarray, Any, Any]:
    """Fine-tuning's last guard, on the sort itself: the adapted encoder's units replace the parent's only if no
    parent unit is lost (merged into another or dropped to noise; splitting one is what adaptation is for).

    The training guard scores held-out windows by a proxy that barely moves (0.998 -> 0.978 where the sort gained
    0.68 on a Quiroga set); a unit lost in the sort is what "worse" means to the user: a 32-channel recording went
    0.978 -> 0.833 that way. Returns (embeddings, clustering, encoder written as the adapted one).
    """
    from deepspike.model.finetune import kept_parent

    emb, clustered = run(adapted)
    lost = lost_units(parent_run[1].labels, clustered.labels, params.cluster.min_spikes)
    record = adapted.spec["provenance"]["finetune"]
    record["sort_check"] = {"parent_units": _n_units(parent_run[1].labels), "units": _n_units(clustered.labels),
                            "parent_units_lost": lost}  # fmt: skip
    if not lost or record.get("kept") == "parent":
        return emb, clustered, adapted
    log.warning(
        "fine-tuning not kept: the adapted encoder's sort lost parent unit(s) %s; the parent's units stand", lost
    )
    return parent_run[0], parent_run[1], kept_parent(parent, record, f"sort check: parent unit(s) {lost} lost")


def lost_units(reference: np.ndarray, labels: np.ndarray, min_spikes: int) -> list[int]:
    """Units of ``reference`` (of at least ``min_spikes`` spikes) that no unit of ``labels`` mostly holds: merged into
    a unit that is mostly another reference unit, or left as noise. A split reference unit is not lost."""
    reference, labels = np.asarray(reference), np.asarray(labels)
    both = (reference >= 0) & (labels >= 0)
    majority: set[int] = set()
    for u in np.unique(labels[both]):
        refs, counts = np.unique(reference[both & (labels == u)], return_counts=True)
        majority.add(int(refs[np.argmax(counts)]))
    units, sizes = np.unique(reference[reference >= 0], return_counts=True)
    return [int(u) for u, n in zip(units, sizes, strict=True) if n >= min_spikes and int(u) not in majority]


def _n_units(labels: np.ndarray) -> int:
    return int(np.unique(labels[labels >= 0]).size)


def _multichannel_templates(result: SortResult, filtered: Any, params: SortParams) -> np.ndarray:
    """Each unit's template on every channel, ``[units, samples, channels]`` on the encoder's window grid in noise
    units (mean of at most 200 spikes, cut at their peak channel's peak time), unit ``i`` = label ``i``."""
    from deepspike.sorting.multichannel import probe_templates
    from deepspike.spikes.extract import ExtractParams, chunk_seconds

    chunk = chunk_seconds(filtered, ExtractParams.from_config(params.extract))
    units, tpl, _ = probe_templates(
        filtered, result.labels, result.sample_index, result.channel, result.noise_levels, result.spec, chunk,
        params.seed,
    )  # fmt: skip
    out = np.zeros((max(result.unit_ids) + 1, tpl.shape[2], tpl.shape[1]), dtype=np.float32)
    out[units] = tpl.transpose(0, 2, 1)
    return out


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

    The snippets go onto the encoder's window grid (``spikes.windows.conform_snippets``: resampled from
    ``sampling_frequency``, re-peaked near ``peak_index``, divided by ``noise`` or its estimate), then the same
    stages as ``sort``: optional fine-tuning on them (``finetune=True``), embedding, clustering. Options as
    :func:`sort` (``extract`` and ``echo_*`` do not apply). Score with ``evaluation.compare.compare_labels``.
    """
    from deepspike.spikes.windows import conform_snippets

    params = SortParams.from_options(options)
    timings: dict[str, float] = {}
    with timed(timings, "load"):
        encoder = load_sort_encoder(checkpoint, params) if params.features != "pca" else None
    spec = encoder.window_spec if encoder is not None else WindowSpec()
    waves, sigma = conform_snippets(snippets, sampling_frequency, spec, peak_index, noise=noise)

    def features_and_units(enc: Any) -> tuple[np.ndarray, Any]:
        with timed(timings, "encode"):
            emb = spike_features(enc, waves, params, spec)
        with timed(timings, "cluster"):
            amp = waves[:, spec.n_before]
            return emb, cluster_spikes(emb, waves, None, amp, params.cluster, n_jobs=params.workers())

    finetuned = None
    emb, clustered = features_and_units(encoder)
    if params.finetune and encoder is not None:
        with timed(timings, "finetune"):
            data = {"snippets": len(waves), "sampling_frequency": float(sampling_frequency), "noise": sigma}
            finetuned = finetune_encoder(encoder, waves, params, data)
        emb, clustered, finetuned = _checked_finetune(encoder, finetuned, (emb, clustered), features_and_units, params)
    return SnippetSortResult(
        labels=clustered.labels, embeddings=np.asarray(emb, dtype=np.float32), waves=waves, noise=sigma, spec=spec,
        params=params, timings=timings, info=clustered.info, finetuned=finetuned,
    )  # fmt: skip


def _open(recording: Any, options: dict[str, Any] | None) -> Any:
    if hasattr(recording, "get_traces"):
        return recording
    from deepspike.recording.readers import open_recording

    opts = {k: v for k, v in (options or {}).items() if v is not None}
    return open_recording(recording, **opts)


def _extract(filtered: Any, params: SortParams, spec: WindowSpec) -> tuple[Any, dict[str, float]]:
    """Foundation stages (detect, windows; chunked) on the band-passed recording, with the encoder's window spec."""
    from deepspike.spikes.extract import ExtractParams, extract_spikes

    timings: dict[str, float] = {}
    with timed(timings, "extract"):
        ex = ExtractParams.from_config(params.extract, filtered=True)  # already band-passed by _filtered
        spikes = extract_spikes(filtered, params=ex, spec=spec, progress=params.progress)
    spikes_spec = getattr(spikes, "spec", None)
    if spikes_spec is not None:
        spec.check_compatible(spikes_spec, what="extracted windows")
    return spikes, timings


def _filtered(recording: Any, params: SortParams, folder: Path | None, key: str) -> Any:
    """The band-passed recording, one segment, computed once (every later stage reads it again): in memory when it
    fits ``filter_cache_mb``, else in a float32 file in ``folder`` (None: lazy, filtered at every read)."""
    from deepspike.recording.preprocess import bandpass, cached
    from deepspike.spikes.extract import ExtractParams, chunk_seconds

    ex = ExtractParams.from_config(params.extract)
    filtered = bandpass(recording, ex.freq_min, ex.freq_max, ex.filtered)
    if filtered.get_num_segments() > 1:
        from spikeinterface.core import concatenate_recordings

        filtered = concatenate_recordings([filtered])
    chunk = chunk_seconds(filtered, ex)
    return cached(filtered, params.filter_cache_mb, folder, chunk, params.workers(), key, params.progress)


def _one_event_per_spike(recording: Any, spikes: Any, params: SortParams) -> tuple[np.ndarray, Any]:
    """Channel neighbourhoods (``sorting.multichannel``) and the detected spikes with one event per spike across
    neighbouring channels (its largest peak); single-channel sorting keeps every peak."""
    from deepspike.sorting.multichannel import deduplicate_events, neighbourhoods

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
    """Cluster the events of each neighbourhood on their multi-channel features, merge the units of neighbouring
    channels that are one neuron (``sorting.multichannel``), and drop the units that other units' templates explain
    (collisions, duplicate events: ``sorting.explained``)."""
    from deepspike.sorting.clustering.cluster import ClusterResult
    from deepspike.sorting.explained import drop_explained_units
    from deepspike.sorting.multichannel import clustering_keys, merge_across_neighbourhoods, neighbourhood_features
    from deepspike.spikes.extract import ExtractParams, chunk_seconds
    from deepspike.spikes.windows import extract_neighbour_windows

    chunk = chunk_seconds(filtered, ExtractParams.from_config(params.extract))
    keys = clustering_keys(near)[channel]
    layout = np.full((len(near), int(near.sum(axis=1).max())), -1, dtype=np.int64)  # each channel's neighbours
    for c in range(len(near)):
        layout[c, : near[c].sum()] = np.flatnonzero(near[c])
    every = extract_neighbour_windows(filtered, sample_index, channel, layout[channel], noise, spec, chunk)  # one pass
    cluster = replace(params.cluster, covariance_type=params.multichannel.covariance_type)
    embed = None if encoder is None else (lambda x: embed_waves(encoder, x, params.batch_size, params.device))
    labels = np.full(len(sample_index), NOISE, dtype=np.int64)
    info: dict[str, Any] = {"method": params.cluster.method, "neighbourhoods": {}}

    def one(key: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        idx = np.flatnonzero(keys == key)
        chans = np.flatnonzero(near[channel[idx[0]]])
        w = every[idx, : len(chans)]
        feats = neighbourhood_features(w, embed, params.multichannel, spec, params.seed, params.features == "hybrid")
        res = cluster_spikes(
            feats, w.reshape(len(idx), -1), None, amplitude[idx], cluster, _threshold(params.extract), inner
        )
        return idx, res.labels, {"channels": chans.tolist(), **res.info}

    next_id = 0
    unique_keys = np.unique(keys)
    outer = max(1, min(params.workers(), len(unique_keys)))  # threads: numpy and scikit-learn release the GIL
    inner = max(1, params.workers() // outer)  # a tetrode (one neighbourhood): its BIC sweep in threads instead
    with fits_in_threads(), ThreadPoolExecutor(max_workers=outer) as pool:
        done = bar(pool.map(one, unique_keys), params.progress, len(unique_keys), "clustering neighbourhoods")
        for key, (idx, lab, key_info) in zip(unique_keys, done, strict=True):
            info["neighbourhoods"][int(key)] = key_info
            labels[idx[lab >= 0]] = lab[lab >= 0] + next_id
            next_id += int(lab.max()) + 1 if (lab >= 0).any() else 0
    labels, info["merged_across"] = merge_across_neighbourhoods(
        filtered, labels, sample_index, channel, near, noise, spec, params.multichannel, chunk, params.seed
    )
    spent: dict[str, float] = {}
    with timed(spent, "explained"):  # part of the cluster stage's time
        share, turns = params.multichannel.explained_share, params.multichannel.merge_turns
        labels, tests = drop_explained_units(
            filtered, labels, sample_index, noise, share, params.seed, params.workers(), turns=turns
        )
    info["explained_s"] = round(spent["explained"], 2)
    info["explained"] = {str(u): t for u, t in tests.items()}
    info["dropped_explained"] = sorted(u for u, t in tests.items() if t["dropped"])
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
    """Template matching (``sorting.matching``) over the clustered units; the spikes it finds decide the units.

    A detected spike that a matched spike pairs with takes that spike's unit if it had none (noise, outlier) or
    with ``matching.relabel`` (else it keeps its cluster label); a matched spike that the detector missed is added
    (its window cut like the others'). Returns the per-spike arrays (time order) and ``order``: row i is row
    ``order[i]`` of the detected spikes followed by the added ones.
    """
    from deepspike.sorting.matching import find_unit_spikes, pair_with_detected
    from deepspike.spikes.detect import dead_time_samples
    from deepspike.spikes.extract import ExtractParams, chunk_seconds
    from deepspike.spikes.windows import extract_windows

    ex = ExtractParams.from_config(params.extract)
    fs = float(filtered.get_sampling_frequency())
    footprint = params.multichannel.footprint_sigma if is_multichannel(near) else 0.0
    found = find_unit_spikes(
        filtered, sample_index, labels, channel, noise, params.matching, params.seed, near, params.workers(), footprint,
        params.progress, chunk_seconds(filtered, ex),
    )  # fmt: skip
    pair, new = pair_with_detected(sample_index, channel, found, dead_time_samples(ex.dead_time_ms, fs), near)
    take = (pair >= 0) & (params.matching.relabel | (labels < 0))
    labels = labels.copy()
    labels[take] = found["unit"][pair[take]]
    added = found[new]
    added = added[_not_repeated(added, sample_index, labels, dead_time_samples(ex.dead_time_ms, fs))]
    peaks = np.zeros(len(added), dtype=[("sample_index", "i8"), ("channel_index", "i8")])
    peaks["sample_index"], peaks["channel_index"] = added["sample_index"], added["channel"]
    new_waves, kept = extract_windows(filtered, peaks, noise, spec, chunk_seconds(filtered, ex))
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
    from deepspike.spikes.extract import ExtractParams

    return float(ExtractParams.from_config(extract).threshold)


# ---------------------------------------------------------------------------------------------- outputs


# ------------------------------------------------------------------------------------------ Hydra app
