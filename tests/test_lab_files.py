"""A lab's own files (issue #23, items 1 and 7): raw multi-channel files get their probe from the command line
(``probe=``) and sort like the SpikeInterface folder of the same recording; a multi-channel file without geometry is
refused with the fix; reader options are applied or refused, never ignored; a mistyped command-line key gets
DeepSpike's own hint; relative encoder paths work from any directory.

Recordings are SpikeInterface's generator (it attaches a 2-column, 20 um grid probe), written here as a folder, an
int16 ``.dat`` (interleaved, scaled) and a float32 ``.npy`` [samples, channels].
"""

from __future__ import annotations

import gc
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepspike.errors import DeepSpikeError, RecordingError
from deepspike.evaluation.compare import compare_to_ground_truth
from deepspike.recording.readers import open_recording
from deepspike.sorting.params import SortParams
from deepspike.sorting.pipeline import run_sort

REPO = Path(__file__).resolve().parents[1]
FS = 25000.0  # the generator's rate
BUNDLED = "checkpoints/deepspike_synth_v1.safetensors"


@dataclass
class Lab:
    """One recording written the ways a lab has it, with its ground truth and its probe as a JSON file."""

    folder: Path
    dat: Path
    npy: Path
    probe_json: Path
    gt: Any
    num_channels: int
    dat_options: dict[str, Any]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    from probeinterface import write_probeinterface
    from spikeinterface.core import generate_ground_truth_recording

    rec, gt = generate_ground_truth_recording(durations=[10.0], num_channels=8, num_units=5, seed=4)
    d = tmp_path_factory.mktemp("lab")
    gc.freeze()  # SpikeInterface's save collects garbage per chunk: slow in a process that imported torch
    rec.save(folder=d / "session", chunk_duration="10s", verbose=False)
    traces = rec.get_traces()
    scale = 8000.0 / float(np.abs(traces).max())  # int16 with the largest spike at 8000: quantization << noise
    (traces * scale).round().astype(np.int16).tofile(d / "session.dat")
    np.save(d / "session.npy", traces.astype(np.float32))
    write_probeinterface(d / "probe.json", rec.get_probe())
    options = {"sampling_frequency": FS, "dtype": "int16", "num_channels": 8}
    return Lab(d / "session", d / "session.dat", d / "session.npy", d / "probe.json", gt, 8, options)


def _sort(path: Path, options: dict[str, Any] | None = None, **params: Any) -> Any:
    return run_sort(str(path), params=SortParams(n_jobs=1, **params), recording_options=options)


def _accuracy(result: Any, gt: Any) -> float:
    return float(compare_to_ground_truth(result.sorting, gt)["accuracy"].mean())


# --- item 1: probes from the command line -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dat", "npy"])
def test_a_multichannel_file_without_geometry_is_refused_with_the_fix(lab: Lab, kind: str) -> None:
    """Reproduction: an int16 .dat / float32 .npy was sorted channel by channel (125 units for 10)."""
    path = lab.dat if kind == "dat" else lab.npy
    options = lab.dat_options if kind == "dat" else {"sampling_frequency": FS}
    with pytest.raises(RecordingError) as e:
        _sort(path, options, features="pca")
    message = str(e.value)
    assert str(path) in message and "8 channels" in message
    assert "probe=linear:25" in message and "set_probe" in message  # the command line and the Python way
    assert "multichannel.enabled=false" in message  # the explicit channel-by-channel opt-in


def test_dat_and_npy_with_the_probe_sort_like_the_spikeinterface_folder(lab: Lab) -> None:
    """Reproduction of the goal: the same units from the raw files given probe= as from the folder."""
    folder = _sort(lab.folder)
    npy = _sort(lab.npy, {"sampling_frequency": FS}, probe=str(lab.probe_json))
    dat = _sort(lab.dat, lab.dat_options, probe=str(lab.probe_json))
    assert npy.recording.has_probe() and dat.recording.get_channel_locations().tolist() == (
        folder.recording.get_channel_locations().tolist()
    )
    # float32 .npy: the very same traces, so the very same spike trains
    assert len(npy.sorting.unit_ids) == len(folder.sorting.unit_ids)
    for u in folder.sorting.unit_ids:
        np.testing.assert_array_equal(npy.sorting.get_unit_spike_train(u), folder.sorting.get_unit_spike_train(u))
    # int16 .dat: scaled and rounded, so the same units up to quantization (this draw: 7 units for 5, accuracy 0.99)
    assert len(dat.sorting.unit_ids) == len(folder.sorting.unit_ids)
    assert abs(_accuracy(dat, lab.gt) - _accuracy(folder, lab.gt)) < 0.02
    assert _accuracy(dat, lab.gt) > 0.95


def test_channel_by_channel_is_an_explicit_opt_in(lab: Lab) -> None:
    per_channel = _sort(lab.dat, lab.dat_options, features="pca", multichannel={"enabled": False})
    assert len(per_channel.sorting.unit_ids) > len(lab.gt.unit_ids)  # a neuron once per channel: why it is opt-in


