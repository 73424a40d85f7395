"""recording.readers on real files written here (npy, raw binary, SI folder, Quiroga .mat, Neuroscope) and on the
third-party Quiroga excerpt; every error names the file and the fix."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from deepspike.errors import RecordingError
from deepspike.recording.ground_truth import load_ground_truth
from deepspike.recording.readers import SUPPORTED_FORMATS, open_recording

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
QUIROGA_EXCERPT = SHARED_DATA / "quiroga" / "C_Easy1_noise015_5sec.mat"
HAS_H5PY = importlib.util.find_spec("h5py") is not None


def _traces(rec) -> np.ndarray:
    return rec.get_traces(segment_index=0)


def _save_npy(path: Path, arr: np.ndarray) -> Path:
    np.save(path, arr)
    return path


# --- .npy ---------------------------------------------------------------------------------------------------------


def test_npy_one_d_is_one_channel_and_memory_mapped(tmp_path: Path) -> None:
    data = np.random.default_rng(0).normal(size=3000).astype(np.float32)
    rec = open_recording(_save_npy(tmp_path / "a.npy", data), sampling_frequency=30000)
    assert rec.get_num_channels() == 1 and rec.get_num_samples() == 3000
    assert rec.sampling_frequency == 30000
    np.testing.assert_array_equal(_traces(rec)[:, 0], data)
    assert type(rec).__name__ == "BinaryRecordingExtractor"  # lazy: nothing held in RAM, picklable for n_jobs


@pytest.mark.parametrize("fortran", [False, True])
def test_npy_two_d_samples_by_channels(tmp_path: Path, fortran: bool) -> None:
    data = np.random.default_rng(1).integers(-500, 500, size=(2000, 4)).astype(np.int16)
    data = np.asfortranarray(data) if fortran else data
    rec = open_recording(_save_npy(tmp_path / "b.npy", data), sampling_frequency=20000)
    assert rec.get_num_channels() == 4
    np.testing.assert_array_equal(_traces(rec), data)


@pytest.mark.parametrize("fortran", [False, True])
def test_npy_channels_by_samples_is_transposed_with_note(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fortran: bool
) -> None:
    data = np.random.default_rng(2).normal(size=(3, 1500)).astype(np.float64)
    data = np.asfortranarray(data) if fortran else data
    with caplog.at_level(logging.INFO, logger="deepspike.recording"):
        rec = open_recording(_save_npy(tmp_path / "c.npy", data), sampling_frequency=10000)
    assert rec.get_num_channels() == 3 and rec.get_num_samples() == 1500
    np.testing.assert_array_equal(_traces(rec), data.T)
    assert "channels x samples" in caplog.text


def test_npy_num_channels_overrides_the_shape_rule(tmp_path: Path) -> None:
    data = np.arange(100 * 200, dtype=np.float32).reshape(100, 200)  # 100 samples x 200 channels
    rec = open_recording(_save_npy(tmp_path / "d.npy", data), sampling_frequency=10000, num_channels=200)
    assert rec.get_num_channels() == 200
    np.testing.assert_array_equal(_traces(rec), data)


# --- raw binary and SpikeInterface folders ----------------------------------------------------------------------


def test_raw_binary_round_trip(tmp_path: Path) -> None:
    data = np.random.default_rng(3).integers(-1000, 1000, size=(1200, 3)).astype(np.int16)
    path = tmp_path / "r.dat"
    data.tofile(path)
    rec = open_recording(path, sampling_frequency=25000, dtype="int16", num_channels=3)
    assert rec.sampling_frequency == 25000 and rec.get_num_channels() == 3
    np.testing.assert_array_equal(_traces(rec), data)


def test_raw_binary_needs_dtype_and_channels(tmp_path: Path) -> None:
    path = tmp_path / "r.bin"
    np.zeros((10, 2), np.int16).tofile(path)
    with pytest.raises(RecordingError, match=r"dtype or num_channels") as e:
        open_recording(path, sampling_frequency=10000)
    assert str(path) in str(e.value) and "dtype='int16'" in str(e.value)
    with pytest.raises(
        RecordingError, match=r"check recording_options\.dtype= and recording_options\.num_channels="
    ) as e:
        open_recording(path, sampling_frequency=10000, dtype="int16", num_channels=3)
    assert str(path) in str(e.value)


@pytest.mark.filterwarnings("ignore:The extractor is not serializable")
def test_si_folder_and_sibling_ground_truth(tmp_path: Path) -> None:
    from spikeinterface.core import NumpyRecording, NumpySorting

    data = np.random.default_rng(4).normal(size=(3000, 2)).astype(np.float32)
    folder = tmp_path / "rec"
    NumpyRecording([data], sampling_frequency=30000).save(folder=folder, verbose=False)
    rec = open_recording(folder)
    assert rec.sampling_frequency == 30000
    np.testing.assert_allclose(_traces(rec), data)

    assert load_ground_truth(folder, recording=rec) is None
    gt = NumpySorting.from_samples_and_labels([np.array([10, 500, 900, 2000])], [np.array([0, 1, 0, 1])], 30000)
    gt.save(folder=tmp_path / "rec.gt")
    sorting = load_ground_truth(folder)  # opens the recording itself, finds rec.gt/
    assert sorting is not None and sorting.sampling_frequency == 30000
    assert sorting.to_spike_vector()["sample_index"].tolist() == [10, 500, 900, 2000]


# --- Quiroga / Wave_clus .mat ------------------------------------------------------------------------------------


def _write_quiroga_mat(path: Path, **rate: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quiroga layout: 1 x N `data`, 1-based onset times in a cell, classes in the first cell of spike_class.

    Unit 1 has a positive peak 20 samples after its onset, unit 2 a trough 14 samples after: the realigned
    (0-based) times must land exactly on those extrema.
    """
    rng = np.random.default_rng(5)
    n = 48000  # 2 s at 24 kHz
    data = rng.normal(scale=0.05, size=n)
    onsets = np.sort(rng.choice(np.arange(100, n - 100, 60), size=80, replace=False))
    labels = np.where(np.arange(80) % 2 == 0, 1, 2)
    lag = np.where(labels == 1, 20, 14)
    k = np.arange(-8, 9)
    bump = np.exp(-0.5 * (k / 2.5) ** 2)
    for t0, lab, lg in zip(onsets, labels, lag, strict=True):
        data[t0 + lg + k] += bump if lab == 1 else -1.3 * bump
    cell_times = np.empty((1, 1), dtype=object)
    cell_times[0, 0] = (onsets + 1).astype(np.uint16)[None, :]  # MATLAB 1-based
    cell_class = np.empty((1, 2), dtype=object)
    cell_class[0, 0] = labels[None, :].astype(np.uint8)
    cell_class[0, 1] = np.zeros((1, 80), np.uint8)  # overlap flags, ignored
    scipy.io.savemat(path, {"data": data[None, :], "spike_times": cell_times, "spike_class": cell_class, **rate})
    return data, onsets + lag, labels


