"""Benchmark: hour-long single-channel recordings, where unit counts must not grow with the spike count (issue 24).

    python bench/long.py --cases static drift11 drift12   # full sorts, a fresh process each -> bench/results/long.json
    python bench/long.py --cases drift11 --recluster '{"refractory_ms": null}'   # re-cluster the cached spikes only

Cases: ``static`` is ``bench/sort.py``'s 1 h recording (3 units, ~72,000 spikes each); ``driftS`` is a 1 h
recording of 4 hand-shaped units drawn with seed ``S`` whose amplitudes drift linearly by +-25 % over the hour
(``templated_recording(drift=...)``: a chronic wire). Dev seeds (choices were made on them): 11, 12; report seeds
(fresh, chose nothing): 21, 22, 23. Recordings go to data/generated/long/. A full sort stores the clustering's inputs
(embeddings, waves, amplitudes of the detected spikes) in bench/.cache/long/, so ``--recluster`` re-runs only the
clustering and scores it on the detected spikes (no template matching: a proxy for choosing, not a reported figure).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
DATA = REPO / "data" / "generated" / "long"
CACHE = REPO / "bench" / ".cache" / "long"
DURATION_S = 3600.0
DRIFT = 0.25
DEV_SEEDS = (11, 12)
REPORT_SEEDS = (21, 22, 23)


def drift_units(seed: int) -> tuple[list[tuple[float, float, float, float]], list[float], list[float]]:
    """Four distinct hand-shaped units (amplitude, width ms, rebound ratio, rebound delay ms), their rates and
    drifts (+-``DRIFT``, signs drawn): shapes are redrawn until no two units have near-equal normalized templates."""
    rng = np.random.default_rng(seed)
    t = (np.arange(72) - 24) / 24.0
    while True:
        amp = rng.uniform(80, 170, 4) * np.where(rng.random(4) < 0.7, -1.0, 1.0)
        units = [(float(a), float(rng.uniform(0.08, 0.3)), float(rng.uniform(0.1, 0.6)), float(rng.uniform(0.3, 0.9)))
                 for a in amp]  # fmt: skip
        shapes = np.stack([a * (np.exp(-0.5 * (t / w) ** 2) - r * np.exp(-0.5 * ((t - d) / (2.5 * w)) ** 2))
                           for a, w, r, d in units])  # fmt: skip
        unit = shapes / np.linalg.norm(shapes, axis=1, keepdims=True)
        cos = unit @ unit.T - 2 * np.eye(4)
        if cos.max() < 0.9:
            rates = [float(r) for r in rng.uniform(8.0, 20.0, 4)]
            drifts = [float(d) for d in DRIFT * np.where(rng.random(4) < 0.5, -1.0, 1.0)]
            return units, rates, drifts


def generate(case: str) -> Path:
    """The case's recording folder (written once; its ground truth in ``<folder>.gt``)."""
    folder = DATA / case
    if (folder / "si_folder.json").exists():
        return folder
    from deepspike.recording.synthetic import templated_recording

    if case == "static":
        units = [(-160.0, 0.10, 0.15, 0.4), (110.0, 0.20, 0.15, 0.6), (-100.0, 0.28, 0.1, 0.8)]
        rec, gt = templated_recording(units, [20.0, 25.0, 15.0], DURATION_S, seed=0)
    else:
        seed = int(case.removeprefix("drift"))
        units, rates, drifts = drift_units(seed)
        rec, gt = templated_recording(units, rates, DURATION_S, seed=seed, drift=drifts)
    folder.parent.mkdir(parents=True, exist_ok=True)
    rec.save(folder=folder, chunk_duration="60s", overwrite=True, n_jobs=1)
    gt.save(folder=folder.parent / f"{case}.gt", overwrite=True)
    return folder


