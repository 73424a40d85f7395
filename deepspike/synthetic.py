"""Synthetic ground-truth recordings (SpikeInterface's generator) with randomized units.

Each seed draws its own sampling rate (optionally), noise level, firing rates and template shapes (depolarization,
repolarization, recovery, rebound height, smoothing, window length) so a corpus built from them covers a range of
waveforms rather than one template family. Peak amplitudes are drawn one per band of ``snr_range`` (in units of
the raw white-noise sigma), so the units of one recording have clearly different sizes and stay separable.
"""

from __future__ import annotations

import gc
import logging
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepspike.errors import DeepSpikeError

log = logging.getLogger(__name__)

SAMPLING_RATES = (20000.0, 24000.0, 25000.0, 30000.0, 40000.0)
SHAPE_RANGES = {  # generate_single_fake_waveform parameters, drawn uniformly per unit
    "depolarization_ms": (0.07, 0.16),
    "repolarization_ms": (0.3, 0.9),
    "recovery_ms": (0.8, 1.6),
    "positive_amplitude": (0.05, 0.3),
    "smooth_ms": (0.03, 0.08),
}


def _draw_rate(sampling_frequency: float | str, rng: np.random.Generator) -> float:
    if isinstance(sampling_frequency, str):
        if sampling_frequency != "random":
            raise DeepSpikeError(f"sampling_frequency must be a number of Hz or 'random', got {sampling_frequency!r}")
        return float(rng.choice(SAMPLING_RATES))
    fs = float(sampling_frequency)
    if not np.isfinite(fs) or fs < 10000.0:
        raise DeepSpikeError(f"sampling_frequency must be >= 10000 Hz for spike waveforms, got {sampling_frequency!r}")
    return fs


def _firing_rates(firing_rates: float | Sequence[float] | None, num_units: int, rng: np.random.Generator) -> np.ndarray:
    if firing_rates is None:
        return rng.uniform(2.0, 15.0, num_units)
    rates = np.broadcast_to(np.asarray(firing_rates, dtype=np.float64), (num_units,)).copy()
    if np.any(~np.isfinite(rates)) or np.any(rates <= 0) or np.any(rates > 200):
        raise DeepSpikeError(f"firing_rates must be in (0, 200] Hz, got {firing_rates!r}")
    return rates


def _peak_snrs(snr_range: tuple[float, float], num_units: int, rng: np.random.Generator) -> np.ndarray:
    """One amplitude per equal band of ``snr_range`` (shuffled): units never share a size."""
    lo, hi = map(float, snr_range)
    if not 0 < lo <= hi:
        raise DeepSpikeError(f"snr_range must be (low, high) with 0 < low <= high, got {snr_range!r}")
    edges = np.linspace(lo, hi, num_units + 1)
    snrs = rng.uniform(edges[:-1], edges[1:])
    rng.shuffle(snrs)
    return snrs


def _templates(
    fs: float, num_units: int, num_channels: int, snrs: np.ndarray, noise_level: float, rng: np.random.Generator
) -> tuple[np.ndarray, float, float, dict[str, np.ndarray]]:
    """Templates [units, samples, channels] with the trough at ``ms_before``; plus ms_before/after and shapes."""
    from spikeinterface.core.generate import generate_single_fake_waveform

    shapes = {k: rng.uniform(lo, hi, num_units) for k, (lo, hi) in SHAPE_RANGES.items()}
    ms_before = float(rng.uniform(0.8, 1.5))
    ms_after = float(np.max(shapes["repolarization_ms"] + shapes["recovery_ms"]) + rng.uniform(0.5, 1.0))
    main = rng.integers(0, num_channels, num_units)
    decay = rng.uniform(0.7, 2.0, num_units)  # spatial decay, in channels
    chans = np.arange(num_channels)
    templates = []
    for u in range(num_units):
        wf = generate_single_fake_waveform(
            sampling_frequency=fs,
            ms_before=ms_before,
            ms_after=ms_after,
            negative_amplitude=-1.0,
            **{k: float(v[u]) for k, v in shapes.items()},
        )
        wf = wf / np.abs(wf.min()) * snrs[u] * noise_level
        gain = np.exp(-np.abs(chans - main[u]) / decay[u])
        templates.append(wf[:, None] * gain[None, :])
    return np.asarray(templates, dtype=np.float32), ms_before, ms_after, shapes


