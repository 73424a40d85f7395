"""Channel groups and neighbourhoods from the probe, and one event per spike across neighbouring channels.

A neuron is seen on every contact within some tens of micrometres, so a per-channel sorter reports it once per
channel. The sorter therefore works on neighbourhoods: the channels within ``multichannel.radius_um`` of a
channel, in the same group (a tetrode, a shank: probeinterface's ``shank_ids`` / the recording's ``group``
property), and keeps one event per spike: the largest peak among neighbouring channels within
``multichannel.dedup_ms`` (the same deduplication in space and time as SpikeInterface's ``locally_exclusive``
detector, applied to DeepSpike's per-channel peaks). A recording without a probe has no geometry: each channel is
its own neighbourhood (the single-channel behaviour), with a warning when there are several.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from deepspike.defaults import conf_field, is_number, known_options
from deepspike.errors import DeepSpikeError
from deepspike.sorting.clustering.merge import time_overlap

log = logging.getLogger(__name__)

CONF = "sort.yaml"
COMBINE = ("concat", "weighted", "pooled")
SIGNAL_SIGMA = 1.0  # a template channel whose peak |value| is below this many noise sigmas holds no spike


@dataclass
class MultichannelParams:
    """``multichannel:`` block of ``conf/sort.yaml`` (meanings and ranges are documented there)."""

    enabled: bool = conf_field(CONF, "multichannel.enabled")
    radius_um: float = conf_field(CONF, "multichannel.radius_um")
    max_channels: int = conf_field(CONF, "multichannel.max_channels")
    dedup_ms: float = conf_field(CONF, "multichannel.dedup_ms")
    combine: str = conf_field(CONF, "multichannel.combine")
    n_components: int = conf_field(CONF, "multichannel.n_components")
    covariance_type: str = conf_field(CONF, "multichannel.covariance_type")
    merge_similarity: float = conf_field(CONF, "multichannel.merge_similarity")
    merge_amplitude_ratio: float = conf_field(CONF, "multichannel.merge_amplitude_ratio")
    merge_refractory_ms: float = conf_field(CONF, "multichannel.merge_refractory_ms")
    merge_turns: float = conf_field(CONF, "multichannel.merge_turns")
    footprint_sigma: float = conf_field(CONF, "multichannel.footprint_sigma")
    explained_share: float = conf_field(CONF, "multichannel.explained_share")

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> DeepSpikeError:
            return DeepSpikeError(f"multichannel.{name}={getattr(self, name)!r}: {why}")

        if not isinstance(self.enabled, (bool, np.bool_)):
            raise bad("enabled", "must be true or false")
        if not is_number(self.radius_um) or self.radius_um < 0:
            raise bad("radius_um", "must be >= 0 micrometres (e.g. 60; 0 = each channel alone)")
        if not isinstance(self.max_channels, (int, np.integer)) or self.max_channels < 1:
            raise bad("max_channels", "must be an integer >= 1 (channels of a neighbourhood, nearest first)")
        if not is_number(self.dedup_ms) or self.dedup_ms < 0:
            raise bad("dedup_ms", "must be >= 0 ms (e.g. 0.3)")
        if self.combine not in COMBINE:
            raise bad("combine", f"choose one of {COMBINE}")
        if not isinstance(self.n_components, (int, np.integer)) or self.n_components < 0:
            raise bad("n_components", "must be an integer >= 0 (0 = keep every combined feature)")
        if self.covariance_type not in ("full", "diag"):
            raise bad("covariance_type", "choose full or diag")
        if not is_number(self.merge_similarity) or not 0 < self.merge_similarity <= 1:
            raise bad("merge_similarity", "must be in (0, 1] (1 = never merge across neighbourhoods)")
        if not is_number(self.merge_amplitude_ratio) or self.merge_amplitude_ratio < 1:
            raise bad("merge_amplitude_ratio", "must be >= 1")
        if not is_number(self.merge_refractory_ms) or self.merge_refractory_ms < 0:
            raise bad("merge_refractory_ms", "must be >= 0 ms (0 = no refractory check)")
        if not is_number(self.merge_turns) or not 0 <= self.merge_turns <= 1:
            raise bad("merge_turns", "must be in [0, 1] (e.g. 0.6; 0 = never merge units of one neighbourhood)")
        if not is_number(self.footprint_sigma) or self.footprint_sigma < 0:
            raise bad(
                "footprint_sigma", "must be >= 0 noise sigmas (e.g. 1.0; 0 = templates on the neighbourhood only)"
            )
        if not is_number(self.explained_share) or not 0 <= self.explained_share < 1:
            raise bad("explained_share", "must be in [0, 1) (e.g. 0.1; 0 = keep every unit)")

    @classmethod
    def from_dict(cls, d: Any) -> MultichannelParams:
        if isinstance(d, cls):
            return d
        d = known_options(cls, d, "multichannel")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def channel_groups(recording: Any) -> np.ndarray:
    """Group of each channel (tetrode, shank); all 0 when the recording does not say."""
    try:
        groups = recording.get_channel_groups()
    except Exception:
        groups = None
    if groups is None or len(groups) != recording.get_num_channels():
        return np.zeros(recording.get_num_channels(), dtype=np.int64)
    return np.unique(np.asarray(groups), return_inverse=True)[1].astype(np.int64)


def neighbourhoods(recording: Any, params: MultichannelParams) -> np.ndarray:
    """Boolean ``[C, C]``: row c marks the channels in c's neighbourhood (itself included): within ``radius_um``
    and in c's group, at most ``max_channels`` of them, nearest first. Identity without a probe."""
    n = recording.get_num_channels()
    near = np.eye(n, dtype=bool)
    if not params.enabled or n == 1 or params.radius_um <= 0:
        return near
    if not recording.has_probe():
        warnings.warn(
            f"{n} channels but no probe geometry: each channel is sorted on its own, so a neuron seen on several "
            "channels becomes several units. Attach the probe (recording.set_probe, probeinterface) to sort "
            "neighbouring channels together",
            stacklevel=3,
        )
        return near
    pos = np.asarray(recording.get_channel_locations(), dtype=np.float64)
    dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
    groups = channel_groups(recording)
    dist = np.where(groups[:, None] == groups[None, :], dist, np.inf)
    for c in range(n):
        order = np.argsort(dist[c], kind="stable")
        order = order[dist[c, order] <= params.radius_um][: params.max_channels]
        near[c, order] = True
    return near