def test_single_channel_recordings_need_no_probe() -> None:
    from spikeinterface.core import NumpyRecording

    noise = np.random.default_rng(0).normal(0, 10, (24000, 1)).astype(np.float32)
    result = run_sort(NumpyRecording([noise], sampling_frequency=24000.0), params=SortParams(features="pca"))
    assert not result.recording.has_probe()


def test_an_in_memory_recording_without_probe_is_refused_and_left_untouched() -> None:
    from probeinterface import generate_linear_probe
    from spikeinterface.core import NumpyRecording, generate_ground_truth_recording

    generated, _ = generate_ground_truth_recording(durations=[5.0], num_channels=4, num_units=3, seed=0)
    rec = NumpyRecording([generated.get_traces()], sampling_frequency=FS)  # the same traces, no probe
    with pytest.raises(RecordingError, match=r"4 channels and no probe.*probe=linear:25"):
        run_sort(rec, params=SortParams(features="pca"))
    sorted_rec = run_sort(rec, params=SortParams(features="pca", probe="linear:25")).recording
    assert sorted_rec.has_probe() and not rec.has_probe()  # the caller's recording is not modified
    assert sorted_rec.get_channel_locations()[:, 1].tolist() == [0, 25, 50, 75]
    probe = generate_linear_probe(num_elec=4, ypitch=25)
    probe.set_device_channel_indices(np.arange(4))
    rec.set_probe(probe)  # the Python way the message names
    assert run_sort(rec, params=SortParams(features="pca")).recording.has_probe()


def test_generated_layouts(lab: Lab) -> None:
    from deepspike.recording.probes import make_probe, probe_from_spec

    def positions(spec: str, n: int) -> np.ndarray:
        return probe_from_spec(spec, n).to_dataframe(complete=True)[["x", "y"]].to_numpy()

    np.testing.assert_array_equal(positions("linear:20", 3), [[0, 0], [0, 20], [0, 40]])
    generator = open_recording(lab.folder).get_channel_locations()  # SpikeInterface's 2 x 4 grid at 20 um
    np.testing.assert_array_equal(positions("grid:2x20", 8), generator)
    np.testing.assert_array_equal(positions("staggered:2x22", 16), make_probe("shank", 16).contact_positions)
    tetrodes = probe_from_spec("tetrode", 8)
    assert len(tetrodes.probes) == 2  # channels 0-3 and 4-7: two groups
    rec = open_recording(lab.dat, **lab.dat_options)
    from deepspike.recording.probes import attach_probe

    grouped = attach_probe(rec, "tetrode", lab.dat)
    assert grouped.get_channel_groups().tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_prb_file(tmp_path: Path) -> None:
    from deepspike.recording.probes import attach_probe

    prb = tmp_path / "two_tetrodes.prb"
    prb.write_text(
        "channel_groups = {\n"
        "  0: {'channels': [0, 1, 2, 3], 'geometry': {0: (0, 0), 1: (20, 0), 2: (0, 20), 3: (20, 20)}},\n"
        "  1: {'channels': [4, 5, 6, 7], 'geometry': {4: (500, 0), 5: (520, 0), 6: (500, 20), 7: (520, 20)}},\n"
        "}\n"
    )
    from spikeinterface.core import NumpyRecording

    rec = attach_probe(NumpyRecording([np.zeros((100, 8), np.float32)], 30000.0), str(prb), "rec.dat")
    assert rec.get_channel_groups().tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert rec.get_channel_locations()[5].tolist() == [520.0, 0.0]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("hexagon", r"probe='hexagon'.*linear:PITCH"),
        ("linear:abc", r"probe='linear:abc'.*linear:25"),
        ("grid:0x20", r"probe='grid:0x20'.*COLUMNS"),
        ("staggered:2x-5", r"probe='staggered:2x-5'"),
        ("missing.json", r"probe='missing.json'.*no such file"),
    ],
)
def test_bad_probe_specs_name_the_key_and_the_accepted_forms(spec: str, expected: str) -> None:
    with pytest.raises(DeepSpikeError, match=expected) as e:
        SortParams(probe=spec)
    assert "tetrode" in str(e.value) and ".json" in str(e.value) and ".prb" in str(e.value)


def test_a_probe_that_does_not_fit_names_both_counts_and_the_files(lab: Lab) -> None:
    with pytest.raises(RecordingError) as e:
        _sort(lab.dat, {**lab.dat_options, "num_channels": 4}, probe=str(lab.probe_json))
    message = str(e.value)
    assert "8 contacts" in message and "4 channels" in message
    assert str(lab.probe_json) in message and str(lab.dat) in message
    with pytest.raises(RecordingError, match=r"staggered:3x20.*8 channels.*multiple of 3"):
        _sort(lab.dat, lab.dat_options, probe="staggered:3x20")


# --- item 7: options are applied or refused, never ignored --------------------------------------------------------


def test_a_rate_override_on_a_file_that_stores_its_rate_is_refused_unless_equal(lab: Lab) -> None:
    """Reproduction: recording_options.sampling_frequency=20000 on a folder was ignored (config.yaml said 20000)."""
    with pytest.raises(RecordingError) as e:
        open_recording(lab.folder, sampling_frequency=20000)
    message = str(e.value)
    assert "recording_options.sampling_frequency=20000" in message and "25000" in message
    assert str(lab.folder) in message
    assert open_recording(lab.folder, sampling_frequency=FS).sampling_frequency == FS  # the same rate: fine


