"""PNG figures of a sort, bounded in time and readable from 5 to 150+ units.

``plots/embeddings.png`` (a subsample, units by colour and marker), ``plots/counts.png`` and ``plots/quality.png``
(per unit, coloured by curation label, with the thresholds), ``plots/motion.png`` (when drift was corrected: the
peaks' depth over time with the estimated motion over them), ``plots/waveforms_<page>.png`` (at most
``UNITS_PER_PAGE`` units a page; on a probe each unit's template on its own channels, laid out as the contacts
are) and ``summary.png`` (one page: the largest units, the labels, the timings and the ground-truth scores).

Every figure has a fixed size and a fixed grid (no ``tight_layout`` / ``constrained_layout``: their solver ran
for over 13 minutes on a 125-unit summary), and draws a bounded number of artists (subsampled points and
spikes, one line collection per panel). Uses matplotlib's object API (``Figure`` + Agg canvas), never pyplot, so it
works headless and does not change the backend of an interactive session that imports DeepSpike.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

MAX_POINTS = 20000  # embedding scatter subsample (readable, fast)
MAX_WAVES = 50  # single spikes drawn per unit panel
UNITS_PER_PAGE = 24  # waveform pages: PAGE_COLUMNS x 4 panels
PAGE_COLUMNS = 6
SUMMARY_UNITS = 12  # units drawn on summary.png (good first, then by spike count)
MAX_CHANNELS = 7  # channels drawn per unit on a probe: its peak channel and the nearest contacts
LEGEND_UNITS = 12  # up to this many units the embedding plot has a legend, beyond it unit numbers at the clusters
NOISE_COLOR = (0.6, 0.6, 0.6)
LABEL_COLORS = {"good": "#2ca02c", "mua": "#ff7f0e", "noise": "#7f7f7f"}
MARKERS = "o^sDvP*X"
MOTION_LINES = 6  # depths whose estimated path is drawn on plots/motion.png


def unit_styles(unit_ids: list[int]) -> dict[int, tuple[Any, str]]:
    """(colour, marker) per unit, all different up to 160 units: the 10 strong then the 10 light colours of
    tab20, then the next marker."""
    from matplotlib import colormaps

    tab = colormaps["tab20"]
    colors = [tab(2 * i) for i in range(10)] + [tab(2 * i + 1) for i in range(10)]
    return {u: (colors[i % 20], MARKERS[(i // 20) % len(MARKERS)]) for i, u in enumerate(unit_ids)}


def unit_colors(unit_ids: list[int]) -> dict[int, Any]:
    return {u: style[0] for u, style in unit_styles(unit_ids).items()}


def project_2d(embeddings: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D view: UMAP when installed, else PCA (exact, fast, deterministic)."""
    x = np.asarray(embeddings, dtype=np.float32)
    if len(x) < 3 or x.ndim != 2 or x.shape[1] < 2:
        return np.zeros((len(x), 2), dtype=np.float32), "none"
    try:
        import umap

        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x), "UMAP"
    except ImportError:
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x), "PCA"


