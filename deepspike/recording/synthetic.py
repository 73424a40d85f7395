"""Synthetic ground-truth recordings (SpikeInterface's generator) with randomized units.

Each seed draws its own sampling rate (optionally), noise level, firing rates and template shapes (depolarization,
repolarization, recovery, rebound height, smoothing, window length) so a corpus built from them covers a range of
waveforms rather than one template family. Peak amplitudes are drawn one per band of ``snr_range`` (in units of
the raw white-noise sigma), so the units of one recording have clearly different sizes and stay separable.

A named *recipe* (``recipe="broad"``, ranges declared in ``conf/synthetic/<name>.yaml``) draws far more variety
for pretraining: 2-20 units with both polarities, biphasic and triphasic shapes, near-duplicate neighbours,
bursts with amplitude attenuation, slow amplitude drift, coloured noise plus unlabelled background units, and
sampling rates over a continuous range. Without a recipe the output is exactly what it always was.

Over 600 lines: the single-channel recipe generator and the probe generator share the unit, template and spike-train
draws (a dozen private helpers); split apart, each would import the other's internals.
"""

from __future__ import annotations

import gc
import logging
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from deepspike.errors import DeepSpikeError
from deepspike.paths import CONF_DIR
from deepspike.recording.probes import make_probe

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


# ------------------------------------------------------------------------------------------------ recipes

Range = tuple[float, float]


