"""Sorting: pipeline accuracy against ground truth, outputs that load back, the sort.py app, bad input.

The model-free tests use ``features="pca"`` (same extraction, clustering and outputs as the encoder path); the
encoder tests use the bundled checkpoint and skip, with the reason, until it exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepspike.errors import DeepSpikeError, OutputExistsError, RecordingError, SpecMismatchError
from deepspike.evaluation.compare import COLUMNS, compare_to_ground_truth
from deepspike.sorting.features import DEFAULT_CHECKPOINT
from deepspike.sorting.outputs import RESULT_MARKER, check_output, write_outputs
from deepspike.sorting.params import SortParams
from deepspike.sorting.pipeline import run_sort, sort
from deepspike.sorting.result import SPIKE_COLUMNS, UNIT_COLUMNS

REPO = Path(__file__).resolve().parents[1]
QUIROGA = Path(__file__).resolve().parents[2] / "shared" / "data" / "quiroga" / "C_Easy1_noise015_5sec.mat"


def three_unit_recording(duration_s: float = 20.0, seed: int = 0, fs: float = 24000.0):
    """SpikeInterface ground-truth recording, one channel, 3 clearly different units (shape, sign, width)."""
    import spikeinterface.core as sc

    nb, na = int(1e-3 * fs), int(2e-3 * fs)
    t = (np.arange(nb + na) - nb) / fs * 1e3  # ms

    def shape(amp: float, width: float, ratio: float, delay: float) -> np.ndarray:
        after = np.exp(-0.5 * ((t - delay) / (2.5 * width)) ** 2)
        return amp * (np.exp(-0.5 * (t / width) ** 2) - ratio * after)

    templates = np.stack([shape(-160, 0.10, 0.15, 0.4), shape(110, 0.20, 0.15, 0.6), shape(-100, 0.28, 0.1, 0.8)])
    return sc.generate_ground_truth_recording(
        durations=[duration_s],
        sampling_frequency=fs,
        num_channels=1,
        num_units=3,
        templates=templates[:, :, None].astype(np.float32),
        ms_before=1.0,
        ms_after=2.0,
        generate_sorting_kwargs={"firing_rates": [8.0, 12.0, 6.0], "refractory_period_ms": 4.0},
        noise_kwargs={"noise_levels": 10.0, "strategy": "on_the_fly"},
        seed=seed,
    )


@pytest.fixture(scope="module")
def gt_recording():
    return three_unit_recording()


@pytest.fixture(scope="module")
def pca_result(gt_recording):
    rec, _ = gt_recording
    return run_sort(rec, params=SortParams(features="pca"))


@pytest.fixture(scope="module")
def saved_recording(tmp_path_factory, gt_recording) -> Path:
    """The recording as a SpikeInterface folder, its ground truth beside it as ``NAME.gt/``."""
    rec, gt = gt_recording
    folder = tmp_path_factory.mktemp("rec") / "three_units"
    rec.save(folder=folder, chunk_duration="10s")
    gt.save(folder=folder.parent / "three_units.gt")
    return folder


@pytest.fixture(scope="module")
def encoder_path() -> Path:
    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip(f"bundled checkpoint {DEFAULT_CHECKPOINT.name} not trained yet (checkpoints/ is empty)")
    return DEFAULT_CHECKPOINT


# ------------------------------------------------------------------------------------------- accuracy


def test_pca_pipeline_accuracy(pca_result, gt_recording) -> None:
    _, gt = gt_recording
    metrics = compare_to_ground_truth(pca_result.sorting, gt)
    assert len(pca_result.unit_ids) == 3
    assert metrics["accuracy"].mean() >= 0.9, metrics


@pytest.mark.parametrize("method", ["dpgmm", "hdbscan", "kmeans"])
def test_other_methods_accuracy(gt_recording, method: str) -> None:
    rec, gt = gt_recording
    result = run_sort(rec, params=SortParams(features="pca", cluster=method))
    assert compare_to_ground_truth(result.sorting, gt)["accuracy"].mean() >= 0.9


def test_iterative_scheme(gt_recording) -> None:
    rec, gt = gt_recording
    result = run_sort(rec, params=SortParams(features="pca", cluster={"iterative": True}))
    assert compare_to_ground_truth(result.sorting, gt)["accuracy"].mean() >= 0.9


def test_encoder_accuracy(gt_recording, encoder_path) -> None:
    rec, gt = gt_recording
    sorting = sort(rec, checkpoint=encoder_path)
    assert compare_to_ground_truth(sorting, gt)["accuracy"].mean() >= 0.9


def test_hybrid_features_put_the_embedding_beside_pca_for_every_spike(gt_recording, encoder_path) -> None:
    """features=hybrid: the embedding and the recording's PCA at equal total variance, for the detected spikes and
    those template matching adds alike (PCA refitted on all of them, not fitted on the added ones alone)."""
    from deepspike.sorting.features import embed_waves, load_sort_encoder, pca_features
    from deepspike.sorting.multichannel import side_by_side

    rec, gt = gt_recording
    params = SortParams(features="hybrid")
    result = run_sort(rec, encoder_path, params)
    assert result.info["n_matched_new"] > 0  # the matched spikes' features are part of what is checked
    encoder = load_sort_encoder(encoder_path)
    emb = embed_waves(encoder, result.waves)
    expected = side_by_side(emb, pca_features(result.waves, result.spec, params.pca_components, params.seed))
    assert result.embeddings.shape == (len(result.waves), emb.shape[1] + params.pca_components)
    np.testing.assert_allclose(result.embeddings, expected, atol=1e-4)
    for block in (result.embeddings[:, : emb.shape[1]], result.embeddings[:, emb.shape[1] :]):
        assert block.var(axis=0).sum() == pytest.approx(1.0, rel=1e-3)
    assert compare_to_ground_truth(result.sorting, gt)["accuracy"].mean() >= 0.9
    SortParams(features="hybrid", finetune=True)  # the encoder of hybrid features can be fine-tuned


# ----------------------------------------------------------------------------------------- API, outputs


def test_sort_returns_spikeinterface_sorting(gt_recording) -> None:
    from spikeinterface.core import BaseSorting

    rec, _ = gt_recording
    sorting = sort(rec, features="pca", seed=1)
    assert isinstance(sorting, BaseSorting)
    assert {"channel", "amplitude", "snr", "embedding"} <= set(sorting.get_property_keys())
    res = sorting.deepspike
    assert res.embeddings.shape == (len(res.labels), 8)
    again = sort(rec, features="pca", seed=1).deepspike
    np.testing.assert_array_equal(res.labels, again.labels)  # deterministic per seed


def test_outputs_load_back(pca_result, gt_recording, tmp_path) -> None:
    import spikeinterface as si

    _, gt = gt_recording
    out = tmp_path / "out"
    write_outputs(pca_result, out, gt_sorting=gt, data_file="three_units")
    loaded = si.load(out / "sorting")
    assert sorted(loaded.unit_ids) == sorted(pca_result.sorting.unit_ids)
    spikes = pd.read_csv(out / "spikes.csv")
    assert list(spikes.columns) == SPIKE_COLUMNS
    assert len(spikes) == len(pca_result.labels)
    assert sum(len(loaded.get_unit_spike_train(u)) for u in loaded.unit_ids) == int((spikes.unit >= 0).sum())
    units = pd.read_csv(out / "units.csv")
    assert list(units.columns[: len(UNIT_COLUMNS)]) == UNIT_COLUMNS and len(units) == 3
    assert np.load(out / "embeddings.npy").shape[0] == len(spikes)
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns[: len(COLUMNS)]) == COLUMNS and len(metrics) == 3  # + matched unit, unit counts
    assert (out / "config.yaml").is_file() and (out / "summary.png").is_file()
    assert {p.name for p in (out / "plots").iterdir()} == {"embeddings.png", "waveforms_1.png", "counts.png",
                                                         "quality.png"}  # fmt: skip
    assert not list(tmp_path.glob(".out.tmp-*")) and not list(out.glob(".*.tmp-*"))
    assert not (out / "missing.txt").exists()  # every part landed


def test_existing_output_is_refused_and_untouched(pca_result, tmp_path) -> None:
    out = tmp_path / "session1"  # a folder DeepSpike did not write: a notes file and a subfolder
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"keep")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="did not write") as e:
            write_outputs(pca_result, out, overwrite=overwrite, plots=False)
        assert str(out) in str(e.value) and "out=" in str(e.value)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["notes.txt", "sub", "sub/data.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["session1"]  # no temporary folder left behind


def test_overwrite_replaces_only_a_deepspike_result(pca_result, tmp_path) -> None:
    out = tmp_path / "res"
    write_outputs(pca_result, out, plots=False)
    assert (out / RESULT_MARKER).is_file()
    (out / "spikes.csv").write_text("stale")
    with pytest.raises(OutputExistsError, match="overwrite=true"):
        write_outputs(pca_result, out, plots=False)
    assert (out / "spikes.csv").read_text() == "stale"
    write_outputs(pca_result, out, overwrite=True, plots=False)
    assert list(pd.read_csv(out / "spikes.csv").columns) == SPIKE_COLUMNS and (out / RESULT_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]  # no temporary or old copy left behind


def test_a_result_folder_holding_the_input_is_never_replaced(tmp_path) -> None:
    out = tmp_path / "res"
    out.mkdir()
    (out / RESULT_MARKER).write_text("")
    (out / "rec.npy").write_bytes(b"recording")
    with pytest.raises(OutputExistsError, match="holds the input") as e:
        check_output(out, overwrite=True, inputs=[out / "rec.npy"])
    assert "out=" in str(e.value)
    with pytest.raises(OutputExistsError, match="holds the input"):
        check_output(tmp_path, overwrite=True, inputs=[out / "rec.npy"])  # an ancestor of the input
    assert (out / "rec.npy").read_bytes() == b"recording"


def test_unwritable_out_is_found_before_the_work(tmp_path) -> None:
    blocker = tmp_path / "notes.txt"  # a regular file where a folder is needed: fails as root too
    blocker.write_text("keep")
    with pytest.raises(DeepSpikeError, match="is a file") as e:
        check_output(blocker / "res", overwrite=False)
    assert str(blocker) in str(e.value) and "out=" in str(e.value)
    assert blocker.read_text() == "keep"


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses permission bits")
def test_read_only_out_is_refused_and_keeps_its_mode(tmp_path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(DeepSpikeError, match="not writable") as e:
            check_output(out, overwrite=True)
        assert "out=" in str(e.value)
        assert out.stat().st_mode & 0o777 == 0o555
    finally:
        out.chmod(0o755)


def test_noise_unit_option(gt_recording) -> None:
    rec, _ = gt_recording
    sorting = sort(rec, features="pca", noise_unit=True)
    is_noise = sorting.get_property("is_noise")
    assert is_noise.sum() == 1 and len(sorting.unit_ids) == 4


def test_no_spike_gives_empty_sorting() -> None:
    from spikeinterface.core import generate_recording

    rec = generate_recording(num_channels=1, sampling_frequency=24000.0, durations=[2.0], seed=3)
    with pytest.warns(UserWarning):
        sorting = sort(rec, features="pca", extract={"threshold": 50.0})
    assert len(sorting.unit_ids) == 0


# Floors a little below what was measured on the third-party Quiroga excerpt (C_Easy1 noise 0.15, 121 spikes,
# 24 kHz), seeds 0-2 giving the same units: pca mean 0.942 (per unit 0.955 / 0.872 / 1.000), bundled encoder mean
# 0.899 (0.933 / 0.854 / 0.909). A broken reader, realignment or clustering falls far below them.
QUIROGA_FLOORS = {"pca": (0.90, 0.82), "encoder": (0.85, 0.80)}  # (mean accuracy, worst unit)


@pytest.mark.parametrize(("features", "branch_dims"), [("pca", 0), ("encoder", 0), ("pca", 4)])
def test_quiroga_ground_truth_is_scored(tmp_path, features: str, branch_dims: int) -> None:
    """branch_dims=4 once lost the excerpt's 30-spike unit (a split leaving a part below min_spikes)."""
    if not QUIROGA.exists():
        pytest.skip(f"{QUIROGA} not found (third-party data lives in ../shared/data)")
    if features == "encoder" and not DEFAULT_CHECKPOINT.exists():
        pytest.skip(f"bundled checkpoint {DEFAULT_CHECKPOINT.name} not trained yet")
    from deepspike.recording.ground_truth import load_ground_truth
    from deepspike.recording.readers import open_recording

    rec = open_recording(QUIROGA, sampling_frequency=24000.0)
    result = run_sort(rec, params=SortParams(features=features, cluster={"branch_dims": branch_dims}))
    gt = load_ground_truth(QUIROGA, recording=rec)
    assert gt is not None and len(gt.unit_ids) == 3
    write_outputs(result, tmp_path / "q", gt_sorting=gt, data_file=QUIROGA.name, plots=False)
    metrics = pd.read_csv(tmp_path / "q" / "metrics.csv")
    assert len(metrics) == 3 and (metrics.data_file == QUIROGA.name).all()
    mean_floor, unit_floor = QUIROGA_FLOORS[features]
    assert metrics["accuracy"].mean() >= mean_floor and metrics["accuracy"].min() >= unit_floor, metrics