def _subsample(n: int, k: int, seed: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


# ----------------------------------------------------------------------------------------------- panels


def plot_embeddings(ax: Any, result: Any) -> None:
    idx = _subsample(len(result.labels), MAX_POINTS, result.params.seed)
    xy, how = project_2d(result.embeddings[idx], result.params.seed)
    lab = result.labels[idx]
    styles = unit_styles(result.unit_ids)
    noise = lab < 0
    if noise.any():
        ax.scatter(xy[noise, 0], xy[noise, 1], s=2, color=NOISE_COLOR, alpha=0.4, label="noise", rasterized=True)
    for u, (c, marker) in styles.items():
        m = lab == u
        ax.scatter(xy[m, 0], xy[m, 1], s=4, color=c, marker=marker, alpha=0.6, label=f"unit {u}", rasterized=True)
    ax.set_title(f"embeddings ({how}, {len(idx)} of {len(result.labels)} spikes)", fontsize="small")
    ax.set_xticks([])
    ax.set_yticks([])
    if len(styles) <= LEGEND_UNITS and (styles or noise.any()):
        ax.legend(fontsize="x-small", markerscale=3, loc="best")
        return
    for u in styles:  # too many for a legend: each unit's number at its cluster's median
        m = lab == u
        if m.any():
            x, y = np.median(xy[m], axis=0)
            ax.text(x, y, str(u), fontsize=6, ha="center", va="center", alpha=0.9)


def plot_counts(ax: Any, result: Any, units: Any) -> None:
    """Spikes per unit, coloured by curation label (a bar per unit; at most ~40 tick labels). The unassigned spikes
    are counted in the title, not drawn: their bar would flatten the units'."""
    names = [str(u) for u in units["unit"]]
    colors = [LABEL_COLORS.get(lab, NOISE_COLOR) for lab in units["label"]]
    ax.bar(np.arange(len(names)), units["spike_count"].to_numpy(), color=colors, width=0.8)
    step = max(1, int(np.ceil(len(names) / 40)))
    ax.set_xticks(np.arange(0, len(names), step), names[::step], rotation=90, fontsize=6)
    ax.set_xlim(-0.6, max(len(names), 1) - 0.4)
    n_noise = int((result.labels < 0).sum())
    ax.set_title(f"spikes per unit (colour: curation label; {n_noise} unassigned spikes)", fontsize="small")
    ax.set_ylabel("spikes")
    _label_legend(ax)


def _label_legend(ax: Any) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=lab) for lab, c in LABEL_COLORS.items()]
    ax.legend(handles=handles, fontsize="x-small", loc="upper right")


QUALITY_PANELS = (  # (metric column, curation thresholds drawn, log scale)
    ("snr", ("noise_max_snr", "min_snr"), False),
    ("spike_count", ("min_spikes",), True),
    ("isi_violations_ratio", ("max_isi_violations_ratio",), False),
    ("presence_ratio", ("min_presence_ratio",), False),
    ("amplitude_cutoff", ("max_amplitude_cutoff",), False),
)


def plot_quality(ax: Any, units: Any, column: str, thresholds: tuple[str, ...], curation: Any, log: bool) -> None:
    """One metric per unit (x: unit), coloured by label, with its curation thresholds as dashed lines."""
    x = np.arange(len(units))
    y = units[column].to_numpy(dtype=float)
    ax.scatter(x, y, s=10, c=[LABEL_COLORS.get(lab, NOISE_COLOR) for lab in units["label"]])
    for key in thresholds:
        ax.axhline(getattr(curation, key), color="k", lw=0.8, ls="--")
    if log and np.nanmax(y, initial=0) > 0:
        ax.set_yscale("log")
    step = max(1, int(np.ceil(len(units) / 30)))
    ax.set_xticks(x[::step], [str(u) for u in units["unit"]][::step], rotation=90, fontsize=6)
    ax.set_title(f"{column} (-- curation.{', '.join(thresholds)})", fontsize="x-small")


def plot_unit(ax: Any, result: Any, row: Any, styles: dict[int, tuple[Any, str]], layout: Any) -> None:
    """One unit: on a probe its template on its own channels at their contact positions; else its spikes on its
    peak channel with their mean. Title: unit, label (coloured), spike count, peak channel."""
    u = int(row.unit)
    color = styles[u][0]
    if layout is not None and result.templates is not None and u < len(result.templates):
        _probe_unit(ax, result, u, int(row.peak_channel), color, layout)
    else:
        _channel_unit(ax, result, u, color)
    ax.set_title(
        f"unit {u} {row.label} n={row.spike_count} ch{row.peak_channel}",
        fontsize=7,
        color=LABEL_COLORS.get(row.label, "k"),
    )