def test_quiroga_mat_rate_ground_truth_and_realignment(tmp_path: Path) -> None:
    path = tmp_path / "C_Test.mat"
    data, peaks, labels = _write_quiroga_mat(path, samplingInterval=1 / 24)  # ms
    rec = open_recording(path)
    assert rec.sampling_frequency == pytest.approx(24000.0)
    assert rec.get_num_channels() == 1 and rec.get_num_samples() == data.size
    np.testing.assert_allclose(_traces(rec)[:, 0], data, rtol=1e-6, atol=1e-6)

    sorting = load_ground_truth(path, recording=rec)
    assert sorting.sampling_frequency == rec.sampling_frequency
    counts = {int(u): len(sorting.get_unit_spike_train(u)) for u in sorting.unit_ids}
    assert counts == {1: int((labels == 1).sum()), 2: int((labels == 2).sum())}
    for unit in (1, 2):
        np.testing.assert_array_equal(sorting.get_unit_spike_train(unit), np.sort(peaks[labels == unit]))
    assert sorting.get_annotation("gt_index_base") == 1
    assert sorting.get_annotation("gt_realign_shift_samples") == {"1": 20, "2": 14}
    assert dict(
        zip(sorting.unit_ids.tolist(), sorting.get_property("realign_shift_samples").tolist(), strict=True)
    ) == {
        1: 20,
        2: 14,
    }

    raw = load_ground_truth(path, recording=rec, realign=False)
    np.testing.assert_array_equal(raw.get_unit_spike_train(2), np.sort(peaks[labels == 2] - 14))


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        ({"samplingInterval": 0.0417}, 24000.0),  # Quiroga's rounded interval in ms
        ({"sr": 30000.0}, 30000.0),
        ({"par": {"sr": 32000.0}}, 32000.0),
        ({"dt": 5e-5}, 20000.0),
    ],
)
def test_mat_rate_fields(tmp_path: Path, rate: dict, expected: float) -> None:
    path = tmp_path / "m.mat"
    scipy.io.savemat(path, {"data": np.zeros((1, 500)) + 0.1, **rate})
    assert open_recording(path).sampling_frequency == pytest.approx(expected)
    assert load_ground_truth(path) is None  # no spike_times in the file