# ------------------------------------------------------------------------------------------- bad input


def test_missing_recording() -> None:
    with pytest.raises(RecordingError, match="no such file"):
        sort("/nonexistent/recording.bin", features="pca")


def test_unknown_format(tmp_path) -> None:
    p = tmp_path / "rec.xyz"
    p.write_bytes(b"\0" * 100)
    with pytest.raises(RecordingError, match="unknown recording format") as e:
        sort(p, features="pca")
    assert str(p) in str(e.value)


def test_missing_checkpoint_is_explained(gt_recording, tmp_path) -> None:
    rec, _ = gt_recording
    with pytest.raises(DeepSpikeError, match="features=pca"):
        sort(rec, checkpoint=tmp_path / "nope.safetensors")


def test_spec_mismatched_artifact(gt_recording, tmp_path) -> None:
    from deepspike.model.export import export_encoder
    from deepspike.model.nets import build_net
    from deepspike.spec import WindowSpec

    net = build_net({"kind": "mlp", "in_dim": 20, "hidden": 32, "depth": 2, "latent": 4})
    path = export_encoder(net, tmp_path / "bad.safetensors", window=WindowSpec(n_before=10, n_after=20))
    rec, _ = gt_recording
    with pytest.raises(SpecMismatchError, match="window spec"):
        sort(rec, checkpoint=path)