def _channel_unit(ax: Any, result: Any, unit: int, color: Any) -> None:
    spec = result.spec
    t_ms = (np.arange(spec.length) - spec.n_before) / spec.sampling_frequency * 1e3
    idx = np.flatnonzero(result.labels == unit)
    pick = idx[_subsample(len(idx), MAX_WAVES, result.params.seed + unit)]
    segments = np.stack([np.broadcast_to(t_ms, (len(pick), len(t_ms))), result.waves[pick]], axis=-1)
    ax.add_collection(LineCollection(segments, colors=[color], alpha=0.2, linewidths=0.6))
    if len(idx):
        ax.plot(t_ms, result.waves[idx].mean(0), color="k", lw=1.4)
    ax.autoscale_view()
    ax.tick_params(labelsize=6)
    ax.set_xlabel("ms", fontsize=6, labelpad=1)
    ax.set_ylabel("noise σ", fontsize=6, labelpad=1)


def _probe_unit(ax: Any, result: Any, unit: int, peak: int, color: Any, layout: Any) -> None:
    """The template on the peak channel and its ``MAX_CHANNELS - 1`` nearest contacts, each drawn at its position;
    the peak channel's single spikes faint behind it."""
    positions, pitch = layout
    tpl = result.templates[unit]  # [samples, channels], noise sigmas
    order = np.argsort(np.linalg.norm(positions - positions[peak], axis=1), kind="stable")[:MAX_CHANNELS]
    scale = 0.9 * pitch / max(float(np.max(np.abs(tpl[:, order]))), 1e-6)  # largest deflection: 0.9 pitch
    t = np.linspace(-0.4, 0.4, tpl.shape[0]) * pitch
    for ch in order:
        x0, y0 = positions[ch]
        ax.plot(x0 + t, y0 + tpl[:, ch] * scale, color=color if ch == peak else "0.25", lw=1.3 if ch == peak else 0.8)
    idx = np.flatnonzero((result.labels == unit) & (result.channel == peak))
    pick = idx[_subsample(len(idx), MAX_WAVES, result.params.seed + unit)]
    if len(pick) and result.waves.shape[1] == tpl.shape[0]:
        x0, y0 = positions[peak]
        segs = np.stack([np.broadcast_to(x0 + t, (len(pick), len(t))), y0 + result.waves[pick] * scale], axis=-1)
        ax.add_collection(LineCollection(segs, colors=[color], alpha=0.12, linewidths=0.5))
    ax.autoscale_view()
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.01, 0.01, f"{MAX_CHANNELS} nearest contacts, peak {np.max(np.abs(tpl)):.0f}σ", fontsize=5,
            transform=ax.transAxes)  # fmt: skip


def probe_layout(recording: Any) -> tuple[np.ndarray, float] | None:
    """(contact positions in µm, median nearest-contact distance) of a multi-channel probe, else None."""
    if recording is None or recording.get_num_channels() < 2 or not recording.has_probe():
        return None
    positions = np.asarray(recording.get_channel_locations(), dtype=np.float64)[:, :2]
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    pitch = float(np.median(d.min(axis=1)))
    return (positions, pitch) if np.isfinite(pitch) and pitch > 0 else None


# ------------------------------------------------------------------------------------------------ pages


def plot_all(result: Any, folder: str | Path) -> list[Path]:
    """Write ``plots/embeddings.png``, ``plots/counts.png``, ``plots/quality.png``, ``plots/waveforms_1.png`` ...
    (``UNITS_PER_PAGE`` units a page) and ``summary.png`` into ``folder``; returns the paths."""
    folder = Path(folder)
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    units = result.units_table()
    written = []

    fig = Figure(figsize=(7, 6))
    plot_embeddings(fig.add_axes((0.03, 0.03, 0.94, 0.9)), result)
    written.append(_save(fig, folder / "plots" / "embeddings.png"))

    fig = Figure(figsize=(10, 4))
    plot_counts(fig.add_axes((0.08, 0.22, 0.9, 0.7)), result, units)
    written.append(_save(fig, folder / "plots" / "counts.png"))

    written.append(_save(quality_figure(result, units), folder / "plots" / "quality.png"))
    if getattr(result, "motion", None) is not None:
        written.append(_save(motion_figure(result.motion, result.motion_peaks, result.params.seed),
                             folder / "plots" / "motion.png"))  # fmt: skip
    for page, fig in enumerate(waveform_pages(result, units), start=1):
        written.append(_save(fig, folder / "plots" / f"waveforms_{page}.png"))
    written.append(_save(summary_figure(result, units), folder / "summary.png"))
    return written