def test_mat_override_and_missing_rate(tmp_path: Path) -> None:
    path = tmp_path / "norate.mat"
    scipy.io.savemat(path, {"data": np.ones((1, 300))})
    with pytest.raises(RecordingError, match=r"sampling_frequency=") as e:
        open_recording(path)
    assert str(path) in str(e.value)
    assert open_recording(path, sampling_frequency=24000).sampling_frequency == 24000


@pytest.fixture(scope="module")
def quiroga_excerpt() -> Path:
    if not QUIROGA_EXCERPT.is_file():
        pytest.skip(f"{QUIROGA_EXCERPT} not found (third-party data lives beside the repo)")
    return QUIROGA_EXCERPT


def test_real_quiroga_excerpt(quiroga_excerpt: Path) -> None:
    assert open_recording(quiroga_excerpt).sampling_frequency == pytest.approx(10000.0)  # the file's (wrong) dt
    rec = open_recording(quiroga_excerpt, sampling_frequency=24000)
    assert rec.sampling_frequency == 24000 and rec.get_num_samples() == 50000

    sorting = load_ground_truth(quiroga_excerpt, recording=rec)
    counts = {int(u): len(sorting.get_unit_spike_train(u)) for u in sorting.unit_ids}
    assert counts == {1: 44, 2: 47, 3: 30}

    m = scipy.io.loadmat(quiroga_excerpt)
    stored = m["true_spike_times"].ravel().astype(np.int64)
    classes = m["true_spike_class"].ravel().astype(np.int64)
    data = m["data"].ravel()
    readme_lag = {1: 21, 2: 22, 3: 22}  # data README: extremum of the raw mean at data[t + k], t as stored
    k = np.arange(-4, 5)
    for unit, lag in readme_lag.items():
        realigned = sorting.get_unit_spike_train(unit)
        shift = realigned - np.sort(stored[classes == unit])
        assert len(np.unique(shift)) == 1 and abs(shift[0] - lag) <= 1  # one shift per unit; peaks are 2 samples flat
        mean = np.abs(data[realigned[:, None] + k].mean(axis=0))
        assert abs(k[np.argmax(mean)]) <= 1 and mean[4] >= 0.95 * mean.max()  # sits on the waveform's extremum


def test_real_harris_excerpt_keeps_times_without_onset_convention(caplog: pytest.LogCaptureFixture) -> None:
    path = SHARED_DATA / "harris2000_hc1_d533101" / "harris_d533101_5sec.mat"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    rec = open_recording(path)
    assert rec.get_num_channels() == 4 and rec.get_num_samples() == 50000  # 4 x N `data` read as channels first
    with caplog.at_level(logging.WARNING, logger="deepspike.recording"):
        sorting = load_ground_truth(path, recording=rec)
    stored = scipy.io.loadmat(path)["true_spike_times"].ravel().astype(np.int64)
    assert sorting.get_annotation("gt_time_reference") == "as_stored"  # GT marks 2.8 ms after the trough
    assert sorting.to_spike_vector()["sample_index"].tolist() == sorted((stored - 1).tolist())  # 1-based
    assert "times kept as stored" in caplog.text


