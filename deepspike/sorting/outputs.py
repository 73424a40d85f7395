"""The result folder: spikes/units/metrics tables, config, plots and the optional Phy export.

The sorting and its tables land in ``out`` first (written into a temporary sibling folder, then renamed); only
then do the slower, optional parts run (``metrics.csv`` against ground truth, plots, Phy), each in a temporary
folder inside ``out`` that is renamed into place when complete. A part that fails, is interrupted or is killed
never costs the sort: ``missing.txt`` in ``out`` says what is missing and why. A folder DeepSpike did not write is
never overwritten (``check_output``).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from deepspike.errors import DeepSpikeError, OutputExistsError
from deepspike.sorting.cache import CACHE_DIR, PARTIAL_MARKER
from deepspike.sorting.result import SortResult, timed

RESULT_MARKER = ".deepspike-result"


FINETUNED_NAME = "encoder_finetuned.safetensors"  # the adapted encoder in `out` (+ .json sidecar), finetune=true


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
    if out.is_dir() and any(out.iterdir()) and not _only_a_partial_sort(out):
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


def _only_a_partial_sort(out: Path) -> bool:
    """Whether ``out`` holds only what a sort that did not finish left (its stage cache): resumed, not refused."""
    return (out / PARTIAL_MARKER).is_file() and {p.name for p in out.iterdir()} <= {PARTIAL_MARKER, CACHE_DIR}


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


MISSING_FILE = "missing.txt"  # in `out` while a part is missing: one line per part, what it is and why


PART_FILES = {"metrics": "metrics.csv", "plots": "plots/, summary.png", "phy": "phy/"}  # what each optional part writes


PENDING = "not written: the run stopped before this part finished (killed?)"


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
    """Write the result into ``out``: the sorting and tables first (atomic rename), then each optional part.

    ``out`` may exist only as an earlier DeepSpike result (with ``overwrite``) that holds none of ``inputs``
    (see :func:`check_output`); the marker file ``RESULT_MARKER`` goes into every result. The optional parts
    (``metrics``: ``metrics.csv`` against ``gt_sorting``; ``plots``; ``phy``) run afterwards, each into a temporary
    folder inside ``out`` renamed into place when complete. One that fails is reported (a warning,
    ``missing.txt``, ``result.info["missing"]``) and the next still runs; an interrupt (Ctrl-C, SIGTERM) removes
    the temporary folders, records what is missing and is raised again. ``gt_sorting`` may be a function that loads
    it (returning None: no ground truth), so a file that fails to load costs ``metrics.csv`` only, not the sort.
    Returns the wall time per part (``write``, ``metrics``, ``plots``, ``phy``).
    """
    out = check_output(out, overwrite, inputs)
    steps: dict[str, Callable[[Path], Any]] = {}
    if gt_sorting is not None:
        steps["metrics"] = lambda folder: _write_metrics(result, folder, gt_sorting, delta_time_ms, data_file)
    if plots:
        steps["plots"] = lambda folder: _plot_all(result, folder)
    if export_phy:
        steps["phy"] = lambda folder: _export_phy(result, folder / "phy", out / "phy")
    timings: dict[str, float] = {}
    missing: dict[str, str] = {}
    result.info["missing"] = missing
    with _sigterm_raises():
        with timed(timings, "write"):
            _write_result(result, out, config, pending=list(steps))
        names = list(steps)
        for i, name in enumerate(names):
            try:
                with timed(timings, name):
                    _in_place(out, name, steps[name])
            except Exception as e:  # a failed part costs only itself
                missing[name] = f"failed: {e}" if isinstance(e, DeepSpikeError) else f"failed: {type(e).__name__}: {e}"
                warnings.warn(
                    f"{PART_FILES[name]} not written to {out} ({missing[name]}); the sorting and tables are there "
                    f"(see {MISSING_FILE})",
                    stacklevel=2,
                )
            except BaseException as e:  # KeyboardInterrupt, SystemExit (SIGTERM): record, then stop
                missing[name] = f"interrupted ({type(e).__name__})"
                missing.update({later: "not run: interrupted" for later in names[i + 1 :]})
                _write_missing(out, missing)
                raise
            _write_missing(out, {**missing, **{later: PENDING for later in names[i + 1 :]}})
    return timings


def _write_result(result: SortResult, out: Path, config: dict[str, Any] | None, pending: list[str]) -> None:
    """The sorting and tables into a temporary sibling of ``out``, renamed to ``out`` (atomic on one filesystem);
    ``missing.txt`` lists the ``pending`` parts until each lands."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))  # a new name: nothing else is touched
    try:
        _write_tables(result, tmp, config)
        (tmp / RESULT_MARKER).write_text("written by DeepSpike sort; overwrite=true may replace this folder\n")
        _write_missing(tmp, dict.fromkeys(pending, PENDING))
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _in_place(out: Path, name: str, write: Callable[[Path], Any]) -> None:
    """Run ``write`` into a temporary folder inside ``out``, then move what it wrote into ``out``; the temporary
    folder is removed on every exit path (a killed process leaves ``out/.NAME.tmp-*`` and ``missing.txt``)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=out))
    try:
        write(tmp)
        for item in sorted(tmp.iterdir()):
            item.rename(out / item.name)  # out was written just now: nothing of the user's is there
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_missing(out: Path, missing: dict[str, str]) -> None:
    """``missing.txt`` (atomically) listing each missing part, or no such file when nothing is missing."""
    path = out / MISSING_FILE
    if not missing:
        path.unlink(missing_ok=True)
        return
    lines = [f"{name} ({PART_FILES[name]}): {why}" for name, why in missing.items()]
    head = "# parts of this result that are missing; the sorting and the tables (spikes, units) are complete\n"
    tmp = path.with_name(f".{MISSING_FILE}.tmp")
    tmp.write_text(head + "\n".join(lines) + "\n")
    os.replace(tmp, path)


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While writing, SIGTERM (``kill``, a job scheduler's stop) raises ``SystemExit(143)`` so that every ``finally``
    removes its temporary folder. Only in the main thread and over the default handler: a handler the application
    installed is left alone."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _write_metrics(result: SortResult, folder: Path, gt_sorting: Any, delta_time_ms: float, data_file: str) -> None:
    """``metrics.csv``: one row per ground-truth neuron (the published columns), the sorted unit matched to it and
    its curation label, and the sort's counts of redundant and false-positive units (repeated on each row)."""
    from deepspike.evaluation.compare import compare_with_categories

    gt_sorting = gt_sorting() if callable(gt_sorting) else gt_sorting
    if gt_sorting is None:  # the format carries none
        return

    metrics, categories = compare_with_categories(result.sorting, gt_sorting, delta_time_ms, data_file=data_file)
    labels = dict(zip(result.sorting.unit_ids, _sorting_labels(result.sorting), strict=True))
    matched = [-1 if u is None or u != u else int(u) for u in metrics["matched_unit"]]  # u != u: NaN; -1: no unit
    metrics["matched_unit"] = matched
    metrics["matched_label"] = [labels.get(u, "") if u >= 0 else "" for u in matched]
    for key, count in categories.items():
        metrics[key] = count
    metrics.to_csv(folder / "metrics.csv", index=False)
    result.info["metrics"] = metrics
    result.info["unit_categories"] = categories


