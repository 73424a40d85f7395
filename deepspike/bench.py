"""Bench stage: DeepSpike and other spike sorters scored on ground-truth recordings (``deepspike-bench``).

Every (recording, sorter) pair runs in its own process (``python -m deepspike.bench --run-one JOB.json``), so the
recorded ``wall_s`` is end to end (start-up, imports, reading, sorting) and a sorter that crashes, hangs or is not
installed becomes a row with its error instead of ending the bench. The worker writes the spike trains it found;
this process scores them with :func:`deepspike.evaluate.compare_to_ground_truth` (SpikeInterface's comparison).
Finished runs are kept in ``out/runs/`` and reused when the same job comes again (``resume=true``).

``make_set=true`` writes the benchmark set of our own: seeded generator recordings in named tiers (``set`` in
``conf/bench.yaml``) plus converted third-party recordings (``set.include``), as SpikeInterface folders with their
``NAME.gt/`` beside them and a ``bench_set.json`` naming each recording's tier.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
import zlib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from deepspike.corpus import write_json_atomic
from deepspike.defaults import conf_field, conf_values
from deepspike.errors import DeepSpikeError, OutputExistsError, RecordingError, cli_errors
from deepspike.evaluate import METRIC_COLUMNS, UNIT_CATEGORIES, compare_with_categories
from deepspike.paths import CONF_DIR

CONF = "bench.yaml"
MARKER = ".deepspike-bench"  # written into every folder deepspike-bench creates; other folders are not touched
SET_INDEX = "bench_set.json"
RUNS = "runs"
METHODS = ("gmm", "dpgmm", "hdbscan", "kmeans")
RUN_COLUMNS = ["num_units_gt", "num_units_found", "num_redundant", "num_false_positive", "wall_s", "error"]
COLUMNS = ["data_file", "sorter_name", *METRIC_COLUMNS, *RUN_COLUMNS, "sort_s", "tier"]
UNIT_COLUMNS = ["data_file", "sorter_name", "tier", "gt_unit", *METRIC_COLUMNS, "snr", "snr_generator", "num_spikes"]
SUMMARY_COLUMNS = ["sorter_name", "accuracy", "recall", "precision", "wall_s", "recordings_ok", "recordings_failed",
                   "accuracy_failed_as_0", "num_redundant_mean", "num_redundant_max"]  # fmt: skip
INSTALL_HINT = "pip install -e '.[bench]'"
BENCH_PEERS = ("mountainsort5", "kilosort4")  # what the `bench` extra installs (pyproject.toml)
TIER_KEYS = {"n", "num_units", "snr_range", "recipe", "recipe_overrides"}  # single-channel tiers
PROBE_TIER_KEYS = {"n", "probe", "num_channels", "num_units", "snr_range", "sampling_frequency"}  # multi-channel
INCLUDE_KEYS = {"path", "sampling_frequency", "tier", "probe", "gt_shift_samples"}
SET_KEYS = {"seed", "duration_s", "include", "broad_overrides", "tiers"}


@dataclass
class BenchConfig:
    """Validated ``conf/bench.yaml`` (each key is documented there)."""

    recordings: list[str] = conf_field(CONF, "recordings")
    sorters: list[str] = conf_field(CONF, "sorters")
    out: str = conf_field(CONF, "out")
    checkpoint: str | None = conf_field(CONF, "checkpoint")
    delta_time_ms: float = conf_field(CONF, "delta_time_ms")
    timeout_s: float = conf_field(CONF, "timeout_s")
    resume: bool = conf_field(CONF, "resume")
    plots: bool = conf_field(CONF, "plots")
    snr_band_hz: list[float] = conf_field(CONF, "snr_band_hz")
    make_set: bool = conf_field(CONF, "make_set")
    debug: bool = conf_field(CONF, "debug")
    sorter_params: dict[str, Any] = conf_field(CONF, "sorter_params")
    sorter_params_single_channel: dict[str, Any] = conf_field(CONF, "sorter_params_single_channel")
    recording_options: dict[str, Any] = conf_field(CONF, "recording_options")
    set: dict[str, Any] = conf_field(CONF, "set")

    @classmethod
    def from_cfg(cls, cfg: Any) -> BenchConfig:
        from omegaconf import DictConfig, OmegaConf

        d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        d.pop("hydra", None)
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise DeepSpikeError(f"unknown bench option(s) {unknown}; see conf/bench.yaml for the documented keys")
        conf = cls(**d)
        conf.validate()
        return conf

    def validate(self) -> None:
        if isinstance(self.recordings, str):
            self.recordings = [self.recordings]
        if isinstance(self.sorters, str):
            self.sorters = [self.sorters]
        checks = [
            (bool(self.out), "out must name a folder, e.g. out=outputs/bench"),
            (self.delta_time_ms > 0, f"delta_time_ms must be > 0 ms, got {self.delta_time_ms}"),
            (self.timeout_s > 0, f"timeout_s must be > 0 seconds, got {self.timeout_s}"),
            (len(self.snr_band_hz) == 2 and 0 < self.snr_band_hz[0] < self.snr_band_hz[1],
             f"snr_band_hz must be [low, high] Hz with 0 < low < high, got {self.snr_band_hz}"),
            (self.make_set or bool(self.recordings), "no recordings: pass recordings='[PATH_OR_GLOB,...]'"),
            (self.make_set or bool(self.sorters), "no sorters: pass sorters='[deepspike,mountainsort5,...]'"),
            (len(set(self.sorters)) == len(self.sorters), f"sorters lists a name twice: {self.sorters}"),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise DeepSpikeError(msg)
        if self.checkpoint is not None and not Path(self.checkpoint).exists():
            raise DeepSpikeError(f"checkpoint {self.checkpoint!r} not found; pass checkpoint=PATH or leave it null")


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


def sorter_params_for(conf: BenchConfig, name: str, num_channels: int) -> dict[str, Any]:
    """run_sorter parameters of one peer on one recording: ``sorter_params_single_channel`` for one channel."""
    table = conf.sorter_params_single_channel if num_channels == 1 else conf.sorter_params
    return dict((table or {}).get(name) or {})


def for_recording(spec: SorterSpec, conf: BenchConfig, num_channels: int) -> SorterSpec:
    """``spec`` with the parameters its sorter takes on a recording of ``num_channels`` channels."""
    if spec.kind != "spikeinterface":
        return spec
    return replace(spec, params=tuple(sorted(sorter_params_for(conf, spec.name, num_channels).items())))


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
    from deepspike.cluster import ClusterParams
    from deepspike.sorting import SortParams, run_sort

    cluster = {k: v for k, v in conf_values(f"cluster/{spec.method}.yaml").items() if k != "defaults"}
    params = SortParams(features=spec.features, finetune=spec.finetune, cluster=ClusterParams.from_dict(cluster))
    return run_sort(job["recording"], job["checkpoint"], params, _options(job["recording_options"])).sorting


def _sort_spikeinterface(job: dict[str, Any], spec: SorterSpec) -> Any:
    from spikeinterface.sorters import run_sorter

    from deepspike.io import open_recording

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
    """Open the recording and its ground truth (deepspike.io) and measure each GT unit's SNR; bad input fails here."""
    from deepspike.io import load_ground_truth, open_recording

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
    recording: Any, gt: Any, band: list[float], max_s: float = 600.0
) -> tuple[dict[str, float], dict[str, int]]:
    """Per GT unit: peak of its mean band-passed waveform / the channel's MAD noise sigma (best channel), and count."""
    from deepspike.preprocess import bandpass

    fs = float(recording.get_sampling_frequency())
    n = min(recording.get_num_samples(segment_index=0), int(max_s * fs))
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
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "deepspike.bench", "--run-one", str(job_file)],
            capture_output=True, text=True, timeout=conf.timeout_s, env=_worker_env(),
        )  # fmt: skip
        crash = f"worker exited with status {proc.returncode}: {_tail(proc.stderr)}" if proc.returncode else ""
        (runs / f"{key}.log").write_text(proc.stdout + proc.stderr)
    except subprocess.TimeoutExpired:
        crash = f"timed out after {conf.timeout_s:g} s (raise timeout_s=...)"
    wall = time.perf_counter() - t0
    shutil.rmtree(job["workdir"], ignore_errors=True)  # the sorter's own scratch folder, made for this run
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {"job": job, "error": crash, "sort_s": None}
    meta["error"] = meta.get("error") or crash
    meta["wall_s"] = wall
    write_json_atomic(meta_file, meta, default=str)
    if meta["error"]:
        return None, wall, meta.get("sort_s") or float("nan"), meta["error"]
    return _load_sorting(result), wall, meta["sort_s"], ""


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
    recordings = [load_recording(p, conf) for p in expand(conf.recordings)]  # all inputs checked before any run
    names = [r.data_file for r in recordings]
    for r in recordings:
        if names.count(r.data_file) > 1:
            r.data_file = r.path
    out = _own_folder(Path(conf.out))
    runs = out / RUNS
    runs.mkdir(exist_ok=True)
    rows, unit_rows = [], []
    for rec in recordings:
        for name, spec in zip(conf.sorters, specs, strict=True):
            if isinstance(spec, str):
                sorting, wall, sort_s, error = None, float("nan"), float("nan"), spec
            else:
                sorting, wall, sort_s, error = run_pair(rec, for_recording(spec, conf, rec.num_channels), conf, runs)
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


