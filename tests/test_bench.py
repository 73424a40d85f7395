"""deepspike-bench: real sorters in their own processes, scored by SpikeInterface against generated ground truth."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepspike.errors import DeepSpikeError, OutputExistsError, RecordingError
from deepspike.evaluation.bench import COLUMNS, SUMMARY_COLUMNS, UNIT_COLUMNS, BenchConfig, parse_sorter, run_bench
from deepspike.evaluation.bench_set import make_set

REPO = Path(__file__).resolve().parents[1]
# Measured on the tiny recording below (3 units, SNR 10-30, 10 s at 24 kHz): deepspike 0.976, mountainsort5 0.987
DEEPSPIKE_FLOOR = 0.85


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10 s generator recording with 3 units, saved as NAME/ + NAME.gt/ (what the benchmark set holds)."""
    from deepspike.recording.synthetic import generate_recording, save_pair

    folder = tmp_path_factory.mktemp("bench_data")
    rec, gt = generate_recording(3, duration_s=10.0, sampling_frequency=24000.0, num_units=3, snr_range=(10, 30))
    save_pair(rec, gt, folder / "tiny", folder / "tiny.gt", progress=False)
    return folder / "tiny"


def _bench(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "deepspike.evaluation.bench", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_cli_scores_deepspike_and_reports_a_failing_sorter_as_a_row(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    pattern = str(tiny.parent / "*")  # the glob also matches tiny.gt/: it must not be taken for a recording
    run = _bench(f"recordings=['{pattern}']", "sorters=[deepspike,nosuchsorter,herdingspikes]", f"out={out}")
    assert run.returncode == 0, run.stderr[-3000:]
    metrics = pd.read_csv(out / "metrics.csv", keep_default_na=False, na_values=[""])
    assert list(metrics.columns) == COLUMNS
    assert list(metrics["sorter_name"]) == ["deepspike", "nosuchsorter", "herdingspikes"]
    assert set(metrics["data_file"]) == {"tiny"}
    ds = metrics.set_index("sorter_name").loc["deepspike"]
    assert ds["accuracy"] > DEEPSPIKE_FLOOR and ds["num_units_gt"] == 3 and ds["num_units_found"] >= 1
    assert pd.isna(ds["error"]) and ds["wall_s"] > ds["sort_s"] > 0  # the process's time includes the sort
    assert 0 <= ds["num_redundant"] <= ds["num_units_found"] and ds["num_false_positive"] >= 0
    bad = metrics.set_index("sorter_name").loc["nosuchsorter"]
    assert "unknown sorter 'nosuchsorter'" in bad["error"] and pd.isna(bad["accuracy"])
    absent = metrics.set_index("sorter_name").loc["herdingspikes"]  # a SpikeInterface sorter not installed here
    assert "sorter herdingspikes is not installed: pip install herdingspikes" in absent["error"]
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert list(summary["sorter_name"]) == ["deepspike", "nosuchsorter", "herdingspikes"]
    assert list(summary["recordings_ok"]) == [1, 0, 0] and list(summary["recordings_failed"]) == [0, 1, 1]
    units = pd.read_csv(out / "metrics_units.csv")
    assert list(units.columns) == UNIT_COLUMNS and len(units) == 3 * 3
    ds_units = units[units["sorter_name"] == "deepspike"]
    assert np.all(ds_units["snr"] > 5) and np.all(ds_units["num_spikes"] > 0)
    assert np.isclose(ds_units["accuracy"].mean(), ds["accuracy"])  # the row is the mean over GT units
    for png in ("accuracy_by_recording.png", "accuracy_vs_snr.png"):
        assert (out / "plots" / png).stat().st_size > 1000

    run_bench(BenchConfig(recordings=[pattern], sorters=["deepspike"], out=str(out), plots=False))  # resume
    rerun = pd.read_csv(out / "metrics.csv").set_index("sorter_name").loc["deepspike"]
    assert rerun["wall_s"] == pytest.approx(ds["wall_s"], rel=1e-5)


def test_a_sorter_that_runs_too_long_is_a_row_not_a_crash(tiny: Path, tmp_path: Path) -> None:
    conf = BenchConfig(
        recordings=[str(tiny)], sorters=["deepspike"], out=str(tmp_path / "b"), timeout_s=0.5, plots=False
    )
    run_bench(conf)
    row = pd.read_csv(tmp_path / "b" / "metrics.csv").iloc[0]
    assert "timed out after 0.5 s" in row["error"] and pd.isna(row["accuracy"]) and row["wall_s"] >= 0.5


def test_inputs_are_checked_before_any_run(tiny: Path, tmp_path: Path) -> None:
    no_gt = tmp_path / "copy"
    import shutil

    shutil.copytree(tiny, no_gt)
    with pytest.raises(RecordingError, match=r"copy: no ground truth found.*copy\.gt/"):
        run_bench(BenchConfig(recordings=[str(no_gt)], sorters=["deepspike"], out=str(tmp_path / "b")))
    assert not (tmp_path / "b").exists()
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not written by deepspike-bench"):
        run_bench(BenchConfig(recordings=[str(tiny)], sorters=["deepspike"], out=str(foreign)))
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    with pytest.raises(DeepSpikeError, match="no recordings"):
        BenchConfig(recordings=[], out="x").validate()


def test_sorter_names() -> None:
    assert parse_sorter("deepspike").method == "gmm" and not parse_sorter("deepspike").finetune
    ft = parse_sorter("deepspike-dpgmm-ft")
    assert (ft.kind, ft.method, ft.finetune) == ("deepspike", "dpgmm", True)
    assert parse_sorter("deepspike-pca").features == "pca"
    ks = parse_sorter("kilosort4", {"kilosort4": {"do_CAR": False}})
    assert ks.kind == "spikeinterface" and dict(ks.params) == {"do_CAR": False}
    for bad in ("deepspike-gmmm", "nosuchsorter", "deepspike-ft-kmeans"):
        with pytest.raises(DeepSpikeError, match="unknown sorter"):
            parse_sorter(bad)


def test_make_set_is_seeded_resumable_and_converts_quiroga(tmp_path: Path, shared_data: Path) -> None:
    quiroga = shared_data / "quiroga" / "C_Easy1_noise015_5sec.mat"
    tiers = {"easy": {"n": 2, "num_units": [2, 4], "snr_range": [15.0, 50.0]}, "mix": {"n": 1, "recipe": "broad"}}
    spec = {"seed": 1, "duration_s": 2.0, "tiers": tiers, "broad_overrides": {"num_units": [2, 3]},
            "include": [{"path": str(quiroga), "sampling_frequency": 24000, "tier": "quiroga"}]}  # fmt: skip
    out = tmp_path / "set"
    make_set(BenchConfig(out=str(out), make_set=True, set=spec))
    index = json.loads((out / "bench_set.json").read_text())["recordings"]
    assert {k: v["tier"] for k, v in index.items()} == {
        "easy_00": "easy", "easy_01": "easy", "mix_00": "mix", "quiroga_C_Easy1_noise015_5sec": "quiroga",
    }  # fmt: skip
    assert index["easy_00"]["seed"] != index["easy_01"]["seed"] and 2 <= index["mix_00"]["num_units"] <= 3
    assert (
        index["quiroga_C_Easy1_noise015_5sec"]["fs"] == 24000
        and index["quiroga_C_Easy1_noise015_5sec"]["num_units"] == 3
    )
    stamp = {p: (out / p / "si_folder.json").stat().st_mtime_ns for p in index}
    make_set(BenchConfig(out=str(out), make_set=True, set=spec))  # a rerun keeps what is complete
    assert stamp == {p: (out / p / "si_folder.json").stat().st_mtime_ns for p in index}
    changed = {**spec, "tiers": {**tiers, "easy": {**tiers["easy"], "snr_range": [20.0, 30.0]}}}
    make_set(BenchConfig(out=str(out), make_set=True, set=changed))  # a changed tier is made again, the rest kept
    after = {p: (out / p / "si_folder.json").stat().st_mtime_ns for p in index}
    assert [p for p in index if after[p] != stamp[p]] == ["easy_00", "easy_01"]
    assert json.loads((out / "bench_set.json").read_text())["recordings"]["easy_00"]["snr_range"] == [20.0, 30.0]
    other = tmp_path / "same_seed"
    make_set(BenchConfig(out=str(other), make_set=True, set={**changed, "include": []}))
    for name in ("easy_00", "mix_00"):  # seeded: the same recordings again
        a, b = (np.fromfile(next((d / name).glob("traces*.raw")), dtype=np.float32) for d in (out, other))
        assert np.array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("sorter,floor", [("mountainsort5", 0.9), ("kilosort4", None)])
def test_peer_sorter(tiny: Path, tmp_path: Path, sorter: str, floor: float | None) -> None:
    """Peers run in < 30 s on 10 s here (2-core box): mountainsort5 6 s, accuracy 0.987; kilosort4 19 s (one unit)."""
    from spikeinterface.sorters import sorter_dict

    if not sorter_dict[sorter].is_installed():
        pytest.skip(f"{sorter} not installed (pip install -e '.[bench]')")
    run_bench(BenchConfig(recordings=[str(tiny)], sorters=[sorter], out=str(tmp_path / "b"), plots=False))
    row = pd.read_csv(tmp_path / "b" / "metrics.csv", keep_default_na=False, na_values=[""]).iloc[0]
    assert pd.isna(row["error"]) and row["num_units_found"] >= 1
    if floor is not None:
        assert row["accuracy"] > floor


@pytest.mark.slow
def test_peer_sorter_on_a_recording_without_probe(tmp_path: Path) -> None:
    """Recipe recordings (and .mat files) carry no probe: peers get a one-channel line instead of a ValueError."""
    from spikeinterface.sorters import sorter_dict

    from deepspike.recording.synthetic import generate_recording, save_pair

    if not sorter_dict["mountainsort5"].is_installed():
        pytest.skip("mountainsort5 not installed (pip install -e '.[bench]')")
    rec, gt = generate_recording(5, duration_s=10.0, recipe="broad", num_units=3)
    assert not rec.has_probe()
    save_pair(rec, gt, tmp_path / "noprobe", tmp_path / "noprobe.gt", progress=False)
    conf = BenchConfig(recordings=[str(tmp_path / "noprobe")], sorters=["mountainsort5"], out=str(tmp_path / "b"))
    run_bench(conf)
    row = pd.read_csv(tmp_path / "b" / "metrics.csv", keep_default_na=False, na_values=[""]).iloc[0]
    assert pd.isna(row["error"]) and row["num_units_found"] >= 1


def test_a_wrapped_sorter_traceback_becomes_its_root_cause_on_one_line() -> None:
    from deepspike.evaluation.bench import error_line

    wrapped = RuntimeError(
        'Spike sorting error trace:\nTraceback (most recent call last):\n  File "x.py", line 1, in f\n'
        "torch._C._LinAlgError: linalg.svd: input contained non-finite values.\n\nSpike sorting failed. See log.json."
    )
    assert error_line(wrapped) == "RuntimeError: torch._C._LinAlgError: linalg.svd: input contained non-finite values."
    assert error_line(ValueError("bad value\nmore")) == "ValueError: bad value"


HARRIS = "harris2000_hc1_d533101/harris_d533101_5sec.mat"
PROBE_TIERS = {
    "tetrode": {"n": 1, "probe": "tetrode", "num_units": [4, 8], "snr_range": [4.0, 20.0], "sampling_frequency": 30000},
    "shank": {"n": 1, "probe": "shank", "num_channels": [16, 32], "num_units": [8, 20], "snr_range": [4.0, 20.0],
              "sampling_frequency": 30000},
}  # fmt: skip


def test_make_set_probe_tiers_keep_their_probe_and_leave_single_channel_tiers_unchanged(tmp_path: Path) -> None:
    from deepspike.evaluation.bench_set import _tier_kwargs
    from deepspike.recording.readers import open_recording

    easy = {"n": 1, "num_units": [2, 4], "snr_range": [15.0, 50.0]}
    assert _tier_kwargs(easy, 1234, {}) == {"num_units": 4, "snr_range": (15.0, 50.0)}  # as before probe tiers
    for out, tiers in (("a", {"easy": easy}), ("b", {"easy": easy, **PROBE_TIERS})):
        make_set(
            BenchConfig(out=str(tmp_path / out), make_set=True, set={"seed": 2, "duration_s": 1.0, "tiers": tiers})
        )
    a, b = (np.fromfile(next((tmp_path / d / "easy_00").glob("traces*.raw")), dtype=np.float32) for d in "ab")
    assert np.array_equal(a, b)
    index = json.loads((tmp_path / "b" / "bench_set.json").read_text())["recordings"]
    assert index["tetrode_00"]["num_channels"] == 4 and 4 <= index["tetrode_00"]["num_units"] <= 8
    assert 16 <= index["shank_00"]["num_channels"] <= 32 and index["shank_00"]["num_channels"] % 2 == 0
    for name in ("tetrode_00", "shank_00"):
        rec = open_recording(tmp_path / "b" / name)
        assert rec.has_probe() and rec.get_num_channels() == index[name]["num_channels"]
        assert rec.get_sampling_frequency() == 30000.0


@pytest.mark.parametrize(
    "tiers,include,match",
    [
        ({"t": {**PROBE_TIERS["tetrode"], "num_chanels": [4, 4]}}, [], r"set\.tiers\.t\.num_chanels: unknown key"),
        ({"t": {**PROBE_TIERS["tetrode"], "num_channels": [4, 4]}}, [], r"set\.tiers\.t\.num_channels: unknown"),
        ({"s": {k: v for k, v in PROBE_TIERS["shank"].items() if k != "snr_range"}}, [],
         r"set\.tiers\.s\.snr_range: missing"),
        ({"s": {**PROBE_TIERS["shank"], "probe": "utah"}}, [], r"set\.tiers\.s\.probe must be one of"),
        ({"s": {**PROBE_TIERS["shank"], "num_units": [8]}}, [], r"set\.tiers\.s\.num_units must be \[low, high\]"),
        ({"e": {"n": 1, "probe_": "tetrode"}}, [], r"set\.tiers\.e\.probe_: unknown key"),
        ({}, [{"path": "x.mat", "shift": -27}], r"set\.include\[0\]\.shift: unknown key"),
        ({}, [{"path": "x.mat", "gt_shift_samples": 2.5}], r"set\.include\[0\]\.gt_shift_samples must be a whole"),
    ],
)  # fmt: skip
def test_bad_set_keys_are_named(tiers: dict, include: list, match: str, tmp_path: Path) -> None:
    spec = {"seed": 0, "duration_s": 1.0, "tiers": tiers, "include": include}
    with pytest.raises(DeepSpikeError, match=match):
        make_set(BenchConfig(out=str(tmp_path / "s"), make_set=True, set=spec))


def test_an_unknown_key_of_the_set_block_is_named(tmp_path: Path) -> None:
    spec = {"seed": 0, "duration_s": 1.0, "tiers": {}, "tiers_only": True}
    with pytest.raises(DeepSpikeError, match=r"set\.tiers_only: unknown key"):
        make_set(BenchConfig(out=str(tmp_path / "s"), make_set=True, set=spec))
    assert not (tmp_path / "s").exists()  # refused before anything is written


def test_harris_tetrode_include_gets_a_probe_and_gt_on_the_extracellular_troughs(
    tmp_path: Path, shared_data: Path
) -> None:
    from scipy.signal import butter, sosfiltfilt

    from deepspike.recording.ground_truth import load_ground_truth
    from deepspike.recording.readers import open_recording

    item = {"path": str(shared_data / HARRIS), "tier": "harris_tetrode", "probe": "tetrode", "gt_shift_samples": -27}
    spec = {"seed": 0, "duration_s": 1.0, "tiers": {}, "include": [item]}
    make_set(BenchConfig(out=str(tmp_path / "s"), make_set=True, set=spec))
    folder = tmp_path / "s" / "harris_tetrode_harris_d533101_5sec"
    rec = open_recording(folder)
    assert rec.get_num_channels() == 4 and rec.get_sampling_frequency() == 10000.0 and rec.has_probe()
    gt = load_ground_truth(folder, recording=rec)
    times = gt.get_unit_spike_train(gt.unit_ids[0], segment_index=0)
    assert len(times) == 11
    sos = butter(3, [400, 4000], btype="bandpass", fs=10000.0, output="sos")
    x = sosfiltfilt(sos, rec.get_traces(segment_index=0).astype(np.float64), axis=0).sum(axis=1)
    sigma = np.median(np.abs(x - np.median(x))) / 0.6745
    near = np.arange(-5, 6)
    trough = near[np.argmin(x[times[:, None] + near], axis=1)]  # the deepest sample within +-0.5 ms of each GT time
    assert np.all(np.abs(trough) <= 1) and np.median(trough) == 0, trough  # -28 or -26 would be 1 sample off
    assert np.all(x[times] < -5 * sigma)  # a clear extracellular spike at every GT time


def test_peer_parameters_follow_the_recording_channel_count() -> None:
    from deepspike.defaults import conf_values
    from deepspike.evaluation.bench import for_recording

    conf = BenchConfig(recordings=["x"], sorters=["kilosort4"])  # the defaults of conf/bench.yaml
    ks = parse_sorter("kilosort4", conf.sorter_params)
    single = dict(for_recording(ks, conf, 1).params)
    assert single == conf_values("bench.yaml")["sorter_params_single_channel"]["kilosort4"]
    assert single["do_CAR"] is False and single["do_correction"] is False  # kilosort4 fails on one channel otherwise
    assert dict(for_recording(ks, conf, 4).params) == conf_values("bench.yaml")["sorter_params"]["kilosort4"]
    ms5 = parse_sorter("mountainsort5", conf.sorter_params)
    assert for_recording(ms5, conf, 16).params == () and for_recording(ms5, conf, 1).params == ()
    ds = parse_sorter("deepspike")
    assert for_recording(ds, conf, 4) == ds


def test_redundant_and_false_positive_units_are_counted_per_recording_and_summarized() -> None:
    from spikeinterface.core import NumpySorting

    from deepspike.evaluation.bench import Recording, score, summarize

    fs, rng = 30000.0, np.random.default_rng(0)
    a, b = (np.sort(rng.choice(np.arange(100, 1_800_000, 200), 300, replace=False)) for _ in range(2))
    gt = NumpySorting.from_unit_dict([{"a": a, "b": b}], fs)
    split = rng.random(len(a)) < 0.6  # unit a found as two units: the larger half matches, the other is redundant
    noise = np.sort(rng.choice(np.arange(150, 1_800_000, 200), 200, replace=False))  # matches nothing
    found = NumpySorting.from_unit_dict([{0: a[split], 1: a[~split], 2: b, 3: noise}], fs)
    rec = Recording("r", "r", "tetrode", gt, {}, {}, {}, 4)
    row, units = score(rec, "s", found, 1.0, 0.5, "", 0.4)
    assert (row["num_redundant"], row["num_false_positive"], row["num_units_found"]) == (1, 1, 4)
    assert units.set_index("gt_unit").loc["b", "accuracy"] == 1.0
    clean, _ = score(rec, "s", NumpySorting.from_unit_dict([{0: a, 1: b}], fs), 1.0, 0.5, "", 0.4)
    failed, _ = score(rec, "s", None, 1.0, float("nan"), "boom", 0.4)
    assert (clean["num_redundant"], clean["num_false_positive"]) == (0, 0) and pd.isna(failed["num_redundant"])
    summary = summarize(pd.DataFrame([row, clean, failed], columns=COLUMNS)).iloc[0]
    assert (summary["num_redundant_mean"], summary["num_redundant_max"]) == (0.5, 1)  # over the runs that worked


# ------------------------------------------------------------------------------------------------ large tiers

LARGE = ("drift", "dense", "long", "long_tetrode")


def _tiny_large_tiers() -> dict[str, dict]:
    """conf/bench.yaml's large tiers as declared, shrunk to seconds and a few channels (shapes checked against them)."""
    from deepspike.defaults import conf_values

    tiers = conf_values("bench.yaml")["set"]["tiers"]
    small = {
        "drift": {"n": 2, "duration_s": 2.0, "num_channels": [8, 12], "num_units": [2, 3]},
        "dense": {"n": 1, "duration_s": 1.0, "num_channels": [16, 16], "num_units": [3, 4]},
        "long": {"n": 1, "duration_s": 3.0},
        "long_tetrode": {"n": 1, "duration_s": 2.0},
    }
    return {name: {**tiers[name], **small[name]} for name in LARGE}


def test_large_tiers_are_opt_in_and_the_default_set_is_unchanged() -> None:
    from deepspike.defaults import conf_values
    from deepspike.evaluation.bench_set import selected_tiers

    s = conf_values("bench.yaml")["set"]
    assert list(selected_tiers(s)) == [
        "easy",
        "low_snr",
        "many_units",
        "similar",
        "overlaps",
        "broad",
        "tetrode",
        "shank",
    ]
    assert list(selected_tiers({**s, "select": ["dense", "drift"]})) == ["dense", "drift"]
    for name in LARGE:  # declared with their shapes: n 2, 64-128 / 128 channels, 2-5 min / 30-60 min
        assert s["tiers"][name]["opt_in"] is True and s["tiers"][name]["n"] == 2
    assert 64 <= s["tiers"]["drift"]["num_channels"][0] <= s["tiers"]["drift"]["num_channels"][1] <= 128
    assert 120 <= s["tiers"]["drift"]["duration_s"] <= 300 and s["tiers"]["dense"]["num_channels"][0] >= 128
    assert all(1800 <= s["tiers"][t]["duration_s"] <= 3600 for t in ("long", "long_tetrode"))


def test_make_set_large_tiers_have_their_shapes_and_drift_twins_share_the_spikes(tmp_path: Path) -> None:
    from deepspike.recording.ground_truth import load_ground_truth
    from deepspike.recording.readers import open_recording

    tiers = _tiny_large_tiers()
    spec = {"seed": 0, "duration_s": 1.0, "tiers": tiers, "select": list(LARGE)}
    make_set(BenchConfig(out=str(tmp_path / "s"), make_set=True, set=spec))
    index = json.loads((tmp_path / "s" / "bench_set.json").read_text())["recordings"]
    assert sorted(index) == ["dense_00", "drift_00", "drift_01", "drift_static_00", "drift_static_01", "long_00",
                             "long_tetrode_00"]  # fmt: skip
    assert [index[n]["motion"]["drift_mode"] for n in ("drift_00", "drift_01")] == ["zigzag", "bump"]
    assert index["drift_01"]["motion"]["non_rigid_gradient"] == 0.4 and "non_rigid_gradient" not in index["drift_00"]
    for name, r in index.items():
        rec = open_recording(tmp_path / "s" / name)
        tier = tiers[r["tier"].removesuffix("_static")]
        assert rec.get_num_samples() == round(tier["duration_s"] * rec.get_sampling_frequency())
        assert rec.get_num_channels() == r["num_channels"] and (rec.has_probe() or r["num_channels"] == 1)
        if "num_channels" in tier:
            assert tier["num_channels"][0] <= r["num_channels"] <= tier["num_channels"][1]
            assert r["num_channels"] % 4 == 0
    assert index["long_00"]["num_channels"] == 1 and index["long_tetrode_00"]["num_channels"] == 4
    dense = open_recording(tmp_path / "s" / "dense_00").get_probe().contact_positions
    assert len(set(dense[:, 0])) == 4 and sorted(set(np.diff(sorted(set(dense[:, 1]))))) == [20.0]  # NP1 rows
    for i in ("00", "01"):
        moving, still = (tmp_path / "s" / f"drift{k}_{i}" for k in ("", "_static"))
        assert index[f"drift_{i}"]["static_twin"] == still.name and index[still.name]["twin_of"] == moving.name
        gt_moving, gt_still = load_ground_truth(moving), load_ground_truth(still)
        for u in gt_moving.unit_ids:
            assert np.array_equal(gt_moving.get_unit_spike_train(u), gt_still.get_unit_spike_train(u))
    a, b = (open_recording(tmp_path / "s" / n).get_traces() for n in ("drift_00", "drift_static_00"))
    assert a.shape == b.shape and not np.allclose(a, b)  # the zigzag moved the units: same spikes, other traces
    drift = load_ground_truth(tmp_path / "s" / "long_00").get_property("gt_drift")
    assert len(drift) == index["long_00"]["num_units"] and np.all(np.abs(drift) <= tiers["long"]["amplitude_drift"])
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "s").glob("*/si_folder.json")}
    make_set(BenchConfig(out=str(tmp_path / "s"), make_set=True, set=spec))  # a rerun keeps both twins
    assert {p.parent.name: p.stat().st_mtime_ns for p in (tmp_path / "s").glob("*/si_folder.json")} == stamps