def _sorting_labels(sorting: Any) -> list[str]:
    quality = sorting.get_property("quality")
    return [str(q) for q in quality] if quality is not None else [""] * len(sorting.unit_ids)


def _plot_all(result: SortResult, folder: Path) -> None:
    from deepspike.sorting.plots import plot_all

    plot_all(result, folder)


OUTPUT_KEYS = ("overwrite", "plots", "export_phy", "delta_time_ms")  # sort.yaml keys of the files, not the sort


def output_options(**given: Any) -> dict[str, Any]:
    """``sort(out=DIR)``'s :data:`OUTPUT_KEYS`: those given (not None), else ``conf/sort.yaml``'s; validated."""
    from deepspike.defaults import conf_value, is_number

    opts = {k: conf_value("sort.yaml", k) if given.get(k) is None else given[k] for k in OUTPUT_KEYS}
    for key in ("overwrite", "plots", "export_phy"):
        if not isinstance(opts[key], (bool, np.bool_)):
            raise DeepSpikeError(f"{key}={opts[key]!r}: must be True or False")
    if not is_number(opts["delta_time_ms"]) or opts["delta_time_ms"] <= 0:
        raise DeepSpikeError(f"delta_time_ms={opts['delta_time_ms']!r}: must be > 0 ms (ground-truth matching window)")
    return opts


