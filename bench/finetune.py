"""Benchmark: sorting accuracy before and after per-recording fine-tuning (``sort(..., finetune=True)``), and time.

    python bench/finetune.py                       # 6 generated GT recordings + 9 Quiroga sets
    python bench/finetune.py --cluster dpgmm       # the published tables' clustering
    python bench/finetune.py --seed-base 900       # another draw of recordings (used for development)

Recordings: ``synthetic.generate_recording`` (SpikeInterface's ground-truth generator, one channel, 60 s) with
different seeds, unit counts (3 to 8), amplitude ranges and firing rates; sampling rate and noise level are
drawn per seed. Plus, from ../shared/data/quiroga when present, ``C_Easy1_noise015_5sec.mat`` (read at 24 kHz) and
the 8 Easy1/Easy2 files of GT-labelled snippets (``sort_snippets``: 32-sample frames at 20 kHz, clustering only).
Besides sort accuracy, each row has the "true-k" accuracy: a GMM with the true unit count on the embeddings, i.e.
how separable the (adapted) encoder makes the units, apart from the sorter's choice of the number of units.
Each recording is sorted twice in this process with the same encoder and seed: frozen, then fine-tuned on its
own spikes (default options of ``deepspike.model.finetune.FinetuneParams``, no ground truth used). Accuracy is
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
# GT-labelled 32-sample frames of the 8 Quiroga Easy1/Easy2 files (denspp front-end model, 20 kHz, peak at 8)
SNIPPETS = QUIROGA.with_name("quiroga_easy1_easy2_gt_frames_denspp.npz")
SNIPPET_FS, SNIPPET_PEAK = 20000.0, 8

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
    from deepspike.recording.synthetic import generate_recording

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
    from deepspike.recording.ground_truth import load_ground_truth
    from deepspike.recording.readers import open_recording

    rec = open_recording(QUIROGA, sampling_frequency=24000.0)
    return [(QUIROGA.name, rec, load_ground_truth(QUIROGA, recording=rec))]


def snippet_sets() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, frames, GT labels) per Quiroga file of the denspp snippet set (clustering only: no spike times)."""
    if not SNIPPETS.exists():
        print(f"(skipping Quiroga snippets: {SNIPPETS} not found)")
        return []
    d = np.load(SNIPPETS, allow_pickle=False)
    return [(f"snip_{name}", d["waveforms"][d["file_index"] == i], d["spike_class"][d["file_index"] == i])
            for i, name in enumerate(d["file_names"])]  # fmt: skip


def true_k_accuracy(emb: np.ndarray, gt: np.ndarray, seed: int = 0) -> float:
    """Embedding separability apart from model selection: GMM with the true unit count (4 inits), matched accuracy."""
    from deepspike.evaluation.compare import compare_labels
    from deepspike.sorting.clustering.mixture import fit_gmm

    keep = gt >= 0
    x = np.asarray(emb, dtype=np.float64)[keep]
    gmm = fit_gmm(x, len(np.unique(gt[keep])), seed=seed, n_init=4)
    return float(compare_labels(gt[keep], gmm.predict(x))["accuracy"].mean())


def score_snippets(
    frames: np.ndarray, gt: np.ndarray, checkpoint: str, cluster: str, finetune: bool, options: dict[str, Any]
) -> tuple[float, float, Any]:
    """(mean accuracy, seconds, result) of one clustering of a snippet set."""
    from deepspike.evaluation.compare import compare_labels
    from deepspike.sorting.pipeline import sort_snippets

    t0 = time.perf_counter()
    res = sort_snippets(frames, SNIPPET_FS, SNIPPET_PEAK, checkpoint, cluster=cluster, finetune=finetune,
                        finetune_options=options if finetune else {})  # fmt: skip
    return float(compare_labels(gt, res.labels)["accuracy"].mean()), time.perf_counter() - t0, res


def score(
    recording: Any, gt: Any, checkpoint: str | None, cluster: str, finetune: bool, options: dict[str, Any]
) -> tuple[float, float, Any]:
    """(mean accuracy, seconds, result) of one sort."""
    from deepspike.evaluation.compare import compare_to_ground_truth
    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    t0 = time.perf_counter()
    params = SortParams(cluster=cluster, finetune=finetune, finetune_options=options if finetune else {})
    result = run_sort(recording, checkpoint, params)
    seconds = time.perf_counter() - t0
    return float(compare_to_ground_truth(result.sorting, gt)["accuracy"].mean()), seconds, result