# --- a neo format: Neuroscope (.dat + .xml) ----------------------------------------------------------------------

_NEUROSCOPE_XML = """<?xml version='1.0'?>
<parameters>
 <acquisitionSystem><nBits>16</nBits><nChannels>{n}</nChannels><samplingRate>{fs}</samplingRate>
  <voltageRange>20</voltageRange><amplification>1000</amplification><offset>0</offset></acquisitionSystem>
 <anatomicalDescription><channelGroups><group>{channels}</group></channelGroups></anatomicalDescription>
</parameters>
"""


def test_neuroscope_via_neo(tmp_path: Path) -> None:
    data = np.random.default_rng(6).integers(-300, 300, size=(800, 2)).astype(np.int16)
    data.tofile(tmp_path / "session.dat")
    channels = "".join(f"<channel>{c}</channel>" for c in range(2))
    (tmp_path / "session.xml").write_text(_NEUROSCOPE_XML.format(n=2, fs=20000, channels=channels))
    for path in (tmp_path / "session.dat", tmp_path / "session.xml"):
        rec = open_recording(path)
        assert rec.sampling_frequency == 20000 and rec.get_num_channels() == 2
        np.testing.assert_array_equal(_traces(rec), data)


def test_extension_outside_the_table_is_probed_through_neo(tmp_path: Path) -> None:
    """`.lfp` is in no table here; neo's NeuroScopeRawIO claims it and SpikeInterface has its reader."""
    data = np.random.default_rng(10).integers(-300, 300, size=(600, 2)).astype(np.int16)
    data.tofile(tmp_path / "session.lfp")
    channels = "".join(f"<channel>{c}</channel>" for c in range(2))
    (tmp_path / "session.xml").write_text(_NEUROSCOPE_XML.format(n=2, fs=1250, channels=channels))
    rec = open_recording(tmp_path / "session.lfp")
    assert rec.sampling_frequency == 1250 and rec.get_num_channels() == 2
    np.testing.assert_array_equal(_traces(rec), data)


def test_neo_format_without_a_spikeinterface_reader_is_named(tmp_path: Path) -> None:
    path = tmp_path / "rec.vhdr"  # BrainVision: neo reads it, SpikeInterface has no recording reader
    path.write_text("Brain Vision Data Exchange Header File Version 1.0\n")
    with pytest.raises(RecordingError, match="BrainVisionRawIO") as e:
        open_recording(path)
    assert str(path) in str(e.value) and "NumPy" in str(e.value)  # still lists what is read


def test_multi_stream_needs_a_stream_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import spikeinterface.extractors as se
    from spikeinterface.core import NumpyRecording

    calls: list[dict] = []

    class FakeIntan:
        @classmethod
        def get_streams(cls, path):
            return ["RHD2000 amplifier channel", "USB board ADC input channel"], ["0", "3"]

        def __new__(cls, path, **kw):
            calls.append(kw)
            return NumpyRecording([np.zeros((100, 2), np.int16)], sampling_frequency=20000)

    monkeypatch.setattr(se, "read_intan", FakeIntan)
    path = tmp_path / "x.rhd"
    path.write_bytes(b"\0" * 16)
    with pytest.raises(RecordingError) as e:
        open_recording(path)
    msg = str(e.value)
    assert str(path) in msg and "RHD2000 amplifier channel" in msg and "USB board ADC input channel" in msg
    assert "stream_name=" in msg
    rec = open_recording(path, stream_name="RHD2000 amplifier channel")
    assert rec.get_num_channels() == 2 and calls[-1] == {"stream_name": "RHD2000 amplifier channel"}


