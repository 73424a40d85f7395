"""Pre-cut snippets: conforming to the window grid, noise estimate, clustering them, scoring against labels."""

from __future__ import annotations

import numpy as np
import pytest
from spikeinterface.core import NumpySorting

from deepspike.errors import DeepSpikeError, RecordingError
from deepspike.evaluation.compare import compare_labels, compare_to_ground_truth
from deepspike.sorting.pipeline import sort_snippets
from deepspike.spec import WindowSpec
from deepspike.spikes.windows import conform_snippets, snippet_noise

SPEC = WindowSpec()


def _biphasic(t_ms: np.ndarray, trough: float = -8.0, peak: float = 9.0) -> np.ndarray:
    """A trough 0.2 ms before a slightly larger peak: |value| alone cannot tell which one to align on."""
    return trough * np.exp(-((t_ms + 0.2) ** 2) / (2 * 0.06**2)) + peak * np.exp(-(t_ms**2) / (2 * 0.07**2))


def _frames(fs: float, n: int, peak_index: int, length: int, sigma: float, seed: int = 0) -> np.ndarray:
    t_ms = (np.arange(length) - peak_index) / fs * 1000.0
    rng = np.random.default_rng(seed)
    return _biphasic(t_ms)[None, :] + sigma * rng.standard_normal((n, length))


def test_24khz_snippets_are_copied_exactly() -> None:
    """At the grid's rate, with the peak on a sample (symmetric around it), the windows are the samples / noise."""
    t_ms = (np.arange(32) - 10) / 24.0
    frames = np.stack([a * np.exp(-(t_ms**2) / (2 * 0.1**2)) - 2.0 for a in (3.0, -5.0, 7.0, 11.0, -13.0)])
    waves, sigma = conform_snippets(frames, 24000.0, SPEC, peak_index=10, noise=2.0)
    assert sigma == 2.0
    np.testing.assert_allclose(waves, frames[:, 10 - SPEC.n_before : 10 + SPEC.n_after] / 2.0, rtol=1e-6, atol=1e-6)


def test_20khz_snippets_land_on_the_24khz_grid() -> None:
    frames = _frames(20000.0, 3, 8, 32, sigma=0.0)
    waves, _ = conform_snippets(frames, 20000.0, SPEC, peak_index=8, noise=1.0)
    grid_ms = (np.arange(SPEC.length) - SPEC.n_before) / 24.0
    want = _biphasic(grid_ms)
    assert np.argmax(waves[0]) == SPEC.n_before
    assert np.max(np.abs(waves - want)) < 0.05 * np.max(np.abs(want))


def test_biphasic_snippets_stay_aligned_on_the_given_peak() -> None:
    """Noise makes |trough| > |peak| in some frames; re-peaking keeps the sign at peak_index, so none flips."""
    frames = _frames(20000.0, 400, 8, 32, sigma=1.5, seed=1)
    waves, _ = conform_snippets(frames, 20000.0, SPEC, peak_index=8, noise=1.5)
    assert (np.argmax(waves, axis=1) == SPEC.n_before).mean() > 0.95


def test_noise_estimate_and_its_errors() -> None:
    frames = _frames(24000.0, 2000, 16, 40, sigma=3.0, seed=2)
    assert snippet_noise(frames, 24000.0, 16) == pytest.approx(3.0, rel=0.08)
    with pytest.raises(DeepSpikeError, match="noise="):
        conform_snippets(frames[:, 3:], 24000.0, SPEC, peak_index=2)
    bad = frames.copy()
    bad[7, 3] = np.nan
    with pytest.raises(RecordingError, match="snippet 7"):
        conform_snippets(bad, 24000.0, SPEC, peak_index=16, noise=3.0)
    with pytest.raises(DeepSpikeError, match="peak_index"):
        conform_snippets(frames, 24000.0, SPEC, peak_index=40, noise=3.0)
    with pytest.raises(DeepSpikeError, match="2-D"):
        conform_snippets(frames[0], 24000.0, SPEC, peak_index=16, noise=3.0)


def test_compare_labels_matches_spikeinterface() -> None:
    """Same spikes, same labels as spike trains: the snippet scores equal SpikeInterface's by-unit accuracy."""
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 3, 600)
    pred = np.where(rng.random(600) < 0.8, gt, rng.integers(-1, 4, 600))
    times = np.arange(600) * 100
    keep = pred >= 0
    ours = compare_labels(gt, pred)
    si = compare_to_ground_truth(
        NumpySorting.from_samples_and_labels([times[keep]], [pred[keep]], 24000.0),
        NumpySorting.from_samples_and_labels([times], [gt], 24000.0),
    )
    np.testing.assert_allclose(ours["accuracy"], si["accuracy"], atol=1e-12)
    with pytest.raises(DeepSpikeError, match="must match"):
        compare_labels(gt, pred[:-1])


def test_quiroga_snippets_are_sorted(shared_data) -> None:
    """C_Easy1_noise005 as 32-sample frames at 20 kHz (denspp front end): the bundled encoder finds its 3 units."""
    d = np.load(shared_data / "quiroga" / "quiroga_easy1_easy2_gt_frames_denspp.npz")
    m = d["file_index"] == 0
    res = sort_snippets(d["waveforms"][m], 20000.0, 8)
    assert res.waves.shape == (int(m.sum()), SPEC.length)
    assert compare_labels(d["spike_class"][m], res.labels)["accuracy"].mean() >= 0.85  # measured 0.92