def motion_figure(motion: Any, peaks: np.ndarray, seed: int = 0) -> Any:
    """The peaks the drift was estimated from (depth before correction vs time, darker = larger; at most
    ``MAX_POINTS``) with the estimated motion drawn over them: the path of ``MOTION_LINES`` depths across the probe
    (rigid: parallel lines), which follow the bands of peaks where the estimate is right."""
    fig = Figure(figsize=(12, 6))
    ax = fig.add_axes((0.07, 0.1, 0.9, 0.82))
    times = np.asarray(motion.temporal_bins_s[0], dtype=np.float64)
    disp = np.asarray(motion.displacement[0])
    depth = peaks["depth_um"].astype(np.float64) if len(peaks) else np.asarray(motion.spatial_bins_um, np.float64)
    if len(peaks):
        pts = peaks[_subsample(len(peaks), MAX_POINTS, seed)]
        amp = np.abs(pts["amplitude"].astype(np.float64))
        lo, hi = np.percentile(amp, [5, 95])
        colors = np.zeros((len(pts), 4))
        colors[:, 3] = np.clip((amp - lo) / max(hi - lo, 1e-9), 0.0, 1.0) * 0.75 + 0.15
        ax.scatter(pts["time_s"], pts["depth_um"], s=3, c=colors, linewidths=0, rasterized=True)
    lines = []
    for d in np.linspace(*np.percentile(depth, [5, 95]), MOTION_LINES):
        lines.append(
            np.column_stack([times, d + motion.get_displacement_at_time_and_depth(times, np.full_like(times, d))])
        )
    ax.add_collection(LineCollection(lines, colors="#d62728", linewidths=1.5))
    ax.set_xlim(0, max(float(times[-1] + times[0]), 1e-3) if len(times) else 1.0)  # last bin centre + half a bin
    ax.set_ylim(float(depth.min()) - 20, float(depth.max()) + 20)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("depth along the probe (um)")
    ax.set_title(f"drift: peaks (darker = larger) and the estimated motion at {MOTION_LINES} depths (red; "
                 f"displacement up to {np.max(np.abs(disp)) if disp.size else 0:.1f} um)")  # fmt: skip
    return fig