def test_amplitude_drift_changes_only_the_amplitudes() -> None:
    """One unit (no overlaps): the difference to the same seed without drift is (factor - 1) x its template, with
    the factor linear in time through 1 at the middle of the recording."""
    from deepspike.recording.synthetic import generate_recording

    still, gt = generate_recording(5, duration_s=4.0, num_units=1, snr_range=(20, 30))
    moving, gt_moving = generate_recording(5, duration_s=4.0, num_units=1, snr_range=(20, 30), amplitude_drift=0.3)
    t = gt.get_unit_spike_train(gt.unit_ids[0])
    assert np.array_equal(t, gt_moving.get_unit_spike_train(gt.unit_ids[0])) and len(t) > 10
    diff = moving.get_traces()[:, 0].astype(np.float64) - still.get_traces()[:, 0]
    assert np.mean(diff == 0) > 0.5  # the same noise: only the spikes differ
    t = t[(t > 100) & (t < len(diff) - 100)]
    windows = diff[t[:, None] + np.arange(-40, 80)[None, :]]
    c = windows @ windows[-1]  # (factor_k - 1) x (factor_last - 1) x |template|^2: linear in time
    slope, intercept = np.polyfit(t, c, 1)
    assert abs(np.corrcoef(t, c)[0, 1]) > 0.999 and abs(-intercept / slope - len(diff) / 2) < 0.02 * len(diff)
    assert 0 < abs(gt_moving.get_property("gt_drift")[0]) <= 0.3


