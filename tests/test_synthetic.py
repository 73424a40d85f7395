"""Synthetic ground truth: deterministic per seed, randomized, written to and reloaded from SI folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from spikeinterface.core import load

from deepspike.errors import DeepSpikeError
from deepspike.synthetic import SAMPLING_RATES, generate_recording, write_synthetic_recordings


def _same_spikes(a, b) -> bool:
    va, vb = a.to_spike_vector(), b.to_spike_vector()
    return len(va) == len(vb) and all(np.array_equal(va[k], vb[k]) for k in ("sample_index", "unit_index"))


def test_deterministic_per_seed() -> None:
    r1, g1 = generate_recording(11, duration_s=2.0, sampling_frequency="random")
    r2, g2 = generate_recording(11, duration_s=2.0, sampling_frequency="random")
    _, g3 = generate_recording(12, duration_s=2.0, sampling_frequency="random")
    assert r1.get_sampling_frequency() == r2.get_sampling_frequency()
    np.testing.assert_array_equal(r1.get_traces(), r2.get_traces())
    assert _same_spikes(g1, g2)
    assert not _same_spikes(g1, g3)
    np.testing.assert_array_equal(g1.get_property("gt_snr"), g2.get_property("gt_snr"))


def test_randomized_units_and_rates() -> None:
    rates, shapes = set(), []
    for seed in range(8):
        rec, gt = generate_recording(seed, duration_s=1.0, sampling_frequency="random", num_units=3)
        assert rec.get_num_channels() == 1 and rec.get_num_segments() == 1
        assert gt.get_num_units() == 3
        rates.add(rec.get_sampling_frequency())
        snr = np.sort(gt.get_property("gt_snr"))
        assert snr[0] >= 6.0 and np.all(np.diff(snr) > 0)
        shapes.append(gt.get_property("gt_repolarization_ms"))
    assert rates <= set(SAMPLING_RATES) and len(rates) >= 3
    assert np.std(np.concatenate(shapes)) > 0.05


def test_explicit_options_and_multichannel() -> None:
    rec, gt = generate_recording(
        0,
        duration_s=1.0,
        sampling_frequency=30000.0,
        num_units=2,
        noise_level=3.0,
        firing_rates=[5.0, 9.0],
        num_channels=4,
    )
    assert rec.get_sampling_frequency() == 30000.0 and rec.get_num_channels() == 4
    np.testing.assert_array_equal(gt.get_property("gt_firing_rate"), [5.0, 9.0])
    with pytest.raises(DeepSpikeError, match="sampling_frequency"):
        generate_recording(0, sampling_frequency="fast")
    with pytest.raises(DeepSpikeError, match="firing_rates"):
        generate_recording(0, firing_rates=-1.0)


def test_write_and_reload_resumable(tmp_path: Path) -> None:
    paths = write_synthetic_recordings(tmp_path, 2, seed=3, duration_s=2.0)
    assert [p.name for p in paths] == ["synth_000", "synth_001"]
    for p in paths:
        rec = load(p)
        gt = load(p.with_name(p.name + ".gt"))
        assert rec.get_sampling_frequency() in SAMPLING_RATES
        assert gt.get_num_units() == 3 and len(gt.to_spike_vector()) > 0
        assert gt.get_sampling_frequency() == rec.get_sampling_frequency()
        assert np.all(np.isfinite(gt.get_property("gt_snr")))
    first = load(paths[0]).get_traces()
    stamp = (paths[0] / "si_folder.json").stat().st_mtime_ns
    # resumable: complete pairs are kept, a half-written one is rebuilt, extending n keeps earlier recordings
    (paths[1].with_name("synth_001.gt") / "si_folder.json").unlink()
    again = write_synthetic_recordings(tmp_path, 3, seed=3, duration_s=2.0)
    assert [p.name for p in again] == ["synth_000", "synth_001", "synth_002"]
    assert (paths[0] / "si_folder.json").stat().st_mtime_ns == stamp
    assert (again[1].with_name("synth_001.gt") / "si_folder.json").is_file()
    np.testing.assert_array_equal(load(again[0]).get_traces(), first)
    assert not list(tmp_path.glob("*.tmp"))