# --- ground truth files ------------------------------------------------------------------------------------------


def _npy_recording(tmp_path: Path, n: int = 5000, fs: float = 24000.0):
    path = _save_npy(tmp_path / "rec.npy", np.zeros(n, np.float32))
    return path, open_recording(path, sampling_frequency=fs)


def test_ground_truth_npz_firings_and_sibling(tmp_path: Path) -> None:
    path, rec = _npy_recording(tmp_path)
    assert load_ground_truth(path, recording=rec) is None

    np.savez(tmp_path / "gt.npz", spike_times=np.array([300, 100, 200]), spike_labels=np.array([1, 2, 1]))
    sorting = load_ground_truth(path, recording=rec, gt=tmp_path / "gt.npz")
    assert sorting.sampling_frequency == 24000
    assert sorting.get_unit_spike_train(1).tolist() == [200, 300]

    firings = np.array([[0, 0, 0, 0], [10, 20, 30, 9999], [1, 2, 3, 3]])  # last spike is past the end: dropped
    np.save(tmp_path / "firings_true.npy", firings)
    sorting = load_ground_truth(path, recording=rec, gt=tmp_path / "firings_true.npy")
    assert sorting.to_spike_vector()["sample_index"].tolist() == [10, 20, 30]

    np.savez(tmp_path / "rec.gt.npz", spike_times=np.array([5, 6]), spike_class=np.array([7, 7]))
    sorting = load_ground_truth(path, recording=rec)  # found beside the recording
    assert sorting.get_unit_spike_train(7).tolist() == [5, 6]


@pytest.mark.filterwarnings("ignore:The extractor is not serializable")
def test_ground_truth_si_folder_takes_the_recording_rate(tmp_path: Path) -> None:
    from spikeinterface.core import NumpySorting

    path, rec = _npy_recording(tmp_path)
    gt = NumpySorting.from_samples_and_labels([np.array([1, 2, 3])], [np.array([0, 0, 1])], 30000)
    gt.save(folder=tmp_path / "sorting")
    sorting = load_ground_truth(path, recording=rec, gt=tmp_path / "sorting")
    assert sorting.sampling_frequency == 24000
    assert sorting.to_spike_vector()["sample_index"].tolist() == [1, 2, 3]


def test_ground_truth_errors(tmp_path: Path) -> None:
    path, rec = _npy_recording(tmp_path)
    with pytest.raises(RecordingError, match="check gt=") as e:
        load_ground_truth(path, recording=rec, gt=tmp_path / "nope.npz")
    assert "nope.npz" in str(e.value)
    np.savez(tmp_path / "bad.npz", times=np.arange(3))
    with pytest.raises(RecordingError, match="spike_times") as e:
        load_ground_truth(path, recording=rec, gt=tmp_path / "bad.npz")
    assert "bad.npz" in str(e.value) and "np.savez" in str(e.value)
    np.save(tmp_path / "bad_firings.npy", np.zeros((2, 5)))
    with pytest.raises(RecordingError, match=r"\(3, N\)"):
        load_ground_truth(path, recording=rec, gt=tmp_path / "bad_firings.npy")
    with pytest.raises(RecordingError, match=r"sampling_frequency=") as e:
        load_ground_truth(path, gt=tmp_path / "bad_firings.npy")  # a bare .npy has no rate
    assert "recording=open_recording" in str(e.value)
    np.savez(tmp_path / "far.npz", spike_times=np.array([10**7]), spike_class=np.array([1]))
    with pytest.raises(RecordingError, match="check the sampling rate"):
        load_ground_truth(path, recording=rec, gt=tmp_path / "far.npz")


# --- errors ------------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nothere.npy"
    with pytest.raises(RecordingError, match="check the path") as e:
        open_recording(path, sampling_frequency=10000)
    assert str(path) in str(e.value)


