"""Units whose spikes other units' templates explain: collisions and duplicate events, not neurons.

On a probe a large neuron shows on many channels. A spike of another neuron within a millisecond or two of one of
its spikes makes one event whose waveform is the sum of both, and a large spike's other phase can cross the
threshold on a channel more than ``multichannel.dedup_ms`` away from its peak, a second event of the same spike. The
per-neighbourhood clustering gives such events units of their own once there are enough of them: tens per pair of
neurons and minute, so their number grows with the recording (a 32-channel, 10-minute recording of 8 neurons gave
40 units). Their templates are means over the lags of the pairs (a collision at 0.3 ms and one at 1.2 ms look
nothing alike), so comparing templates does not find them; each of their spikes, however, is a sum of other units'
templates at some lag, which is what template matching fits.

The test is therefore per spike and leave-one-out. Units are visited largest first (spike count); a sample of each
unit's spikes is explained by greedy pursuit (as a peeler does: best template, lag and scale, subtracted, again)
with the templates of the kept larger units, once with the unit's own template among them and once without. What
the own template adds is measured twice, as a median over the sample: its share of the explained energy (about 0
for a collision or a duplicate event, most of it for a neuron, whose spikes fit no other template), and the
residual its spikes keep without it, per sample in noise variances (the excess). A unit whose share is below
``multichannel.explained_share`` is dropped if its spikes also come with the larger units' spikes (within
``SHIFT_MS``, well above what independent trains would: ``coupling``), unless it is a neuron beside a
near twin: its excess at least ``MIN_EXCESS`` and at least ``PEER_SIZE`` of its partner's spikes (on generated probes
two neurons had templates of cosine 0.96, a share of 0.07, but kept 1.6-2.3 noise variances per sample without their
own template; collisions and a spike's other phases are a small part of their neuron's spikes). The timing test is
what keeps a neuron whose shape another's template fits at another amplitude (a tetrode's near twins: cosine 0.95-0.99,
shares 0.005-0.09, dropped on their share alone: the default bench set's tetrode mean 0.979 -> 0.734): a collision or
a spike's other phase exists only beside another spike, a neuron fires on its own. A dropped unit's spikes get no
unit, and template matching then finds the neurons there. Counts enter only through the order of the visit, a ratio of
two units' counts, a fixed-size sample of spikes and shares of its spikes, so the decision does not drift with the
recording's length.

Thresholds chosen on dev seeds (bench/scale.py: 32 channels x 10 min, seeds 11-13; 64 channels x 1 min, seeds 11,
12): neurons had shares from 0.17 up but for the two twins (0.07, protected) and a 67-spike piece of a neuron no
unit found (0.01); the units of collisions and duplicate events at most 0.05, with an excess up to 1.4 (a 35-spike
unit) (docs/multichannel.md, Collisions and duplicate events).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepspike.sorting.clustering.merge import time_overlap

WINDOW_MS = (2.0, 2.5)  # template extent before / after the peak: a big spike's slow phases included
SHIFT_MS = 2.5  # a template is placed this far at most from the event's peak: a colliding spike's lag, or a big
# spike's own peak seen from an event on its other phase
STEPS = 2  # templates fitted per spike: the unit's neuron and one colliding spike
SPIKES = 60  # spikes tested per unit (a fixed sample: the same test at any recording length)
TEMPLATE_SPIKES = 200  # spikes averaged into each template
SCALE = (2 / 3, 1.5)  # range of a fitted template's amplitude: one neuron's (multichannel.merge_amplitude_ratio)
MAX_CHANNELS = 32  # channels tested per unit: its largest (every channel where it shows, on most probes)
LIVE_SIGMA = 1.0  # a template channel that peaks below this many noise sigmas holds no spike
MIN_EXCESS = 1.0  # noise variances per sample: spikes that keep this much more residual without their unit's template
# hold something no larger unit explains (the noise's own variance again) ...
PEER_SIZE = 0.5  # ... and a unit with at least this share of its partner's spikes is a neuron beside it, whatever its
# share (collisions and a spike's other phases are a small part of their neuron's spikes)
COUPLED = 0.25  # a unit whose spikes come with the larger units' spikes (within SHIFT_MS) this much more often than
# independent trains would, as a share of the room above chance ((seen - chance) / (1 - chance)), is a collision or a
# spike's other phase. Dev (bench_dev0 tetrodes/shanks, bench/scale.py seed 11 at 32 ch x 10 min, dev drift seed
# 5001): those units 0.3-1.0; the real neurons whose shape the larger units' templates fit (near twins, cosine
# 0.95-0.99, shares 0.005-0.09) -0.2-0.05; pieces of one neuron 0.1-0.5 (kept unless they take turns, below)
TURN_SPIKES = 5  # spikes per time bin of the turn test (clustering.merge.time_overlap): a unit the partner's template
# explains and that fires in turns with it (overlap <= multichannel.merge_turns) is a piece of that neuron which drift
# moved (dev drift seed 5001, corrected: 0.10-0.26); near twins fire through the recording together (0.75-0.83); at
# 10 spikes per bin the pieces' overlaps were 0.14-0.48 (bins of ~12 s against a 60 s zigzag)


def drop_explained_units(
    filtered: Any,
    labels: np.ndarray,
    sample_index: np.ndarray,
    noise: np.ndarray,
    min_share: float,
    seed: int = 0,
    n_jobs: int = 1,
    min_excess: float = MIN_EXCESS,
    turns: float = 0.0,
) -> tuple[np.ndarray, dict[int, dict[str, Any]]]:
    """Labels with the explained units set to -1 (units renumbered 0..k-1), and each tested unit's record by its
    input label: ``share`` and ``excess`` (``own_share``), ``partner`` (the unit fitted first to most of its
    spikes without its own template), ``dropped``.

    A unit is dropped when its share is below ``min_share`` and its spikes come with the larger units' (``coupling``)
    or take turns in time with its partner's (overlap at most ``turns``: a piece of the partner's neuron that drift
    moved; 0 = no such test), unless its excess is at least ``min_excess`` and it has at least ``PEER_SIZE`` of its
    partner's spikes (two neurons of near-identical templates). ``noise``: sigma
    per channel in the traces' units. ``min_share`` 0 tests nothing."""
    units, counts = np.unique(labels[labels >= 0], return_counts=True)
    if min_share <= 0 or len(units) < 2:
        return labels, {}
    fs = float(filtered.get_sampling_frequency())
    nb, na = (max(1, round(ms * fs / 1000)) for ms in WINDOW_MS)
    shift = max(1, round(SHIFT_MS * fs / 1000))
    scale = np.where(noise > 0, 1.0 / np.where(noise > 0, noise, 1.0), 0.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    duration = int(filtered.get_num_samples(0))
    tpl = _templates(filtered, labels, sample_index, units, nb, na, rng, n_jobs) * scale
    chans = _unit_channels(tpl)
    snippets = _snippets(filtered, labels, sample_index, units, chans, nb + shift, na + shift, rng, n_jobs)
    kept = np.ones(len(units), dtype=bool)
    which, times = _time_order(labels, sample_index, units)  # once: the timing tests read them for every unit
    by_unit = np.split(times[np.argsort(which, kind="stable")], np.cumsum(counts)[:-1])  # each unit's, time order
    tests: dict[int, dict[str, Any]] = {}
    for i in np.argsort(-counts, kind="stable"):
        c = chans[i]
        others = [j for j in np.flatnonzero(kept) if counts[j] > counts[i] and np.abs(tpl[j][:, c]).max() >= LIVE_SIGMA]
        if not others or len(snippets[i]) == 0:
            continue
        share, excess, first = own_share(snippets[i] * scale[c], tpl[i][:, c], tpl[others][:, :, c], shift)
        partner = others[first]
        peer = excess >= min_excess and counts[i] >= PEER_SIZE * counts[partner]
        is_other = np.zeros(len(units), dtype=bool)
        is_other[others] = True
        together, chance, coupled = coupling(by_unit[i], times[is_other[which]], shift, duration)
        overlap = time_overlap(by_unit[i], by_unit[partner], duration, per_bin=TURN_SPIKES)
        kept[i] = share >= min_share or peer or not (coupled or overlap <= turns)
        tests[int(units[i])] = {"share": round(share, 4), "excess": round(excess, 3), "partner": int(units[partner]),
                                "together": round(together, 3), "chance": round(chance, 3),
                                "overlap": round(overlap, 3), "dropped": not bool(kept[i])}  # fmt: skip
    out = np.where(np.isin(labels, units[~kept]), -1, labels)
    ids = np.unique(out[out >= 0])
    out[out >= 0] = np.searchsorted(ids, out[out >= 0])
    return out, tests


def coupling(times: np.ndarray, others: np.ndarray, window: int, duration: int) -> tuple[float, float, bool]:
    """(share of ``times`` with a spike of ``others`` (sorted) within ``window`` samples, that share for independent
    trains, whether the excess over chance reaches ``COUPLED`` of the room above it).

    Why timing: a near twin of a larger neuron (same shape, other amplitude) is explained by its template as well as a
    collision is, but it fires on its own; a collision or a spike's other phase happens only beside another spike.
    An effect size, not a significance test: a unit of 20 spikes that the larger templates explain and that sits
    beside their spikes 0.6 of the time (chance 0.36) goes; a real neuron that small costs little if it does."""
    if len(times) == 0 or len(others) == 0:
        return 0.0, 0.0, False
    near = np.searchsorted(others, times + window, side="right") - np.searchsorted(others, times - window)
    seen = float((near > 0).mean())
    chance = float(-np.expm1(-len(others) * (2 * window + 1) / max(duration, 1)))
    return seen, chance, bool(chance < 1 and (seen - chance) / (1 - chance) >= COUPLED)


def _time_order(labels: np.ndarray, sample_index: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the unit index in ``units`` of each labelled spike, its sample index), in time order: every timing test then
    selects and searches sorted times instead of sorting all spikes again per unit (1 h on 384 channels: millions)."""
    valid = labels >= 0
    times = sample_index[valid]
    order = np.argsort(times, kind="stable")
    return np.searchsorted(units, labels[valid])[order], times[order]


def own_share(
    snippets: np.ndarray, own: np.ndarray, others: np.ndarray, shift: int, steps: int = STEPS
) -> tuple[float, float, int]:
    """What the template ``own`` ``[L, C]`` adds to pursuit with the templates ``others`` ``[k, L, C]`` on
    ``snippets`` ``[n, L + 2 shift, C]`` (noise units): (share: median of the part of the explained energy lost
    without ``own``; excess: median of the residual gained without it, per sample (noise variances); the index of
    the other template fitted first most often without ``own``)."""
    centre = slice(shift, snippets.shape[1] - shift)
    energy = (snippets[:, centre] ** 2).sum(axis=(1, 2))
    with_own, _ = pursuit_residual(snippets, np.concatenate([own[None], others]), shift, steps)
    without, first = pursuit_residual(snippets, others, shift, steps)
    lost = without - with_own
    main = int(np.bincount(first[first >= 0], minlength=len(others)).argmax()) if (first >= 0).any() else 0
    share = float(np.median(lost / np.maximum(energy - with_own, 1e-9)))
    return share, float(np.median(lost)) / own.size, main


def pursuit_residual(snippets: np.ndarray, bank: np.ndarray, shift: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(residual energy of each snippet's centre after ``steps`` greedy fits of the ``bank`` templates ``[k, L, C]``,
    each at the lag within ``shift`` samples and the amplitude in ``SCALE`` that removes the most energy; the bank
    index fitted first to each snippet, -1 for none).

    The dot products of every template at every lag are cross-correlations, computed by FFT over time."""
    r = np.array(snippets, dtype=np.float32)
    n, width = r.shape[:2]
    length = bank.shape[1]
    nfft = int(2 ** np.ceil(np.log2(width)))  # >= width: the valid lags 0..2 shift wrap nothing
    spectra = np.conj(np.fft.rfft(bank, nfft, axis=1))  # [k, F, C]
    norms = np.maximum((bank.astype(np.float64) ** 2).sum(axis=(1, 2)), 1e-12)
    rows = np.arange(n)
    first = np.full(n, -1, dtype=np.int64)
    for step in range(steps):
        corr = np.fft.irfft(np.einsum("nfc,kfc->nkf", np.fft.rfft(r, nfft, axis=1), spectra), nfft, axis=2)
        dots = corr[:, :, : 2 * shift + 1]  # [n, k, lags]
        amp = np.clip(dots / norms[None, :, None], *SCALE)
        gain = (2 * amp * dots - amp**2 * norms[None, :, None]).reshape(n, -1)
        best = gain.argmax(axis=1)
        k, lag = np.divmod(best, 2 * shift + 1)
        a = np.where(gain[rows, best] > 0, amp.reshape(n, -1)[rows, best], 0.0).astype(np.float32)
        if step == 0:
            first = np.where(a > 0, k, -1)
        for s in np.flatnonzero(a):
            r[s, lag[s] : lag[s] + length] -= a[s] * bank[k[s]]
    return (r[:, shift : width - shift] ** 2).sum(axis=(1, 2)), first


def _unit_channels(tpl: np.ndarray) -> list[np.ndarray]:
    """Each unit's tested channels: where its template shows (``LIVE_SIGMA``), the ``MAX_CHANNELS`` largest."""
    peak = np.abs(tpl).max(axis=1)
    out = []
    for p in peak:
        order = np.argsort(-p, kind="stable")[:MAX_CHANNELS]
        live = order[p[order] >= LIVE_SIGMA]
        out.append(np.sort(live if live.size else order[:1]))
    return out


def _pick(
    labels: np.ndarray,
    sample_index: np.ndarray,
    units: np.ndarray,
    most: int,
    lo: int,
    hi: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Spike vector (SpikeInterface's fields, time order) of at most ``most`` spikes per unit, whole windows only."""
    rows = []
    for i, u in enumerate(units):
        idx = np.flatnonzero((labels == u) & (sample_index >= lo) & (sample_index < hi))
        if len(idx) > most:
            idx = rng.choice(idx, most, replace=False)
        rows.append(np.stack([sample_index[idx], np.full(len(idx), i)], axis=1))
    picked = np.concatenate(rows) if rows else np.zeros((0, 2), dtype=np.int64)
    picked = picked[np.lexsort((picked[:, 1], picked[:, 0]))]
    spikes = np.zeros(len(picked), dtype=[("sample_index", "i8"), ("unit_index", "i8"), ("segment_index", "i8")])
    spikes["sample_index"], spikes["unit_index"] = picked[:, 0], picked[:, 1]
    return spikes


def _templates(
    filtered: Any,
    labels: np.ndarray,
    sample_index: np.ndarray,
    units: np.ndarray,
    nb: int,
    na: int,
    rng: np.random.Generator,
    n_jobs: int,
) -> np.ndarray:
    """Mean waveform ``[units, nb + na, C]`` (traces' units) of at most ``TEMPLATE_SPIKES`` spikes per unit."""
    from spikeinterface.core.waveform_tools import estimate_templates

    spikes = _pick(labels, sample_index, units, TEMPLATE_SPIKES, nb, filtered.get_num_samples(0) - na, rng)
    arr = estimate_templates(filtered, spikes, units, nb, na, return_in_uV=False, n_jobs=n_jobs, progress_bar=False)
    return np.asarray(arr, dtype=np.float32)


def _snippets(
    filtered: Any,
    labels: np.ndarray,
    sample_index: np.ndarray,
    units: np.ndarray,
    chans: list[np.ndarray],
    nb: int,
    na: int,
    rng: np.random.Generator,
    n_jobs: int,
) -> list[np.ndarray]:
    """Per unit, at most ``SPIKES`` of its spikes' windows ``[n, nb + na, len(chans[i])]`` (traces' units)."""
    from spikeinterface.core.waveform_tools import extract_waveforms_to_single_buffer

    spikes = _pick(labels, sample_index, units, SPIKES, nb, filtered.get_num_samples(0) - na, rng)
    mask = np.zeros((len(units), filtered.get_num_channels()), dtype=bool)
    for i, c in enumerate(chans):
        mask[i, c] = True
    waves = extract_waveforms_to_single_buffer(
        filtered, spikes, nb, na, mode="shared_memory", return_in_uV=False, dtype="float32", sparsity_mask=mask,
        copy=True, n_jobs=n_jobs, progress_bar=False,
    )  # fmt: skip
    return [waves[spikes["unit_index"] == i][:, :, : len(c)] for i, c in enumerate(chans)]
