"""Bench stage: DeepSpike and other spike sorters scored on ground-truth recordings (``deepspike-bench``).

Every (recording, sorter) pair runs in its own process (``python -m deepspike.evaluation.bench --run-one JOB``), so the
recorded ``wall_s`` is end to end (start-up, imports, reading, sorting) and a sorter that crashes, hangs or is not
installed becomes a row with its error instead of ending the bench. The worker writes the spike trains it found;
this process scores them with :func:`evaluation.compare.compare_to_ground_truth` (SpikeInterface's comparison).
Finished runs are kept in ``out/runs/`` and reused when the same job comes again (``resume=true``).

``make_set=true`` writes the benchmark set of our own: seeded generator recordings in named tiers (``set`` in
``conf/bench.yaml``) plus converted third-party recordings (``set.include``), as SpikeInterface folders with their
``NAME.gt/`` beside them and a ``bench_set.json`` naming each recording's tier.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepspike.defaults import conf_values
from deepspike.errors import DeepSpikeError, RecordingError, cli_errors
from deepspike.evaluation.bench_config import BENCH_PEERS, INSTALL_HINT, MARKER, BenchConfig, own_folder
from deepspike.evaluation.bench_set import SET_INDEX, _stamp, make_set
from deepspike.evaluation.compare import METRIC_COLUMNS, UNIT_CATEGORIES, compare_with_categories
from deepspike.paths import CONF_DIR, write_json_atomic
from deepspike.sorting.clustering.params import METHODS

RUNS = "runs"
RUN_COLUMNS = ["num_units_gt", "num_units_found", "num_redundant", "num_false_positive", "wall_s", "error"]
COLUMNS = ["data_file", "sorter_name", *METRIC_COLUMNS, *RUN_COLUMNS, "sort_s", "tier"]
UNIT_COLUMNS = ["data_file", "sorter_name", "tier", "gt_unit", *METRIC_COLUMNS, "snr", "snr_generator", "num_spikes"]
SUMMARY_COLUMNS = ["sorter_name", "accuracy", "recall", "precision", "wall_s", "recordings_ok", "recordings_failed",
                   "accuracy_failed_as_0", "num_redundant_mean", "num_redundant_max"]  # fmt: skip


# ------------------------------------------------------------------------------------------------ sorters


@dataclass(frozen=True)
class SorterSpec:
    """What one sorter name means: a DeepSpike configuration or a SpikeInterface sorter with its parameters."""

    name: str
    kind: str  # "deepspike" | "spikeinterface"
    method: str = "gmm"
    finetune: bool = False
    features: str = "encoder"
    params: tuple[tuple[str, Any], ...] = ()


def sorter_params_for(conf: BenchConfig, name: str, num_channels: int, tier: str = "") -> dict[str, Any]:
    """run_sorter parameters of one peer on one recording: ``sorter_params_single_channel`` for one channel, else
    ``sorter_params``, then the recording's tier's ``sorter_params_by_tier`` over them (drift correction on drift)."""
    table = conf.sorter_params_single_channel if num_channels == 1 else conf.sorter_params
    params = dict((table or {}).get(name) or {})
    params.update(((conf.sorter_params_by_tier or {}).get(tier) or {}).get(name) or {})
    return params


def for_recording(spec: SorterSpec, conf: BenchConfig, num_channels: int, tier: str = "") -> SorterSpec:
    """``spec`` with the parameters its sorter takes on a recording of ``num_channels`` channels in ``tier``."""
    if spec.kind != "spikeinterface":
        return spec
    return replace(spec, params=tuple(sorted(sorter_params_for(conf, spec.name, num_channels, tier).items())))


def missing_package(spec: SorterSpec) -> str:
    """Why a SpikeInterface sorter cannot run here ('' when it can): the package to install."""
    if spec.kind != "spikeinterface":
        return ""
    from spikeinterface.sorters import sorter_dict

    cls = sorter_dict[spec.name]
    if cls.is_installed():
        return ""
    if spec.name in BENCH_PEERS:
        return f"sorter {spec.name} is not installed: {INSTALL_HINT}"
    how = " ".join(line.strip() for line in str(getattr(cls, "installation_mesg", "")).splitlines() if ">>>" in line)
    return f"sorter {spec.name} is not installed: {how.replace('>>>', '').strip() or 'see SpikeInterface docs'}"


def parse_sorter(name: str, sorter_params: dict[str, Any] | None = None) -> SorterSpec:
    """``deepspike[-METHOD][-ft|-pca]`` or a name of ``spikeinterface.sorters.sorter_dict``; else a clear error."""
    parts = name.split("-")
    if parts[0] == "deepspike":
        rest = parts[1:]
        method = rest.pop(0) if rest and rest[0] in METHODS else "gmm"
        mode = rest.pop(0) if rest and rest[0] in ("ft", "pca") else None
        if not rest:
            return SorterSpec(
                name, "deepspike", method, finetune=mode == "ft", features="pca" if mode == "pca" else "encoder"
            )
    else:
        from spikeinterface.sorters import sorter_dict

        if name in sorter_dict:
            params = dict((sorter_params or {}).get(name) or {})
            return SorterSpec(name, "spikeinterface", params=tuple(sorted(params.items())))
    raise DeepSpikeError(
        f"unknown sorter {name!r}: use deepspike[-{'|-'.join(METHODS)}][-ft|-pca] or a SpikeInterface sorter "
        "(mountainsort5, tridesclous2, spykingcircus2, kilosort4, ...) in sorters=[...]"
    )


# ------------------------------------------------------------------------------------------------ worker


def _options(recording_options: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (recording_options or {}).items() if v is not None}


def _sort_deepspike(job: dict[str, Any], spec: SorterSpec) -> Any:
    from deepspike.sorting.clustering.params import ClusterParams
    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    cluster = {k: v for k, v in conf_values(f"cluster/{spec.method}.yaml").items() if k != "defaults"}
    params = SortParams(features=spec.features, finetune=spec.finetune, cluster=ClusterParams.from_dict(cluster))
    return run_sort(job["recording"], job["checkpoint"], params, _options(job["recording_options"])).sorting


def _sort_spikeinterface(job: dict[str, Any], spec: SorterSpec) -> Any:
    from spikeinterface.sorters import run_sorter

    from deepspike.recording.readers import open_recording

    recording = open_recording(job["recording"], **_options(job["recording_options"]))
    if not recording.has_probe():
        from probeinterface import generate_linear_probe

        probe = generate_linear_probe(num_elec=recording.get_num_channels(), ypitch=20)
        probe.set_device_channel_indices(np.arange(recording.get_num_channels()))
        attached = recording.set_probe(probe)  # sorters need channel positions: a file without any gets a line
        recording = recording if attached is None else attached  # in place since SpikeInterface 0.105
    return run_sorter(
        spec.name, recording, folder=job["workdir"], remove_existing_folder=True, verbose=False, **dict(spec.params)
    )


def error_line(e: BaseException, limit: int = 500) -> str:
    """One line for the error column: a wrapped traceback (SpikeInterface's sorter errors) gives its root cause."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", line)]
    text = causes[-1] if causes else (lines[0] if lines else "")
    return f"{type(e).__name__}: {text}"[:limit]


def run_one(job_file: str) -> int:
    """Worker: sort one recording with one sorter, write ``result`` (.npz spike trains + .json); exit status 0."""
    job = json.loads(Path(job_file).read_text())
    spec = SorterSpec(**{**job["sorter"], "params": tuple(tuple(p) for p in job["sorter"]["params"])})
    result = Path(job["result"])
    t0 = time.perf_counter()
    try:
        sort = _sort_deepspike if spec.kind == "deepspike" else _sort_spikeinterface
        sorting = sort(job, spec)
        # the spike vector, not get_unit_spike_train per unit: that JIT-compiles a numba reorder (0.7 s) in every
        # worker, a start-up cost of the bench's own, not of any sorter
        vector = sorting.to_spike_vector()
        vector = vector[vector["segment_index"] == 0]
        tmp = result.with_name(result.name + ".tmp.npz")
        np.savez(
            tmp,
            sample_index=vector["sample_index"].astype(np.int64),
            unit=vector["unit_index"].astype(np.int64),
            fs=float(sorting.get_sampling_frequency()),
        )
        os.replace(tmp, result.with_suffix(".npz"))
        meta = {"job": job, "error": "", "sort_s": time.perf_counter() - t0, "num_units": len(sorting.unit_ids)}
    except Exception as e:  # any failure of a sorter is a result row, with its message
        traceback.print_exc()
        meta = {"job": job, "error": error_line(e), "sort_s": time.perf_counter() - t0}
    write_json_atomic(result.with_suffix(".json"), meta, default=str)
    return 0


# ------------------------------------------------------------------------------------------------ runner


@dataclass
class Recording:
    """A recording of the bench with its ground truth and the SNR of each GT unit."""

    path: str
    data_file: str
    tier: str
    gt: Any
    snr: dict[str, float]
    snr_generator: dict[str, float]
    num_spikes: dict[str, int]
    num_channels: int = 1


def expand(patterns: list[str]) -> list[str]:
    """Paths and glob matches in order; glob matches skip ground-truth siblings (``NAME.gt``), JSON and temp files."""
    paths: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            hits = sorted(glob.glob(pattern))
            if not hits:
                raise RecordingError(f"recordings pattern {pattern!r} matches nothing; check recordings=[...]")
            paths += [h for h in hits if not h.rstrip("/").endswith((".gt", ".gt.npz", ".json", ".tmp", MARKER))]
        elif not Path(pattern).exists():
            raise RecordingError(f"{pattern}: no such recording; check recordings=[...]")
        else:
            paths.append(pattern)
    return list(dict.fromkeys(paths))


def load_recording(path: str, conf: BenchConfig) -> Recording:
    """Open the recording and its ground truth (recording.readers) and each GT unit's SNR; bad input fails here."""
    from deepspike.recording.ground_truth import load_ground_truth
    from deepspike.recording.readers import open_recording

    recording = open_recording(path, **_options(conf.recording_options))
    gt = load_ground_truth(path, recording=recording)
    if gt is None:
        raise RecordingError(
            f"{path}: no ground truth found; put a SpikeInterface sorting folder {Path(path).name}.gt/ beside it "
            "(or use a format that carries it, e.g. Quiroga .mat)"
        )
    snr, counts = unit_snrs(recording, gt, conf.snr_band_hz)
    gen = gt.get_property("gt_snr") if "gt_snr" in gt.get_property_keys() else None
    by_gen = {str(u): float(s) for u, s in zip(gt.unit_ids, gen, strict=True)} if gen is not None else {}
    tier = _tier(Path(path))
    name = Path(path.rstrip("/")).name
    return Recording(path, name, tier, gt, snr, by_gen, counts, recording.get_num_channels())


def _tier(p: Path) -> str:
    index = p.parent / SET_INDEX
    if not index.is_file():
        return ""
    return str(json.loads(index.read_text()).get("recordings", {}).get(p.name, {}).get("tier", ""))


def unit_snrs(
    recording: Any, gt: Any, band: list[float], max_s: float = 600.0, max_bytes: float = 512e6
) -> tuple[dict[str, float], dict[str, int]]:
    """Per GT unit: peak of its mean band-passed waveform / the channel's MAD noise sigma (best channel), and count.

    Read from the first ``max_s`` seconds, fewer where those would pass ``max_bytes`` in float64 (a 128-channel probe:
    about 16 s at 30 kHz; one channel, tetrodes and 32-channel shanks of 60 s are read whole, as before)."""
    from deepspike.recording.preprocess import bandpass

    fs = float(recording.get_sampling_frequency())
    per_sample = 8 * recording.get_num_channels()
    n = min(recording.get_num_samples(segment_index=0), int(max_s * fs), int(max_bytes // per_sample))
    filt = bandpass(recording, float(band[0]), float(band[1]))  # freq_max >= Nyquist: clipped, with a warning
    x = np.asarray(filt.get_traces(segment_index=0, start_frame=0, end_frame=n), dtype=np.float64)
    sigma = np.median(np.abs(x - np.median(x, axis=0)), axis=0) / 0.6745
    before, after = int(1e-3 * fs), int(2e-3 * fs)
    snr, counts = {}, {}
    for u in gt.unit_ids:
        train = np.asarray(gt.get_unit_spike_train(u, segment_index=0), dtype=np.int64)
        counts[str(u)] = len(train)
        train = train[(train >= before) & (train < n - after)]
        if len(train) == 0:
            snr[str(u)] = float("nan")
            continue
        template = x[train[:, None] + np.arange(-before, after)[None, :]].mean(axis=0)
        snr[str(u)] = float(np.max(np.abs(template) / np.maximum(sigma, 1e-12)))
    return snr, counts


def _job_key(data_file: str, sorter: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in data_file)
    return f"{safe}__{sorter}"


def run_pair(rec: Recording, spec: SorterSpec, conf: BenchConfig, runs: Path) -> tuple[Any, float, float, str]:
    """(sorting or None, wall_s of its process, sort_s inside it, error text) for one recording and sorter."""
    key = _job_key(rec.data_file, spec.name)
    result = runs / f"{key}.npz"
    job = {
        "recording": str(Path(rec.path).resolve()),
        "stamp": _stamp(rec.path),
        "recording_options": conf.recording_options,
        "sorter": asdict(spec),
        "checkpoint": conf.checkpoint,
        "workdir": str((runs / f"{key}.work").resolve()),
        "result": str(result.resolve()),
    }
    job = json.loads(json.dumps(job))  # tuples -> lists, as read back
    meta_file = result.with_suffix(".json")
    if conf.resume and meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("job") == job and not meta.get("error") and result.is_file() and "wall_s" in meta:
            return _load_sorting(result), meta["wall_s"], meta["sort_s"], ""
    for stale in (result, meta_file):
        stale.unlink(missing_ok=True)
    job_file = runs / f"{key}.job.json"
    write_json_atomic(job_file, job, default=str)
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "deepspike.evaluation.bench", "--run-one", str(job_file)]
    returncode, out = run_worker(cmd, conf.timeout_s, _worker_env())
    if returncode is None:
        crash = f"timed out after {conf.timeout_s:g} s (raise timeout_s=...)"
    else:
        crash = f"worker exited with status {returncode}: {_tail(out)}" if returncode else ""
        (runs / f"{key}.log").write_text(out)
    wall = time.perf_counter() - t0
    shutil.rmtree(job["workdir"], ignore_errors=True)  # the sorter's own scratch folder, made for this run
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {"job": job, "error": crash, "sort_s": None}
    meta["error"] = meta.get("error") or crash
    meta["wall_s"] = wall
    write_json_atomic(meta_file, meta, default=str)
    if meta["error"]:
        return None, wall, meta.get("sort_s") or float("nan"), meta["error"]
    return _load_sorting(result), wall, meta["sort_s"], ""


def run_worker(cmd: list[str], timeout_s: float, env: dict[str, str]) -> tuple[int | None, str]:
    """(exit status, stdout + stderr) of ``cmd``, or (None, output so far) when it ran past ``timeout_s``. The worker
    runs in its own process group, killed whole on timeout: a peer sorter's own children (job pools, a MATLAB or
    numba server) would otherwise outlive it and load the machine for the next run."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out


def _worker_env() -> dict[str, str]:
    """The worker imports this same deepspike (first on its path), whatever the current directory."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _tail(text: str, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:]) or "no output"


def _load_sorting(result: Path) -> Any:
    from spikeinterface.core import NumpySorting

    d = np.load(result)
    n_units = int(d["unit"].max()) + 1 if len(d["unit"]) else 0
    order = np.argsort(d["sample_index"], kind="stable")
    return NumpySorting.from_samples_and_labels(
        [d["sample_index"][order]], [d["unit"][order]], float(d["fs"]), unit_ids=list(range(n_units))
    )


def score(rec: Recording, sorter: str, sorting: Any, wall: float, sort_s: float, error: str, delta_ms: float):
    """(metrics row, per-unit rows) of one run; a failed run has NaN metrics and its error text."""
    gt_ids = [str(u) for u in rec.gt.unit_ids]
    if sorting is None:
        units = pd.DataFrame({"gt_unit": gt_ids, **{c: np.nan for c in METRIC_COLUMNS}})
        found, categories = 0, dict.fromkeys(UNIT_CATEGORIES, np.nan)
    else:
        units, categories = compare_with_categories(sorting, rec.gt, delta_ms, rec.data_file, sorter)
        found = len(sorting.unit_ids)
    units = units.assign(
        data_file=rec.data_file, sorter_name=sorter, tier=rec.tier,
        snr=[rec.snr.get(u, np.nan) for u in units["gt_unit"]],
        snr_generator=[rec.snr_generator.get(u, np.nan) for u in units["gt_unit"]],
        num_spikes=[rec.num_spikes.get(u, 0) for u in units["gt_unit"]],
    )[UNIT_COLUMNS]  # fmt: skip
    row = {"data_file": rec.data_file, "sorter_name": sorter, **units[METRIC_COLUMNS].mean(skipna=True).to_dict()}
    if sorting is None:
        row.update(dict.fromkeys(METRIC_COLUMNS, np.nan))
    row.update(num_units_gt=len(gt_ids), num_units_found=found, **categories, wall_s=wall, error=error, sort_s=sort_s,
               tier=rec.tier)  # fmt: skip
    return row, units


def _check_tier_sorters(conf: BenchConfig) -> None:
    """A sorter named in ``sorter_params_by_tier`` must be a SpikeInterface sorter: a typo would silently do nothing."""
    from spikeinterface.sorters import sorter_dict

    for tier, sorters in (conf.sorter_params_by_tier or {}).items():
        for name in sorters:
            if name not in sorter_dict:
                raise DeepSpikeError(
                    f"sorter_params_by_tier.{tier}.{name}: not a SpikeInterface sorter (parameters go to run_sorter; "
                    f"known: {sorted(sorter_dict)})"
                )


def summarize(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per sorter: means over its successful runs, counts of ok and failed runs."""
    rows = []
    for name in dict.fromkeys(metrics["sorter_name"]):
        m = metrics[metrics["sorter_name"] == name]
        ok = m[m["error"].fillna("") == ""]
        rows.append(
            {
                "sorter_name": name,
                **{c: ok[c].mean() if len(ok) else np.nan for c in ("accuracy", "recall", "precision", "wall_s")},
                "recordings_ok": len(ok),
                "recordings_failed": len(m) - len(ok),
                "accuracy_failed_as_0": m["accuracy"].fillna(0.0).mean(),
                "num_redundant_mean": ok["num_redundant"].mean() if len(ok) else np.nan,
                "num_redundant_max": ok["num_redundant"].max() if len(ok) else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def run_bench(conf: BenchConfig) -> Path:
    """Score every sorter on every recording; writes out/metrics.csv, metrics_units.csv, summary.csv, plots/."""
    specs: list[SorterSpec | str] = []
    for name in conf.sorters:
        try:
            spec = parse_sorter(name, conf.sorter_params)
            specs.append(missing_package(spec) or spec)  # a sorter that cannot run here: its reason
        except DeepSpikeError as e:  # a row with the reason, like any other failure
            specs.append(str(e))
    _check_tier_sorters(conf)
    recordings = [load_recording(p, conf) for p in expand(conf.recordings)]  # all inputs checked before any run
    if not recordings:
        raise RecordingError(f"recordings={conf.recordings} holds no recording (only .gt/, .json or temp files)")
    names = [r.data_file for r in recordings]
    for r in recordings:
        if names.count(r.data_file) > 1:
            r.data_file = r.path
    out = own_folder(Path(conf.out))
    runs = out / RUNS
    runs.mkdir(exist_ok=True)
    rows, unit_rows = [], []
    for rec in recordings:
        for name, spec in zip(conf.sorters, specs, strict=True):
            if isinstance(spec, str):
                sorting, wall, sort_s, error = None, float("nan"), float("nan"), spec
            else:
                tiered = for_recording(spec, conf, rec.num_channels, rec.tier)
                sorting, wall, sort_s, error = run_pair(rec, tiered, conf, runs)
            row, units = score(rec, name, sorting, wall, sort_s, error, conf.delta_time_ms)
            rows.append(row)
            unit_rows.append(units)
            acc = "failed: " + error if error else f"accuracy {row['accuracy']:.3f}"
            print(f"{rec.data_file} {name}: {acc} ({wall:.1f} s)", flush=True)
    metrics = pd.DataFrame(rows, columns=COLUMNS)
    summary = summarize(metrics)
    _write_csv(metrics, out / "metrics.csv")
    _write_csv(pd.concat(unit_rows, ignore_index=True), out / "metrics_units.csv")
    _write_csv(summary, out / "summary.csv")
    if conf.plots:
        plot(metrics, pd.concat(unit_rows, ignore_index=True), out / "plots")
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return out


# ------------------------------------------------------------------------------------------------ outputs


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, path)


def plot(metrics: pd.DataFrame, units: pd.DataFrame, folder: Path) -> None:
    """accuracy_by_recording.png (one marker per sorter and recording) and accuracy_vs_snr.png (per GT unit)."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(exist_ok=True)
    recs = list(dict.fromkeys(metrics.sort_values(["tier", "data_file"], kind="stable")["data_file"]))
    sorters = list(dict.fromkeys(metrics["sorter_name"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(recs) + 2), 4.5))
    width = 0.8 / max(1, len(sorters))
    for k, name in enumerate(sorters):
        m = metrics[metrics["sorter_name"] == name].set_index("data_file").reindex(recs)
        x = np.arange(len(recs)) + (k - (len(sorters) - 1) / 2) * width
        ax.bar(x, m["accuracy"].fillna(0.0), width, label=name)
        failed = m["error"].fillna("").ne("").to_numpy()
        ax.plot(x[failed], np.zeros(failed.sum()), "kx")
    labels = [f"{r}\n({t})" if t else r for r, t in zip(recs, _tiers(metrics, recs), strict=True)]
    ax.set_xticks(np.arange(len(recs)), labels, rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="accuracy (mean over GT units)", ylim=(0, 1.05), title="accuracy per recording (x = failed)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, folder / "accuracy_by_recording.png")
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name in sorters:
        u = units[(units["sorter_name"] == name) & units["accuracy"].notna()]
        ax.scatter(u["snr"], u["accuracy"], s=14, alpha=0.7, label=name)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set(xlabel="GT unit SNR (template peak / noise sigma)", ylabel="accuracy", ylim=(-0.02, 1.02),
           title="accuracy against unit SNR")  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, folder / "accuracy_vs_snr.png")


def _tiers(metrics: pd.DataFrame, recs: list[str]) -> list[str]:
    tier = metrics.drop_duplicates("data_file").set_index("data_file")["tier"].fillna("")
    return [str(tier[r]) for r in recs]


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ the set


# ------------------------------------------------------------------------------------------------ entry


def main() -> None:
    """Console script ``deepspike-bench`` (a Hydra app over ``conf/bench.yaml``)."""
    if len(sys.argv) == 3 and sys.argv[1] == "--run-one":  # the per-run worker process
        raise SystemExit(run_one(sys.argv[2]))
    import hydra

    @hydra.main(config_path=str(CONF_DIR), config_name="bench", version_base="1.3")
    def _app(cfg: Any) -> None:
        with cli_errors("bench", bool(cfg.get("debug", False))):
            conf = BenchConfig.from_cfg(cfg)
            out = make_set(conf) if conf.make_set else run_bench(conf)
            print(f"outputs: {out}")

    _app()


if __name__ == "__main__":
    main()
