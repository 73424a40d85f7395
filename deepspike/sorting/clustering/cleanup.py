"""Clean-up of proposed clusters with their waveforms: templates, residual variance, threshold pile-ups, low-SNR
and incoherent units set to noise, and echoes of big spikes (``secondary_peaks``) flagged before clustering.
"""

from __future__ import annotations

import numpy as np

from deepspike.sorting.clustering.params import NOISE


def _drop_small(labels: np.ndarray, min_spikes: int) -> np.ndarray:
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    small = ids[counts < min_spikes]
    return np.where(np.isin(labels, small), NOISE, labels) if small.size else labels


def drop_threshold_pileups(
    labels: np.ndarray, amplitude: np.ndarray, threshold: float, margin: float
) -> tuple[np.ndarray, list[int]]:
    """Units whose median |amplitude| lies less than ``margin`` noise sigma above the detection ``threshold`` are
    noise: threshold crossings of the noise pile up just above it (median about ``threshold + 0.7 / threshold``),
    while even a unit whose mean amplitude is the threshold has its detected half's median ~0.67 sigma above."""
    amp = np.abs(np.asarray(amplitude, dtype=np.float64))
    low = [int(k) for k in np.unique(labels) if k >= 0 and np.median(amp[labels == k]) < threshold + margin]
    return (np.where(np.isin(labels, low), NOISE, labels) if low else labels), low


def templates(labels: np.ndarray, waves: np.ndarray) -> dict[int, np.ndarray]:
    """Mean waveform per unit (noise units)."""
    return {int(k): waves[labels == k].mean(0) for k in np.unique(labels) if k >= 0}


def _drop_low_snr(labels: np.ndarray, waves: np.ndarray, min_snr: float) -> tuple[np.ndarray, list[int]]:
    """Waves are in noise units, so a template's peak |value| is its SNR; a low one is a noise cluster."""
    low = [k for k, t in templates(labels, waves).items() if float(np.max(np.abs(t))) < min_snr]
    return (np.where(np.isin(labels, low), NOISE, labels) if low else labels), low


def residual_variance(labels: np.ndarray, waves: np.ndarray) -> dict[int, float]:
    """Mean squared deviation of a unit's spikes from its template, in noise sigma^2 (about 1 for a clean unit)."""
    out = {}
    for k in np.unique(labels):
        if k >= 0:
            w = waves[labels == k]
            out[int(k)] = float(np.mean((w - w.mean(0)) ** 2))
    return out


def _drop_incoherent(labels: np.ndarray, waves: np.ndarray, max_residual: float) -> tuple[np.ndarray, list[int]]:
    """A cluster of overlaps or artifacts has spikes far from its mean: noise, not a unit."""
    bad = [k for k, v in residual_variance(labels, waves).items() if v > max_residual]
    return (np.where(np.isin(labels, bad), NOISE, labels) if bad else labels), bad


def secondary_peaks(
    sample_index: np.ndarray, channel: np.ndarray, amplitude: np.ndarray, window: int, ratio: float
) -> np.ndarray:
    """Mask of echo events: within ``window`` samples of an event on the same channel at least ``ratio`` x larger.

    Band-pass ringing and after-potentials of a big spike cross the threshold again just after the dead time;
    clustered, those echoes would form extra, fake units. A true spike overlapping a much larger one is lost too
    (rare, and the price of clean units). ``ratio <= 0`` or ``window <= 0`` disables the check.
    """
    n = len(sample_index)
    echo = np.zeros(n, dtype=bool)
    if n < 2 or window <= 0 or ratio <= 0:
        return echo
    order = np.lexsort((sample_index, channel))
    t = np.asarray(sample_index, dtype=np.int64)[order]
    c = np.asarray(channel)[order]
    a = np.abs(np.asarray(amplitude, dtype=np.float64))[order]
    out = np.zeros(n, dtype=bool)
    for k in range(1, n):
        near = (c[k:] == c[:-k]) & (t[k:] - t[:-k] <= window)
        if not near.any():
            break
        i, j = np.flatnonzero(near), np.flatnonzero(near) + k  # pairs (i earlier, j later)
        out[i[a[j[:]] >= ratio * a[i]]] = True
        out[j[a[i] >= ratio * a[j]]] = True
    echo[order] = out
    return echo