def write_sort_folder(
    run: Callable[[Path], SortResult],
    out: str | os.PathLike,
    source: Any,
    checkpoint: Any,
    gt: Any,
    opts: dict[str, Any],
) -> Any:
    """``sort(recording, out=DIR)``: check ``out`` (before any work), ``run`` the sort (given its stage cache folder:
    a killed sort resumes), write the folder
    ``sort.py`` writes (ground truth: ``gt``, a sorting or a path, else found beside a recording path as sort.py
    does); returns the SpikeInterface sorting."""
    gt_path = gt if isinstance(gt, (str, os.PathLike)) else None
    if gt_path is not None and not Path(gt_path).exists():
        raise DeepSpikeError(f"ground truth {str(gt_path)!r} not found; pass gt=PATH (or a sorting) or leave it out")
    inputs = [source, gt_path, checkpoint]
    out = check_output(out, opts["overwrite"], inputs)
    result = run(out / CACHE_DIR)
    gt_sorting = lambda: _api_ground_truth(source, result.recording, gt, gt_path)  # noqa: E731 (loaded after writing)
    config = {
        "recording": None if source is None else str(source),
        **({"recording_description": str(result.recording)} if source is None else {}),
        "checkpoint": result.checkpoint,
        "out": str(out),
        "gt": None if gt_path is None else str(gt_path),
        **opts,
        **result.params.to_dict(),
    }
    result.timings.update(
        write_outputs(
            result, out, overwrite=opts["overwrite"], config=config, gt_sorting=gt_sorting,
            data_file=Path(source).name if source is not None else "", delta_time_ms=opts["delta_time_ms"],
            export_phy=opts["export_phy"], plots=opts["plots"], inputs=inputs,
        )
    )  # fmt: skip
    return result.sorting


def _api_ground_truth(source: Any, recording: Any, gt: Any, gt_path: Any) -> Any:
    """A sorting given as ``gt``, else the one ``load_ground_truth`` finds for the path(s), else None."""
    if gt is not None and gt_path is None:
        return gt
    if source is None and gt_path is None:
        return None
    from deepspike.recording.ground_truth import load_ground_truth

    return load_ground_truth(source if source is not None else gt_path, recording=recording, gt=gt_path)


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
    if result.motion is not None:
        from deepspike.sorting.motion import save_motion

        save_motion(result.motion, result.motion_peaks, folder / "motion")
    if result.finetuned is not None:
        from deepspike.model.export import save_encoder

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


def _export_phy(result: SortResult, folder: Path, final: Path) -> None:
    """Phy folder via SpikeInterface's exporter, with PC features, into ``folder`` (renamed to ``final`` later).

    Phy's trace view reads ``params.py``'s ``dat_path``: the source file itself when Phy can read it (one
    interleaved binary file: ``hp_filtered = False``, Phy filters it), else a float32 copy of the band-passed traces
    (``recording.dat``, ``hp_filtered = True``). Where motion was corrected, waveforms, templates and PC features
    come from the corrected traces (as the sort's), while a source file read in place shows the traces as recorded
    (Kilosort's Phy folders show its drift-corrected copy instead: a full float32 copy of the recording).
    ``cluster_group.tsv`` holds the curation labels (good / mua /
    noise, as Kilosort pre-fills it); the quality metrics are ``cluster_<metric>.tsv`` columns.
    """
    from spikeinterface.exporters import export_to_phy
    from threadpoolctl import threadpool_limits

    sorting = result.sorting
    if len(sorting.unit_ids) == 0:
        raise DeepSpikeError("no unit to export to Phy")
    source = phy_binary_source(result.recording)
    props = [p for p in ("snr", "isi_violations_ratio", "presence_ratio", "amplitude_cutoff")
             if sorting.get_property(p) is not None]  # fmt: skip
    analyzer, job = _phy_analyzer(result)
    with threadpool_limits(limits=1):  # see _phy_analyzer
        export_to_phy(
            analyzer, output_folder=folder, compute_pc_features=True, compute_amplitudes=True,
            copy_binary=source is None, use_relative_path=True, verbose=False, additional_properties=props, **job,
        )  # fmt: skip  # relative dat_path, no "Run: phy ..." line: written in a temporary folder, renamed
    if source is not None:
        _write_phy_params(folder / "params.py", final, source, result.recording)
    _write_cluster_groups(folder, sorting)