def test_tier_parameters_reach_run_sorter(tmp_path: Path) -> None:
    """Each tier's own parameter reaches run_sorter (SpikeInterface refuses an unknown one before sorting) and is
    recorded with the run; the defaults turn motion correction on for the drift tiers only."""
    from deepspike.evaluation.bench import for_recording

    tiers = {"drift": {**_tiny_large_tiers()["drift"], "n": 1, "duration_s": 1.0, "num_channels": [8, 8]}}
    spec = {"seed": 0, "duration_s": 1.0, "tiers": tiers, "select": ["drift"]}
    make_set(BenchConfig(out=str(tmp_path / "s"), make_set=True, set=spec))
    by_tier = {"drift": {"simple": {"drift_only_param": 1}}, "drift_static": {"simple": {"static_only_param": 2}}}
    conf = BenchConfig(recordings=[str(tmp_path / "s" / "*")], sorters=["simple"], out=str(tmp_path / "b"),
                       plots=False, sorter_params_by_tier=by_tier)  # fmt: skip
    run_bench(conf)
    rows = pd.read_csv(tmp_path / "b" / "metrics.csv").set_index("data_file")
    assert "drift_only_param" in rows.loc["drift_00", "error"] and "static_only" not in rows.loc["drift_00", "error"]
    assert "static_only_param" in rows.loc["drift_static_00", "error"]
    job = json.loads((tmp_path / "b" / "runs" / "drift_00__simple.json").read_text())["job"]
    assert job["sorter"]["params"] == [["drift_only_param", 1]]

    default = BenchConfig(recordings=["x"], sorters=["kilosort4"])  # conf/bench.yaml
    ks, sc2, tdc2 = (
        parse_sorter(name, default.sorter_params) for name in ("kilosort4", "spykingcircus2", "tridesclous2")
    )
    for tier in ("drift", "drift_static"):
        assert dict(for_recording(ks, default, 128, tier).params) == {"do_correction": True}
        assert dict(for_recording(sc2, default, 64, tier).params) == {"apply_motion_correction": True}
        assert dict(for_recording(tdc2, default, 64, tier).params) == {"apply_motion_correction": True}
    assert dict(for_recording(ks, default, 128, "dense").params) == {"do_correction": False}
    assert for_recording(tdc2, default, 4, "tetrode").params == () and for_recording(sc2, default, 4, "").params == ()


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("select", ["drift", "nope"], r"set\.select: unknown tier 'nope'"),
        ("select", "drift", r"set\.select must be a list of tier names"),
        ("drift.drift_um", None, r"set\.tiers\.drift\.drift_um: missing"),
        ("drift.motions", [{"drift_mode": "bumps"}], r"set\.tiers\.drift\.motions\[0\]\.drift_mode must be zigzag"),
        ("drift.motions", [{"mode": "zigzag"}], r"set\.tiers\.drift\.motions\[0\]\.mode: unknown key"),
        ("drift.num_channels", [64, 126], r"set\.tiers\.drift\.num_channels must be multiples of 4"),
        ("dense.num_channels", [130, 130], r"set\.tiers\.dense\.num_channels must be multiples of 4"),
        ("dense.opt_in", "yes", r"set\.tiers\.dense\.opt_in must be true or false"),
        ("long.duration_s", -1, r"set\.tiers\.long\.duration_s must be a number of seconds > 0"),
        ("long.recipe", "broad", r"set\.tiers\.long\.amplitude_drift must be in \[0, 1\) and only without a recipe"),
        ("long.amplitude_drift", 1.5, r"set\.tiers\.long\.amplitude_drift must be in \[0, 1\)"),
        ("long_tetrode.num_units", [0, 4], r"set\.tiers\.long_tetrode\.num_units must be"),
    ],
)  # fmt: skip
def test_bad_large_tier_keys_are_named(key: str, value: object, match: str, tmp_path: Path) -> None:
    spec = {"seed": 0, "duration_s": 1.0, "tiers": _tiny_large_tiers(), "select": list(LARGE)}
    if key == "select":
        spec["select"] = value
    else:
        tier, name = key.split(".")
        if value is None:
            spec["tiers"][tier].pop(name)
        else:
            spec["tiers"][tier][name] = value
    with pytest.raises(DeepSpikeError, match=match):
        make_set(BenchConfig(out=str(tmp_path / "s"), make_set=True, set=spec))
    assert not (tmp_path / "s").exists()  # refused before anything is written