def generate_recording(
    seed: int,
    duration_s: float = 60.0,
    sampling_frequency: float | str = 24000.0,
    num_units: int = 3,
    noise_level: float | None = None,
    firing_rates: float | Sequence[float] | None = None,
    num_channels: int = 1,
    snr_range: tuple[float, float] = (8.0, 25.0),
    refractory_period_ms: float = 4.0,
) -> tuple[Any, Any]:
    """A lazy ground-truth recording and its sorting, fully determined by ``seed``.

    ``sampling_frequency="random"`` draws from 20, 24, 25, 30 and 40 kHz; ``noise_level`` (recording units,
    default drawn in [5, 20]) is the sigma of the white noise; ``firing_rates`` default to U(2, 15) Hz per unit.
    Unit peak amplitudes are ``snr_range`` x noise_level (trough, before filtering). The GT sorting carries the
    per-unit properties ``gt_snr``, ``gt_firing_rate`` and the template shape parameters (``gt_<name>``).
    """
    from probeinterface import generate_linear_probe
    from spikeinterface.core import generate_ground_truth_recording

    if int(num_units) < 1 or int(num_channels) < 1:
        raise DeepSpikeError(f"num_units and num_channels must be >= 1, got {num_units} and {num_channels}")
    if not np.isfinite(duration_s) or duration_s <= 0:
        raise DeepSpikeError(f"duration_s must be > 0 seconds, got {duration_s!r}")
    num_units, num_channels = int(num_units), int(num_channels)
    rng = np.random.default_rng(int(seed))
    fs = _draw_rate(sampling_frequency, rng)
    noise = float(rng.uniform(5.0, 20.0)) if noise_level is None else float(noise_level)
    if not np.isfinite(noise) or noise <= 0:
        raise DeepSpikeError(f"noise_level must be > 0, got {noise_level!r}")
    rates = _firing_rates(firing_rates, num_units, rng)
    snrs = _peak_snrs(snr_range, num_units, rng)
    templates, ms_before, ms_after, shapes = _templates(fs, num_units, num_channels, snrs, noise, rng)
    probe = generate_linear_probe(num_elec=num_channels, ypitch=20)
    probe.set_device_channel_indices(np.arange(num_channels))
    recording, sorting = generate_ground_truth_recording(
        durations=[float(duration_s)],
        sampling_frequency=fs,
        num_units=num_units,
        probe=probe,
        templates=templates,
        ms_before=ms_before,
        ms_after=ms_after,
        generate_sorting_kwargs={"firing_rates": rates, "refractory_period_ms": float(refractory_period_ms)},
        noise_kwargs={"noise_levels": noise, "strategy": "on_the_fly"},
        dtype="float32",
        seed=int(rng.integers(0, 2**31 - 1)),
    )
    sorting.set_property("gt_snr", snrs)
    sorting.set_property("gt_firing_rate", rates)
    for name, values in shapes.items():
        sorting.set_property(f"gt_{name}", values)
    recording.annotate(synthetic_seed=int(seed), synthetic_noise_level=noise)
    return recording, sorting


def _complete(folder: Path, gt_folder: Path) -> bool:
    return (folder / "si_folder.json").is_file() and (gt_folder / "si_folder.json").is_file()


def write_synthetic_recordings(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    duration_s: float = 30.0,
    sampling_frequency: float | str = "random",
    progress: bool = False,
    **kwargs: Any,
) -> list[Path]:
    """Write ``n`` recordings as SI binary folders ``out_dir/synth_{i:03d}/`` with GT in ``synth_{i:03d}.gt/``.

    Resumable: complete pairs are kept as they are; a half-written one is rebuilt (each folder is written under a
    temporary name and renamed when done). Recording ``i`` uses a seed derived from (``seed``, ``i``), so the
    set is reproducible and extending ``n`` keeps the earlier recordings. ``kwargs`` go to generate_recording.
    """
    if int(n) < 0:
        raise DeepSpikeError(f"n must be >= 0, got {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(int(n)):
        folder, gt_folder = out / f"synth_{i:03d}", out / f"synth_{i:03d}.gt"
        if not _complete(folder, gt_folder):
            rec_seed = int(np.random.default_rng([int(seed), i]).integers(0, 2**31 - 1))
            recording, sorting = generate_recording(
                rec_seed, duration_s=duration_s, sampling_frequency=sampling_frequency, **kwargs
            )
            save_pair(recording, sorting, folder, gt_folder, progress)
            log.info("wrote %s (%g Hz, %g s)", folder, recording.get_sampling_frequency(), duration_s)
        paths.append(folder)
    return paths


def save_pair(recording: Any, sorting: Any, folder: Path, gt_folder: Path, progress: bool) -> None:
    """Save GT then recording, each via a temporary folder renamed at the end (no half-written folder survives)."""
    for path in (folder, gt_folder):
        shutil.rmtree(path, ignore_errors=True)
    tmp_rec, tmp_gt = folder.with_name(folder.name + ".tmp"), gt_folder.with_name(gt_folder.name + ".tmp")
    for path in (tmp_rec, tmp_gt):
        shutil.rmtree(path, ignore_errors=True)
    # SpikeInterface collects garbage per chunk, very slow once torch is imported: freeze the heap, big chunks.
    gc.freeze()
    try:
        with warnings.catch_warnings():  # in-memory generators have no provenance to record: expected
            warnings.filterwarnings("ignore", message="The extractor is not serializable")
            sorting.save(folder=tmp_gt, format="numpy_folder")
            recording.save(
                folder=tmp_rec, format="binary", n_jobs=1, chunk_duration="30s", progress_bar=progress, verbose=False
            )
    finally:
        gc.unfreeze()
    tmp_gt.rename(gt_folder)
    tmp_rec.rename(folder)
