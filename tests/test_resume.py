"""Sorts that resume (issue 24): each finished stage is cached in ``out/.deepspike-cache`` with the key of its
inputs; a sort killed midway restarts from its last finished stage, other settings recompute (never mixed)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepspike.sorting.cache import CACHE_DIR, PARTIAL_MARKER, StageCache
from deepspike.sorting.params import SortParams
from deepspike.sorting.pipeline import run_sort

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def probe_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8-channel, 30 s SpikeInterface ground-truth recording saved as a folder (a recording given by path)."""
    import spikeinterface.core as sc

    rec, gt = sc.generate_ground_truth_recording(durations=[30], num_channels=8, num_units=5, seed=7)
    folder = tmp_path_factory.mktemp("resume") / "probe8"
    rec.save(folder=folder, n_jobs=1, chunk_duration="10s", progress_bar=False)
    gt.save(folder=folder.parent / "probe8.gt")
    return folder


def test_a_stage_round_trips_exactly_and_another_key_is_recomputed(tmp_path: Path) -> None:
    cache = StageCache(tmp_path / CACHE_DIR)
    arrays = {"labels": np.arange(7) - 1, "emb": np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)}
    cache.save("clustered", "k1", arrays, {"n_units": 6})
    again = StageCache(tmp_path / CACHE_DIR)
    got = again.load("clustered", "k1")
    assert got is not None and all(np.array_equal(got[k], v) and got[k].dtype == v.dtype for k, v in arrays.items())
    assert again.info("clustered") == {"n_units": 6} and again.loaded == ["clustered"]
    other = StageCache(tmp_path / CACHE_DIR)
    assert other.load("clustered", "k2") is None
    assert other.load("sorted", "k1") is None  # nothing after a recomputed stage is taken, whatever its key
    assert (tmp_path / PARTIAL_MARKER).is_file()


def test_same_settings_resume_other_settings_recompute(probe_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / CACHE_DIR
    first = run_sort(str(probe_folder), params=SortParams(features="pca"), cache_dir=cache)
    assert first.info["resumed"] == []
    again = run_sort(str(probe_folder), params=SortParams(features="pca"), cache_dir=cache)
    assert again.info["resumed"] == ["spikes", "sorted"]
    for name in ("sample_index", "labels", "channel", "embeddings"):
        assert np.array_equal(getattr(first, name), getattr(again, name)), name
    other = run_sort(str(probe_folder), params=SortParams(features="pca", seed=3), cache_dir=cache)
    assert other.info["resumed"] == ["spikes"]  # detection does not depend on the seed; clustering does
    ref = run_sort(str(probe_folder), params=SortParams(features="pca", seed=3))  # no cache at all
    assert np.array_equal(other.labels, ref.labels) and np.array_equal(other.sample_index, ref.sample_index)


def test_sigkill_midway_then_rerun_resumes_and_equals_an_uninterrupted_sort(probe_folder: Path, tmp_path: Path) -> None:
    def cmd(out: Path) -> list[str]:
        return [sys.executable, str(REPO / "sort.py"), f"recording={probe_folder}", f"out={out}", "features=pca",
                "plots=false", "n_jobs=1"]  # fmt: skip

    whole = tmp_path / "whole"
    subprocess.run(cmd(whole), check=True, capture_output=True, cwd=REPO, timeout=600)
    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd(out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / CACHE_DIR / "spikes.json"
    deadline = time.monotonic() + 300
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode == 0:
        pytest.skip("the sort finished before it could be killed")
    assert marker.exists() and not (out / "spikes.csv").exists()
    rerun = subprocess.run(cmd(out), capture_output=True, text=True, cwd=REPO, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed: the spikes" in rerun.stdout
    for table in ("spikes.csv", "units.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(out / table), pd.read_csv(whole / table))
    assert not (out / CACHE_DIR).exists() and not (out / PARTIAL_MARKER).exists()  # the result replaced the cache


def test_the_motion_estimate_round_trips_through_the_stage_cache() -> None:
    """A resumed probe sort reads the drift estimate back instead of estimating it again."""
    from spikeinterface.core.motion import Motion

    from deepspike.sorting.motion import PEAK_DTYPE, motion_arrays, motion_from_arrays

    rng = np.random.default_rng(0)
    motion = Motion([rng.normal(size=(30, 5))], [np.arange(30) + 0.5], np.linspace(0, 400, 5), direction="y")
    peaks = np.zeros(4, dtype=PEAK_DTYPE)
    back, got_peaks = motion_from_arrays(motion_arrays(motion, peaks))
    assert np.array_equal(back.displacement[0], motion.displacement[0])
    assert np.array_equal(back.temporal_bins_s[0], motion.temporal_bins_s[0])
    assert np.array_equal(back.spatial_bins_um, motion.spatial_bins_um) and got_peaks.dtype == PEAK_DTYPE