@dataclass(frozen=True)
class SyntheticRecipe:
    """Ranges one recording's parameters are drawn from; values and their meaning live in conf/synthetic/*.yaml.

    Ranges are (low, high) drawn uniformly, except ``snr``, ``firing_rate`` and ``background_rate`` (log-uniform,
    so small and large values are equally common). Fractions are per-unit probabilities.
    """

    num_units: tuple[int, int]
    sampling_frequency: Range
    noise_level: Range
    noise_exponent: Range
    noise_cutoff_hz: Range
    snr: Range
    firing_rate: Range
    refractory_ms: float
    depolarization_ms: Range
    repolarization_ms: Range
    recovery_ms: Range
    positive_amplitude: Range
    smooth_ms: Range
    positive_fraction: float
    triphasic_fraction: float
    prepeak_amplitude: Range
    prepeak_lead_ms: Range
    similar_fraction: float
    similar_jitter: float
    burst_fraction: float
    burst_size: tuple[int, int]
    burst_isi_ms: Range
    burst_attenuation: Range
    drift: float
    amplitude_jitter: float
    background_units: tuple[int, int]
    background_snr: Range
    background_rate: Range

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "synthetic.recipe") -> SyntheticRecipe:
        """Validated recipe from a mapping (e.g. the ``recipe`` block of conf/synthetic/broad.yaml)."""
        names = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(d) - names), sorted(names - set(d))
        if unknown or missing:
            raise DeepSpikeError(
                f"{where}: unknown keys {unknown}, missing keys {missing} (see conf/synthetic/broad.yaml)"
            )
        vals: dict[str, Any] = {}
        for f in fields(cls):
            v = d[f.name]
            if str(f.type).startswith("tuple") or f.type == "Range":
                if not isinstance(v, Sequence) or isinstance(v, str) or len(v) != 2 or not float(v[0]) <= float(v[1]):
                    raise DeepSpikeError(f"{where}.{f.name} must be [low, high] with low <= high, got {v!r}")
                v = (int(v[0]), int(v[1])) if "int" in str(f.type) else (float(v[0]), float(v[1]))
            else:
                v = float(v)
            vals[f.name] = v
        recipe = cls(**vals)
        recipe.validate(where)
        return recipe

    def validate(self, where: str = "synthetic.recipe") -> None:
        checks = [
            (self.num_units[0] >= 1, "num_units must be >= 1"),
            (self.sampling_frequency[0] >= 10000.0, "sampling_frequency must be >= 10000 Hz"),
            (self.noise_level[0] > 0 and self.snr[0] > 0 and self.background_snr[0] >= 0, "levels must be > 0"),
            (self.firing_rate[0] > 0 and self.background_rate[0] > 0, "rates must be > 0 Hz"),
            (self.firing_rate[1] <= 200 and self.background_rate[1] <= 200, "rates must be <= 200 Hz"),
            (self.noise_cutoff_hz[0] > 300.0, "noise_cutoff_hz must be above the 300 Hz spike band"),
            (self.depolarization_ms[0] > 0 and self.repolarization_ms[0] > 0 and self.recovery_ms[0] > 0,
             "template durations must be > 0 ms"),
            (self.smooth_ms[0] > 0, "smooth_ms must be > 0"),
            (all(0 <= x <= 1 for x in (self.positive_fraction, self.triphasic_fraction, self.similar_fraction,
                                       self.burst_fraction)), "fractions must be in [0, 1]"),
            (0 <= self.similar_jitter < 1 and 0 <= self.drift < 1 and 0 <= self.amplitude_jitter < 1,
             "similar_jitter, drift and amplitude_jitter must be in [0, 1)"),
            (self.burst_size[0] >= 2, "burst_size must be >= 2 spikes"),
            (self.burst_isi_ms[0] >= self.refractory_ms, "burst_isi_ms must be >= refractory_ms"),
            (self.burst_attenuation[0] > 0 and self.burst_attenuation[1] <= 1, "burst_attenuation must be in (0, 1]"),
            (self.background_units[0] >= 0, "background_units must be >= 0"),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise DeepSpikeError(f"{where}: {msg} (see conf/synthetic/broad.yaml)")


def load_recipe(recipe: str | Mapping[str, Any] | SyntheticRecipe) -> SyntheticRecipe:
    """A recipe by name (``conf/synthetic/<name>.yaml``, its ``recipe`` block), from a mapping, or as given."""
    if isinstance(recipe, SyntheticRecipe):
        return recipe
    if isinstance(recipe, str):
        from deepspike.defaults import conf_values

        relpath = f"synthetic/{recipe}.yaml"
        block = conf_values(relpath).get("recipe") if (CONF_DIR / relpath).is_file() else None
        if not block:
            known = sorted(p.stem for p in (CONF_DIR / "synthetic").glob("*.yaml") if p.stem != "default")
            raise DeepSpikeError(
                f"unknown synthetic recipe {recipe!r}: no `recipe` block in conf/{relpath} (known: {known}); "
                "select one with `synthetic=NAME`"
            )
        return SyntheticRecipe.from_dict(block, where=f"conf/{relpath}")
    return SyntheticRecipe.from_dict(dict(recipe))


def _log_uniform(lo_hi: Range, size: int, rng: np.random.Generator) -> np.ndarray:
    lo, hi = lo_hi
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


def coloured_noise(
    num_samples: int,
    num_channels: int,
    fs: float,
    level: float,
    exponent: float,
    cutoff_hz: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Gaussian noise with a 1/f^exponent power spectrum, low-passed at ``cutoff_hz``, float32 [samples, channels].

    Scaled so its standard deviation in the spike band (300 Hz - 6 kHz) is ``level``: amplitudes given as
    multiples of the noise then mean the same thing for white and strongly coloured noise once band-passed.
    """
    from scipy import fft

    n = fft.next_fast_len(num_samples, real=True)  # a 5-smooth length: an FFT of a prime-ish length is 10x slower
    freqs = fft.rfftfreq(n, 1.0 / fs)
    gain = np.maximum(freqs, 10.0) ** (-exponent / 2.0) / np.sqrt(1.0 + (freqs / cutoff_hz) ** 8)
    spec = fft.rfft(rng.standard_normal((n, num_channels)), axis=0) * gain[:, None]
    band = (freqs >= 300.0) & (freqs <= min(6000.0, 0.45 * fs))
    band_std = np.sqrt(2.0 * np.sum(np.abs(spec[band]) ** 2, axis=0)) / n  # Parseval, one-sided
    return (fft.irfft(spec, n, axis=0)[:num_samples] * (level / band_std)).astype(np.float32)


@dataclass
class _Units:
    """Per-unit draws of one recording (labelled units first, then background units)."""

    shapes: dict[str, np.ndarray]
    snr: np.ndarray
    polarity: np.ndarray
    triphasic: np.ndarray
    prepeak: np.ndarray
    lead: np.ndarray
    similar_to: np.ndarray


def _draw_units(r: SyntheticRecipe, n_lab: int, snr: np.ndarray, rng: np.random.Generator, n_bg: int = 0) -> _Units:
    """Shapes over the recipe's ranges; some labelled units become near-copies of an earlier one (the hard case).

    ``snr`` holds the labelled units' amplitudes then the ``n_bg`` background units' (never copies, never copied).
    """
    n = n_lab + n_bg
    names = ("depolarization_ms", "repolarization_ms", "recovery_ms", "positive_amplitude", "smooth_ms")
    shapes = {k: rng.uniform(*getattr(r, k), n) for k in names}
    u = _Units(
        shapes=shapes,
        snr=snr.copy(),
        polarity=np.where(rng.random(n) < r.positive_fraction, 1.0, -1.0),
        triphasic=rng.random(n) < r.triphasic_fraction,
        prepeak=rng.uniform(*r.prepeak_amplitude, n),
        lead=rng.uniform(*r.prepeak_lead_ms, n),
        similar_to=np.full(n, -1),
    )
    for i in range(1, n_lab):
        if rng.random() < r.similar_fraction:
            p = int(rng.integers(0, i))
            u.similar_to[i] = p
            for arr in (*shapes.values(), u.snr, u.prepeak, u.lead):
                arr[i] = arr[p] * (1.0 + rng.uniform(-r.similar_jitter, r.similar_jitter))
            u.polarity[i], u.triphasic[i] = u.polarity[p], u.triphasic[p]
    return u


def _recipe_waveform(fs: float, ms_before: float, ms_after: float, u: _Units, i: int) -> np.ndarray:
    """One unit's waveform, main peak +-1 at ``ms_before``: biphasic, or triphasic with an opposite pre-peak."""
    from spikeinterface.core.generate import generate_single_fake_waveform, ms_to_samples

    wf = generate_single_fake_waveform(
        sampling_frequency=fs,
        ms_before=ms_before,
        ms_after=ms_after,
        negative_amplitude=-1.0,
        **{k: float(v[i]) for k, v in u.shapes.items()},
    ).astype(np.float64)
    wf /= np.abs(wf.min())
    # smoothing flattens a narrow trough more than a broad rebound: keep the rebound below the main peak
    wf = np.where(wf > 0, wf * min(1.0, 0.9 / max(wf.max(), 1e-9)), wf)
    if u.triphasic[i]:
        nbefore = ms_to_samples(ms_before, fs)
        t_ms = (np.arange(wf.size) - nbefore) / fs * 1000.0
        width = u.lead[i] / 3.0
        wf += u.prepeak[i] * np.exp(-0.5 * ((t_ms + u.lead[i]) / width) ** 2)
        shift = int(np.argmin(wf)) - nbefore  # its tail can move the trough by a sample: put it back at nbefore
        wf = (
            np.concatenate([wf[shift:], np.zeros(shift)])
            if shift > 0
            else np.concatenate([np.zeros(-shift), wf[: wf.size + shift]])
        )
        wf /= np.abs(wf[nbefore])  # and keep the main peak's amplitude exact
    return wf if u.polarity[i] < 0 else -wf  # the base shape has a negative main peak


def _spike_train(
    rate: float, bursty: bool, r: SyntheticRecipe, refractory_ms: float, duration_s: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Spike times (s) and burst amplitude factors: Poisson, or Poisson bursts whose later spikes are smaller."""
    if not bursty:
        times, factors = np.sort(rng.uniform(0.0, duration_s, rng.poisson(rate * duration_s))), None
    else:
        sizes = rng.integers(
            r.burst_size[0], r.burst_size[1] + 1, rng.poisson(rate * duration_s / np.mean(r.burst_size))
        )
        pos = np.concatenate([np.arange(k) for k in sizes]) if sizes.size else np.zeros(0, dtype=int)
        cum = np.cumsum(np.where(pos > 0, rng.uniform(*r.burst_isi_ms, pos.size) / 1000.0, 0.0))
        first = np.repeat(np.cumsum(sizes) - sizes, sizes)  # index of each spike's burst onset
        times = np.repeat(rng.uniform(0.0, duration_s, sizes.size), sizes) + cum - cum[first]
        factors = np.repeat(rng.uniform(*r.burst_attenuation, sizes.size), sizes) ** pos
        order = np.argsort(times, kind="stable")
        times, factors = times[order], factors[order]
    if factors is None:
        factors = np.ones(times.size)
    keep = (times >= 0) & (times < duration_s)
    times, factors = times[keep], factors[keep]
    while times.size > 1:  # refractory period: drop a spike too close after the previous one
        bad = np.flatnonzero(np.diff(times) < refractory_ms / 1000.0) + 1
        if not bad.size:
            break
        times, factors = np.delete(times, bad), np.delete(factors, bad)
    return times, factors


def _recipe_templates(
    fs: float, units: _Units, n_lab: int, num_channels: int, noise: float, rng: np.random.Generator
) -> tuple[np.ndarray, int, np.ndarray]:
    """Templates [units, samples, channels] in recording units, the main peak's sample and each main channel.

    Near-copies share their parent's main channel (on a probe too they are the hard case); background units
    spread over more channels (they are distant).
    """
    from spikeinterface.core.generate import ms_to_samples

    n_all = units.snr.size
    ms_before = float(rng.uniform(1.2, 1.6))
    ms_after = float(np.max(units.shapes["repolarization_ms"] + units.shapes["recovery_ms"]) + rng.uniform(0.5, 1.0))
    chans = np.arange(num_channels)
    main = rng.integers(0, num_channels, n_all)
    copies = np.flatnonzero(units.similar_to >= 0)
    main[copies] = main[units.similar_to[copies]]
    decay = np.where(np.arange(n_all) < n_lab, rng.uniform(0.7, 2.0, n_all), rng.uniform(1.5, 4.0, n_all))
    templates = [
        _recipe_waveform(fs, ms_before, ms_after, units, i)[:, None]
        * (units.snr[i] * noise * np.exp(-np.abs(chans - main[i]) / decay[i]))[None, :]
        for i in range(n_all)
    ]
    # generate_single_fake_waveform puts the main peak at ms_to_samples(ms_before)
    return np.asarray(templates, dtype=np.float32), ms_to_samples(ms_before, fs), main


def _recipe_spikes(
    r: SyntheticRecipe,
    rates: np.ndarray,
    bursty: np.ndarray,
    drift: np.ndarray,
    refractory_ms: float,
    duration_s: float,
    fs: float,
    margin: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """SpikeInterface's spike vector (sorted by sample, then unit) and each spike's amplitude factor.

    Factors combine burst attenuation, a linear drift over the recording and per-spike jitter. Spikes closer than
    ``margin`` samples to either end are left out, so every spike's whole template is in the traces.
    """
    n_samples = round(duration_s * fs)
    samples, labels, amps = [], [], []
    for i in range(rates.size):
        t, f = _spike_train(rates[i], bool(bursty[i]), r, refractory_ms, duration_s, rng)
        s = np.round(t * fs).astype(np.int64)
        ok = (s >= margin) & (s < n_samples - margin)
        s, t, f = s[ok], t[ok], f[ok]
        f = f * (1.0 + drift[i] * (2.0 * t / duration_s - 1.0))
        f = f * (1.0 + r.amplitude_jitter * rng.standard_normal(s.size))
        samples.append(s)
        labels.append(np.full(s.size, i))
        amps.append(np.clip(f, 0.05, None))
    s, lab, amp = np.concatenate(samples), np.concatenate(labels), np.concatenate(amps)
    order = np.lexsort((lab, s))
    spikes = np.zeros(s.size, dtype=[("sample_index", "int64"), ("unit_index", "int64"), ("segment_index", "int64")])
    spikes["sample_index"], spikes["unit_index"] = s[order], lab[order]
    return spikes, amp[order].astype(np.float32)


def _recipe_recording(
    seed: int,
    recipe: SyntheticRecipe,
    duration_s: float,
    sampling_frequency: float | str,
    num_units: int | None,
    noise_level: float | None,
    firing_rates: float | Sequence[float] | None,
    num_channels: int,
    snr_range: tuple[float, float] | None,
    refractory_period_ms: float | None,
) -> tuple[Any, Any]:
    """generate_recording's recipe path: numpy noise + SpikeInterface's InjectTemplatesRecording."""
    from spikeinterface.core import NumpyRecording, NumpySorting
    from spikeinterface.core.generate import InjectTemplatesRecording

    r = recipe
    rng = np.random.default_rng(int(seed))
    fs = (
        float(round(rng.uniform(*r.sampling_frequency)))
        if sampling_frequency == "random"
        else _draw_rate(sampling_frequency, rng)
    )
    n_lab = int(rng.integers(r.num_units[0], r.num_units[1] + 1)) if num_units is None else int(num_units)
    n_bg = int(rng.integers(r.background_units[0], r.background_units[1] + 1))
    n_all = n_lab + n_bg
    noise = float(rng.uniform(*r.noise_level)) if noise_level is None else float(noise_level)
    if not np.isfinite(noise) or noise <= 0:
        raise DeepSpikeError(f"noise_level must be > 0, got {noise_level!r}")
    refractory = r.refractory_ms if refractory_period_ms is None else float(refractory_period_ms)
    if snr_range is not None and not 0 < float(snr_range[0]) <= float(snr_range[1]):
        raise DeepSpikeError(f"snr_range must be (low, high) with 0 < low <= high, got {snr_range!r}")
    snr = np.concatenate([
        _log_uniform(r.snr if snr_range is None else tuple(map(float, snr_range)), n_lab, rng),
        _log_uniform(r.background_snr, n_bg, rng),
    ])  # fmt: skip
    units = _draw_units(r, n_lab, snr, rng, n_bg)
    depol = units.shapes["depolarization_ms"]  # at least 1.5 samples, or SpikeInterface's ramp is empty (0/0)
    units.shapes["depolarization_ms"] = np.maximum(depol, 1.5 * 1000.0 / fs)
    rates = np.concatenate([
        _log_uniform(r.firing_rate, n_lab, rng) if firing_rates is None else _firing_rates(firing_rates, n_lab, rng),
        _log_uniform(r.background_rate, n_bg, rng),
    ])  # fmt: skip
    bursty = rng.random(n_all) < r.burst_fraction
    drift = rng.uniform(-r.drift, r.drift, n_all)

    templates, nbefore, main = _recipe_templates(fs, units, n_lab, num_channels, noise, rng)
    spikes, amps = _recipe_spikes(r, rates, bursty, drift, refractory, duration_s, fs, templates.shape[1], rng)
    n_samples = round(duration_s * fs)
    noise_rec = NumpyRecording(
        coloured_noise(
            n_samples, num_channels, fs, noise, float(rng.uniform(*r.noise_exponent)),
            float(min(rng.uniform(*r.noise_cutoff_hz), 0.45 * fs)), rng,
        ),
        fs,
    )  # fmt: skip
    recording = InjectTemplatesRecording(
        NumpySorting(spikes, fs, np.arange(n_all)),
        templates,
        nbefore=nbefore,
        amplitude_factor=amps,
        parent_recording=noise_rec,
    )
    labelled = spikes[spikes["unit_index"] < n_lab]
    sorting = NumpySorting(labelled, fs, np.arange(n_lab))
    props = {
        "gt_snr": units.snr[:n_lab],
        "gt_firing_rate": rates[:n_lab],
        "gt_polarity": units.polarity[:n_lab],
        "gt_triphasic": units.triphasic[:n_lab],
        "gt_similar_to": units.similar_to[:n_lab],
        "gt_bursty": bursty[:n_lab],
        "gt_drift": drift[:n_lab],
        "gt_main_channel": main[:n_lab],
        **{f"gt_{k}": v[:n_lab] for k, v in units.shapes.items()},
    }
    for name, values in props.items():
        sorting.set_property(name, np.asarray(values))
    recording.annotate(
        synthetic_seed=int(seed),
        synthetic_noise_level=noise,
        synthetic_background_units=n_bg,
        synthetic_nbefore=nbefore,
    )
    return recording, sorting


def generate_recording(
    seed: int,
    duration_s: float = 60.0,
    sampling_frequency: float | str = 24000.0,
    num_units: int | None = None,
    noise_level: float | None = None,
    firing_rates: float | Sequence[float] | None = None,
    num_channels: int = 1,
    snr_range: tuple[float, float] | None = None,
    refractory_period_ms: float | None = None,
    recipe: str | Mapping[str, Any] | SyntheticRecipe | None = None,
    amplitude_drift: float = 0.0,
) -> tuple[Any, Any]:
    """A lazy ground-truth recording and its sorting, fully determined by ``seed``.

    ``sampling_frequency="random"`` draws from 20, 24, 25, 30 and 40 kHz; ``noise_level`` (recording units,
    default drawn in [5, 20]) is the sigma of the white noise; ``firing_rates`` default to U(2, 15) Hz per unit.
    Unit peak amplitudes are ``snr_range`` x noise_level (trough, before filtering). The GT sorting carries the
    per-unit properties ``gt_snr``, ``gt_firing_rate`` and the template shape parameters (``gt_<name>``).
    Defaults: 3 units, ``snr_range`` (8, 25), 4 ms refractory period.

    ``recipe`` (a name such as ``"broad"``, a mapping or a SyntheticRecipe) draws everything from the recipe's
    ranges instead (``sampling_frequency="random"`` then means the recipe's continuous range); arguments given
    explicitly override the recipe's draws. The GT sorting then also carries ``gt_polarity``, ``gt_triphasic``,
    ``gt_similar_to`` (index of the unit it is a near-copy of, or -1), ``gt_bursty``, ``gt_drift`` and
    ``gt_main_channel``; background units are injected into the traces but absent from the GT sorting.
    ``amplitude_drift`` (no recipe): each unit's amplitude ramps linearly to 1 +- up to that at the ends (``gt_drift``)
    while the traces stay lazy, so an hour-long recording is written chunk by chunk (the recipe's noise is in memory).
    """
    from probeinterface import generate_linear_probe
    from spikeinterface.core import generate_ground_truth_recording

    if (num_units is not None and int(num_units) < 1) or int(num_channels) < 1:
        raise DeepSpikeError(f"num_units and num_channels must be >= 1, got {num_units} and {num_channels}")
    if not np.isfinite(duration_s) or duration_s <= 0:
        raise DeepSpikeError(f"duration_s must be > 0 seconds, got {duration_s!r}")
    if recipe is not None and amplitude_drift:
        raise DeepSpikeError("amplitude_drift is for recordings without a recipe; a recipe drifts by its `drift` key")
    if not 0 <= float(amplitude_drift) < 1:
        raise DeepSpikeError(f"amplitude_drift must be in [0, 1), got {amplitude_drift!r}")
    if recipe is not None:
        return _recipe_recording(
            seed, load_recipe(recipe), float(duration_s), sampling_frequency, num_units, noise_level, firing_rates,
            int(num_channels), snr_range, refractory_period_ms,
        )  # fmt: skip
    num_units, num_channels = 3 if num_units is None else int(num_units), int(num_channels)
    snr_range = (8.0, 25.0) if snr_range is None else snr_range
    refractory_period_ms = 4.0 if refractory_period_ms is None else float(refractory_period_ms)
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
    if amplitude_drift:  # drawn after everything else: the same seed gives the same recording without the drift
        recording = _with_amplitude_drift(recording, sorting, float(amplitude_drift), rng)
    return recording, sorting


def _with_amplitude_drift(recording: Any, sorting: Any, drift: float, rng: np.random.Generator) -> Any:
    """``recording`` (generate_ground_truth_recording's injection) with each unit's amplitude ramping linearly over
    time, 1 + d at the end and 1 - d at the start, d drawn in [-drift, drift] per unit: the slow drift of long
    recordings. Same noise, templates and spikes (its own inputs, reused); still lazy."""
    from spikeinterface.core.generate import InjectTemplatesRecording

    d = rng.uniform(-drift, drift, len(sorting.unit_ids))
    spikes = sorting.to_spike_vector()  # the order InjectTemplatesRecording takes amplitude factors in
    t = spikes["sample_index"] / float(recording.get_num_samples(segment_index=0))
    factor = (1.0 + d[spikes["unit_index"]] * (2.0 * t - 1.0)).astype(np.float32)
    kw = recording._kwargs
    drifting = InjectTemplatesRecording(
        sorting, np.asarray(kw["templates"], dtype=np.float32), nbefore=kw["nbefore"], amplitude_factor=factor,
        parent_recording=kw["parent_recording"], upsample_vector=kw["upsample_vector"],
    )  # fmt: skip
    recording.copy_metadata(drifting)  # probe, gains, annotations
    sorting.set_property("gt_drift", d)
    return drifting


def generate_drifting_pair(
    seed: int,
    duration_s: float = 120.0,
    num_channels: int = 128,
    num_units: int = 20,
    motion: Mapping[str, Any] | None = None,
    drift_um: float = 25.0,
    sampling_frequency: float = 30000.0,
) -> tuple[Any, Any, Any]:
    """(drifting recording, its static twin, GT sorting) on a Neuropixels-like probe (SpikeInterface's drifting
    generator), fixed by ``seed``.

    The twin has the same spikes, templates, amplitudes and noise without the motion, so what drift costs a sorter is
    the difference of two scores. ``motion`` is one entry of SpikeInterface's ``motion_list`` (``drift_mode``:
    zigzag | bumps | random_walk; ``non_rigid_gradient`` makes it non-rigid; ``period_s``, ``t_start_drift``,
    ``bump_interval_s``); units move between +``drift_um`` and -``drift_um`` along the probe's depth.
    """
    from spikeinterface.generation import generate_drifting_recording

    if int(num_units) < 1 or not np.isfinite(duration_s) or duration_s <= 0 or drift_um < 0:
        raise DeepSpikeError(f"need num_units >= 1, duration_s > 0, drift_um >= 0; got {num_units}, {duration_s}, "
                             f"{drift_um}")  # fmt: skip
    prb = make_probe("neuropixels", int(num_channels))
    displacement = {
        "displacement_sampling_frequency": 5.0, "drift_start_um": [0.0, float(drift_um)],
        "drift_stop_um": [0.0, -float(drift_um)], "drift_step_um": 1.0,
        "motion_list": [{"drift_mode": "zigzag", "t_start_drift": 0.0, "non_rigid_gradient": None, **(motion or {})}],
    }  # fmt: skip
    static, drifting, sorting, info = generate_drifting_recording(
        num_units=int(num_units), duration=float(duration_s), sampling_frequency=float(sampling_frequency),
        probe=prb, generate_displacement_vector_kwargs=displacement, extra_outputs=True, seed=int(seed),
    )  # fmt: skip
    sorting.set_property("gt_main_channel", np.asarray(sorting.get_property("max_channel_index")))
    sorting.set_property("gt_unit_location", np.asarray(info["unit_locations"], dtype=np.float64))
    for rec, moved in ((drifting, True), (static, False)):
        rec.annotate(synthetic_seed=int(seed), synthetic_probe="neuropixels", synthetic_drift=moved)
    return drifting, static, sorting


def generate_probe_recording(
    seed: int,
    duration_s: float = 60.0,
    probe: str = "tetrode",
    num_channels: int | None = None,
    num_units: int = 5,
    snr_range: tuple[float, float] = (4.0, 20.0),
    sampling_frequency: float = 30000.0,
    noise_level: float | None = None,
    firing_rates: float | Sequence[float] | None = None,
    refractory_period_ms: float = 4.0,
) -> tuple[Any, Any]:
    """A multi-channel ground-truth recording on a real probe geometry (``make_probe``), fixed by ``seed``.

    SpikeInterface places each unit in space near the probe and builds its template from that position, so a
    unit shows on several neighbouring contacts, decaying with distance. Each template is then scaled so its peak
    on the best contact is one draw of ``snr_range`` (one per band, as in ``generate_recording``) times the white
    noise sigma ``noise_level`` (default drawn in [5, 20]). The GT sorting carries ``gt_snr``,
    ``gt_firing_rate``, ``gt_main_channel`` and ``gt_unit_location`` (x, y, z in um).
    """
    from spikeinterface.core import generate_ground_truth_recording
    from spikeinterface.core.generate import generate_templates, generate_unit_locations

    if int(num_units) < 1:
        raise DeepSpikeError(f"num_units must be >= 1, got {num_units}")
    if not np.isfinite(duration_s) or duration_s <= 0:
        raise DeepSpikeError(f"duration_s must be > 0 seconds, got {duration_s!r}")
    rng = np.random.default_rng(int(seed))
    fs = _draw_rate(float(sampling_frequency), rng)
    prb = make_probe(probe, num_channels)
    noise = float(rng.uniform(5.0, 20.0)) if noise_level is None else float(noise_level)
    if not np.isfinite(noise) or noise <= 0:
        raise DeepSpikeError(f"noise_level must be > 0, got {noise_level!r}")
    rates = _firing_rates(firing_rates, int(num_units), rng)
    snrs = _peak_snrs(snr_range, int(num_units), rng)
    pos = prb.contact_positions
    locations = generate_unit_locations(
        int(num_units), pos, margin_um=20.0, minimum_z=5.0, maximum_z=40.0, minimum_distance=15.0,
        seed=int(rng.integers(0, 2**31 - 1)),
    )  # fmt: skip
    ms_before, ms_after = 1.0, 2.5
    templates = generate_templates(pos, locations, fs, ms_before, ms_after, seed=int(rng.integers(0, 2**31 - 1)))
    peak = np.abs(templates).max(axis=(1, 2))
    templates = (templates * (snrs * noise / peak)[:, None, None]).astype(np.float32)
    recording, sorting = generate_ground_truth_recording(
        durations=[float(duration_s)], sampling_frequency=fs, num_units=int(num_units), probe=prb,
        templates=templates, ms_before=ms_before, ms_after=ms_after,
        generate_sorting_kwargs={"firing_rates": rates, "refractory_period_ms": float(refractory_period_ms)},
        noise_kwargs={"noise_levels": noise, "strategy": "on_the_fly"}, dtype="float32",
        seed=int(rng.integers(0, 2**31 - 1)),
    )  # fmt: skip
    sorting.set_property("gt_snr", snrs)
    sorting.set_property("gt_firing_rate", rates)
    sorting.set_property("gt_main_channel", np.abs(templates).max(axis=1).argmax(axis=1))
    sorting.set_property("gt_unit_location", np.asarray(locations, dtype=np.float64))
    recording.annotate(synthetic_seed=int(seed), synthetic_noise_level=noise, synthetic_probe=probe)
    return recording, sorting


@dataclass
class Drift:
    """The generator's true drift: ``times_s`` [T], ``displacement_um`` [T, units] (each unit's depth shift)."""

    times_s: np.ndarray
    displacement_um: np.ndarray
    unit_depth_um: np.ndarray


def generate_drifting_probe_recording(
    seed: int,
    duration_s: float = 120.0,
    num_channels: int = 128,
    num_units: int = 30,
    drift_um: float = 25.0,
    period_s: float = 60.0,
    non_rigid_gradient: float | None = None,
    in_memory: bool = True,
) -> tuple[Any, Any, Any, Drift]:
    """(static, drifting, GT sorting, true drift): SpikeInterface's ``generate_drifting_recording`` on a
    Neuropixels-1.0-like shank (4 staggered columns, 16 um apart, a row every 20 um: 10 um of depth per contact)
    with a zigzag drift of +-``drift_um`` starting at 0 s; ``non_rigid_gradient`` (0-1) scales it along the
    shank (SpikeInterface's non-rigid option). Both recordings have the same spikes. ``in_memory``: traces computed
    once (the generator computes them on every read otherwise).
    """
    from probeinterface import generate_multi_columns_probe
    from spikeinterface.core import NumpyRecording
    from spikeinterface.generation import generate_drifting_recording

    if num_channels % 4:
        raise DeepSpikeError(f"num_channels={num_channels}: must be a multiple of 4 (4 columns)")
    probe = generate_multi_columns_probe(num_columns=4, num_contact_per_column=num_channels // 4, xpitch=16.0,
                                         ypitch=40.0, y_shift_per_column=[20.0, 0.0, 20.0, 0.0])  # fmt: skip
    probe.set_device_channel_indices(np.arange(num_channels))
    motion = {"drift_mode": "zigzag", "non_rigid_gradient": non_rigid_gradient, "t_start_drift": 0.0,
              "t_end_drift": None, "period_s": float(period_s)}  # fmt: skip
    static, drifting, sorting, extra = generate_drifting_recording(
        num_units=int(num_units), duration=float(duration_s), probe=probe, seed=int(seed), extra_outputs=True,
        generate_displacement_vector_kwargs={"displacement_sampling_frequency": 5.0, "drift_start_um": [0, drift_um],
                                             "drift_stop_um": [0, -drift_um], "drift_step_um": 1,
                                             "motion_list": [motion]},
    )  # fmt: skip
    if in_memory:
        static, drifting = (_materialized(r, NumpyRecording) for r in (static, drifting))
    fs = float(extra["displacement_sampling_frequency"])
    disp = np.asarray(extra["unit_displacements"], dtype=np.float64)[..., 1]  # [T, units] along the shank
    drift = Drift(np.arange(len(disp)) / fs, disp, np.asarray(extra["unit_locations"])[:, 1])
    return static, drifting, sorting, drift


def _materialized(recording: Any, numpy_recording: Any) -> Any:
    traces = recording.get_traces(segment_index=0)
    out = numpy_recording([traces], sampling_frequency=recording.get_sampling_frequency())
    recording.copy_metadata(out)
    return out


def templated_recording(
    units: Sequence[tuple[float, float, float, float]],
    firing_rates: Sequence[float],
    duration_s: float,
    seed: int = 0,
    noise_level: float = 10.0,
    sampling_frequency: float = 24000.0,
    drift: Sequence[float] | None = None,
) -> tuple[Any, Any]:
    """(recording, ground truth): one channel with hand-shaped units, for tests and benches that need exact units.

    Each unit is ``(amplitude, width_ms, rebound_ratio, rebound_delay_ms)``: a Gaussian main peak of that height and
    width minus a 2.5x broader rebound ``rebound_ratio`` as high, ``rebound_delay_ms`` after it (1 ms before and 2 ms
    after the peak); SpikeInterface's generator adds white noise of ``noise_level`` and places the spikes.
    ``drift`` (one value per unit, e.g. 0.25): each unit's amplitude scales linearly from ``1 - drift`` at the start
    to ``1 + drift`` at the end (a chronic electrode's slow drift); the GT sorting carries it as ``gt_drift``.
    """
    import spikeinterface.core as sc

    fs = float(sampling_frequency)
    nb, na = int(1e-3 * fs), int(2e-3 * fs)
    t = (np.arange(nb + na) - nb) / fs * 1e3
    tpl = np.stack([a * (np.exp(-0.5 * (t / w) ** 2) - r * np.exp(-0.5 * ((t - d) / (2.5 * w)) ** 2))
                    for a, w, r, d in units])  # fmt: skip
    if drift is not None:
        return _drifting(tpl, firing_rates, duration_s, seed, noise_level, fs, drift)
    return sc.generate_ground_truth_recording(
        durations=[float(duration_s)], sampling_frequency=fs, num_channels=1, num_units=len(units),
        templates=tpl[:, :, None].astype(np.float32), ms_before=1.0, ms_after=2.0,
        generate_sorting_kwargs={"firing_rates": [float(f) for f in firing_rates], "refractory_period_ms": 4.0},
        noise_kwargs={"noise_levels": float(noise_level), "strategy": "on_the_fly"}, seed=seed,
    )  # fmt: skip


def _drifting(
    tpl: np.ndarray,
    firing_rates: Sequence[float],
    duration_s: float,
    seed: int,
    noise_level: float,
    fs: float,
    drift: Sequence[float],
) -> tuple[Any, Any]:
    """``templated_recording`` with each unit's amplitude scaled by ``1 + drift * (2 t / duration - 1)``."""
    from spikeinterface.core.generate import InjectTemplatesRecording, generate_sorting
    from spikeinterface.generation import NoiseGeneratorRecording

    drift = np.asarray(drift, dtype=np.float64)
    if drift.shape != (len(tpl),) or not np.all(np.abs(drift) < 1):
        raise DeepSpikeError(f"drift must hold one value in (-1, 1) per unit ({len(tpl)}), got {drift.tolist()}")
    sorting = generate_sorting(
        num_units=len(tpl), sampling_frequency=fs, durations=[float(duration_s)],
        firing_rates=[float(f) for f in firing_rates], refractory_period_ms=4.0, seed=seed,
    )  # fmt: skip
    spikes = sorting.to_spike_vector()
    t = spikes["sample_index"] / (fs * float(duration_s))
    factor = (1.0 + drift[spikes["unit_index"]] * (2.0 * t - 1.0)).astype(np.float32)
    noise = NoiseGeneratorRecording(
        num_channels=1, sampling_frequency=fs, durations=[float(duration_s)], noise_levels=float(noise_level),
        dtype="float32", seed=seed, strategy="on_the_fly", noise_block_size=int(fs),
    )  # fmt: skip
    recording = InjectTemplatesRecording(
        sorting, tpl[:, :, None].astype(np.float32), nbefore=int(1e-3 * fs), amplitude_factor=factor,
        parent_recording=noise,
    )  # fmt: skip
    recording.annotate(is_filtered=True)
    sorting.set_property("gt_drift", drift)
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
    workers: int = 1,
    **kwargs: Any,
) -> list[Path]:
    """Write ``n`` recordings as SI binary folders ``out_dir/synth_{i:03d}/`` with GT in ``synth_{i:03d}.gt/``.

    Resumable: complete pairs are kept as they are; a half-written one is rebuilt (each folder is written under a
    temporary name and renamed when done). Recording ``i`` uses a seed derived from (``seed``, ``i``), so the
    set is reproducible and extending ``n`` keeps the earlier recordings. ``workers`` > 1 writes recordings in a
    spawn-based process pool (same files as serially). ``kwargs`` go to generate_recording.
    """
    if int(n) < 0:
        raise DeepSpikeError(f"n must be >= 0, got {n}")
    if int(workers) < 1:
        raise DeepSpikeError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"synth_{i:03d}" for i in range(int(n))]
    todo = [i for i, p in enumerate(paths) if not _complete(p, p.with_name(p.name + ".gt"))]
    job = {"duration_s": duration_s, "sampling_frequency": sampling_frequency, **kwargs}
    if int(workers) == 1 or len(todo) <= 1:
        for i in todo:
            _write_one(out, i, seed, job, progress)
        return paths
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(min(int(workers), len(todo)), mp_context=get_context("spawn")) as pool:
        for fut in [pool.submit(_write_one, out, i, seed, job, False) for i in todo]:
            fut.result()
    return paths


def _write_one(out: Path, i: int, seed: int, job: dict[str, Any], progress: bool) -> None:
    """Generate and save recording ``i`` of a synthetic set (its seed derived from (``seed``, ``i``))."""
    folder, gt_folder = out / f"synth_{i:03d}", out / f"synth_{i:03d}.gt"
    rec_seed = int(np.random.default_rng([int(seed), i]).integers(0, 2**31 - 1))
    recording, sorting = generate_recording(rec_seed, **job)
    save_pair(recording, sorting, folder, gt_folder, progress)
    log.info("wrote %s (%g Hz, %g s)", folder, recording.get_sampling_frequency(), job["duration_s"])


def _chunk_s(recording: Any, max_bytes: float = 128e6) -> float:
    """Seconds per written chunk: 30 s, fewer where 30 s of all channels would pass ``max_bytes`` (128-channel probes).

    Generated traces do not depend on the chunking, so this only bounds memory."""
    per_s = recording.get_num_channels() * recording.get_sampling_frequency() * np.dtype(recording.get_dtype()).itemsize
    return float(min(30.0, max(1.0, np.floor(max_bytes / per_s))))


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
                folder=tmp_rec, format="binary", n_jobs=1, chunk_duration=f"{_chunk_s(recording):g}s",
                progress_bar=progress, verbose=False,
            )  # fmt: skip
    finally:
        gc.unfreeze()
    tmp_gt.rename(gt_folder)
    tmp_rec.rename(folder)