def case_rows(args: Any, checkpoint: str, options: dict[str, Any]) -> list[dict[str, Any]]:
    """Sort every case before and after fine-tuning; one row of figures each."""
    from deepspike.spikes.extract import gt_labels

    cases: list[tuple[str, str, Any, Any]] = [
        ("generated", n, r, g) for n, r, g in generated(args.seed_base, args.duration)
    ]
    if not args.no_quiroga:
        cases += [("quiroga", n, r, g) for n, r, g in quiroga()] + [("quiroga", *c) for c in snippet_sets()]
    rows = []
    print(f"{'recording':<44} {'before':>7} {'after':>7} {'gain':>7} {'true-k':>13} {'ft s':>6} {'kept':>10}")
    for group, name, data, gt in cases:
        if isinstance(data, np.ndarray):
            before, t_before, res0 = score_snippets(data, gt, checkpoint, args.cluster, False, options)
            after, t_after, res = score_snippets(data, gt, checkpoint, args.cluster, True, options)
            labels0 = labels = gt
            n_gt = len(np.unique(gt))
        else:
            before, t_before, res0 = score(data, gt, checkpoint, args.cluster, False, options)
            after, t_after, res = score(data, gt, checkpoint, args.cluster, True, options)
            labels0, labels = (
                gt_labels(r.sample_index, gt, r.recording, r.sampling_frequency, 0.4) for r in (res0, res)
            )
            n_gt = len(gt.unit_ids)  # each sort's own spikes (matching may add different ones)
        sep = (true_k_accuracy(res0.embeddings, labels0), true_k_accuracy(res.embeddings, labels))
        ft = res.finetuned.spec["provenance"]["finetune"]
        row = {
            "recording": name, "group": group, "accuracy_before": round(before, 4), "accuracy_after": round(after, 4),
            "gain": round(after - before, 4), "true_k_accuracy_before": round(sep[0], 4),
            "true_k_accuracy_after": round(sep[1], 4), "num_spikes": len(res.labels), "units_gt": n_gt,
            "units_found_before": len(np.unique(res0.labels[res0.labels >= 0])),
            "units_found_after": len(np.unique(res.labels[res.labels >= 0])),
            "seconds_sort": round(t_before, 2), "seconds_sort_finetune": round(t_after, 2),
            "seconds_finetune": round(res.timings.get("finetune", float("nan")), 2), "kept": ft.get("kept"),
            "quality_metric": ft.get("quality_metric"), "quality_parent": ft.get("parent_quality"),
            "quality_final": ft["history"][-1]["quality"] if ft.get("history") else None,
            "sort_check": ft.get("sort_check"), "reason": ft.get("reason"),
        }  # fmt: skip
        rows.append(row)
        print(f"{name:<44} {before:7.3f} {after:7.3f} {after - before:+7.3f} {sep[0]:6.3f}>{sep[1]:.3f} "
              f"{row['seconds_finetune']:6.1f} {row['kept']:>10}", flush=True)  # fmt: skip
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the rows: accuracy before/after, gain, worst change, true-k separability."""
    gains = np.array([r["gain"] for r in rows])

    def mean(key: str) -> float:
        return round(float(np.mean([r[key] for r in rows])), 4)

    return {
        "num_recordings": len(rows),
        "mean_accuracy_before": mean("accuracy_before"),
        "mean_accuracy_after": mean("accuracy_after"),
        "mean_gain": round(float(gains.mean()), 4),
        "worst_change": round(float(gains.min()), 4),
        "mean_true_k_accuracy_before": mean("true_k_accuracy_before"),
        "mean_true_k_accuracy_after": mean("true_k_accuracy_after"),
        "true_k_improved": int(sum(r["true_k_accuracy_after"] > r["true_k_accuracy_before"] for r in rows)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="encoder artifact (default: the bundled checkpoint)")
    ap.add_argument("--cluster", default="gmm", help="gmm | dpgmm | hdbscan | kmeans")
    ap.add_argument("--seed-base", type=int, default=100, help="seed of the first generated recording")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per generated recording")
    ap.add_argument("--no-quiroga", action="store_true", help="generated recordings only")
    ap.add_argument("--name", default="finetune", help="results file name (bench/results/NAME.json)")
    ap.add_argument("--options", default="{}", help="finetune_options as JSON (default: the library defaults)")
    args = ap.parse_args()

    from _common import write_results

    from deepspike.sorting.features import DEFAULT_CHECKPOINT

    checkpoint = args.checkpoint or str(DEFAULT_CHECKPOINT)
    options = json.loads(args.options)
    rows = case_rows(args, checkpoint, options)
    overall = summarize(rows)
    figures = {
        "checkpoint": Path(checkpoint).name,  # no machine paths in committed results
        "cluster": args.cluster,
        "finetune_options": options,
        **overall,
        "goal_met": bool(overall["mean_gain"] >= 0.03 and overall["worst_change"] >= -0.01),
        "mean_seconds_finetune": round(float(np.mean([r["seconds_finetune"] for r in rows])), 2),
        "groups": {g: summarize([r for r in rows if r["group"] == g]) for g in sorted({r["group"] for r in rows})},
        "per_recording": rows,
    }
    write_results(args.name, figures)
    for g, fig in figures["groups"].items():
        sep = f"{fig['mean_true_k_accuracy_before']:.4f} -> {fig['mean_true_k_accuracy_after']:.4f}"
        print(
            f"{g}: {fig['mean_accuracy_before']:.4f} -> {fig['mean_accuracy_after']:.4f} (worst"
            f" {fig['worst_change']:+.4f}); true-k {sep} ({fig['true_k_improved']}/{fig['num_recordings']} up)"
        )


if __name__ == "__main__":
    main()
