"""Sorter v2: template matching after clustering (deepspike.sorting.matching) and its options.

Real SpikeInterface generator recordings and SpikeInterface's matcher; features="pca" so the figures do not
depend on which encoder is bundled.
"""

from __future__ import annotations

import numpy as np
import pytest

from deepspike.errors import DeepSpikeError
from deepspike.evaluation.compare import compare_to_ground_truth
from deepspike.sorting.matching import SPIKE_DTYPE, MatchParams, pair_with_detected
from deepspike.sorting.params import SortParams
from deepspike.sorting.pipeline import run_sort
from deepspike.sorting.result import SPIKE_COLUMNS


def big_and_small_unit(duration_s: float = 30.0, seed: int = 3, small: float = -48.0):
    """One channel, noise sigma 10: a big unit (trough -160) and a small one (trough ``small``) near the
    detection threshold, so the detector (5 sigma of the band-passed trace) catches only part of its spikes."""
    from deepspike.recording.synthetic import templated_recording

    units = [(-160.0, 0.10, 0.15, 0.4), (small, 0.22, 0.2, 0.6)]
    return templated_recording(units, [10.0, 15.0], duration_s, seed=seed)


@pytest.fixture(scope="module")
def low_snr_recording():
    return big_and_small_unit()


def _accuracy(result, gt) -> np.ndarray:
    return compare_to_ground_truth(result.sorting, gt)["accuracy"].to_numpy()


def test_matching_recovers_spikes_detection_misses(low_snr_recording) -> None:
    rec, gt = low_snr_recording
    off = run_sort(rec, params=SortParams(features="pca", matching={"enabled": False}))
    on = run_sort(rec, params=SortParams(features="pca"))
    acc_off, acc_on = _accuracy(off, gt), _accuracy(on, gt)
    assert on.info["n_matched_new"] > 50, on.info  # spikes below the detection threshold were added
    assert acc_on[1] >= acc_off[1] + 0.1, (acc_off, acc_on)  # the small unit
    assert acc_on[1] >= 0.9, acc_on  # measured 1.00 (0.80 without matching)
    assert acc_on[0] >= 0.95, acc_on  # the big unit stays clean
    table = on.spikes_table()
    assert list(table.columns) == SPIKE_COLUMNS
    assert np.all(np.diff(table["sample_index"].to_numpy()) >= 0)
    assert set(table["unit"]) <= {-1, *on.unit_ids}


def test_pairing_is_one_to_one_nearest_first() -> None:
    found = np.zeros(4, dtype=SPIKE_DTYPE)
    found["sample_index"] = [100, 103, 500, 900]
    found["unit"] = [0, 1, 0, 2]
    found["channel"] = [0, 0, 0, 1]
    detected_t = np.array([102, 498, 700, 901])
    detected_ch = np.array([0, 0, 0, 0])
    pair, new = pair_with_detected(detected_t, detected_ch, found, tolerance=5)
    # 102 is 1 sample from found 103 (nearer than 100): one detected peak takes one found spike; 100 is new
    assert pair.tolist() == [1, 2, -1, -1]  # 901 is on channel 0, the found 900 on channel 1
    assert new.tolist() == [True, False, False, True]


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"method": "peeler"}, "matching.method"),
        ({"threshold": 0}, "matching.threshold"),
        ({"ms_before": -1.0}, "matching.ms_before"),
        ({"max_spikes_per_unit": 3}, "matching.max_spikes_per_unit"),
        ({"method_kwargs": {"noise_levels": [1.0]}}, "matching.method_kwargs"),
        ({"treshold": 4.0}, "unknown matching option"),
    ],
)
def test_matching_options_are_validated(options, key) -> None:
    with pytest.raises(DeepSpikeError, match=key):
        SortParams(matching=options)


def test_matching_defaults_come_from_sort_yaml() -> None:
    from deepspike.defaults import conf_value

    assert MatchParams().to_dict() == conf_value("sort.yaml", "matching")


def test_noise_crossings_form_no_unit_at_a_low_threshold() -> None:
    """Pure noise sorted with a low threshold: its crossings pile up just above the threshold and are rejected
    (cluster.noise_margin); without the check they form units, which template matching then spreads."""
    from spikeinterface.generation import NoiseGeneratorRecording

    rec = NoiseGeneratorRecording(
        num_channels=1, sampling_frequency=24000.0, durations=[60.0], noise_levels=10.0, seed=1, dtype="float32"
    )
    opts = {"features": "pca", "extract": {"threshold": 4.0}}
    off = run_sort(rec, params=SortParams(**opts, cluster={"noise_margin": 0.0}))
    on = run_sort(rec, params=SortParams(**opts))
    assert len(off.labels) > 30  # 48 crossings in 60 s of noise
    assert len(off.unit_ids) >= 1  # measured: one noise unit (median amplitude 4.18) without the check
    assert on.unit_ids == [] and (on.labels == -1).all()
    assert on.info["channels"][0]["dropped_pileup"]


def test_a_unit_near_the_threshold_is_kept(low_snr_recording) -> None:
    """The pile-up check keeps a real unit whose amplitude is near the detection threshold."""
    rec, _ = low_snr_recording
    result = run_sort(rec, params=SortParams(features="pca", matching={"enabled": False}))
    assert not result.info["channels"][0]["dropped_pileup"]
    assert len(result.unit_ids) >= 2


def test_added_spikes_are_embedded_in_place(low_snr_recording) -> None:
    """With the encoder, only the spikes matching added are embedded; every row still embeds its own window."""
    from deepspike.sorting.features import DEFAULT_CHECKPOINT, embed_waves, load_sort_encoder

    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip(f"bundled checkpoint {DEFAULT_CHECKPOINT.name} not there")
    rec, _ = low_snr_recording
    result = run_sort(rec)
    assert result.info["n_matched_new"] > 0
    again = embed_waves(load_sort_encoder(None), result.waves)
    np.testing.assert_allclose(result.embeddings, again, rtol=1e-4, atol=1e-4)


def test_wobble_rank_is_deepspikes_default_and_the_users_parameters_win() -> None:
    from deepspike.sorting.matching import MatchParams, _method_kwargs

    assert _method_kwargs(MatchParams(), 4)["parameters"]["approx_rank"] == MatchParams().approx_rank
    mine = MatchParams(method_kwargs={"parameters": {"approx_rank": 5}})
    assert _method_kwargs(mine, 4)["parameters"] == {"threshold": mine.threshold, "approx_rank": 5}
    with pytest.raises(DeepSpikeError, match=r"matching\.approx_rank"):
        MatchParams(approx_rank=0)