def quality_figure(result: Any, units: Any) -> Any:
    fig = Figure(figsize=(14, 6))
    grid = fig.add_gridspec(2, 3, left=0.05, right=0.98, bottom=0.1, top=0.9, wspace=0.2, hspace=0.6)
    for i, (column, keys, log) in enumerate(QUALITY_PANELS):
        plot_quality(fig.add_subplot(grid[i // 3, i % 3]), units, column, keys, result.params.curation, log)
    ax = fig.add_subplot(grid[1, 2])
    ax.set_axis_off()
    _label_legend(ax)
    fig.suptitle("quality metrics per unit (x: unit); colour: curation label", fontsize="medium")
    return fig


def waveform_pages(result: Any, units: Any) -> Iterator[Any]:
    """One figure per ``UNITS_PER_PAGE`` units, made as they are saved (one page in memory at a time); an empty
    sort: one page saying so."""
    if not len(units):
        fig = Figure(figsize=(4, 2))
        fig.text(0.5, 0.5, "no unit", ha="center", va="center")
        yield fig
        return
    styles = unit_styles(list(units["unit"]))
    layout = probe_layout(result.recording)
    rows = list(units.itertuples(index=False))
    n_pages = int(np.ceil(len(rows) / UNITS_PER_PAGE))
    for p in range(n_pages):
        chunk = rows[p * UNITS_PER_PAGE : (p + 1) * UNITS_PER_PAGE]
        fig = _unit_grid(result, chunk, styles, layout, PAGE_COLUMNS)
        fig.suptitle(f"waveforms, units {chunk[0].unit}-{chunk[-1].unit} (page {p + 1} of {n_pages})")
        yield fig


def _unit_grid(result: Any, rows: list[Any], styles: Any, layout: Any, ncol: int) -> Any:
    nrow = int(np.ceil(len(rows) / ncol))
    height = 2.1 * nrow + 1.0
    fig = Figure(figsize=(2.4 * ncol, height))
    grid = fig.add_gridspec(nrow, ncol, left=0.04, right=0.99, bottom=0.4 / height, top=1 - 0.75 / height,
                            wspace=0.35, hspace=0.6)  # fmt: skip
    for i, row in enumerate(rows):
        plot_unit(fig.add_subplot(grid[i // ncol, i % ncol]), result, row, styles, layout)
    return fig


def summary_figure(result: Any, units: Any = None) -> Any:
    """One fixed-size page: embeddings, spikes per unit, a text block with the figures and the waveforms of the
    ``SUMMARY_UNITS`` largest units (good ones first)."""
    units = result.units_table() if units is None else units
    fig = Figure(figsize=(15, 10))
    grid = fig.add_gridspec(2, 3, left=0.04, right=0.99, bottom=0.04, top=0.93, height_ratios=[1, 1.1],
                            width_ratios=[1, 1.3, 0.9], wspace=0.18, hspace=0.3)  # fmt: skip
    plot_embeddings(fig.add_subplot(grid[0, 0]), result)
    plot_counts(fig.add_subplot(grid[0, 1]), result, units)
    ax = fig.add_subplot(grid[0, 2])
    ax.set_axis_off()
    ax.text(0, 1, _summary_text(result, units), va="top", family="monospace", fontsize=7.5, transform=ax.transAxes)
    shown = _summary_units(units)
    if len(shown):
        cell = grid[1, :].subgridspec(2, SUMMARY_UNITS // 2, wspace=0.3, hspace=0.5)
        styles = unit_styles(list(units["unit"]))
        layout = probe_layout(result.recording)
        for i, row in enumerate(shown.itertuples(index=False)):
            plot_unit(fig.add_subplot(cell[i // (SUMMARY_UNITS // 2), i % (SUMMARY_UNITS // 2)]), result, row,
                      styles, layout)  # fmt: skip
    more = (
        f"; {len(shown)} of {len(units)} units drawn, all in plots/waveforms_*.png" if len(units) > len(shown) else ""
    )
    fig.suptitle(f"DeepSpike sort summary{more}")
    return fig


def _summary_units(units: Any) -> Any:
    rank = units["label"].map({"good": 0, "mua": 1, "noise": 2}).fillna(3)
    order = np.lexsort((-units["spike_count"].to_numpy(), rank.to_numpy()))
    return units.iloc[order[:SUMMARY_UNITS]].sort_values("unit")


def _summary_text(result: Any, units: Any) -> str:
    from deepspike.sorting.quality import label_counts

    counts = label_counts(units["label"])
    lines = [
        f"duration   {result.duration_s:.1f} s",
        f"spikes     {len(result.labels)}",
        f"units      {len(units)}: " + ", ".join(f"{n} {lab}" for lab, n in counts.items()),
        f"unassigned {int((result.labels < 0).sum())} spikes",
        f"features   {result.params.features}",
        f"clustering {result.params.cluster.method}",
        "",
        *(f"{k:10s} {v:.2f} s" for k, v in result.timings.items()),
    ]
    metrics = result.info.get("metrics")
    if metrics is not None and len(metrics):
        acc = metrics["accuracy"]
        lines += ["", f"GT accuracy mean {acc.mean():.3f} (min {acc.min():.3f}, {len(acc)} neurons)"]
        cats = result.info.get("unit_categories") or {}
        if cats:
            lines.append(
                f"redundant {cats.get('num_redundant', 0)}, false positive {cats.get('num_false_positive', 0)}"
            )
        if len(metrics) <= 15:
            matched = metrics["matched_unit"] if "matched_unit" in metrics else [-1] * len(metrics)
            lines += [
                f"  gt {g}: {a:.3f} unit {m}" if m >= 0 else f"  gt {g}: {a:.3f} (no unit)"
                for g, a, m in zip(metrics["gt_unit"], acc, matched, strict=True)
            ]
    return "\n".join(lines)


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path