def test_unknown_option() -> None:
    with pytest.raises(DeepSpikeError, match="unknown sort option"):
        SortParams.from_options({"clusterr": "gmm"})
    with pytest.raises(DeepSpikeError, match=r"features.*'hybrid'"):
        SortParams(features="umap")


# ---------------------------------------------------------------------------------------------- sort.py


def _sort_py(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "sort.py"), *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )


def test_sort_py_writes_outputs_and_refuses_overwrite(saved_recording, tmp_path) -> None:
    out = tmp_path / "cli"
    run = _sort_py(f"recording={saved_recording}", f"out={out}", "features=pca", "plots=false")
    assert run.returncode == 0, run.stderr
    assert "units" in run.stdout
    for name in ("spikes.csv", "units.csv", "sorting", "metrics.csv", "config.yaml", "embeddings.npy"):
        assert (out / name).exists(), name
    assert len(pd.read_csv(out / "metrics.csv")) == 3  # GT found beside the recording (three_units.gt/)
    before = sorted(p.name for p in out.iterdir())
    again = _sort_py(f"recording={saved_recording}", f"out={out}", "features=pca")
    assert again.returncode != 0 and "overwrite=true" in again.stderr
    assert sorted(p.name for p in out.iterdir()) == before


def test_sort_py_never_deletes_the_recordings_folder(tmp_path) -> None:
    session = tmp_path / "LAB" / "session1"  # the reproduction: out= names the recording's own folder
    (session / "sub").mkdir(parents=True)
    np.save(session / "rec.npy", np.zeros(24000, np.float32))
    (session / "notes.txt").write_text("keep")
    before = sorted(p.name for p in session.rglob("*"))
    run = _sort_py(
        f"recording={session / 'rec.npy'}", "recording_options.sampling_frequency=24000", f"out={session}",
        "overwrite=true", "features=pca", "plots=false",
    )  # fmt: skip
    assert run.returncode != 0
    assert sorted(p.name for p in session.rglob("*")) == before
    assert "Traceback" not in run.stderr and "out=" in _error_line(run)


