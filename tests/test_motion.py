"""Motion (drift) correction (deepspike.sorting.motion): the estimate follows the generator's drift, a drifting
recording sorts better corrected, auto stays off where drift cannot be estimated, bad options name their key,
and the result folder holds motion/ and plots/motion.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepspike.errors import DeepSpikeError
from deepspike.sorting.motion import MotionParams, can_correct, correct_motion
from deepspike.sorting.params import SortParams


@pytest.fixture(scope="module")
def drifting() -> tuple[Any, Any, Any, Any]:
    """(static, drifting, GT, true drift): 32 contacts over 310 um, 30 s, 8 units, zigzag +-25 um."""
    from deepspike.recording.synthetic import generate_drifting_probe_recording

    return generate_drifting_probe_recording(11, duration_s=30.0, num_channels=32, num_units=8, period_s=20.0)


def _bandpassed(recording: Any) -> Any:
    from deepspike.recording.preprocess import bandpass

    return bandpass(recording, 300.0, 6000.0)


def test_estimate_follows_the_true_drift(drifting: tuple[Any, Any, Any, Any]) -> None:
    _, rec, _, drift = drifting
    done = correct_motion(_bandpassed(rec), MotionParams(enabled=True))
    assert done.info["corrected"] and done.motion is not None
    assert done.recording.get_num_channels() == rec.get_num_channels()  # no channel removed at the borders
    depth = np.full(len(drift.times_s), float(np.median(drift.unit_depth_um)))
    est = done.motion.get_displacement_at_time_and_depth(drift.times_s, depth)
    true = drift.displacement_um.mean(axis=1)
    assert np.ptp(true) > 40  # the generator drifted by +-25 um
    assert np.corrcoef(est, true)[0, 1] > 0.95
    rms = np.sqrt(np.mean(((est - est.mean()) - (true - true.mean())) ** 2))
    assert rms < 4.0, f"estimate off by {rms:.1f} um RMS"


def test_depth_windows_reach_the_estimate(drifting: tuple[Any, Any, Any, Any]) -> None:
    """``win_step_um`` / ``win_scale_um`` reach SpikeInterface's estimate: its depth windows are 100 um apart, not
    dredge_fast's 400."""
    from deepspike.sorting.motion import estimate_kwargs, estimate_motion

    assert estimate_kwargs(MotionParams(win_step_um=None, win_scale_um=None)) == {}
    assert estimate_kwargs(MotionParams(preset="rigid_fast", win_step_um=100.0, bin_s=2.0)) == {"bin_s": 2.0}
    params = MotionParams(enabled=True, win_step_um=100.0, win_scale_um=200.0, bin_s=2.0)
    assert estimate_kwargs(params) == {"bin_s": 2.0, "win_step_um": 100.0, "win_scale_um": 200.0}
    filtered = _bandpassed(drifting[1])
    own = MotionParams(enabled=True, bin_s=2.0, win_step_um=None, win_scale_um=None)
    preset, _, _ = estimate_motion(filtered, own, 1, False)
    windows, _, _ = estimate_motion(filtered, params, 1, False)
    assert np.allclose(np.diff(preset.spatial_bins_um), 400.0)
    assert len(windows.spatial_bins_um) >= 2 and np.allclose(np.diff(windows.spatial_bins_um), 100.0)


def test_default_windows_follow_a_non_rigid_drift() -> None:
    """Drift that shrinks along the shank (x1 at the tip, x0.4 at the top): the default 100 um steps of 200 um
    windows follow it at each unit's depth better than dredge_fast's own 400 um windows, which flatten the gradient
    (issue 24 dev seeds 5001/5002: 3.8/5.2 -> 2.7/2.0 um RMS)."""
    from deepspike.recording.synthetic import generate_drifting_probe_recording
    from deepspike.sorting.motion import estimate_motion, motion_errors_um

    _, rec, _, drift = generate_drifting_probe_recording(
        5, duration_s=30.0, num_channels=64, num_units=16, period_s=20.0, non_rigid_gradient=0.4
    )
    filtered = _bandpassed(rec)

    def rms(params: MotionParams) -> float:
        motion, _, _ = estimate_motion(filtered, params, 1, False)
        err = motion_errors_um(motion, drift.times_s, drift.displacement_um, drift.unit_depth_um)
        return float(np.sqrt(np.mean(np.square(err))))

    default = rms(MotionParams(enabled=True))
    wide = rms(MotionParams(enabled=True, win_step_um=None, win_scale_um=None))
    assert default < wide - 0.5, (default, wide)


def test_auto_is_off_for_a_tetrode_and_a_single_channel() -> None:
    from deepspike.recording.synthetic import generate_probe_recording, generate_recording

    tetrode, _ = generate_probe_recording(0, duration_s=2.0, probe="tetrode", num_units=2)
    ok, why = can_correct(tetrode, MotionParams())
    assert not ok and "4 contacts" in why
    single = generate_recording(0, duration_s=2.0)[0]
    ok, why = can_correct(single, MotionParams())
    assert not ok and "one channel" in why
    assert correct_motion(single, MotionParams()).recording is single
    with pytest.raises(DeepSpikeError, match=r"motion.enabled=true.*one channel"):
        correct_motion(single, MotionParams(enabled=True))


