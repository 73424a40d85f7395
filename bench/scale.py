"""Benchmark: sort time and peak memory against the recording's size (channels x duration), with a PNG.

    python bench/scale.py                                  # the default cases -> bench/results/scale.json + .png
    python bench/scale.py --channels 32 64 --minutes 1     # some of them
    python bench/scale.py --channels 32 --minutes 10 30    # the duration sweep
    python bench/scale.py --channels 32 --minutes 10 --seeds 21 22 --before multichannel.explained_share=0 \
        --name scale_fragments                             # units found vs neurons, before / after a change

Each case is SpikeInterface's lazy ground-truth generator on a Neuropixels-1.0-like probe (4 staggered columns, a
contact pair every 20 um; ``deepspike.recording.probes``), one unit per 4 channels, 30 kHz, sorted by
``deepspike.sort`` with the defaults in a fresh process (so peak RSS is that case's alone). The generator computes
its noise on the fly: ``generate_s`` is one full read of the raw traces in its own process (what reading a file of
that size costs instead), reported beside the sort's own ``wall_s`` (which includes that read once: the band-passed
traces are then cached in memory or on disk, ``filter_cache_mb`` / ``filter_cache_disk``). Stage times come from
``result.timings``; ``peak_anon_gb`` is the peak anonymous memory (RssAnon, sampled every 0.1 s), i.e. RSS without
the file pages of the memory-mapped band-passed traces, which the kernel drops under pressure. The PNG plots wall
time and peak RSS against channels x minutes; the slope of log(time) against log(size) says whether the cost grows
faster than linearly (1.0 = linear). Goal (issue 24): a 384-channel hour on a
24 GB, 2-core machine with RSS under 8 GB and cost no faster than linear, and at most 1.2 x as many units as
neurons (neurons + 1 on long recordings).

``--seeds`` draws each case's recording from those generator seeds (default: the channel count, as the published
figures); ``--before KEY=VALUE ...`` sorts each case a second time with those options (dotted keys, e.g.
``multichannel.explained_share=0``: the sort before the unit check of ``deepspike.sorting.explained``), skips the
read pass, and prints units found against neurons, accuracy, redundant and false-positive units per variant.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, dotted_options, save_figure, write_results

CASE = """
import json, resource, sys, threading, time, warnings
warnings.filterwarnings("ignore")
import numpy as np
anon = [0]
def watch():  # RssAnon: the process's own memory, without the file pages of memory-mapped traces
    while True:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon"):
                anon[0] = max(anon[0], int(line.split()[1]))
        time.sleep(0.1)