@pytest.mark.parametrize(
    "by_tier,match",
    [
        ({"drift": {"kilosort4": "on"}}, r"sorter_params_by_tier\.drift\.kilosort4 must map parameter -> value"),
        ({"drift": ["kilosort4"]}, r"sorter_params_by_tier\.drift must map sorter -> parameters"),
        ({"drift": {"kilosrt4": {"do_correction": True}}}, r"sorter_params_by_tier\.drift\.kilosrt4: not a SpikeInt"),
    ],
)
def test_bad_sorter_params_by_tier_are_named(by_tier: dict, match: str, tiny: Path, tmp_path: Path) -> None:
    conf = BenchConfig(recordings=[str(tiny)], sorters=["deepspike"], out=str(tmp_path / "b"),
                       sorter_params_by_tier=by_tier)  # fmt: skip
    with pytest.raises(DeepSpikeError, match=match):
        conf.validate()  # the shape, as from the command line
        run_bench(conf)  # sorter names: before any run
    assert not (tmp_path / "b").exists()


def test_a_peer_that_runs_too_long_is_a_row_with_the_error(tiny: Path, tmp_path: Path) -> None:
    from spikeinterface.sorters import sorter_dict

    if not sorter_dict["spykingcircus2"].is_installed():
        pytest.skip("spykingcircus2 not installed")
    conf = BenchConfig(recordings=[str(tiny)], sorters=["spykingcircus2"], out=str(tmp_path / "b"), timeout_s=1.0,
                       plots=False)  # fmt: skip
    run_bench(conf)
    rows = pd.read_csv(tmp_path / "b" / "metrics.csv").set_index("sorter_name")
    assert "timed out after 1 s" in rows.loc["spykingcircus2", "error"] and pd.isna(
        rows.loc["spykingcircus2", "accuracy"]
    )
    assert rows.loc["spykingcircus2", "wall_s"] >= 1.0