def test_auto_is_on_for_a_shank(drifting: tuple[Any, Any, Any, Any]) -> None:
    ok, why = can_correct(drifting[1], MotionParams())
    assert ok, why
    assert not can_correct(drifting[1], MotionParams(min_extent_um=400.0))[0]
    assert not can_correct(drifting[1], MotionParams(min_channels=33))[0]
    assert not can_correct(drifting[1], MotionParams(max_width_um=40.0))[0]  # 4 columns over 48 um


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"preset": "foo"}, "motion.preset='foo'"),
        ({"enabled": "yes"}, "motion.enabled='yes'"),
        ({"min_extent_um": -1}, "motion.min_extent_um=-1"),
        ({"max_width_um": 0}, "motion.max_width_um=0"),
        ({"min_channels": 1}, "motion.min_channels=1"),
        ({"bin_s": 0}, "motion.bin_s=0"),
        ({"win_step_um": 0}, "motion.win_step_um=0"),
        ({"win_scale_um": "wide"}, "motion.win_scale_um='wide'"),
        ({"binsize": 2}, "unknown motion option"),
    ],
)
def test_bad_options_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(DeepSpikeError, match=key.replace(".", r"\.").replace("(", r"\(")):
        SortParams(motion=options)


def test_result_folder_holds_motion_and_its_plot(drifting: tuple[Any, Any, Any, Any], tmp_path: Path) -> None:
    from spikeinterface.core.motion import Motion

    from deepspike import sort

    sorting = sort(drifting[1], out=tmp_path / "out", motion={"enabled": True})
    result = sorting.deepspike
    assert result.info["motion"]["corrected"] and "motion" in result.timings
    saved = Motion.load(tmp_path / "out" / "motion")
    np.testing.assert_allclose(saved.displacement[0], result.motion.displacement[0])
    peaks = np.load(tmp_path / "out" / "motion" / "peaks.npy")
    assert len(peaks) == result.info["motion"]["n_peaks"] > 0
    png = tmp_path / "out" / "plots" / "motion.png"
    assert png.is_file() and png.stat().st_size > 10_000


@pytest.mark.slow
def test_drifting_recording_sorts_better_corrected() -> None:
    from deepspike import sort
    from deepspike.evaluation.compare import compare_to_ground_truth
    from deepspike.recording.synthetic import generate_drifting_probe_recording

    _, rec, gt, _ = generate_drifting_probe_recording(12, duration_s=60.0, num_channels=64, num_units=15)
    off = compare_to_ground_truth(sort(rec, motion={"enabled": False}), gt)["accuracy"].mean()
    on = compare_to_ground_truth(sort(rec), gt)["accuracy"].mean()  # auto: on for 64 contacts over 620 um
    assert on > off + 0.1, (on, off)


def test_time_overlap_tells_turns_from_neurons_firing_together() -> None:
    from deepspike.sorting.clustering.merge import time_overlap

    rng = np.random.default_rng(0)
    span = 60.0 * 24000
    a, b = (np.sort(rng.uniform(0, span, 300)) for _ in range(2))
    assert time_overlap(a, b, span) > 0.8  # two neurons through the whole recording
    both = np.sort(rng.uniform(0, span, 600))
    up = (both // (10 * 24000)) % 2 == 0  # the probe up for 10 s, down for 10 s: one neuron's two parts
    assert time_overlap(both[up], both[~up], span) < 0.2  # bins not aligned with the turns: a little in common
    assert time_overlap(a[:20], b[:20], span) == 1.0  # too few spikes to tell: never a merge


def test_parts_of_a_drifting_neuron_taking_turns_are_merged() -> None:
    """After motion correction a neuron's spikes can still split by drift phase inside one neighbourhood (the
    residual shifts its waveform across contacts); those parts fire in turns and must become one unit again."""
    from deepspike import sort
    from deepspike.evaluation.compare import compare_with_categories
    from deepspike.recording.synthetic import generate_drifting_probe_recording

    _, rec, gt, _ = generate_drifting_probe_recording(13, duration_s=60.0, num_channels=32, num_units=10, period_s=30.0)
    (before, split), (after, merged) = (
        compare_with_categories(sort(rec, multichannel={"merge_turns": t}), gt) for t in (0.0, 0.35)
    )
    assert merged["num_redundant"] < split["num_redundant"], (split, merged)
    assert after["accuracy"].mean() > before["accuracy"].mean() + 0.03


def test_phy_export_reads_the_corrected_traces(drifting: tuple[Any, Any, Any, Any]) -> None:
    """The Phy export's waveforms, templates and PC features come from the traces the sort read (drift corrected),
    not from the drifting band-passed ones."""
    from deepspike import sort
    from deepspike.recording.preprocess import bandpass
    from deepspike.sorting.motion import corrected_view
    from deepspike.sorting.outputs import _phy_analyzer

    result = sort(drifting[1], motion={"enabled": True}).deepspike
    seen = _phy_analyzer(result)[0].recording.get_traces(start_frame=30_000, end_frame=31_000)
    band = bandpass(drifting[1], result.params.extract["freq_min"], result.params.extract["freq_max"])
    corrected = corrected_view(band, result.motion, result.params.motion.preset)
    np.testing.assert_allclose(seen, corrected.get_traces(start_frame=30_000, end_frame=31_000), atol=1e-3)
    assert not np.allclose(seen, band.get_traces(start_frame=30_000, end_frame=31_000), atol=1e-1)