def _phy_analyzer(result: SortResult) -> tuple[Any, dict[str, Any]]:
    """A SortingAnalyzer on the band-passed recording (what DeepSpike sorted) with what the exporter needs, and the
    job arguments to use with it.

    The band-passed traces are held in memory when they fit ``filter_cache_mb`` (the exporter reads them several
    times); then one process (workers would each receive a pickled copy), else ``n_jobs`` processes over the lazy
    recording. BLAS runs single-threaded: its threads spinning on a shared 2-core machine made the per-channel PCA
    fits take 18 s instead of 0.8 s. A multi-channel recording with a probe gets a sparse analyzer (each unit's
    channels within ``_phy_radius_um`` of its best contact); one channel (or no geometry) stays dense.
    """
    from spikeinterface.core import create_sorting_analyzer
    from threadpoolctl import threadpool_limits

    from deepspike.recording.preprocess import bandpass, in_memory

    params = result.params
    lazy = bandpass(result.recording, **_band(params.extract))
    if result.motion is not None:  # templates and PCs of the traces the sort read, not of the drifting ones
        from deepspike.sorting.motion import corrected_view

        lazy = corrected_view(lazy, result.motion, params.motion.preset)
    filt = in_memory(lazy, params.filter_cache_mb, 10.0, params.workers()) if lazy.get_num_segments() == 1 else lazy
    job = {"n_jobs": params.workers() if filt is lazy else 1, "chunk_duration": "10s", "progress_bar": False}
    sparse = filt.get_num_channels() > 1 and filt.has_probe()
    radius = {"method": "radius", "radius_um": _phy_radius_um(filt.get_channel_locations())} if sparse else None
    with threadpool_limits(limits=1):
        analyzer = create_sorting_analyzer(
            result.sorting, filt, format="memory", sparse=sparse, sparsity_kwargs=radius, job_kwargs=job
        )
        analyzer.compute(["random_spikes", "waveforms", "templates", "noise_levels"], **job)
        analyzer.compute("principal_components", n_components=5, mode="by_channel_local", **job)  # sparse
        with _similarity_in_numpy():
            analyzer.compute("template_similarity")
    return analyzer, job


@contextmanager
def _similarity_in_numpy() -> Iterator[None]:
    """SpikeInterface's template similarity in its numpy implementation, not its numba one: compiling the parallel
    numba kernel took 26 of the export's 60 s in every fresh process (32 channels x 60 s, 12 units, 2 cores); the
    numpy loop over unit pairs takes well under a second for hundreds of units. Falls back to SpikeInterface's
    choice if a release renames these (private) names."""
    from spikeinterface.postprocessing import template_similarity as ts

    fast, chosen = (
        getattr(ts, "_compute_similarity_matrix_numpy", None),
        getattr(ts, "_compute_similarity_matrix", None),
    )
    if fast is None or chosen is None:
        yield
        return
    ts._compute_similarity_matrix = fast
    try:
        yield
    finally:
        ts._compute_similarity_matrix = chosen


def phy_binary_source(recording: Any) -> dict[str, Any] | None:
    """The binary layout of ``recording``'s file when Phy can read it as is (one segment in one interleaved
    file, samples x channels, every channel), else None (the exporter then writes a copy)."""
    if recording.get_num_segments() != 1 or not recording.is_binary_compatible():
        return None
    d = recording.get_binary_description()
    files = [Path(f) for f in d["file_paths"]]
    if len(files) != 1 or d["time_axis"] != 0 or d["num_channels"] != recording.get_num_channels():
        return None
    if not files[0].is_file():
        return None
    return {"path": files[0].resolve(), "dtype": np.dtype(d["dtype"]).name, "offset": int(d["file_offset"] or 0)}


def _write_phy_params(path: Path, final: Path, source: dict[str, Any], recording: Any) -> None:
    """``params.py`` pointing Phy at the source file (relative to the Phy folder's final place, so the path is
    still valid after the rename); the raw file is not band-passed: Phy filters it (``hp_filtered = False``)."""
    try:
        dat = os.path.relpath(source["path"], final.resolve())
    except ValueError:  # another drive (Windows): no relative path exists
        dat = str(source["path"])
    path.write_text(
        f"dat_path = r'{dat}'\n"
        f"n_channels_dat = {recording.get_num_channels()}\n"
        f"dtype = '{source['dtype']}'\n"
        f"offset = {source['offset']}\n"
        f"sample_rate = {float(recording.get_sampling_frequency())}\n"
        "hp_filtered = False\n"
    )


def _write_cluster_groups(folder: Path, sorting: Any) -> None:
    """``cluster_group.tsv`` with the curation labels of the exported (non-empty) units, in Phy's cluster order."""
    import pandas as pd

    ids = pd.read_csv(folder / "cluster_si_unit_ids.tsv", sep="\t")
    labels = dict(zip((str(u) for u in sorting.unit_ids), _sorting_labels(sorting), strict=True))
    groups = [labels.get(str(u)) or "unsorted" for u in ids["si_unit_id"]]
    pd.DataFrame({"cluster_id": ids["cluster_id"], "group": groups}).to_csv(
        folder / "cluster_group.tsv", sep="\t", index=False
    )


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
