"""Benchmark: the two fine-tuning paths with the one shared recipe (conf/finetuning/default.yaml), side by side.

    python bench/finetune_paths.py                 # 4 generated GT recordings (seeds 100-103), ~10 min on 2 cores
    python bench/finetune_paths.py --cases 6 --seed-base 900

For each recording (``bench/finetune.py``'s cases, written to disk as SpikeInterface folders with ground truth):
sort with the frozen bundled encoder; sort with ``finetune=true`` (the in-memory sort path); and fine-tune with
``train.py experiment=finetune data.recordings=[REC]`` (the Lightning corpus path, a subprocess) under each recipe,
then sort with the exported encoder. Recipes: ``shared`` (the defaults) and ``previous`` (the corpus path's
settings before the recipes were unified: lr 1e-4, the parent's KL weight, 500 steps, validation every 100).
Accuracy is SpikeInterface's matched accuracy averaged over GT units (GMM clustering). Writes
bench/results/finetune_paths.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

RECIPES: dict[str, list[str]] = {
    "shared": [],
    "previous": ["finetune.lr=1e-4", "finetune.beta=null", "finetune.steps=500", "finetune.eval_every=100",
                 "finetune.min_lr_ratio=0.05"],
}  # fmt: skip


def write_cases(root: Path, seed_base: int, n: int) -> list[Path]:
    """bench/finetune.py's generated cases as recording folders (``NAME/`` + ``NAME.gt/``), reused when present."""
    from finetune import CASES

    from deepspike.recording.synthetic import generate_recording, save_pair

    paths = []
    for i, (units, snr, (lo, hi)) in enumerate(CASES[:n]):
        seed = seed_base + i
        folder = root / f"gen{seed}_u{units}"
        if not (folder.exists() and folder.with_name(folder.name + ".gt").exists()):
            rates = np.random.default_rng(seed).uniform(lo, hi, units)
            rec, gt = generate_recording(seed, duration_s=60.0, sampling_frequency="random", num_units=units,
                                         snr_range=snr, firing_rates=rates)  # fmt: skip
            save_pair(rec, gt, folder, folder.with_name(folder.name + ".gt"), progress=False)
        paths.append(folder)
    return paths


def accuracy(folder: Path, checkpoint: str, finetune: bool, cluster: str) -> tuple[float, float]:
    """(mean GT accuracy, seconds) of one sort of ``folder``."""
    from deepspike.evaluation.compare import compare_to_ground_truth
    from deepspike.recording.ground_truth import load_ground_truth
    from deepspike.recording.readers import open_recording
    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    rec = open_recording(folder)
    gt = load_ground_truth(folder, recording=rec)
    t0 = time.perf_counter()
    res = run_sort(rec, checkpoint, SortParams(cluster=cluster, finetune=finetune))
    return float(compare_to_ground_truth(res.sorting, gt)["accuracy"].mean()), time.perf_counter() - t0


def corpus_path(folder: Path, work: Path, recipe: str) -> tuple[Path, float]:
    """Fine-tune with ``train.py experiment=finetune`` on this one recording; (exported encoder, seconds)."""
    run_dir = work / f"run_{folder.name}_{recipe}"
    cmd = [
        sys.executable, str(REPO / "train.py"), "experiment=finetune", f"data.recordings=[{folder}]",
        f"data.cache_dir={work / 'corpus'}", "logger=none", f"hydra.run.dir={run_dir}",
        "trainer.enable_progress_bar=false", *RECIPES[recipe],
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
    return run_dir / "encoder.safetensors", time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=4, help="how many of bench/finetune.py's generated cases")
    ap.add_argument("--seed-base", type=int, default=100, help="seed of the first generated recording")
    ap.add_argument("--cluster", default="gmm", help="gmm | dpgmm | hdbscan | kmeans")
    ap.add_argument("--name", default="finetune_paths", help="results file name (bench/results/NAME.json)")
    args = ap.parse_args()

    from _common import CACHE, write_results

    from deepspike.sorting.features import DEFAULT_CHECKPOINT

    work = CACHE / "finetune_paths"
    rows: list[dict[str, Any]] = []
    print(f"{'recording':<16} {'frozen':>7} {'sort ft':>8} " + " ".join(f"{'corpus ' + r:>16}" for r in RECIPES))
    for folder in write_cases(work / "recordings", args.seed_base, args.cases):
        frozen, _ = accuracy(folder, str(DEFAULT_CHECKPOINT), False, args.cluster)
        sort_ft, t_sort = accuracy(folder, str(DEFAULT_CHECKPOINT), True, args.cluster)
        row: dict[str, Any] = {"recording": folder.name, "frozen": round(frozen, 4), "sort_path": round(sort_ft, 4),
                               "sort_path_seconds": round(t_sort, 1)}  # fmt: skip
        for recipe in RECIPES:
            enc, secs = corpus_path(folder, work, recipe)
            row[f"corpus_{recipe}"] = round(accuracy(folder, str(enc), False, args.cluster)[0], 4)
            row[f"corpus_{recipe}_seconds"] = round(secs, 1)
        rows.append(row)
        print(f"{folder.name:<16} {frozen:7.3f} {sort_ft:8.3f} "
              + " ".join(f"{row[f'corpus_{r}']:16.3f}" for r in RECIPES), flush=True)  # fmt: skip
        keys = ["frozen", "sort_path", *(f"corpus_{r}" for r in RECIPES)]  # written after each recording
        means = {f"mean_{k}": round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
        write_results(args.name, {"cluster": args.cluster, "seed_base": args.seed_base, "recipes": RECIPES,
                                  **means, "per_recording": rows})  # fmt: skip


if __name__ == "__main__":
    main()