def test_sort_py_errors_are_one_line_with_the_command_line_key(tmp_path) -> None:
    np.save(tmp_path / "rec.npy", np.zeros(24000, np.float32))
    run = _sort_py(f"recording={tmp_path / 'rec.npy'}", f"out={tmp_path / 'o'}", "features=pca", "plots=false")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    line = _error_line(run)
    assert "recording_options.sampling_frequency=" in line and str(tmp_path / "rec.npy") in line
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep")
    run = _sort_py(
        f"recording={tmp_path / 'rec.npy'}", "recording_options.sampling_frequency=24000", f"out={blocker / 'o'}",
        "features=pca", "plots=false",
    )  # fmt: skip
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert str(blocker) in _error_line(run) and "out=" in _error_line(run)
    assert blocker.read_text() == "keep"


def _error_line(run: subprocess.CompletedProcess) -> str:
    """The one line that names the problem (a hint to rerun with debug=true may follow)."""
    lines = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, run.stderr
    return lines[0]


def test_config_validation(tmp_path) -> None:
    from hydra import compose, initialize_config_dir

    from deepspike.sorting.app import run_from_config

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("sort", overrides=["finetune=true", "features=pca", f"out={tmp_path / 'x'}"])
        with pytest.raises(DeepSpikeError, match="features=encoder"):
            run_from_config(cfg)
        cfg = compose("sort", overrides=["recording=/nonexistent.mat", f"out={tmp_path / 'x'}"])
        with pytest.raises(RecordingError, match="not found"):
            run_from_config(cfg)
        cfg = compose("sort", overrides=["cluster=dpgmm", "cluster.max_units=0", "features=pca"])
        with pytest.raises(DeepSpikeError, match="max_units"):
            run_from_config(cfg)
    assert not (tmp_path / "x").exists()