@pytest.mark.parametrize("rate", [3000, 250000])
def test_an_implausible_rate_is_an_error_naming_the_key(lab: Lab, rate: int) -> None:
    """Reproduction: a .dat given 3,000 Hz sorted as 600 s with only a Nyquist warning."""
    with pytest.raises(RecordingError, match=r"recording_options\.sampling_frequency") as e:
        open_recording(lab.dat, **{**lab.dat_options, "sampling_frequency": rate})
    assert str(lab.dat) in str(e.value) and "5000" in str(e.value)


def test_layout_options_that_disagree_with_the_file_are_refused(lab: Lab) -> None:
    with pytest.raises(RecordingError, match=r"recording_options\.dtype=int16.*float32"):
        open_recording(lab.npy, sampling_frequency=FS, dtype="int16")
    with pytest.raises(RecordingError, match=r"recording_options\.num_channels=7.*8"):
        open_recording(lab.npy, sampling_frequency=FS, num_channels=7)
    with pytest.raises(RecordingError, match=r"recording_options\.num_channels=16.*8"):
        open_recording(lab.folder, num_channels=16)
    with pytest.raises(RecordingError, match=r"not a whole number of frames.*recording_options\.num_channels="):
        open_recording(lab.dat, **{**lab.dat_options, "num_channels": 3})
    assert open_recording(lab.npy, sampling_frequency=FS, dtype="float32", num_channels=8).get_num_channels() == 8


# --- item 7: DeepSpike's own message for an unknown command-line key ----------------------------------------------


def test_a_mistyped_key_gets_deepspikes_hint_before_hydras() -> None:
    """Reproduction: `clustr=gmm` got Hydra's `+clustr=gmm` hint, which then failed as an unknown sort option."""
    run = subprocess.run(
        [sys.executable, str(REPO / "sort.py"), "clustr=gmm"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert run.returncode != 0
    assert "unknown option 'clustr'; did you mean 'cluster'?" in run.stderr
    assert "+clustr" not in run.stderr and "Traceback" not in run.stderr


def test_the_check_keeps_hydras_own_syntax() -> None:
    from deepspike.sorting.app import check_overrides

    check_overrides(
        ["cluster=dpgmm", "cluster.max_units=5", "+recording_options.file_offset=8", "~plots", "hydra.run.dir=.",
         "finetuning@finetune_options=default", "--cfg", "job", "-m", "seed=1,2", "probe=linear:20",
         "recording_options.sampling_frequency=30000", "extract.threshold=5"]
    )  # fmt: skip
    with pytest.raises(DeepSpikeError, match=r"unknown option 'recording_options\.samplingfrequency'.*sampling_freq"):
        check_overrides(["recording_options.samplingfrequency=30000"])
    with pytest.raises(DeepSpikeError, match=r"unknown option 'prob'; did you mean 'probe'\?"):
        check_overrides(["prob=linear:20"])


def test_an_appended_unknown_key_is_named_with_a_suggestion() -> None:
    from deepspike.sorting.app import SortConfig

    with pytest.raises(DeepSpikeError, match=r"'clustr'.*did you mean 'cluster'"):
        SortConfig.from_cfg({"clustr": "gmm"})


# --- item 7: relative encoder paths ---------------------------------------------------------------------------------


def test_relative_encoder_paths_work_from_any_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reproduction: load_encoder("checkpoints/...") from another directory said "no encoder artifact ... train one"."""
    import deepspike
    from deepspike.sorting.app import SortConfig
    from deepspike.sorting.features import checkpoint_path, load_sort_encoder

    monkeypatch.chdir(tmp_path)
    assert deepspike.load_encoder(BUNDLED).path == REPO / BUNDLED
    assert load_sort_encoder(BUNDLED, SortParams(device="cpu")).path == REPO / BUNDLED
    assert checkpoint_path("deepspike_synth_v1.safetensors") == REPO / BUNDLED  # a bare name: checkpoints/
    SortConfig(checkpoint=BUNDLED).validate()
    (tmp_path / "checkpoints").mkdir()  # the current directory comes first
    for suffix in (".safetensors", ".json"):
        shutil.copy(REPO / BUNDLED.replace(".safetensors", suffix), tmp_path / BUNDLED.replace(".safetensors", suffix))
    assert checkpoint_path(BUNDLED) == tmp_path / BUNDLED


def test_a_missing_encoder_names_every_path_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import deepspike
    from deepspike.sorting.features import load_sort_encoder

    monkeypatch.chdir(tmp_path)
    for load in (deepspike.load_encoder, load_sort_encoder):
        with pytest.raises(DeepSpikeError) as e:
            load("checkpoints/nope.safetensors")
        message = str(e.value)
        assert str(tmp_path / "checkpoints" / "nope.safetensors") in message
        assert str(REPO / "checkpoints" / "nope.safetensors") in message and "train one" not in message