def test_unknown_extension_lists_supported_formats(tmp_path: Path) -> None:
    path = tmp_path / "rec.xyz"
    path.write_bytes(b"123")
    with pytest.raises(RecordingError, match="unknown recording format") as e:
        open_recording(path)
    msg = str(e.value)
    assert str(path) in msg
    for name in ("NumPy", "SpikeGLX", "Intan", "Wave_clus / Quiroga MATLAB", "NWB", "TDT", "Open Ephys"):
        assert name in msg and name in SUPPORTED_FORMATS
    folder = tmp_path / "junk"
    folder.mkdir()
    with pytest.raises(RecordingError, match="folder layout not recognized"):
        open_recording(folder)


@pytest.mark.parametrize(
    ("name", "what"),
    [("bad.npy", "NumPy"), ("bad.mat", "MATLAB"), ("bad.rhd", "Intan"), ("bad.abf", "Axon")],
)
def test_corrupt_files_are_wrapped(tmp_path: Path, name: str, what: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not a recording at all" * 10)
    with pytest.raises(RecordingError, match=f"cannot read it as {what}") as e:
        open_recording(path, sampling_frequency=10000)
    assert str(path) in str(e.value) and "corrupt" in str(e.value)


@pytest.mark.parametrize("fs", [0, -5.0, float("nan"), float("inf")])
def test_bad_sampling_frequency(tmp_path: Path, fs: float) -> None:
    path = _save_npy(tmp_path / "a.npy", np.zeros(10, np.float32))
    with pytest.raises(RecordingError, match="sampling_frequency=") as e:
        open_recording(path, sampling_frequency=fs)
    assert str(path) in str(e.value)


def test_missing_sampling_frequency(tmp_path: Path) -> None:
    path = _save_npy(tmp_path / "a.npy", np.zeros(10, np.float32))
    with pytest.raises(RecordingError, match=r"unexpected arguments \['samplingfrequency'\]") as e:
        open_recording(path, samplingfrequency=1000)  # a typo must not pass silently
    assert str(path) in str(e.value)
    with pytest.raises(RecordingError, match=r"sampling_frequency=30000") as e:
        open_recording(path)
    assert str(path) in str(e.value)


def test_empty_recordings(tmp_path: Path) -> None:
    path = _save_npy(tmp_path / "empty.npy", np.zeros(0, np.float32))
    with pytest.raises(RecordingError, match="empty") as e:
        open_recording(path, sampling_frequency=10000)
    assert str(path) in str(e.value)
    raw = tmp_path / "empty.bin"
    raw.write_bytes(b"")
    with pytest.raises(RecordingError, match="empty"):
        open_recording(raw, sampling_frequency=10000, dtype="int16", num_channels=2)


@pytest.mark.parametrize(("bad", "kind"), [(np.nan, "NaN"), (np.inf, "Inf")])
def test_non_finite_samples_are_located(tmp_path: Path, bad: float, kind: str) -> None:
    data = np.zeros((250000, 3), np.float32)  # 25 s at 10 kHz: the bad sample is in the second 10 s chunk
    data[123450, 1] = bad
    data[200000, 2] = bad
    path = _save_npy(tmp_path / "nan.npy", data)
    with pytest.raises(RecordingError, match=kind) as e:
        open_recording(path, sampling_frequency=10000)
    msg = str(e.value)
    assert str(path) in msg and "channel" in msg and "(index 1)" in msg and "t=12.345" in msg
    assert "check_finite=False" in msg
    assert open_recording(path, sampling_frequency=10000, check_finite=False).get_num_samples() == 250000


@pytest.mark.skipif(HAS_H5PY, reason="h5py is installed: the no-h5py message cannot show")
def test_hdf5_files_without_h5py(tmp_path: Path) -> None:
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8 + b"\x00\x02IM"
    mat73 = tmp_path / "v73.mat"
    mat73.write_bytes(header + b"\0" * 512)
    with pytest.raises(RecordingError, match="pip install h5py") as e:
        open_recording(mat73)
    assert str(mat73) in str(e.value)
    h5 = tmp_path / "rec.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(RecordingError, match="pip install h5py"):
        open_recording(h5)


def test_spikeglx_stream_is_taken_from_the_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import spikeinterface.extractors as se
    from spikeinterface.core import NumpyRecording

    calls: list[tuple] = []

    class FakeSpikeGLX:
        @classmethod
        def get_streams(cls, folder):
            return ["imec0.ap", "imec0.lf", "nidq"], ["imec0.ap", "imec0.lf", "nidq"]

        def __new__(cls, folder, **kw):
            calls.append((folder, kw))
            return NumpyRecording([np.zeros((100, 4), np.int16)], sampling_frequency=30000)

    monkeypatch.setattr(se, "read_spikeglx", FakeSpikeGLX)
    path = tmp_path / "run_g0_t0.imec0.ap.bin"
    path.write_bytes(b"\0" * 8)
    path.with_suffix(".meta").write_text("fileSizeBytes=8\n")
    assert open_recording(path).get_num_channels() == 4
    assert calls[-1] == (tmp_path, {"stream_name": "imec0.ap"})


# --- chunked reads (what detection and the NaN check do) ---------------------------------------------------------


@pytest.mark.parametrize("fortran", [False, True])
@pytest.mark.parametrize("channels_first", [False, True])
def test_npy_chunked_reads_match_whole_file(tmp_path: Path, fortran: bool, channels_first: bool) -> None:
    samples = np.random.default_rng(7).normal(size=(4000, 3)).astype(np.float32)  # samples x channels
    stored = samples.T if channels_first else samples
    stored = np.asfortranarray(stored) if fortran else np.ascontiguousarray(stored)
    rec = open_recording(_save_npy(tmp_path / "x.npy", stored), sampling_frequency=10000)
    assert rec.get_num_channels() == 3 and rec.get_num_samples() == 4000
    np.testing.assert_array_equal(_traces(rec), samples)
    for start, end in ((0, 1000), (1234, 2345), (3999, 4000)):
        np.testing.assert_array_equal(rec.get_traces(start_frame=start, end_frame=end), samples[start:end])
    ids = rec.channel_ids
    np.testing.assert_array_equal(
        rec.get_traces(start_frame=100, end_frame=900, channel_ids=[ids[2], ids[0]]), samples[100:900][:, [2, 0]]
    )


@pytest.mark.parametrize("channels_first", [False, True])
def test_npy_nan_is_located_in_any_orientation(tmp_path: Path, channels_first: bool) -> None:
    data = np.zeros((250000, 3), np.float32)  # 25 s at 10 kHz: the NaN is in the second 10 s chunk
    data[123450, 2] = np.nan
    stored = np.ascontiguousarray(data.T) if channels_first else np.asfortranarray(data)
    with pytest.raises(RecordingError, match="NaN") as e:
        open_recording(_save_npy(tmp_path / "nan.npy", stored), sampling_frequency=10000)
    assert "(index 2)" in str(e.value) and "t=12.345" in str(e.value)


def test_npy_chunked_recording_survives_a_round_trip_to_worker_processes(tmp_path: Path) -> None:
    import pickle

    samples = np.random.default_rng(8).normal(size=(3000, 2)).astype(np.float32)
    rec = open_recording(_save_npy(tmp_path / "cf.npy", np.ascontiguousarray(samples.T)), sampling_frequency=10000)
    again = pickle.loads(pickle.dumps(rec))  # what SpikeInterface does for n_jobs > 1
    np.testing.assert_array_equal(again.get_traces(start_frame=500, end_frame=700), samples[500:700])


# --- data never runs code: class names and pickles taken from files ----------------------------------------------

_EVIL_MODULE = """
from pathlib import Path


class Evil:
    def __init__(self, **kwargs):
        Path(kwargs["marker"]).write_text("ran")


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))
"""


@pytest.fixture
def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable module whose class construction / unpickling creates ``tmp_path/ran``."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "deepspike_test_evil.py").write_text(_EVIL_MODULE)
    monkeypatch.syspath_prepend(str(code))
    return tmp_path / "ran"


def _si_folder_naming(folder: Path, class_name: str, marker: Path) -> Path:
    import json

    folder.mkdir()
    description = {"class": class_name, "module": "spikeinterface", "version": "0.105.3", "annotations": {},
                   "kwargs": {"marker": str(marker)}, "properties": {}, "relative_paths": False}  # fmt: skip
    (folder / "si_folder.json").write_text(json.dumps(description))
    return folder


def test_sibling_ground_truth_naming_a_foreign_class_is_not_instantiated(tmp_path: Path, evil_module: Path) -> None:
    path, rec = _npy_recording(tmp_path)
    _si_folder_naming(tmp_path / "rec.gt", "deepspike_test_evil.Evil", evil_module)
    with pytest.raises(RecordingError, match=r"deepspike_test_evil\.Evil") as e:
        load_ground_truth(path, recording=rec)
    assert not evil_module.exists()
    assert str(tmp_path / "rec.gt") in str(e.value) and "sorting.save" in str(e.value)
    with pytest.raises(RecordingError, match=r"deepspike_test_evil\.Evil"):
        load_ground_truth(path, recording=rec, gt=tmp_path / "rec.gt")
    assert not evil_module.exists()


def test_recording_folder_naming_a_foreign_class_is_not_instantiated(tmp_path: Path, evil_module: Path) -> None:
    folder = _si_folder_naming(tmp_path / "rec", "deepspike_test_evil.Evil", evil_module)
    with pytest.raises(RecordingError, match=r"deepspike_test_evil\.Evil"):
        open_recording(folder)
    (tmp_path / "rec.json").write_text((folder / "si_folder.json").read_text())
    with pytest.raises(RecordingError, match=r"deepspike_test_evil\.Evil"):
        open_recording(tmp_path / "rec.json")
    assert not evil_module.exists()


@pytest.mark.filterwarnings("ignore:The extractor is not serializable")
def test_pickled_property_in_a_saved_folder_is_not_unpickled(tmp_path: Path, evil_module: Path) -> None:
    import deepspike_test_evil
    from spikeinterface.core import NumpySorting

    path, rec = _npy_recording(tmp_path)
    NumpySorting.from_samples_and_labels([np.array([1, 2, 3])], [np.array([0, 0, 1])], 24000).save(
        folder=tmp_path / "rec.gt"
    )
    assert load_ground_truth(path, recording=rec).get_num_units() == 2  # the plain folder loads
    payload = np.empty(2, dtype=object)
    payload[:] = [deepspike_test_evil.Payload(str(evil_module)), None]
    np.save(tmp_path / "rec.gt" / "properties" / "evil.npy", payload, allow_pickle=True)
    with pytest.raises(RecordingError, match=r"evil\.npy"):
        load_ground_truth(path, recording=rec)
    assert not evil_module.exists()


@pytest.mark.parametrize("suffix", [".pkl", ".pickle"])
def test_pickled_recordings_need_allow_pickle(
    tmp_path: Path, evil_module: Path, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    import pickle

    import deepspike_test_evil
    from spikeinterface.core import NumpyRecording

    evil = tmp_path / f"evil{suffix}"
    evil.write_bytes(pickle.dumps(deepspike_test_evil.Payload(str(evil_module))))
    with pytest.raises(RecordingError, match=r"recording_options\.allow_pickle=true") as e:
        open_recording(evil)
    assert str(evil) in str(e.value) and "runs code" in str(e.value)
    assert not evil_module.exists()

    data = np.random.default_rng(9).normal(size=(500, 2)).astype(np.float32)
    saved = NumpyRecording([data], sampling_frequency=1000).save(folder=tmp_path / "saved", verbose=False)
    mine = tmp_path / f"mine{suffix}"
    saved.dump_to_pickle(mine)
    with caplog.at_level(logging.WARNING, logger="deepspike.recording"):
        rec = open_recording(mine, allow_pickle=True)  # the user's explicit opt-in
    np.testing.assert_allclose(_traces(rec), data)
    assert "runs code" in caplog.text