def is_multichannel(near: np.ndarray | None) -> bool:
    """Whether some channel has a neighbour: the multi-channel path; else every channel is sorted alone."""
    return near is not None and bool(near.sum(axis=1).max() > 1)


def neighbourhood_channels(near: np.ndarray, peak_channel: int) -> np.ndarray:
    """The channels of ``peak_channel``'s neighbourhood in a fixed order (ascending): feature layout of its events."""
    return np.flatnonzero(near[peak_channel])


def clustering_keys(near: np.ndarray) -> np.ndarray:
    """Key per channel: channels whose neighbourhoods are the same set (a tetrode's four) share one, so their
    events are clustered together; on a probe each channel's neighbourhood is its own key."""
    _, key = np.unique(near, axis=0, return_inverse=True)
    return np.asarray(key, dtype=np.int64).reshape(-1)


def deduplicate_events(
    sample_index: np.ndarray, channel: np.ndarray, amplitude: np.ndarray, near: np.ndarray, window: int
) -> np.ndarray:
    """Mask of the events to keep: an event is dropped when a larger |amplitude| event (ties: the earlier, then the
    lower channel) on a neighbouring channel lies within ``window`` samples. Each spike keeps its peak channel."""
    n = len(sample_index)
    keep = np.ones(n, dtype=bool)
    near = near | near.T  # a pair competes if either lies in the other's neighbourhood
    if n < 2 or window < 0 or not (near & ~np.eye(len(near), dtype=bool)).any():
        return keep
    order = np.lexsort((np.asarray(channel), np.asarray(sample_index)))
    t = np.asarray(sample_index, dtype=np.int64)[order]
    c = np.asarray(channel, dtype=np.int64)[order]
    a = np.abs(np.asarray(amplitude, dtype=np.float64))[order]
    out = np.ones(n, dtype=bool)
    for k in range(1, n):
        close = (t[k:] - t[:-k] <= window) & near[c[:-k], c[k:]]
        if not (t[k:] - t[:-k] <= window).any():
            break
        i = np.flatnonzero(close)
        j = i + k  # j is later (or the same sample on a higher channel): i wins ties
        out[j[a[i] >= a[j]]] = False
        out[i[a[j] > a[i]]] = False
    keep[order] = out
    return keep