def test_timeout_kills_the_worker_and_its_children(tmp_path: Path) -> None:
    """A peer sorter that spawns its own processes must not leave them running past the bench's timeout."""
    import os
    import sys
    import time

    from deepspike.evaluation.bench import run_worker

    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    t0 = time.perf_counter()
    code, out = run_worker([sys.executable, "-c", script], 3.0, dict(os.environ))
    assert code is None and "started" in out
    assert time.perf_counter() - t0 < 30
    child = int(pid_file.read_text())
    for _ in range(50):  # the kill is asynchronous: give the kernel a moment to reap
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        stat = Path(f"/proc/{child}/stat")
        assert stat.is_file() and stat.read_text().split()[2] == "Z", "the worker's child outlived the timeout"


# ------------------------------------------------------------------- bench/features.py (issue 25, item 1)


def _features_bench():
    """bench/features.py as a module (bench/ is scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("features_bench", REPO / "bench" / "features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gap_share_needs_room_and_the_goals_read_each_kind_of_set() -> None:
    fb = _features_bench()
    assert fb.gap(0.9, 0.8, 0.85) == pytest.approx({"minus_pca": 0.05, "share": 0.5})
    assert fb.gap(0.83, 0.8, 0.9) == pytest.approx({"minus_pca": 0.1, "share": None})  # room 0.03: no share
    assert fb.gap(0.9, 0.8, 0.7)["share"] == pytest.approx(-1.0)  # worse than PCA: a negative share

    def one(kind: str, ceiling: float, pca: float, enc: float) -> dict:
        return {"kind": kind, "gap": {"encoder:x": fb.gap(ceiling, pca, enc)}}

    sets = {"a": one("single", 0.9, 0.8, 0.86), "b": one("single", 0.95, 0.94, 0.925),
            "c": one("single", 1.0, 0.6, 0.7), "m": one("multi", 0.99, 0.98, 0.985)}  # fmt: skip
    g = fb.goals(sets, ["encoder:x"])
    single, multi = g["single"]["encoder:x"], g["multi"]["encoder:x"]
    assert single["worst_set"] == "b" and single["worst_minus_pca"] == pytest.approx(-0.015)
    assert single["never_worse_met"] is False
    assert single["sets_with_room"] == 2 and single["mean_share"] == pytest.approx((0.6 + 0.25) / 2)
    assert single["share_met"] is True
    assert multi["never_worse_met"] is True and multi["mean_share"] is None and multi["share_met"] is None


def test_features_bench_quick_path_computes_the_gap_shares(tmp_path: Path) -> None:
    fb = _features_bench()
    out = tmp_path / "features.json"
    fb.main(["--quick", "--checkpoints", "bundled", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert out.with_suffix(".png").exists()
    sets = doc["sets"]
    assert {s["kind"] for s in sets.values()} == {"single", "multi"}
    features = ["encoder:deepspike_synth_v1", "hybrid:deepspike_synth_v1"]
    for name, s in sets.items():
        recs = s["recordings"].values()
        m = s["mean"]
        for r in recs:
            assert r["pca"] == r[f"pca_{doc['pca_components'][s['kind']]}"]
            assert all(0.0 <= r[k] <= 1.0 for k in ["ceiling", "pca", *features])
        assert m["ceiling"] == pytest.approx(np.mean([r["ceiling"] for r in recs]))
        assert s["room"] == pytest.approx(m["ceiling"] - m["pca"])
        for f in features:
            g = s["gap"][f]
            assert g["minus_pca"] == pytest.approx(m[f] - m["pca"]), name
            if s["room"] >= doc["room"]:
                assert g["share"] == pytest.approx((m[f] - m["pca"]) / (m["ceiling"] - m["pca"])), name
            else:
                assert g["share"] is None, name
    for kind, by_feature in doc["goals"].items():
        for f, goal in by_feature.items():
            margins = [s["gap"][f]["minus_pca"] for s in sets.values() if s["kind"] == kind]
            assert goal["worst_minus_pca"] == pytest.approx(min(margins))
            assert goal["never_worse_met"] == (min(margins) >= -fb.NEVER_WORSE)
