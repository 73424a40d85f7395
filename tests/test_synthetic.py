"""Synthetic ground truth: deterministic per seed, randomized, written to and reloaded from SI folders; recipes."""

from __future__ import annotations

import hashlib
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
from spikeinterface.core import load

from deepspike.errors import DeepSpikeError
from deepspike.recording.synthetic import (
    SAMPLING_RATES,
    SyntheticRecipe,
    coloured_noise,
    generate_recording,
    load_recipe,
    write_synthetic_recordings,
)


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


# ------------------------------------------------------------------------------ default output is unchanged
# Recorded from main's implementation (commit ef8dcd4) before the recipes were added: the default path and the
# demo data built from it must not change. Spike trains exactly (hash of sample/unit indices), traces by stats.
DEFAULT_REFERENCE = [
    (
        {"seed": 5, "duration_s": 2.0},
        {"fs": 24000.0, "shape": (48000, 1), "n": 61, "spikes": "ccc2967d03a980cd", "std": 25.927495170920434,
         "max": 390.52716064453125, "sum": -43211.856816157466, "snr": [8.305607313496052, 15.839090324451272,
                                                                        21.648014830713326]},
    ),
    (
        {"seed": 7, "duration_s": 2.0, "sampling_frequency": "random", "num_units": 4, "num_channels": 2},
        {"fs": 40000.0, "shape": (80000, 2), "n": 72, "spikes": "804fbcc9c30be024", "std": 29.6193335349368,
         "max": 476.254638671875, "sum": -307583.6243835661, "snr": [22.738723549585814, 19.887545072196197,
                                                                     8.022377544403692, 15.740220778126757]},
    ),
]  # fmt: skip


def _spike_hash(sorting) -> str:
    sv = sorting.to_spike_vector()
    raw = sv["sample_index"].astype("<i8").tobytes() + sv["unit_index"].astype("<i8").tobytes()
    return hashlib.sha256(raw).hexdigest()[:16]


@pytest.mark.parametrize(("kwargs", "ref"), DEFAULT_REFERENCE)
def test_default_output_unchanged(kwargs, ref) -> None:
    rec, gt = generate_recording(**kwargs)
    tr = rec.get_traces().astype(np.float64)
    assert rec.get_sampling_frequency() == ref["fs"] and tr.shape == ref["shape"]
    assert len(gt.to_spike_vector()) == ref["n"] and _spike_hash(gt) == ref["spikes"]
    np.testing.assert_allclose([tr.std(), np.abs(tr).max(), tr.sum()], [ref["std"], ref["max"], ref["sum"]], rtol=1e-5)
    np.testing.assert_allclose(gt.get_property("gt_snr"), ref["snr"], rtol=1e-12)


# ------------------------------------------------------------------------------------------ broad recipe


def _main_channel_waveforms(rec, gt) -> np.ndarray:
    """Labelled units' injected templates on their main channel [units, samples] (recipe recordings)."""
    main = gt.get_property("gt_main_channel")
    return np.asarray([rec.templates[u, :, main[u]] for u in range(gt.get_num_units())])


def _opposite_lobes(wf: np.ndarray, nbefore: int) -> tuple[bool, bool]:
    """Is there an opposite-sign lobe (> 5 % of the main peak) before / after the main peak?"""
    flipped = -np.sign(wf[nbefore]) * wf / abs(wf[nbefore])
    return bool(flipped[:nbefore].max() > 0.05), bool(flipped[nbefore:].max() > 0.05)


@pytest.fixture(scope="module")
def broad() -> list:
    return [generate_recording(seed, duration_s=2.0, sampling_frequency="random", recipe="broad") for seed in range(8)]


def test_broad_recipe_variety(broad) -> None:
    rates, polarities, triphasic, counts = set(), [], [], []
    for rec, gt in broad:
        fs = rec.get_sampling_frequency()
        assert 16000.0 <= fs <= 48000.0
        rates.add(fs)
        counts.append(gt.get_num_units())
        wfs = _main_channel_waveforms(rec, gt)
        nbefore = rec.get_annotation("synthetic_nbefore")
        # the main peak sits at nbefore and carries the unit's polarity
        assert np.all(np.argmax(np.abs(wfs), axis=1) == nbefore)
        np.testing.assert_array_equal(np.sign(wfs[:, nbefore]), gt.get_property("gt_polarity"))
        polarities.extend(gt.get_property("gt_polarity"))
        lobes = np.array([_opposite_lobes(w, nbefore) for w in wfs])
        np.testing.assert_array_equal(lobes[:, 0], gt.get_property("gt_triphasic"))  # pre-peak iff flagged
        triphasic.extend(lobes[:, 0] & lobes[:, 1])
    assert set(polarities) == {-1.0, 1.0} and 0.2 < np.mean(np.array(polarities) > 0) < 0.8
    assert 0.15 < np.mean(triphasic) < 0.85  # pre-peak, main peak and rebound: three phases
    assert all(2 <= c <= 20 for c in counts) and len(set(counts)) >= 4
    assert rates - set(SAMPLING_RATES) and len(rates) == len(broad)  # continuous: rates outside the old set