# ----------------------------------------------------------------------------------------- event features


def neighbourhood_features(
    waves: np.ndarray,
    embed: Callable[[np.ndarray], np.ndarray] | None,
    params: MultichannelParams,
    spec: Any,
    seed: int,
    hybrid: bool = False,
) -> np.ndarray:
    """Features ``[n, D]`` of events from their windows ``[n, K, L]`` on the neighbourhood's K channels.

    With an encoder, ``embed`` (the frozen single-channel model: windows ``[m, L]`` -> ``[m, d]``) embeds every
    channel's window and ``params.combine`` joins them; without one (None: ``features=pca``), the baseline is PCA
    of the concatenated normalized windows; ``hybrid`` (``features=hybrid``): both, side by side at equal total
    variance (``side_by_side``). Then at most ``params.n_components`` principal components are kept.
    """
    from deepspike.spec import normalize

    n, k, length = waves.shape
    windows = normalize(np.ascontiguousarray(waves.reshape(n, k * length)), spec) if embed is None or hybrid else None
    if embed is None:
        feats = windows
    else:
        emb = np.asarray(embed(waves.reshape(n * k, length)), dtype=np.float32).reshape(n, k, -1)
        peak = waves[:, :, spec.n_before]  # each channel at the event's peak time (noise units, signed)
        weight = np.abs(peak) / np.maximum(np.abs(peak).max(axis=1, keepdims=True), 1e-6)
        if params.combine == "concat":
            feats = emb.reshape(n, -1)
        elif params.combine == "weighted":
            feats = (emb * weight[:, :, None]).reshape(n, -1)
        else:  # pooled: one embedding for the event, plus where it is (each channel's peak, scaled as model input)
            pooled = (emb * weight[:, :, None]).sum(axis=1) / np.maximum(weight.sum(axis=1, keepdims=True), 1e-6)
            feats = np.concatenate([pooled, peak / float(spec.norm_scale)], axis=1)
        if hybrid:
            feats = side_by_side(feats, windows)
    return _reduce(np.asarray(feats, dtype=np.float32), params.n_components, seed)


def side_by_side(*blocks: np.ndarray) -> np.ndarray:
    """Feature blocks ``[n, d_i]`` concatenated, each centred and scaled to unit total variance, so that neither
    block outweighs the other by its units or its number of dimensions (the clustering scales all dimensions
    together)."""
    out = []
    for b in blocks:
        b = np.asarray(b, dtype=np.float64)
        b = b - b.mean(axis=0) if len(b) else b
        total = float(np.sqrt(b.var(axis=0).sum())) if len(b) else 0.0
        out.append(b / total if total > 0 else b)
    return np.concatenate(out, axis=1).astype(np.float32)


