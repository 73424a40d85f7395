"""Phy export of a sort: the files Phy reads, the probe's geometry, and an exact round trip through read_phy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deepspike.recording.probes import make_probe
from deepspike.recording.synthetic import generate_probe_recording, save_pair
from deepspike.sorting.outputs import write_outputs
from deepspike.sorting.params import SortParams
from deepspike.sorting.pipeline import run_sort

PHY_FILES = ("params.py", "spike_times.npy", "spike_clusters.npy", "spike_templates.npy", "templates.npy",
             "template_ind.npy", "channel_map.npy", "channel_positions.npy", "amplitudes.npy", "pc_features.npy",
             "pc_feature_ind.npy", "similar_templates.npy", "cluster_group.tsv",
             "cluster_channel_group.tsv")  # fmt: skip  # no recording.dat: params.py points at the saved binary


def _sort_and_export(rec, gt, tmp_path: Path):
    save_pair(rec, gt, tmp_path / "rec", tmp_path / "rec.gt", progress=False)
    result = run_sort(str(tmp_path / "rec"), params=SortParams(features="pca"))
    write_outputs(result, tmp_path / "out", export_phy=True, plots=False)
    return result, tmp_path / "out" / "phy"


def _assert_round_trip(sorting, phy: Path) -> None:
    from spikeinterface.extractors import read_phy

    params: dict = {}
    exec((phy / "params.py").read_text(), params)  # Phy's own way of reading it
    assert (phy / params["dat_path"]).is_file()  # relative: still valid once the result folder is renamed into place
    assert params["n_channels_dat"] == sorting.deepspike.recording.get_num_channels()

    back = read_phy(phy)
    units = [u for u in sorting.unit_ids if len(sorting.get_unit_spike_train(u, segment_index=0))]
    assert sorted(int(u) for u in back.unit_ids) == sorted(int(u) for u in units)
    for u in units:
        np.testing.assert_array_equal(
            np.sort(back.get_unit_spike_train(u, segment_index=0)), np.sort(sorting.get_unit_spike_train(u))
        )


@pytest.mark.parametrize("kind,num_channels", [("tetrode", None), ("shank", 16)])
def test_phy_export_has_the_probe_geometry_and_round_trips(kind: str, num_channels: int | None, tmp_path: Path) -> None:
    rec, gt = generate_probe_recording(3, 4.0, kind, num_channels, num_units=4, snr_range=(8.0, 20.0))
    result, phy = _sort_and_export(rec, gt, tmp_path)
    assert len(result.sorting.unit_ids) >= 1
    for name in PHY_FILES:
        assert (phy / name).is_file(), name
    positions = make_probe(kind, num_channels).contact_positions
    np.testing.assert_allclose(np.load(phy / "channel_positions.npy"), positions, atol=1e-5)  # float32 in Phy
    np.testing.assert_array_equal(np.load(phy / "channel_map.npy").ravel(), np.arange(len(positions)))
    template_ind = np.load(phy / "template_ind.npy")  # sparse: each template lists its channels, -1 padded
    if kind == "shank":
        assert template_ind.shape[1] < len(positions)  # a unit's channels are its neighbourhood, not the shank
    else:
        assert template_ind.shape[1] == 4  # a tetrode's contacts all lie within the radius
    spikes = np.load(phy / "spike_times.npy").ravel()
    assert len(spikes) == len(np.load(phy / "amplitudes.npy").ravel()) == result.sorting.count_total_num_spikes()
    _assert_round_trip(result.sorting, phy)


def test_single_channel_phy_export_stays_dense(tmp_path: Path) -> None:
    from deepspike.recording.synthetic import generate_recording

    rec, gt = generate_recording(4, duration_s=4.0, num_units=2, snr_range=(10.0, 25.0))
    result, phy = _sort_and_export(rec, gt, tmp_path)
    assert np.load(phy / "channel_positions.npy").shape == (1, 2)
    _assert_round_trip(result.sorting, phy)