def _own_folder(out: Path) -> Path:
    """``out``, created with a marker; an existing folder without the marker (not ours) is refused."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise OutputExistsError(
            f"{out} exists and was not written by deepspike-bench; choose another folder with out=DIR"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    return out


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


def make_set(conf: BenchConfig) -> Path:
    """Write the benchmark set to ``conf.out`` (seeded; complete recordings are kept, so a rerun resumes)."""
    from deepspike.synthetic import generate_probe_recording, generate_recording, save_pair

    s = conf.set
    for key in sorted(set(s) - SET_KEYS):
        raise DeepSpikeError(f"set.{key}: unknown key (known: {sorted(SET_KEYS)}; see conf/bench.yaml)")
    out = _own_folder(Path(conf.out))
    index_file = out / SET_INDEX
    index = json.loads(index_file.read_text()) if index_file.is_file() else {"recordings": {}}
    for tier, t in s["tiers"].items():
        _check_tier(tier, t)
        for i in range(int(t.get("n", 0))):
            name = f"{tier}_{i:02d}"
            seed = int(np.random.default_rng([int(s["seed"]), zlib.crc32(tier.encode()), i]).integers(0, 2**31 - 1))
            kwargs = _tier_kwargs(t, seed, s.get("broad_overrides") or {})
            folder, gt_folder = out / name, out / f"{name}.gt"
            made = {"tier": tier, "seed": seed, "duration_s": float(s["duration_s"]), **_jsonable(kwargs)}
            if not _kept(folder, index["recordings"].get(name), made):
                if "probe" in kwargs:
                    rec, gt = generate_probe_recording(seed, float(s["duration_s"]), **kwargs)
                else:
                    rec, gt = generate_recording(seed, float(s["duration_s"]), "random", **kwargs)
                save_pair(rec, gt, folder, gt_folder, progress=False)
                info = {"fs": rec.get_sampling_frequency(), "num_units": len(gt.unit_ids),
                        "num_channels": rec.get_num_channels()}  # fmt: skip
                index["recordings"][name] = {**made, **info}
                write_json_atomic(index_file, index, default=str)
                print(f"{name}: {info['num_units']} units at {info['fs']:g} Hz", flush=True)
    for i, item in enumerate(s.get("include") or []):
        _include(item, out, index, f"set.include[{i}]")
        write_json_atomic(index_file, index, default=str)
    write_json_atomic(index_file, index, default=str)
    print(f"benchmark set: {len(index['recordings'])} recordings in {out} (index {index_file})")
    return out


def _check_tier(tier: str, t: dict[str, Any]) -> None:
    """Unknown keys and bad values of ``set.tiers.NAME`` fail before anything is generated, naming the key."""
    from deepspike.synthetic import PROBES

    known = PROBE_TIER_KEYS if "probe" in t else TIER_KEYS
    if t.get("probe") == "tetrode":
        known = known - {"num_channels"}  # always 4
    for key in sorted(set(t) - known):
        raise DeepSpikeError(f"set.tiers.{tier}.{key}: unknown key (known: {sorted(known)}; see conf/bench.yaml)")
    if "probe" in t:  # no hidden defaults: a probe tier states all its ranges in conf/bench.yaml
        for key in sorted(known - set(t)):
            raise DeepSpikeError(f"set.tiers.{tier}.{key}: missing (a probe tier needs {sorted(known)})")
    checks = [
        ("n", int(t.get("n", 0)) >= 0, "must be >= 0"),
        ("probe", t.get("probe", "tetrode") in PROBES, f"must be one of {list(PROBES)}"),
        ("num_units", _range_ok(t.get("num_units", [1, 1]), 1), "must be [low, high] with 1 <= low <= high"),
        ("num_channels", _range_ok(t.get("num_channels", [4, 4]), 4), "must be [low, high] with 4 <= low <= high"),
        ("snr_range", _range_ok(t.get("snr_range", [1, 1]), 0), "must be [low, high] with 0 < low <= high"),
    ]
    for key, ok, msg in checks:
        if not ok:
            raise DeepSpikeError(f"set.tiers.{tier}.{key} {msg}, got {t.get(key)!r} (see conf/bench.yaml)")


def _range_ok(v: Any, low: float) -> bool:
    return isinstance(v, list | tuple) and len(v) == 2 and low <= float(v[0]) <= float(v[1]) and float(v[0]) > 0


def _tier_kwargs(t: dict[str, Any], seed: int, recipe_overrides: dict[str, Any]) -> dict[str, Any]:
    """generate_recording (or, with ``probe``, generate_probe_recording) arguments of one recording of a tier.

    num_units (and a shank's num_channels) are drawn from the tier's ranges with the recording's seed.
    """
    if t.get("probe"):
        return _probe_tier_kwargs(t, seed)
    if t.get("recipe"):
        recipe = conf_values(f"synthetic/{t['recipe']}.yaml")["recipe"]
        recipe.update(recipe_overrides)
        recipe.update(t.get("recipe_overrides") or {})
        return {"recipe": recipe}
    lo, hi = t.get("num_units", [3, 3])
    num_units = int(np.random.default_rng(seed).integers(int(lo), int(hi) + 1))
    return {"num_units": num_units, "snr_range": tuple(t.get("snr_range", (8.0, 25.0)))}


def _probe_tier_kwargs(t: dict[str, Any], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    lo, hi = t["num_units"]
    kwargs: dict[str, Any] = {"probe": str(t["probe"]), "num_units": int(rng.integers(int(lo), int(hi) + 1))}
    if "num_channels" in t:
        c_lo, c_hi = t["num_channels"]
        kwargs["num_channels"] = 2 * int(rng.integers(int(c_lo) // 2, int(c_hi) // 2 + 1))  # two columns: even
    kwargs["snr_range"] = tuple(t["snr_range"])
    kwargs["sampling_frequency"] = float(t["sampling_frequency"])
    return kwargs


def _include(item: dict[str, Any], out: Path, index: dict[str, Any], where: str = "set.include") -> None:
    """Convert someone else's ground-truth recording into the set (a SpikeInterface folder + NAME.gt/).

    ``probe`` attaches a generated geometry to a file that has none (``tetrode``: the 4 channels in file order);
    ``gt_shift_samples`` moves every GT time by that many samples (after deepspike.io's reading, which already
    makes MATLAB's 1-based times 0-based), for files whose times follow another event than the extracellular spike.
    """
    from deepspike.io import load_ground_truth, open_recording
    from deepspike.synthetic import save_pair

    _check_include(item, where)
    path = Path(str(item["path"]))
    fs = item.get("sampling_frequency")
    tier = str(item.get("tier") or "included")
    name = f"{tier}_{path.name.split('.')[0]}"
    folder, gt_folder = out / name, out / f"{name}.gt"
    made = {"tier": tier, "source": str(path.resolve()), "sampling_frequency": fs}
    made.update({k: item[k] for k in ("probe", "gt_shift_samples") if item.get(k) is not None})
    if _kept(folder, index["recordings"].get(name), made):
        return
    rec = open_recording(path, **({"sampling_frequency": float(fs)} if fs else {}))
    gt = load_ground_truth(path, recording=rec)
    if gt is None:
        raise RecordingError(f"{path}: no ground truth to include in the set; give a recording that carries it")
    if item.get("probe"):
        rec = _with_probe(rec, str(item["probe"]), f"{where}.probe")
    if item.get("gt_shift_samples"):
        gt = shift_ground_truth(gt, int(item["gt_shift_samples"]), rec.get_num_samples(segment_index=0))
    save_pair(rec, gt, folder, gt_folder, progress=False)
    index["recordings"][name] = {**made, "fs": rec.get_sampling_frequency(), "num_units": len(gt.unit_ids),
                                 "num_channels": rec.get_num_channels()}  # fmt: skip


def _check_include(item: Any, where: str) -> None:
    if not isinstance(item, dict) or not item.get("path"):
        raise DeepSpikeError(f"{where}.path: each include needs a path, e.g. {{path: FILE.mat, tier: NAME}}")
    for key in sorted(set(item) - INCLUDE_KEYS):
        raise DeepSpikeError(f"{where}.{key}: unknown key (known: {sorted(INCLUDE_KEYS)}; see conf/bench.yaml)")
    shift = item.get("gt_shift_samples")
    if shift is not None and (isinstance(shift, bool) or not float(shift).is_integer()):
        raise DeepSpikeError(f"{where}.gt_shift_samples must be a whole number of samples, got {shift!r}")


def _with_probe(rec: Any, kind: str, where: str) -> Any:
    """``rec`` with a generated probe (contacts wired to its channels in order); a channel-count mismatch is refused."""
    from deepspike.synthetic import make_probe

    try:
        probe = make_probe(kind, rec.get_num_channels() if kind != "tetrode" else None)
    except DeepSpikeError as e:
        raise DeepSpikeError(f"{where}: {e}") from e
    if probe.get_contact_count() != rec.get_num_channels():
        raise DeepSpikeError(
            f"{where}: a {kind} has {probe.get_contact_count()} contacts but the recording has "
            f"{rec.get_num_channels()} channels; drop the probe key or pick the matching probe"
        )
    attached = rec.set_probe(probe)
    return rec if attached is None else attached  # in place since SpikeInterface 0.105


def shift_ground_truth(gt: Any, shift: int, num_samples: int) -> Any:
    """GT sorting with every spike time moved by ``shift`` samples; spikes moved off the recording are dropped."""
    from spikeinterface.core import NumpySorting

    trains = {}
    for u in gt.unit_ids:
        t = np.asarray(gt.get_unit_spike_train(u, segment_index=0), dtype=np.int64) + int(shift)
        trains[u] = t[(t >= 0) & (t < num_samples)]
    shifted = NumpySorting.from_unit_dict([trains], gt.get_sampling_frequency())
    for key in gt.get_property_keys():
        shifted.set_property(key, gt.get_property(key))
    shifted.annotate(gt_shift_samples=int(shift))
    return shifted


def _kept(folder: Path, stored: dict[str, Any] | None, made: dict[str, Any]) -> bool:
    """A recording of the set is kept when both folders are complete and it was made the same way."""
    complete = all((f / "si_folder.json").is_file() for f in (folder, folder.with_name(folder.name + ".gt")))
    return complete and stored is not None and {k: stored.get(k) for k in made} == made


def _stamp(path: str) -> list[int]:
    """Size and modification time of a recording file, or of a folder's files: a remade recording is a new job."""
    p = Path(path)
    files = sorted(p.rglob("*")) if p.is_dir() else [p]
    stats = [f.stat() for f in files if f.is_file()]
    return [sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats), default=0)]


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


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
