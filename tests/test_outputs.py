"""The result folder (issue 23): quality metrics and curation labels, plots that scale with the number of units, a
result that survives a failing or killed plot/export, ``sort(recording, out=DIR)``, and a Phy export that reads a
binary source in place and carries PC features."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from deepspike.errors import DeepSpikeError, OutputExistsError
from deepspike.sorting.outputs import MISSING_FILE, RESULT_MARKER, write_outputs
from deepspike.sorting.params import SortParams
from deepspike.sorting.pipeline import run_sort, sort
from deepspike.sorting.quality import LABELS, CurationParams, label_units, unit_quality
from deepspike.sorting.result import QUALITY_UNIT_COLUMNS, SortResult, build_sorting

REPO = Path(__file__).resolve().parents[1]
BENCH_PLOTS = REPO / "bench" / "plots.py"
TABLES = ("sorting", "spikes.csv", "units.csv", "embeddings.npy", "config.yaml", RESULT_MARKER)


@pytest.fixture(scope="module")
def bench_plots() -> Any:
    """bench/plots.py as a module: its ``synthetic_result`` builds SortResults of any number of units quickly."""
    spec = importlib.util.spec_from_file_location("bench_plots", BENCH_PLOTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def probe_folder(tmp_path_factory) -> Path:
    """An 8-channel, 10 s SpikeInterface ground-truth recording saved as a binary folder, its GT beside it."""
    import spikeinterface.core as sc

    rec, gt = sc.generate_ground_truth_recording(durations=[10], num_channels=8, num_units=4, seed=5)
    folder = tmp_path_factory.mktemp("probe") / "probe8"
    rec.save(folder=folder, n_jobs=1, chunk_duration="10s", progress_bar=False)
    gt.save(folder=folder.parent / "probe8.gt")
    return folder


@pytest.fixture(scope="module")
def probe_result(probe_folder: Path) -> SortResult:
    return run_sort(str(probe_folder), params=SortParams(features="pca"))


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _leftovers(out: Path) -> list[str]:
    """Temporary folders left inside ``out`` or beside it."""
    inside = [p.name for p in out.glob(".*.tmp-*")] if out.is_dir() else []
    return inside + [p.name for p in out.parent.glob(f".{out.name}.tmp-*")]


# --------------------------------------------------------------------------------- quality metrics, curation


def test_units_csv_has_quality_metrics_and_a_label_per_unit(probe_result, tmp_path) -> None:
    out = tmp_path / "out"
    write_outputs(probe_result, out, plots=False)
    units = pd.read_csv(out / "units.csv", keep_default_na=False, na_values=[""])
    assert list(units.columns) == QUALITY_UNIT_COLUMNS and len(units) == len(probe_result.unit_ids)
    assert set(units["label"]) <= set(LABELS)
    assert units["presence_ratio"].between(0, 1).all() and (units["isi_violations_ratio"] >= 0).all()
    np.testing.assert_allclose(units["amplitude_uv"], units["amplitude"], rtol=1e-5)  # the generator's gain is 1 µV
    good = units["label"] == "good"
    assert units.loc[~good, "label_reason"].str.contains("curation.").all()
    assert units.loc[good, "label_reason"].isna().all()
    sorting = probe_result.sorting  # the same labels ride on the returned sorting, SpikeInterface's name for them
    assert list(sorting.get_property("quality")) == list(units["label"])


def _train(rng: np.random.Generator, n: int, duration: float, fs: float, start: float = 0.0) -> np.ndarray:
    """``n`` spike times (samples) in [start, duration) at least 5 ms apart (a refractory neuron)."""
    gaps = rng.uniform(0.005, 2 * (duration - start) / n - 0.005, n)
    return ((start + np.cumsum(gaps)) * fs).astype(np.int64)


def test_unit_quality_measures_contamination_presence_and_cutoff() -> None:
    fs, duration, rng = 10000.0, 100.0, np.random.default_rng(0)
    clean = _train(rng, 1000, duration, fs)
    doubled = np.sort(np.concatenate([clean, clean[::2] + 5]))  # every other spike again 0.5 ms later
    early = _train(rng, 1000, 0.3 * duration, fs)  # only the first 30 s
    cut = _train(rng, 1000, duration, fs)
    times = [clean, doubled, early, cut]
    amps = [rng.normal(-50, 5, len(clean)), rng.normal(-50, 5, len(doubled)), rng.normal(-50, 5, len(early)),
            -np.abs(rng.normal(0, 5, len(cut))) - 40]  # fmt: skip  # `cut`: the small half of a Gaussian is missing
    labels = np.concatenate([np.full(len(t), u) for u, t in enumerate(times)])
    samples, amplitude = np.concatenate(times), np.concatenate(amps)
    channel = np.zeros(len(labels), dtype=np.int64)
    params = CurationParams()
    m = unit_quality(samples, labels, amplitude, channel, [0, 1, 2, 3], fs, int(duration * fs), params, np.array([0.5]))
    assert m.loc[0, "isi_violations_ratio"] == 0 and m.loc[1, "isi_violations_ratio"] > 1.0
    assert m.loc[0, "presence_ratio"] == 1.0 and m.loc[2, "presence_ratio"] == pytest.approx(0.3, abs=0.11)
    assert m.loc[0, "amplitude_cutoff"] < 0.05 and m.loc[3, "amplitude_cutoff"] > params.max_amplitude_cutoff
    assert m.loc[0, "amplitude_uv"] == pytest.approx(0.5 * np.median(amps[0]))
    assert np.isnan(unit_quality(samples, labels, amplitude, channel, [0], fs, int(duration * fs), params).iloc[0, 0])

    table = m.assign(snr=[20.0, 20.0, 20.0, 20.0], spike_count=[len(t) for t in times])
    table.loc[4] = {**table.loc[0].to_dict(), "snr": 2.0}  # a clean train whose template is within the noise
    table.loc[5] = {**table.loc[0].to_dict(), "spike_count": 10}
    labelled = label_units(table, params)
    assert list(labelled["label"]) == ["good", "mua", "mua", "mua", "noise", "mua"]
    keys = ["", "max_isi_violations_ratio", "min_presence_ratio", "max_amplitude_cutoff", "noise_max_snr", "min_spikes"]
    for reason, key in zip(labelled["label_reason"], keys, strict=True):
        assert (f"curation.{key}=" in reason) if key else reason == ""


def test_curation_thresholds_are_declared_once_and_validated_naming_the_key() -> None:
    from dataclasses import asdict

    from deepspike.defaults import conf_value

    assert conf_value("sort.yaml", "curation") == asdict(CurationParams())
    bad = {"min_presence_ratio": 1.5, "max_amplitude_cutoff": 0.9, "noise_max_snr": 6.0, "min_spikes": 2.5,
           "isi_threshold_ms": 0, "min_snr": "5"}  # fmt: skip
    for key, value in bad.items():
        with pytest.raises(DeepSpikeError, match=rf"curation\.{key}"):
            SortParams(curation={key: value})
    with pytest.raises(DeepSpikeError, match="unknown curation option"):
        CurationParams.from_dict({"min_snrr": 4})


def _result_from_spikes(recording: Any, sample_index: np.ndarray, labels: np.ndarray) -> SortResult:
    """A SortResult holding the given spike trains (windows: a fixed spike shape plus noise; one channel)."""
    from deepspike.spec import WindowSpec

    rng = np.random.default_rng(0)
    spec = WindowSpec()
    shape = -8 * np.exp(-0.5 * ((np.arange(spec.length) - spec.n_before) / 1.5) ** 2)
    waves = (shape + rng.normal(0, 1, (len(labels), spec.length))).astype(np.float32)
    order = np.argsort(sample_index, kind="stable")
    result = SortResult(
        sorting=None, recording=recording, sample_index=sample_index[order], channel=np.zeros(len(labels), np.int64),
        amplitude=waves[order, spec.n_before] * 5.0, waves=waves[order], embeddings=rng.normal(0, 1, (len(labels), 4)),
        labels=labels[order], noise_levels=np.full(recording.get_num_channels(), 5.0),
        sampling_frequency=recording.get_sampling_frequency(), duration_s=recording.get_total_duration(), spec=spec,
        params=SortParams(features="pca"), checkpoint=None,
    )  # fmt: skip
    result.sorting = build_sorting(result)
    return result


def test_metrics_csv_names_matched_units_and_counts_redundant_and_false_units(tmp_path) -> None:
    """GT unit 0 split in two (one redundant unit), units 1 and 2 exact, one unit of random times (false)."""
    from spikeinterface.core import generate_ground_truth_recording

    from deepspike.sorting.app import summary

    rec, gt = generate_ground_truth_recording(durations=[20], num_channels=4, num_units=3, seed=1)
    trains = [gt.get_unit_spike_train(u) for u in gt.unit_ids]
    first, second = trains[0][::2], trains[0][1::2]
    noise = np.sort(np.random.default_rng(1).choice(rec.get_num_samples(), 300, replace=False))
    parts = [first, trains[1], trains[2], second, noise]
    result = _result_from_spikes(
        rec, np.concatenate(parts), np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    )
    out = tmp_path / "out"
    write_outputs(result, out, gt_sorting=gt, plots=False)
    metrics = pd.read_csv(out / "metrics.csv", keep_default_na=False)
    by_gt = metrics.set_index(metrics["gt_unit"].astype(str))
    assert by_gt.loc[str(gt.unit_ids[1]), "matched_unit"] == 1 and by_gt.loc[str(gt.unit_ids[2]), "matched_unit"] == 2
    assert by_gt.loc[str(gt.unit_ids[0]), "matched_unit"] in (0, 3)
    assert (metrics["num_redundant"] == 1).all() and (metrics["num_false_positive"] == 1).all()
    units = pd.read_csv(out / "units.csv").set_index("unit")
    assert list(metrics["matched_label"]) == [units.loc[u, "label"] for u in metrics["matched_unit"]]
    text = summary(result, out)
    assert "redundant units 1, false-positive units 1" in text and "(unit 1)" in text
    counts = units["label"].value_counts()
    assert f"{len(units)} units ({counts.get('good', 0)} good, {counts.get('mua', 0)} mua" in text


# ------------------------------------------------------------------------------------------------ plots


def _pages(folder: Path) -> int:
    return len(list((folder / "plots").glob("waveforms_*.png")))


@pytest.mark.parametrize("num_units", [5, 30, 150])
def test_plots_are_paged_and_fixed_size(bench_plots, tmp_path, num_units: int) -> None:
    """At most 24 units a waveform page, every figure a fixed size whatever the number of units."""
    from matplotlib.image import imread

    from deepspike.sorting.plots import UNITS_PER_PAGE, plot_all

    result = bench_plots.synthetic_result(num_units, duration_s=20.0)
    written = plot_all(result, tmp_path)
    assert _pages(tmp_path) == int(np.ceil(num_units / UNITS_PER_PAGE))
    assert {p.name for p in written} >= {
        "embeddings.png",
        "counts.png",
        "quality.png",
        "waveforms_1.png",
        "summary.png",
    }
    assert imread(tmp_path / "summary.png").shape[:2] == (1000, 1500)
    for page in (tmp_path / "plots").glob("waveforms_*.png"):
        assert imread(page).shape[0] <= 1000 and imread(page).shape[1] == 1440


def test_no_layout_solver_and_distinct_unit_styles(bench_plots) -> None:
    from deepspike.sorting.plots import summary_figure, unit_styles, waveform_pages

    styles = unit_styles(list(range(150)))
    assert len(set(styles.values())) == 150  # colour and marker together tell 150 units apart
    result = bench_plots.synthetic_result(30, duration_s=10.0)
    figures = [summary_figure(result), *waveform_pages(result, result.units_table())]
    assert all(fig.get_layout_engine() is None for fig in figures)  # fixed grids: no constrained/tight solver


def test_probe_units_are_drawn_on_their_own_channels(bench_plots) -> None:
    from matplotlib.figure import Figure

    from deepspike.sorting.plots import MAX_CHANNELS, plot_unit, probe_layout, unit_styles

    result = bench_plots.synthetic_result(5, duration_s=10.0)
    units = result.units_table()
    row = next(units.itertuples(index=False))
    layout = probe_layout(result.recording)
    ax = Figure().add_subplot()
    plot_unit(ax, result, row, unit_styles(list(units["unit"])), layout)
    positions, _ = layout
    nearest = np.argsort(np.linalg.norm(positions - positions[row.peak_channel], axis=1), kind="stable")
    lines = ax.get_lines()
    assert len(lines) == MAX_CHANNELS
    centres = np.array([[np.mean(line.get_xdata()), np.median(line.get_ydata())] for line in lines])
    np.testing.assert_allclose(centres, positions[nearest[:MAX_CHANNELS]], atol=0.5 * layout[1])


# ------------------------------------------------------------------------------------------ lost results


def test_a_failing_plot_keeps_the_result_and_says_what_is_missing(bench_plots, tmp_path) -> None:
    from deepspike.sorting.app import summary

    result = bench_plots.synthetic_result(5, duration_s=10.0, num_channels=8)
    result.embeddings[0] = np.nan  # the embedding plot's PCA raises ValueError on it
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="plots"):
        write_outputs(result, out, plots=True, export_phy=True)
    assert all((out / name).exists() for name in TABLES)
    assert not (out / "summary.png").exists() and not (out / "plots").exists()
    assert (out / "phy" / "params.py").is_file()  # the next part still ran
    missing = (out / MISSING_FILE).read_text()
    assert "plots" in missing and "ValueError" in missing and "phy" not in missing
    assert "MISSING plots" in summary(result, out)
    assert _leftovers(out) == []


SIGNAL_SCRIPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {bench!r})
from plots import synthetic_result
import deepspike.sorting.plots as plots
from deepspike.sorting.outputs import write_outputs

real = plots.plot_all

def plot_then_wait(result, folder):  # the real plots, then a long wait in the plotting step, for the signal
    real(result, folder)
    Path({ready!r}).write_text("plotting")
    time.sleep(120)

plots.plot_all = plot_then_wait
write_outputs(synthetic_result(5, duration_s=10.0, num_channels=8), Path({out!r}), plots=True, export_phy=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_signal_during_plotting_keeps_the_result(tmp_path, sig: signal.Signals) -> None:
    out, ready = tmp_path / "out", tmp_path / "ready"
    script = SIGNAL_SCRIPT.format(bench=str(BENCH_PLOTS.parent), ready=str(ready), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.exists(), proc.stderr.read() if proc.poll() is not None else "plotting never started"
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert all((out / name).exists() for name in TABLES)  # the sort is never lost
    assert not (out / "summary.png").exists()
    missing = (out / MISSING_FILE).read_text()
    assert "plots" in missing and "phy" in missing
    if sig == signal.SIGKILL:  # nothing can run: missing.txt still says both parts are not written
        assert proc.returncode == -signal.SIGKILL and missing.count("not written") == 2
        assert [p for p in _leftovers(out) if not p.startswith(".plots.tmp-")] == []
    else:  # SIGTERM / Ctrl-C: the temporary folder is removed, the process still stops
        assert proc.returncode != 0 and "interrupted" in missing
        assert _leftovers(out) == []


# ---------------------------------------------------------------------------------------- sort(out=DIR)


def test_sort_with_out_writes_what_sort_py_writes(probe_folder, tmp_path) -> None:
    from spikeinterface.core import BaseSorting

    cli = tmp_path / "cli"
    run = subprocess.run(
        [sys.executable, str(REPO / "sort.py"), f"recording={probe_folder}", f"out={cli}", "features=pca"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    api = tmp_path / "api"
    sorting = sort(str(probe_folder), out=api, features="pca")
    assert isinstance(sorting, BaseSorting)
    assert _files(api) == _files(cli)
    assert {"metrics.csv", "summary.png", "units.csv"} <= set(_files(api))  # GT found beside the recording
    assert sorted(pd.read_csv(api / "units.csv")["unit"]) == sorted(int(u) for u in sorting.unit_ids)


def test_a_ground_truth_that_fails_to_load_costs_metrics_only(probe_folder, tmp_path) -> None:
    """It was loaded after the sort and before anything was written: a bad GT file lost the whole result."""
    bad = tmp_path / "gt.npz"
    bad.write_bytes(b"not a npz file")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="metrics.csv not written"):
        sort(str(probe_folder), out=out, gt=bad, features="pca", plots=False)
    assert {"spikes.csv", "units.csv", "sorting"} <= set(_files(out)) and "metrics.csv" not in _files(out)
    assert "metrics (metrics.csv): failed" in (out / MISSING_FILE).read_text()
    assert not _leftovers(out)


def test_sort_checks_out_before_sorting_and_options_need_out(tmp_path) -> None:
    out = tmp_path / "session"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    with pytest.raises(OutputExistsError, match="did not write"):  # not the missing recording: out is checked first
        sort(tmp_path / "no_such_recording.bin", out=out, features="pca")
    assert _files(out) == ["notes.txt"]
    with pytest.raises(DeepSpikeError, match="out=DIR"):
        sort(tmp_path / "no_such_recording.bin", plots=False, features="pca")


# ------------------------------------------------------------------------------------------------ Phy


def test_phy_reads_a_binary_source_in_place_with_pc_features(probe_folder, probe_result, tmp_path) -> None:
    from spikeinterface.extractors import read_phy

    out = tmp_path / "out"
    write_outputs(probe_result, out, export_phy=True, plots=False)
    phy = out / "phy"
    params: dict = {}
    exec((phy / "params.py").read_text(), params)
    source = probe_result.recording.get_binary_description()["file_paths"][0]
    assert (phy / params["dat_path"]).samefile(source) and not (phy / "recording.dat").exists()
    assert params["hp_filtered"] is False and params["dtype"] == "float32" and params["offset"] == 0
    n_spikes = len(np.load(phy / "spike_times.npy"))
    features = np.load(phy / "pc_features.npy")
    assert features.shape[:2] == (n_spikes, 5) and np.load(phy / "pc_feature_ind.npy").shape[0] >= 1
    units = pd.read_csv(out / "units.csv").set_index("unit")
    back = read_phy(phy)  # cluster_group.tsv carries the curation labels: SpikeInterface reads them as "quality"
    assert {int(u): q for u, q in zip(back.unit_ids, back.get_property("quality"), strict=True)} == {
        int(u): units.loc[int(u), "label"] for u in back.unit_ids
    }


def test_phy_copies_a_recording_it_cannot_read(tmp_path) -> None:
    from spikeinterface.core import generate_ground_truth_recording

    rec, _ = generate_ground_truth_recording(durations=[5], num_channels=4, num_units=3, seed=2)
    result = run_sort(rec, params=SortParams(features="pca"))
    write_outputs(result, tmp_path / "out", export_phy=True, plots=False)
    phy = tmp_path / "out" / "phy"
    params: dict = {}
    exec((phy / "params.py").read_text(), params)
    assert params["dat_path"] == "recording.dat" and params["hp_filtered"] is True
    assert (phy / "recording.dat").stat().st_size == rec.get_num_samples() * rec.get_num_channels() * 4
    assert (phy / "pc_features.npy").is_file()


def test_missing_file_is_absent_when_everything_was_written(probe_result, tmp_path) -> None:
    out = tmp_path / "out"
    timings = write_outputs(probe_result, out, plots=True)
    assert not (out / MISSING_FILE).exists() and (out / "summary.png").is_file()
    assert {"write", "plots"} <= set(timings) and probe_result.info["missing"] == {}
    assert _leftovers(out) == [] and os.listdir(out)