threading.Thread(target=watch, daemon=True).start()
channels, minutes, mode, seed = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
options = json.loads(sys.argv[5])
from spikeinterface.core import generate_ground_truth_recording
from deepspike.recording.probes import probe_from_spec
probe = probe_from_spec("staggered:4x20", channels).probes[0]
rec, gt = generate_ground_truth_recording(durations=[minutes * 60.0], num_units=max(2, channels // 4), probe=probe,
                                          seed=seed, sampling_frequency=30000.0)
t = time.perf_counter()
if mode == "read":
    step = 30000 * 10
    for s in range(0, rec.get_num_samples(), step):
        rec.get_traces(start_frame=s, end_frame=min(rec.get_num_samples(), s + step))
    out = {"generate_s": time.perf_counter() - t}
else:
    import deepspike
    from deepspike.evaluation.compare import compare_with_categories
    sorting = deepspike.sort(rec, **options)
    rows, cats = compare_with_categories(sorting, gt)
    out = {"wall_s": time.perf_counter() - t, "timings": sorting.deepspike.timings,
           "accuracy": float(rows["accuracy"].mean()), "units": len(sorting.unit_ids),
           "num_units_gt": len(gt.unit_ids), **cats}
out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
out["peak_anon_gb"] = anon[0] / 2**20
print(json.dumps(out))
"""


def run_case(
    channels: int, minutes: float, mode: str, timeout_s: float, seed: int | None = None, options: dict | None = None
) -> dict[str, Any]:
    seed = channels if seed is None else seed
    cmd = [sys.executable, "-c", CASE, str(channels), str(minutes), mode, str(seed), json.dumps(options or {})]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout_s:.0f} s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def slope(rows: list[dict[str, Any]], key: str) -> float | None:
    """Exponent of ``key`` against channels x minutes (log-log least squares); None with fewer than 2 cases."""
    ok = [r for r in rows if key in r]
    if len(ok) < 2:
        return None
    x = np.log([r["channels"] * r["minutes"] for r in ok])
    y = np.log([r[key] for r in ok])
    return float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else None


def units_table(rows: list[dict[str, Any]]) -> None:
    """Units found against neurons, per case and variant (issue 24: at most 1.2 x, neurons + 1 on long ones)."""
    print(f"{'case':<16} {'seed':>5} {'variant':<7} {'units':>5} {'neurons':>7} {'ratio':>5} {'accuracy':>8} "
          f"{'redund.':>7} {'FP':>4} {'wall s':>7}")  # fmt: skip
    for r in rows:
        if "units" not in r:
            print(f"{r['channels']} ch x {r['minutes']:g} min  {r['seed']:>5} {r['variant']:<7} {r.get('error')}")
            continue
        print(f"{r['channels']} ch x {r['minutes']:g} min".ljust(16), f"{r['seed']:>5} {r['variant']:<7} "
              f"{r['units']:>5} {r['num_units_gt']:>7} {r['units'] / r['num_units_gt']:>5.2f} {r['accuracy']:>8.3f} "
              f"{r['num_redundant']:>7} {r['num_false_positive']:>4} {r['wall_s']:>7.1f}")  # fmt: skip


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ok = [r for r in rows if "wall_s" in r]
    size = np.array([r["channels"] * r["minutes"] for r in ok], dtype=float)
    for ax, key, label in ((axes[0], "wall_s", "sort wall time (s)"), (axes[1], "peak_rss_gb", "peak RSS (GB)")):
        ax.loglog(size, [r[key] for r in ok], "o-" if key == "wall_s" else "s-")
        for r, x in zip(ok, size, strict=True):
            ax.annotate(f"{r['channels']} ch, {r['minutes']:g} min", (x, r[key]), fontsize=7)
        if key == "wall_s" and len(ok):
            ref = size / size.min() * min(r[key] for r in ok)  # linear from the smallest case
            ax.loglog(size, ref, "k:", label="linear")
            ax.legend()
        ax.set_xlabel("channels x minutes")
        ax.set_ylabel(label)
    fig.suptitle("bench/scale.py: DeepSpike sort cost against recording size")
    save_figure(fig, path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, nargs="*", default=[32, 64, 128, 384])
    ap.add_argument("--minutes", type=float, nargs="*", default=[1.0])
    ap.add_argument("--seeds", type=int, nargs="*", default=None, help="generator seeds (default: the channel count)")
    ap.add_argument("--before", nargs="*", default=None, metavar="KEY=VALUE",
                    help="also sort each case with these options (variant 'before'); no read pass")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per case")
    ap.add_argument("--name", default="scale")
    args = ap.parse_args()
    variants = [("after", {})] if args.before is None else [("before", dotted_options(args.before)), ("after", {})]
    rows = []
    for channels in args.channels:
        for minutes in args.minutes:
            for seed in args.seeds or [channels]:
                for variant, options in variants:
                    row = {"channels": channels, "minutes": minutes, "seed": seed, "variant": variant,
                           **run_case(channels, minutes, "sort", args.timeout, seed, options)}  # fmt: skip
                    if args.before is None:
                        read = run_case(channels, minutes, "read", args.timeout, seed)
                        row.update({k: v for k, v in read.items() if k == "generate_s"})
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    units_table(rows)
    png = RESULTS / f"{args.name}.png"
    after = [r for r in rows if r["variant"] == "after"]
    plot(after, png)
    write_results(args.name, {"cases": rows, "before": args.before, "time_exponent": slope(after, "wall_s"),
                              "rss_exponent": slope(after, "peak_rss_gb"), "plot": png.name})  # fmt: skip


if __name__ == "__main__":
    main()
