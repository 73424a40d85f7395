"""Benchmark: the clustering defaults that were tuned, on the draw that chose them and on a fresh draw.

    python bench/cluster_choices.py                # dev draw (seeds 400-407) + report draw (seeds 500-507)

Two merge rules were set by measurement: ``cluster.merge_max_dprime`` (near-duplicate templates merge only when
their clusters also overlap in feature space, d' < 3.0; ``.inf`` = templates alone) and ``cluster.merge_valley``
(units with no density dip between them merge, 0.6; ``1.0`` = never). Each is compared with its alternative,
the other rule at its default. Recordings: ``synthetic.generate_recording``, one channel, 60 s, 3-8 units
(``units = 3 + i % 6``), amplitudes 5-20x noise, rates U(2, 12) Hz, random sampling rate; seeds 400-407 are the
development draw the defaults were chosen on, seeds 500-507 a draw that chose nothing. Accuracy is
SpikeInterface's matched accuracy averaged over GT units, with the bundled encoder and GMM clustering.
Writes bench/results/cluster_choices.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

DRAWS = {"dev": 400, "report": 500}
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "merge_max_dprime=inf": {"merge_max_dprime": float("inf")},
    "merge_valley=1.0": {"merge_valley": 1.0},
}


def recordings(seed_base: int, n: int) -> list[tuple[str, Any, Any]]:
    from deepspike.recording.synthetic import generate_recording

    out = []
    for i in range(n):
        seed, units = seed_base + i, 3 + i % 6
        rates = np.random.default_rng(seed).uniform(2.0, 12.0, units)
        rec, gt = generate_recording(seed, 60.0, "random", units, snr_range=(5.0, 20.0), firing_rates=rates)
        out.append((f"gen{seed}_u{units}", rec, gt))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="recordings per draw")
    args = ap.parse_args()

    from _common import write_results

    from deepspike.evaluation.compare import compare_to_ground_truth
    from deepspike.sorting.features import DEFAULT_CHECKPOINT
    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    figures: dict[str, Any] = {"checkpoint": Path(DEFAULT_CHECKPOINT).name, "draws": DRAWS, "variants": VARIANTS}
    print(f"{'recording':<14} " + " ".join(f"{v:>22}" for v in VARIANTS))
    for draw, base in DRAWS.items():
        rows = []
        for name, rec, gt in recordings(base, args.n):
            row: dict[str, Any] = {"recording": name}
            for variant, opts in VARIANTS.items():
                res = run_sort(rec, str(DEFAULT_CHECKPOINT), SortParams(cluster={"method": "gmm", **opts}))
                row[variant] = round(float(compare_to_ground_truth(res.sorting, gt)["accuracy"].mean()), 4)
            rows.append(row)
            print(f"{name:<14} " + " ".join(f"{row[v]:22.3f}" for v in VARIANTS), flush=True)
        figures[draw] = {
            "seeds": f"{base}-{base + args.n - 1}",
            **{f"mean_{v}": round(float(np.mean([r[v] for r in rows])), 4) for v in VARIANTS},
            "per_recording": rows,
        }
    write_results("cluster_choices", figures)


if __name__ == "__main__":
    main()