def _reduce(x: np.ndarray, n_components: int, seed: int, max_fit: int = 50_000) -> np.ndarray:
    """The top principal components of ``x`` (fitted on at most ``max_fit`` rows); ``x`` itself if it is small."""
    if n_components <= 0 or x.shape[1] <= n_components or len(x) <= n_components:
        return x
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    fit = rng.choice(len(x), size=min(len(x), max_fit), replace=False)
    return PCA(n_components=n_components, random_state=seed).fit(x[fit]).transform(x).astype(np.float32)


# ------------------------------------------------------------------------------- units across neighbourhoods


def probe_templates(
    filtered: Any,
    labels: np.ndarray,
    sample_index: np.ndarray,
    channel: np.ndarray,
    noise: np.ndarray,
    spec: Any,
    chunk_duration_s: float,
    seed: int = 0,
    max_spikes: int = 200,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit ids, templates ``[units, C, L]`` on every channel in noise units, spike counts) from at most
    ``max_spikes`` spikes per unit, cut at their peak channel's peak time (``extract_neighbour_windows``)."""
    from deepspike.spikes.windows import extract_neighbour_windows

    units = np.unique(labels[labels >= 0])
    n_ch = filtered.get_num_channels()
    rng = np.random.default_rng(seed)
    picks = []
    for u in units:
        idx = np.flatnonzero(labels == u)
        picks.append(np.sort(rng.choice(idx, max_spikes, replace=False)) if len(idx) > max_spikes else idx)
    rows = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
    tiled = np.broadcast_to(np.arange(n_ch), (len(rows), n_ch))
    w = extract_neighbour_windows(filtered, sample_index[rows], channel[rows], tiled, noise, spec, chunk_duration_s)
    out = np.zeros((len(units), n_ch, spec.length), dtype=np.float32)
    start = 0
    for i, p in enumerate(picks):
        out[i] = w[start : start + len(p)].mean(axis=0) if len(p) else 0.0
        start += len(p)
    counts = np.array([int((labels == u).sum()) for u in units], dtype=np.int64)
    return units, out, counts


def template_match(a: np.ndarray, b: np.ndarray, max_shift: int = 2) -> tuple[float, float]:
    """(best cosine over time shifts of up to ``max_shift`` samples, peak-to-peak ratio >= 1) of two ``[C, L]``
    templates (noise units) on the channels where either shows a spike (``SIGNAL_SIGMA``; the others hold only
    averaged noise, which pulls the cosine of small units down): the same neuron seen from two peak channels is
    aligned on either, a fraction of a sample apart."""
    live = np.maximum(np.abs(a).max(axis=1), np.abs(b).max(axis=1)) >= SIGNAL_SIGMA
    a, b = (a[live], b[live]) if live.any() else (a, b)
    best = -1.0
    for s in range(-max_shift, max_shift + 1):
        x, y = (a[:, s:], b[:, : b.shape[1] - s]) if s >= 0 else (a[:, :s], b[:, -s:])
        na, nb = float(np.linalg.norm(x)), float(np.linalg.norm(y))
        if na > 0 and nb > 0:
            best = max(best, float((x * y).sum()) / (na * nb))
    pa, pb = float(np.ptp(a)), float(np.ptp(b))
    ratio = max(pa, pb) / min(pa, pb) if min(pa, pb) > 0 else np.inf
    return best, ratio