def test_broad_recipe_neighbours_and_amplitudes(broad) -> None:
    pairs = 0
    for rec, gt in broad:
        snr, similar = gt.get_property("gt_snr"), gt.get_property("gt_similar_to")
        assert np.all((snr >= 3.0) & (snr <= 40.0))
        wfs = _main_channel_waveforms(rec, gt)
        noise = rec.get_annotation("synthetic_noise_level")
        np.testing.assert_allclose(np.abs(wfs).max(axis=1), snr * noise, rtol=1e-4)
        for u, p in enumerate(similar):
            if p >= 0:  # a near-copy: same polarity, shape within the jitter (normalized waveforms close)
                pairs += 1
                a, b = wfs[u] / np.abs(wfs[u]).max(), wfs[p] / np.abs(wfs[p]).max()
                assert np.abs(a - b).max() < 0.5 and 0.85 <= snr[u] / snr[p] <= 1.15
    assert pairs >= 3


def test_background_units_are_injected_but_not_labelled(broad) -> None:
    for rec, gt in broad:
        n_bg, n_lab = rec.get_annotation("synthetic_background_units"), gt.get_num_units()
        assert 20 <= n_bg <= 100
        injected = rec.spike_vector
        assert rec.templates.shape[0] == n_lab + n_bg and set(np.unique(injected["unit_index"])) - set(range(n_lab))
        noise = rec.get_annotation("synthetic_noise_level")
        assert np.abs(rec.templates[n_lab:]).max() <= 2.0 * noise * 1.0001  # 0.5-2x noise
        # GT = exactly the injected spikes of labelled units; overlapping spikes (< 1 ms apart) are kept
        lab = injected[injected["unit_index"] < n_lab]
        np.testing.assert_array_equal(gt.to_spike_vector()["sample_index"], lab["sample_index"])
        np.testing.assert_array_equal(gt.to_spike_vector()["unit_index"], lab["unit_index"])
    close = sum(
        int(np.sum(np.diff(gt.to_spike_vector()["sample_index"]) < 0.001 * rec.get_sampling_frequency()))
        for rec, gt in broad
    )
    assert close > 0


def test_burst_attenuation_measured_in_traces() -> None:
    base = load_recipe("broad")
    recipe = replace(
        base, num_units=(1, 1), burst_fraction=1.0, background_units=(0, 0), snr=(30.0, 30.0), drift=0.0,
        amplitude_jitter=0.0, similar_fraction=0.0, noise_exponent=(0.0, 0.0), firing_rate=(5.0, 5.0),
    )  # fmt: skip
    rec, gt = generate_recording(3, duration_s=20.0, sampling_frequency=30000.0, recipe=recipe)
    idx = gt.to_spike_vector()["sample_index"]
    traces = rec.get_traces()[:, 0] * gt.get_property("gt_polarity")[0]
    peaks = np.array([traces[i - 2 : i + 3].max() for i in idx])  # main peak at the GT time
    gap_ms = np.diff(idx, prepend=-(10**9)) / 30.0
    in_burst, isolated = peaks[gap_ms < 10.0], peaks[gap_ms > 50.0]
    assert len(in_burst) > 20 and len(isolated) > 20
    assert np.median(in_burst) < 0.9 * np.median(isolated)


def test_recipe_deterministic_and_validated() -> None:
    r1, g1 = generate_recording(4, duration_s=1.0, sampling_frequency="random", recipe="broad")
    r2, g2 = generate_recording(4, duration_s=1.0, sampling_frequency="random", recipe="broad")
    r3, _ = generate_recording(5, duration_s=1.0, sampling_frequency="random", recipe="broad")
    np.testing.assert_array_equal(r1.get_traces(), r2.get_traces())
    assert _same_spikes(g1, g2) and r1.get_sampling_frequency() == r2.get_sampling_frequency()
    assert r1.get_num_samples() != r3.get_num_samples() or not np.array_equal(r1.get_traces(), r3.get_traces())
    with pytest.raises(DeepSpikeError, match="unknown synthetic recipe 'narrow'"):
        generate_recording(0, recipe="narrow")
    bad = {f.name: getattr(load_recipe("broad"), f.name) for f in fields(SyntheticRecipe)}
    with pytest.raises(DeepSpikeError, match=r"synthetic\.recipe\.snr must be"):
        load_recipe(bad | {"snr": [40.0, 3.0]})
    with pytest.raises(DeepSpikeError, match="unknown keys \\['colour'\\]"):
        load_recipe(bad | {"colour": 1})


def test_coloured_noise_is_coloured() -> None:
    rng = np.random.default_rng(0)
    fs = 30000.0
    for exponent in (0.0, 1.5):
        x = coloured_noise(60000, 1, fs, 10.0, exponent, 8000.0, rng)[:, 0].astype(np.float64)
        power = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(x.size, 1 / fs)
        ratio = power[(f > 300) & (f < 600)].mean() / power[(f > 3000) & (f < 6000)].mean()
        assert (ratio < 1.5) if exponent == 0 else (ratio > 5.0)
        band = np.fft.irfft(np.fft.rfft(x) * ((f >= 300) & (f <= 6000)), x.size)
        assert band.std() == pytest.approx(10.0, rel=0.05)  # level = sigma in the spike band


