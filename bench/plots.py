"""Benchmark: wall time of ``plot_all`` (every PNG of a sort) at 5, 30 and 150 units on a 32-channel probe.

    python bench/plots.py                 # 5, 30, 150 units -> bench/results/plots.json
    python bench/plots.py --units 5 30    # some of them

Each case is a synthetic :class:`SortResult` (``synthetic_result``: SpikeInterface's lazy noise recording on its
generated 32-contact probe, units at random contacts with 2-20 Hz spike trains, multi-channel templates, per-spike
windows and embeddings around each unit's centre), so the figure measures plotting alone, not a sort. Budget (issue
23: a 125-unit summary.png ran for over 13 minutes in matplotlib's layout solver): plot_all at 150 units well under
a minute on 2 CPU cores; the pages must grow with the units (``UNITS_PER_PAGE`` a page), not the time per page.
Measured on 2 shared cores: 2.1 / 2.6 / 7.4 s at 5 / 30 / 150 units (1 / 2 / 7 waveform pages); the plots before
this layout (one constrained-layout waveform figure, a constrained summary): 2.2 / 7.4 s at 5 / 30 units, over
6.5 minutes at 150 (stopped).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

CASES = (5, 30, 150)
BUDGET_S = 60.0  # plot_all at 150 units, 2 CPU cores


def synthetic_result(num_units: int, duration_s: float = 60.0, num_channels: int = 32, seed: int = 0) -> Any:
    """A :class:`SortResult` with ``num_units`` units on SpikeInterface's generated probe (real recording and
    sorting objects; templates, windows and embeddings drawn around each unit's shape and centre), about 5 % of
    the spikes unassigned."""
    from spikeinterface.core import generate_recording

    from deepspike.sorting.params import SortParams
    from deepspike.sorting.result import SortResult, build_sorting
    from deepspike.spec import WindowSpec

    rng = np.random.default_rng(seed)
    fs = 30000.0
    rec = generate_recording(num_channels=num_channels, sampling_frequency=fs, durations=[duration_s], seed=seed)
    spec = WindowSpec()
    positions = rec.get_channel_locations()
    peak = rng.integers(0, num_channels, num_units)
    snr = rng.uniform(4.0, 40.0, num_units)
    t = np.arange(spec.length) - spec.n_before
    shape = -np.exp(-0.5 * (t / 1.5) ** 2) + 0.35 * np.exp(-0.5 * ((t - 5) / 3.0) ** 2)
    spread = np.exp(-np.linalg.norm(positions[peak][:, None] - positions[None], axis=-1) / 30.0)  # [units, chans]
    templates = (snr[:, None, None] * shape[None, :, None] * spread[:, None, :]).astype(np.float32)
    counts = rng.poisson(rng.uniform(2.0, 20.0, num_units) * duration_s)
    labels = np.repeat(np.arange(num_units), counts)
    labels[rng.random(len(labels)) < 0.05] = -1
    times = np.sort(rng.integers(0, int(duration_s * fs), len(labels)))
    labels = rng.permutation(labels)
    channel = np.where(labels >= 0, peak[np.maximum(labels, 0)], rng.integers(0, num_channels, len(labels)))
    waves = rng.normal(0.0, 1.0, (len(labels), spec.length)).astype(np.float32)
    waves[labels >= 0] += templates[labels[labels >= 0], :, channel[labels >= 0]]
    centres = rng.normal(0.0, 4.0, (num_units, 8))
    emb = rng.normal(0.0, 1.0, (len(labels), 8)) + np.where(labels[:, None] >= 0, centres[labels], 0.0)
    noise = np.full(num_channels, 5.0)
    result = SortResult(
        sorting=None, recording=rec, sample_index=times.astype(np.int64), channel=channel.astype(np.int64),
        amplitude=waves[:, spec.n_before] * 5.0, waves=waves, embeddings=emb.astype(np.float32), labels=labels,
        noise_levels=noise, sampling_frequency=fs, duration_s=duration_s, spec=spec,
        params=SortParams(features="pca"), checkpoint=None, templates=templates,
    )  # fmt: skip
    result.sorting = build_sorting(result)
    return result


def time_plots(num_units: int, folder: Path) -> dict[str, Any]:
    """Seconds of ``plot_all`` and the files it wrote, for one synthetic result."""
    from deepspike.sorting.plots import plot_all

    result = synthetic_result(num_units)
    t0 = time.perf_counter()
    written = plot_all(result, folder / f"units_{num_units}")
    seconds = time.perf_counter() - t0
    pages = sum(p.name.startswith("waveforms_") for p in written)
    return {"seconds": round(seconds, 2), "files": len(written), "waveform_pages": pages,
            "spikes": len(result.labels)}  # fmt: skip


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, nargs="+", default=list(CASES))
    args = parser.parse_args()
    figures: dict[str, Any] = {"budget_s_150_units": BUDGET_S}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.units:
            case = time_plots(n, Path(tmp))
            for key in ("seconds", "waveform_pages", "files", "spikes"):
                figures[f"plot_all_{key}_{n}_units"] = case[key]
    write_results("plots", figures)
    worst = figures.get("plot_all_s_150_units")
    if worst is not None and worst > BUDGET_S:
        print(f"over budget: {worst:.1f} s > {BUDGET_S:.0f} s at 150 units")


if __name__ == "__main__":
    main()