def merge_across_neighbourhoods(
    filtered: Any,
    labels: np.ndarray,
    sample_index: np.ndarray,
    channel: np.ndarray,
    near: np.ndarray,
    noise: np.ndarray,
    spec: Any,
    params: MultichannelParams,
    chunk_duration_s: float,
    seed: int = 0,
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Merge units whose peak channels are neighbours and whose templates on every channel agree (``template_match``
    >= ``merge_similarity``, amplitudes within ``merge_amplitude_ratio``): a neuron between two contacts has its
    events split by peak channel. Two units of one neighbourhood (its clustering split them) merge only if they
    also take turns in time (``time_overlap`` <= ``merge_turns``): the parts of a drifting neuron. Greedy, most
    similar pair first; returns (labels numbered 0..k-1, merged pairs)."""
    labels = labels.copy()
    merged: list[tuple[int, int]] = []
    if params.merge_similarity >= 1.0 or not (labels >= 0).any():
        return _renumber(labels), merged
    units, tpl, counts = probe_templates(filtered, labels, sample_index, channel, noise, spec, chunk_duration_s, seed)
    keys = clustering_keys(near)
    home = np.array([int(np.bincount(channel[labels == u]).argmax()) for u in units], dtype=np.int64)
    adj = near | near.T
    alive = np.ones(len(units), dtype=bool)
    fs = float(filtered.get_sampling_frequency())
    window = params.merge_refractory_ms * fs / 1000.0
    span = float(max(1, filtered.get_num_samples(0)))
    checked: dict[tuple[int, int], bool] = {}

    def one_unit(i: int, j: int) -> bool:
        if (i, j) not in checked:
            ta, tb = (np.sort(sample_index[labels == units[k]]) for k in (i, j))
            ok = window <= 0 or one_neuron(ta, tb, window, span)
            if keys[home[i]] == keys[home[j]]:  # one neighbourhood: the timing of the parts decides
                ok = ok and time_overlap(ta, tb, span) <= params.merge_turns
            checked[(i, j)] = ok
        return checked[(i, j)]

    while True:
        best, best_sim = None, params.merge_similarity
        for i in np.flatnonzero(alive):
            for j in np.flatnonzero(alive):
                if j <= i or not adj[home[i], home[j]]:
                    continue
                if keys[home[i]] == keys[home[j]] and params.merge_turns <= 0:
                    continue
                sim, ratio = template_match(tpl[i], tpl[j])
                if sim >= best_sim and ratio <= params.merge_amplitude_ratio and one_unit(i, j):
                    best, best_sim = (i, j), sim
        if best is None:
            return _renumber(labels), merged
        i, j = best
        if counts[j] > counts[i]:  # the bigger part names the unit and its home channel
            i, j = j, i
        labels[labels == units[j]] = units[i]
        checked = {pair: ok for pair, ok in checked.items() if i not in pair and j not in pair}
        tpl[i] = (tpl[i] * counts[i] + tpl[j] * counts[j]) / (counts[i] + counts[j])
        counts[i] += counts[j]
        alive[j] = False
        merged.append((int(units[i]), int(units[j])))


def one_neuron(ta: np.ndarray, tb: np.ndarray, window: float, span: float, max_fraction: float = 0.2) -> bool:
    """Whether two sorted spike trains can be one neuron's: they come within ``window`` samples of each other at
    most ``max_fraction`` as often as two independent trains of their rates would over ``span`` samples. One neuron
    split by peak channel keeps its refractory period across the parts; two neurons, or a unit of mixed noise
    spikes, do not. Trains too sparse to tell (fewer than 2 coincidences expected) pass."""
    expected = len(ta) * len(tb) * 2.0 * window / span
    if expected < 2.0:
        return True
    return int((nearest_gap(tb, ta) < window).sum()) <= max_fraction * expected


def nearest_gap(ref: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Distance (samples) from each of ``t`` to the nearest of the sorted ``ref`` (inf when ``ref`` is empty)."""
    t = np.asarray(t)
    if len(ref) == 0:
        return np.full(len(t), np.inf)
    pos = np.searchsorted(ref, t)
    before = np.abs(t - ref[np.clip(pos - 1, 0, len(ref) - 1)])
    after = np.abs(ref[np.clip(pos, 0, len(ref) - 1)] - t)
    return np.minimum(before, after)


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Units 0..k-1 in the order of their ids (merges leave gaps)."""
    out = np.full(len(labels), -1, dtype=np.int64)
    ids = np.unique(labels[labels >= 0])
    out[labels >= 0] = np.searchsorted(ids, labels[labels >= 0])
    return out
