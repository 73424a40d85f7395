"""Pretraining data from the "broad" synthetic recipe: throughput, the N for 20 M spikes, a template gallery.

Builds ``deepspike-corpus synthetic=broad synthetic.n=N workers=2`` on a small N (default 8 recordings of the
recipe's 60 s) under bench/.cache/, timing generation (recordings written to disk) and the corpus build
(detection, windows, shards) separately. Goal: a >= 20 M-spike corpus in under an hour on 2 cores.
Writes bench/results/synthetic_recipe.json (spikes_per_s, recordings_for_20M, hours_for_20M, load average, ...)
and bench/results/synthetic_recipe.png (6 x 6 normalized templates drawn by the recipe, coloured by polarity).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, RESULTS, save_figure, write_results

TARGET_SPIKES = 20_000_000


def corpus_config(n: int, workers: int, root: Path) -> Any:
    """The corpus config exactly as ``deepspike-corpus synthetic=broad synthetic.n=N workers=W`` composes it."""
    from hydra import compose, initialize_config_dir

    from deepspike.paths import CONF_DIR

    overrides = [f"synthetic.n={n}", f"synthetic.dir={root / 'rec'}", f"out={root / 'corpus'}", f"workers={workers}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="corpus", overrides=["synthetic=broad", "progress=false", *overrides])


def cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (the pools' workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(n: int, workers: int, root: Path) -> dict[str, Any]:
    """Generate ``n`` recordings, then build their corpus, as the CLI does; wall and CPU seconds, spikes, bytes."""
    from deepspike.data.corpus import CorpusConfig, build_corpus, synthetic_recordings

    shutil.rmtree(root, ignore_errors=True)
    cfg = CorpusConfig.from_cfg(corpus_config(n, workers, root))
    load_before, cpu0 = os.getloadavg(), cpu_seconds()
    t0 = time.perf_counter()
    recordings = synthetic_recordings(cfg.synthetic, progress=False, workers=cfg.workers)
    t1 = time.perf_counter()
    manifest = json.loads(Path(build_corpus(cfg)).read_text())
    t2 = time.perf_counter()
    rec_bytes = sum(f.stat().st_size for r in recordings for f in r.parent.glob(r.name + "*/**/*") if f.is_file())
    return {
        "generate_s": t1 - t0,
        "build_s": t2 - t1,
        "cpu_s": cpu_seconds() - cpu0,
        "num_spikes": manifest["num_spikes"],
        "recording_bytes": rec_bytes,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "duration_s": cfg.synthetic["duration_s"],
    }


def gallery(path: Path, rows: int = 6, cols: int = 6) -> None:
    """A rows x cols grid of templates drawn by the recipe (main channel, main peak scaled to +-1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepspike.recording.synthetic import generate_recording

    picked = []
    for seed in range(1000):
        rec, gt = generate_recording(seed, duration_s=0.5, sampling_frequency="random", recipe="broad")
        fs, nbefore = rec.get_sampling_frequency(), rec.get_annotation("synthetic_nbefore")
        for u in range(min(2, gt.get_num_units())):  # two units per recording: many rates and recordings
            wf = rec.templates[u, :, gt.get_property("gt_main_channel")[u]]
            t_ms = (np.arange(wf.size) - nbefore) / fs * 1000.0
            props = {k: gt.get_property(k)[u] for k in ("gt_polarity", "gt_triphasic", "gt_similar_to", "gt_snr")}
            picked.append((t_ms, wf / abs(wf[nbefore]), fs, props))
        if len(picked) >= rows * cols:
            break
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 1.7 * rows), sharex=True, sharey=True)
    for ax, (t_ms, wf, fs, p) in zip(axes.flat, picked, strict=False):
        colour = "tab:red" if p["gt_polarity"] > 0 else "tab:blue"
        ax.axhline(0, color="0.85", lw=0.8)
        ax.plot(t_ms, wf, color=colour, lw=1.6)
        label = f"{fs / 1000:.1f} kHz, SNR {p['gt_snr']:.0f}" + (", tri" if p["gt_triphasic"] else "")
        label += ", near-copy" if p["gt_similar_to"] >= 0 else ""
        ax.set_title(label, fontsize=8)
        ax.set_xlim(-1.0, 3.0)
        ax.set_ylim(-1.15, 1.15)
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("ms from main peak", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("/ main peak", fontsize=8)
    handles = [plt.Line2D([], [], color=c, lw=2) for c in ("tab:red", "tab:blue")]
    fig.legend(handles, ["positive main peak", "negative main peak"], loc="upper right", ncol=1, fontsize=9)
    fig.suptitle('Templates drawn by the "broad" synthetic recipe, two units per recording\n'
                 "main channel, main peak scaled to \u00b11; tri = triphasic, near-copy = a slightly changed copy of "
                 "the unit before it", x=0.02, ha="left", fontsize=10)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    save_figure(fig, path, dpi=110)
    print(f"-> {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=8, help="recordings to generate and build (of the recipe's duration)")
    ap.add_argument("--workers", type=int, default=2, help="processes (generation and corpus build)")
    ap.add_argument("--no-gallery", action="store_true", help="skip the template gallery PNG")
    args = ap.parse_args()
    # end to end as the CLI runs it (process pools started, imports paid), then the steady state: the same
    # work again in this warm process with one worker, whose CPU seconds per recording scale to a big build
    e2e = measure(args.n, args.workers, CACHE / "synthetic_recipe")
    measure(1, 1, CACHE / "synthetic_recipe_warm")  # imports in this process
    warm = measure(max(2, args.n // 2), 1, CACHE / "synthetic_recipe_warm")
    wall_s = e2e["generate_s"] + e2e["build_s"]
    per_rec = e2e["num_spikes"] / args.n
    n_20m = math.ceil(TARGET_SPIKES / per_rec)
    cpu_per_rec = warm["cpu_s"] / max(2, args.n // 2)
    write_results(
        "synthetic_recipe",
        {
            "recipe": "broad",
            "recordings": args.n,
            "recording_duration_s": e2e["duration_s"],
            "workers": args.workers,
            "num_spikes": e2e["num_spikes"],
            "spikes_per_recording": round(per_rec),
            "generate_s": round(e2e["generate_s"], 1),
            "build_s": round(e2e["build_s"], 1),
            "spikes_per_s": round(e2e["num_spikes"] / wall_s),
            "cpu_s_per_recording_steady": round(cpu_per_rec, 2),
            "spikes_per_cpu_s_steady": round(warm["num_spikes"] / warm["cpu_s"]),
            "recordings_for_20M": n_20m,
            "hours_for_20M_at_this_load": round(n_20m * wall_s / args.n / 3600.0, 2),
            "hours_for_20M_2_free_cores": round(n_20m * cpu_per_rec / 2 / 3600.0, 2),
            "disk_gb_for_20M_recordings": round(n_20m * e2e["recording_bytes"] / args.n / 1e9, 1),
            "load_avg_1min_before_after": [round(e2e["load_before"][0], 2), round(e2e["load_after"][0], 2)],
            "note": "shared 2-core machine: the load average includes other users' jobs; at this load the end-to-end "
            "figures include the pools' start-up (imports) and a fraction of the cores; the 2-free-cores "
            "projection = steady-state CPU seconds per recording x recordings / 2",
        },
    )
    if not args.no_gallery:
        gallery(RESULTS / "synthetic_recipe.png")


if __name__ == "__main__":
    main()
