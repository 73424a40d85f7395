"""Benchmark: the sorter v2 choices (units cap, template matching, detection threshold) on a benchmark set.

    python bench/sorter_v2.py --set data/generated/dev_set                       # defaults vs the variants
    python bench/sorter_v2.py --set data/generated/dev_set --variants defaults 'matching.enabled=false'

A set is written by ``deepspike-bench make_set=true out=DIR set.seed=S`` (the development set the choices were
made on uses one seed, the report run another). Each variant is ``sort.yaml`` overrides (``key=value``, dotted
keys into ``cluster``, ``extract`` and ``matching``); every recording is sorted in this process with the bundled
encoder (or ``--checkpoint``) and scored with SpikeInterface's comparison (mean accuracy over GT units).
Writes bench/results/sorter_v2[_<tag>].json: accuracy per recording, mean per tier and variant, sort seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEFAULT_VARIANTS = ["defaults", "matching.enabled=false"]


def parse_variant(text: str) -> dict[str, Any]:
    """``a.b=1,c=x`` -> nested options for ``SortParams.from_options`` (values parsed as YAML)."""
    from _common import dotted_options

    return {} if text == "defaults" else dotted_options(text.split(","))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", required=True, help="benchmark set folder (deepspike-bench make_set=true)")
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    ap.add_argument("--tiers", nargs="*", default=None, help="only these tiers")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--tag", default="", help="suffix of the results file")
    args = ap.parse_args()

    from _common import write_results

    from deepspike.evaluation.compare import compare_to_ground_truth
    from deepspike.recording.ground_truth import load_ground_truth
    from deepspike.recording.readers import open_recording
    from deepspike.sorting.clustering.params import ClusterParams
    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    folder = Path(args.set)
    index = json.loads((folder / "bench_set.json").read_text())["recordings"]
    names = sorted(n for n, r in index.items() if args.tiers is None or r["tier"] in args.tiers)
    per_rec: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    for variant in args.variants:
        opts = parse_variant(variant)
        per_rec[variant], seconds[variant] = {}, 0.0
        for name in names:
            rec = open_recording(str(folder / name))
            gt = load_ground_truth(str(folder / name), recording=rec)
            o = {k: (dict(v) if isinstance(v, dict) else v) for k, v in opts.items()}
            if "cluster" in o:
                o["cluster"] = ClusterParams.from_dict(o["cluster"])
            t0 = time.perf_counter()
            result = run_sort(rec, args.checkpoint, SortParams.from_options(o))
            seconds[variant] += time.perf_counter() - t0
            acc = float(compare_to_ground_truth(result.sorting, gt)["accuracy"].mean())
            per_rec[variant][name] = acc
            print(f"{variant:<40} {name:<16} {acc:.3f}  units {len(result.unit_ids)}/{len(gt.unit_ids)}", flush=True)
    tiers = sorted({index[n]["tier"] for n in names})
    by_tier = {
        v: {t: round(sum(a for n, a in r.items() if index[n]["tier"] == t) /
                     max(1, sum(index[n]["tier"] == t for n in r)), 3) for t in tiers}
        for v, r in per_rec.items()
    }  # fmt: skip
    mean = {v: round(sum(r.values()) / max(1, len(r)), 3) for v, r in per_rec.items()}
    figures = {
        "command": "python bench/sorter_v2.py " + " ".join(sys.argv[1:]),
        "set": str(folder.name),
        "mean_accuracy": mean,
        "accuracy_by_tier": by_tier,
        "sort_seconds": {v: round(s, 1) for v, s in seconds.items()},
        "accuracy_by_recording": {v: {n: round(a, 3) for n, a in r.items()} for v, r in per_rec.items()},
    }
    write_results("sorter_v2" + (f"_{args.tag}" if args.tag else ""), figures)


if __name__ == "__main__":
    main()
