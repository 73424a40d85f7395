"""PNG figures of a sort: embeddings coloured by unit, each unit's waveforms with its mean, spike counts.

Uses matplotlib's object API (``Figure`` + Agg canvas), never pyplot, so it works headless and does not change
the backend of an interactive session that imports DeepSpike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

MAX_POINTS = 20000  # embedding scatter subsample (readable, fast)
MAX_WAVES = 100  # waveforms drawn per unit
NOISE_COLOR = (0.6, 0.6, 0.6)


def unit_colors(unit_ids: list[int]) -> dict[int, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(unit_ids) <= 10 else "tab20"]
    return {u: cmap(i % cmap.N) for i, u in enumerate(unit_ids)}


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


def plot_embeddings(ax: Any, result: Any) -> None:
    idx = _subsample(len(result.labels), MAX_POINTS, result.params.seed)
    xy, how = project_2d(result.embeddings[idx], result.params.seed)
    lab = result.labels[idx]
    colors = unit_colors(result.unit_ids)
    noise = lab < 0
    if noise.any():
        ax.scatter(xy[noise, 0], xy[noise, 1], s=2, color=NOISE_COLOR, alpha=0.4, label="noise", rasterized=True)
    for u, c in colors.items():
        m = lab == u
        ax.scatter(xy[m, 0], xy[m, 1], s=3, color=c, alpha=0.6, label=f"unit {u}", rasterized=True)
    ax.set_title(f"embeddings ({how}, {len(idx)} of {len(result.labels)} spikes)")
    ax.set_xticks([])
    ax.set_yticks([])
    if colors or noise.any():
        ax.legend(fontsize="small", markerscale=3, loc="best")


def plot_waveforms(ax: Any, result: Any, unit: int, color: Any) -> None:
    spec = result.spec
    t_ms = (np.arange(spec.length) - spec.n_before) / spec.sampling_frequency * 1e3
    idx = np.flatnonzero(result.labels == unit)
    pick = idx[_subsample(len(idx), MAX_WAVES, result.params.seed + unit)]
    ax.plot(t_ms, result.waves[pick].T, color=color, alpha=0.15, lw=0.6)
    ax.plot(t_ms, result.waves[idx].mean(0), color="k", lw=1.8)
    ax.set_title(f"unit {unit} (n={len(idx)})", fontsize="small")
    ax.set_xlabel("ms")
    ax.set_ylabel("noise σ")


def plot_counts(ax: Any, result: Any) -> None:
    ids = result.unit_ids
    colors = unit_colors(ids)
    counts = [int((result.labels == u).sum()) for u in ids]
    names = [str(u) for u in ids]
    bar_colors = [colors[u] for u in ids]
    n_noise = int((result.labels < 0).sum())
    if n_noise:
        names.append("noise")
        counts.append(n_noise)
        bar_colors.append(NOISE_COLOR)
    ax.bar(names, counts, color=bar_colors)
    ax.set_title("spikes per unit")
    ax.set_xlabel("unit")
    ax.set_ylabel("spikes")


def _waveform_grid(fig: Any, result: Any, spec_cell: Any = None) -> None:
    ids = result.unit_ids
    colors = unit_colors(ids)
    if not ids:
        ax = fig.add_subplot(spec_cell) if spec_cell is not None else fig.add_subplot()
        ax.text(0.5, 0.5, "no unit", ha="center", va="center")
        ax.set_axis_off()
        return
    ncol = min(4, len(ids))
    nrow = int(np.ceil(len(ids) / ncol))
    grid = spec_cell.subgridspec(nrow, ncol) if spec_cell is not None else fig.add_gridspec(nrow, ncol)
    for i, u in enumerate(ids):
        plot_waveforms(fig.add_subplot(grid[i // ncol, i % ncol]), result, u, colors[u])


def plot_all(result: Any, folder: str | Path) -> list[Path]:
    """Write ``plots/embeddings.png``, ``plots/waveforms.png``, ``plots/counts.png`` and ``summary.png``."""
    folder = Path(folder)
    (folder / "plots").mkdir(parents=True, exist_ok=True)
    written = []

    fig = Figure(figsize=(6, 5), layout="constrained")
    plot_embeddings(fig.add_subplot(), result)
    written.append(_save(fig, folder / "plots" / "embeddings.png"))

    n = max(1, len(result.unit_ids))
    fig = Figure(figsize=(3 * min(4, n), 2.5 * int(np.ceil(n / 4))), layout="constrained")
    _waveform_grid(fig, result)
    written.append(_save(fig, folder / "plots" / "waveforms.png"))

    fig = Figure(figsize=(5, 3.5), layout="constrained")
    plot_counts(fig.add_subplot(), result)
    written.append(_save(fig, folder / "plots" / "counts.png"))

    written.append(_save(summary_figure(result), folder / "summary.png"))
    return written


def summary_figure(result: Any) -> Any:
    """One page: embeddings, counts, per-unit waveforms and a text block with the figures."""
    fig = Figure(figsize=(12, 9), layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 1.1])
    plot_embeddings(fig.add_subplot(grid[0, 0]), result)
    plot_counts(fig.add_subplot(grid[0, 1]), result)
    ax = fig.add_subplot(grid[0, 2])
    ax.set_axis_off()
    ax.text(0, 1, _summary_text(result), va="top", family="monospace", fontsize="small")
    _waveform_grid(fig, result, grid[1, :])
    fig.suptitle("DeepSpike sort summary")
    return fig


def _summary_text(result: Any) -> str:
    lines = [
        f"duration   {result.duration_s:.1f} s",
        f"spikes     {len(result.labels)}",
        f"units      {len(result.unit_ids)}",
        f"noise      {int((result.labels < 0).sum())}",
        f"features   {result.params.features}",
        f"clustering {result.params.cluster.method}",
        "",
        *(f"{k:10s} {v:.2f} s" for k, v in result.timings.items()),
    ]
    metrics = result.info.get("metrics")
    if metrics is not None and len(metrics):
        lines += ["", f"GT accuracy (mean) {metrics['accuracy'].mean():.3f}"]
        lines += [f"  gt {u}: {a:.3f}" for u, a in zip(metrics["gt_unit"], metrics["accuracy"], strict=True)]
    return "\n".join(lines)


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path
