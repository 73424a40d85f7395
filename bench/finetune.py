"""Benchmark: sorting accuracy before and after per-recording fine-tuning (``sort(..., finetune=True)``), and time.

    python bench/finetune.py                       # 6 generated GT recordings + the Quiroga snippet
    python bench/finetune.py --cluster dpgmm       # the published tables' clustering
    python bench/finetune.py --seed-base 900       # another draw of recordings (used for development)

Recordings: ``synthetic.generate_recording`` (SpikeInterface's ground-truth generator, one channel, 60 s) with
different seeds, unit counts (3 to 8), amplitude ranges and firing rates; sampling rate and noise level are
drawn per seed. Plus ``C_Easy1_noise015_5sec.mat`` from ../shared/data/quiroga (read at 24 kHz) when present.
Each recording is sorted twice in this process with the same encoder and seed: frozen, then fine-tuned on its
own spikes (default options of ``deepspike.finetune.FinetuneParams``, no ground truth used). Accuracy is
SpikeInterface's matched accuracy averaged over ground-truth units. The encoder is the bundled checkpoint, or
``--checkpoint``. Writes bench/results/finetune.json. Goal (issue 5): mean gain >= 0.03, none worse by > 0.01.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
QUIROGA = REPO.parent / "shared" / "data" / "quiroga" / "C_Easy1_noise015_5sec.mat"

# (units, snr_range, firing rate range): easy to hard, varied unit counts and amplitude ranges
CASES: list[tuple[int, tuple[float, float], tuple[float, float]]] = [
    (3, (8.0, 25.0), (2.0, 15.0)),
    (4, (6.0, 20.0), (3.0, 12.0)),
    (5, (6.0, 18.0), (2.0, 10.0)),
    (6, (5.0, 16.0), (2.0, 8.0)),
    (4, (4.0, 10.0), (4.0, 12.0)),
    (8, (6.0, 24.0), (1.0, 6.0)),
]


def generated(seed_base: int, duration_s: float) -> list[tuple[str, Any, Any]]:
    """(name, recording, gt) for each case, seeds ``seed_base + i``."""
    from deepspike.synthetic import generate_recording

    out = []
    for i, (units, snr, (lo, hi)) in enumerate(CASES):
        seed = seed_base + i
        rates = np.random.default_rng(seed).uniform(lo, hi, units)
        rec, gt = generate_recording(
            seed, duration_s=duration_s, sampling_frequency="random", num_units=units, snr_range=snr, firing_rates=rates
        )
        fs = rec.get_sampling_frequency()
        out.append((f"gen{seed}_u{units}_snr{snr[0]:g}-{snr[1]:g}_{fs / 1000:g}kHz", rec, gt))
    return out


def quiroga() -> list[tuple[str, Any, Any]]:
    if not QUIROGA.exists():
        print(f"(skipping Quiroga: {QUIROGA} not found)")
        return []
    from deepspike.io import load_ground_truth, open_recording

    rec = open_recording(QUIROGA, sampling_frequency=24000.0)
    return [(QUIROGA.name, rec, load_ground_truth(QUIROGA, recording=rec))]


def score(
    recording: Any, gt: Any, checkpoint: str | None, cluster: str, finetune: bool, options: dict[str, Any]
) -> tuple[float, float, Any]:
    """(mean accuracy, seconds, result) of one sort."""
    from deepspike.evaluate import compare_to_ground_truth
    from deepspike.sorting import SortParams, run_sort

    t0 = time.perf_counter()
    params = SortParams(cluster=cluster, finetune=finetune, finetune_options=options if finetune else {})
    result = run_sort(recording, checkpoint, params)
    seconds = time.perf_counter() - t0
    return float(compare_to_ground_truth(result.sorting, gt)["accuracy"].mean()), seconds, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="encoder artifact (default: the bundled checkpoint)")
    ap.add_argument("--cluster", default="gmm", help="gmm | dpgmm | hdbscan | kmeans")
    ap.add_argument("--seed-base", type=int, default=100, help="seed of the first generated recording")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per generated recording")
    ap.add_argument("--no-quiroga", action="store_true")
    ap.add_argument("--name", default="finetune", help="results file name (bench/results/NAME.json)")
    ap.add_argument("--options", default="{}", help="finetune_options as JSON (default: the library defaults)")
    args = ap.parse_args()

    from _common import write_results

    from deepspike.sorting import DEFAULT_CHECKPOINT

    checkpoint = args.checkpoint or str(DEFAULT_CHECKPOINT)
    options = json.loads(args.options)
    recordings = generated(args.seed_base, args.duration) + ([] if args.no_quiroga else quiroga())
    rows = []
    print(f"{'recording':<44} {'before':>7} {'after':>7} {'gain':>7} {'ft s':>6} {'kept':>10}")
    for name, rec, gt in recordings:
        before, t_before, _ = score(rec, gt, checkpoint, args.cluster, False, options)
        after, t_after, res = score(rec, gt, checkpoint, args.cluster, True, options)
        ft = res.finetuned.spec["provenance"]["finetune"]
        row = {
            "recording": name, "accuracy_before": round(before, 4), "accuracy_after": round(after, 4),
            "gain": round(after - before, 4), "num_spikes": len(res.labels), "units_gt": len(gt.unit_ids),
            "seconds_sort": round(t_before, 2), "seconds_sort_finetune": round(t_after, 2),
            "seconds_finetune": round(res.timings.get("finetune", float("nan")), 2), "kept": ft.get("kept"),
            "quality_metric": ft.get("quality_metric"), "quality_parent": ft.get("parent_quality"),
            "quality_final": ft["history"][-1]["quality"] if ft.get("history") else None,
        }  # fmt: skip
        rows.append(row)
        print(f"{name:<44} {before:7.3f} {after:7.3f} {after - before:+7.3f} {row['seconds_finetune']:6.1f} "
              f"{row['kept']:>10}")  # fmt: skip
    gains = np.array([r["gain"] for r in rows])
    figures = {
        "checkpoint": Path(checkpoint).name,  # no machine paths in committed results
        "cluster": args.cluster,
        "finetune_options": options,
        "num_recordings": len(rows),
        "mean_accuracy_before": round(float(np.mean([r["accuracy_before"] for r in rows])), 4),
        "mean_accuracy_after": round(float(np.mean([r["accuracy_after"] for r in rows])), 4),
        "mean_gain": round(float(gains.mean()), 4),
        "worst_change": round(float(gains.min()), 4),
        "goal_met": bool(gains.mean() >= 0.03 and gains.min() >= -0.01),
        "mean_seconds_finetune": round(float(np.mean([r["seconds_finetune"] for r in rows])), 2),
        "per_recording": rows,
    }
    write_results(args.name, figures)


if __name__ == "__main__":
    main()