def test_broad_config_composes_for_corpus() -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from deepspike.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        default = compose(config_name="corpus")
        cfg = compose(config_name="corpus", overrides=["synthetic=broad", "synthetic.n=5"])
    assert default.synthetic.recipe is None and default.synthetic.n == 0 and default.synthetic.duration_s == 30.0
    assert cfg.synthetic.n == 5 and cfg.synthetic.sampling_frequency == "random"
    assert load_recipe(OmegaConf.to_container(cfg.synthetic.recipe)) == load_recipe("broad")


def test_recipe_written_in_parallel_as_serially(tmp_path: Path) -> None:
    kw = {"seed": 2, "duration_s": 1.0, "recipe": "broad"}
    serial = write_synthetic_recordings(tmp_path / "serial", 2, **kw)
    parallel = write_synthetic_recordings(tmp_path / "parallel", 2, workers=2, **kw)
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(load(a).get_traces(), load(b).get_traces())
        ga, gb = load(a.with_name(a.name + ".gt")), load(b.with_name(b.name + ".gt"))
        assert _same_spikes(ga, gb) and 2 <= ga.get_num_units() <= 20
        np.testing.assert_array_equal(ga.get_property("gt_polarity"), gb.get_property("gt_polarity"))
    with pytest.raises(DeepSpikeError, match="workers must be >= 1"):
        write_synthetic_recordings(tmp_path / "x", 1, workers=0)


def test_recipe_on_a_probe_keeps_near_copies_together() -> None:
    rec, gt = generate_recording(6, duration_s=1.0, num_channels=4, sampling_frequency=30000.0, recipe="broad")
    assert rec.get_num_channels() == 4 and rec.get_sampling_frequency() == 30000.0
    main, similar = gt.get_property("gt_main_channel"), gt.get_property("gt_similar_to")
    assert set(main) <= set(range(4)) and np.any(similar >= 0)
    np.testing.assert_array_equal(main[similar >= 0], main[similar[similar >= 0]])
    peak_chan = np.abs(rec.templates[: gt.get_num_units()]).max(axis=1).argmax(axis=1)
    np.testing.assert_array_equal(peak_chan, main)  # each unit is largest on its main channel


@pytest.mark.parametrize("kind,num_channels", [("tetrode", None), ("shank", 16)])
def test_probe_recording_spreads_units_over_neighbouring_contacts_and_keeps_its_probe(
    kind: str, num_channels: int | None, tmp_path: Path
) -> None:
    from deepspike.recording.ground_truth import load_ground_truth
    from deepspike.recording.probes import make_probe
    from deepspike.recording.readers import open_recording
    from deepspike.recording.synthetic import generate_probe_recording, save_pair

    rec, gt = generate_probe_recording(7, 2.0, kind, num_channels, num_units=6, snr_range=(5.0, 15.0))
    again, gt_again = generate_probe_recording(7, 2.0, kind, num_channels, num_units=6, snr_range=(5.0, 15.0))
    np.testing.assert_array_equal(rec.get_traces(end_frame=3000), again.get_traces(end_frame=3000))
    assert _same_spikes(gt, gt_again)
    positions = make_probe(kind, num_channels).contact_positions
    assert rec.get_num_channels() == len(positions) and np.array_equal(rec.get_channel_locations(), positions)
    noise = rec.get_annotation("synthetic_noise_level")
    peak = np.abs(rec.templates).max(axis=1)  # [units, channels]
    np.testing.assert_allclose(peak.max(axis=1), gt.get_property("gt_snr") * noise, rtol=1e-4)
    seen = (peak / peak.max(axis=1, keepdims=True) > 0.3).sum(axis=1)
    assert np.all(seen >= 2)  # each unit on several contacts...
    if kind == "shank":
        assert np.all(seen < len(positions))  # ...near it, not along the whole shank (measured 3-9 of 16)
    save_pair(rec, gt, tmp_path / "r", tmp_path / "r.gt", progress=False)
    reopened = open_recording(tmp_path / "r")
    assert reopened.has_probe() and np.array_equal(reopened.get_channel_locations(), positions)
    assert _same_spikes(load_ground_truth(tmp_path / "r", recording=reopened), gt)


def test_probe_arguments_are_checked() -> None:
    from deepspike.recording.probes import make_probe
    from deepspike.recording.synthetic import generate_probe_recording

    with pytest.raises(DeepSpikeError, match="probe must be one of"):
        make_probe("utah")
    with pytest.raises(DeepSpikeError, match="a tetrode has 4 channels"):
        make_probe("tetrode", 8)
    with pytest.raises(DeepSpikeError, match="even num_channels"):
        make_probe("shank", 15)
    with pytest.raises(DeepSpikeError, match="num_units must be >= 1"):
        generate_probe_recording(0, 1.0, "tetrode", num_units=0)