def sort_case(case: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Full sort of ``case`` in this process; caches the clustering's inputs; returns the figures."""
    import deepspike.sorting.pipeline as pipeline
    from deepspike.evaluation.compare import compare_with_categories
    from deepspike.recording.ground_truth import load_ground_truth
    from deepspike.sorting.clustering.params import ClusterParams
    from deepspike.sorting.params import SortParams

    folder = generate(case)
    captured: dict[str, Any] = {}
    cluster = pipeline.cluster_spikes

    def capturing(emb, waves, channel, amplitude, params, threshold, n_jobs=1, times=None):
        captured.update(emb=emb, waves=waves, amplitude=amplitude, threshold=threshold)
        return cluster(emb, waves, channel, amplitude, params, threshold, n_jobs, times)

    pipeline.cluster_spikes = capturing
    echoes = pipeline.secondary_peaks

    def capturing_echoes(sample_index, *a):
        echo = echoes(sample_index, *a)
        captured["sample_index"] = np.asarray(sample_index)[~echo]
        return echo

    pipeline.secondary_peaks = capturing_echoes
    params = SortParams.from_options({"cluster": ClusterParams.from_dict(overrides)} if overrides else {})
    t0 = time.perf_counter()
    result = pipeline.run_sort(str(folder), None, params)
    seconds = time.perf_counter() - t0
    gt = load_ground_truth(str(folder), recording=result.recording)
    rows, categories = compare_with_categories(result.sorting, gt)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE / f"{case}.npz", **{k: np.asarray(v) for k, v in captured.items() if v is not None})
    return {
        "accuracy": float(rows["accuracy"].mean()),
        "per_unit": [round(float(a), 4) for a in rows["accuracy"]],
        "units": len(result.unit_ids),
        "gt_units": len(gt.unit_ids),
        "redundant": int(categories.get("num_redundant", 0)),
        "seconds": round(seconds, 1),
        "cluster_s": round(result.timings["cluster"], 2),
        "spikes": len(result.labels),
    }


def recluster(case: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """Re-cluster the cached spikes of ``case``: units, their sizes, accuracy of the detected spikes' labels."""
    from spikeinterface.core import NumpySorting

    from deepspike.evaluation.compare import compare_to_ground_truth
    from deepspike.recording.ground_truth import load_ground_truth
    from deepspike.sorting.clustering.cluster import cluster_spikes
    from deepspike.sorting.clustering.params import ClusterParams

    c = np.load(CACHE / f"{case}.npz")
    t0 = time.perf_counter()
    gt = load_ground_truth(str(DATA / case))
    fs = float(gt.get_sampling_frequency())
    res = cluster_spikes(c["emb"], c["waves"], None, c["amplitude"], ClusterParams.from_dict(overrides),
                         float(c["threshold"]), times=c["sample_index"] / fs)  # fmt: skip
    seconds = time.perf_counter() - t0
    keep = res.labels >= 0
    found = NumpySorting.from_samples_and_labels([c["sample_index"][keep]], [res.labels[keep]], fs)
    acc = compare_to_ground_truth(found, gt)["accuracy"]
    return {
        "accuracy": round(float(acc.mean()), 4),
        "per_unit": [round(float(a), 3) for a in acc],
        "units": res.n_units,
        "sizes": np.bincount(res.labels[keep]).tolist(),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["static", *(f"drift{s}" for s in DEV_SEEDS)])
    ap.add_argument("--cluster", default="{}", help="cluster.* overrides as JSON (full sorts)")
    ap.add_argument("--recluster", default=None, help="cluster.* overrides as JSON: re-cluster cached spikes only")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: sort one case in this (fresh) process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(sort_case(args.one, json.loads(args.cluster))))
        return
    if args.recluster is not None:
        for case in args.cases:
            print(case, json.dumps(recluster(case, json.loads(args.recluster))), flush=True)
        return
    from _common import write_results

    figures: dict[str, Any] = {"cluster": json.loads(args.cluster)}
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for case in args.cases:
        generate(case)
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--one", case, "--cluster", args.cluster]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        if proc.returncode:
            sys.exit(f"{case} failed:\n{proc.stderr[-4000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        r["wall_s_fresh_process"] = round(time.perf_counter() - t0, 1)
        print(case, json.dumps(r), flush=True)
        figures[case] = r
    write_results("long" + (f"_{args.tag}" if args.tag else ""), figures)


if __name__ == "__main__":
    main()
