"""The issue-12 sweep table: every training run's validation metric beside baselines on the same windows.

    python bench/foundation_sweep.py --corpus data/corpora/sweep300 RUN_DIR_OR_SWEEP_DIR [...]

A run directory is what ``train.py`` writes (``result.json``, ``csv/metrics.csv``); a sweep directory holds
numbered run directories. The metric is the one runs are selected by, ``val/score`` = ``val/gmm_acc``: a GMM with
the true number of units on each labelled validation recording's embeddings (at most 3000 spikes each), matched
accuracy, mean over recordings. The same metric is computed here, on the same windows, for the baselines:

- ``pca``: PCA-8 of each recording's normalized windows (what ``features="pca"`` does);
- ``pca_global``: one PCA-8 fitted on a sample of the corpus's training windows (``data.sample.sample_windows``): the
  embedding a ``linear_skip`` net starts from, i.e. the best a fixed linear encoder does without training;
- ``bundled``: the encoder ``sort.py`` uses by default.

With ``--bench`` every run's exported encoder also goes through ``bench/embedding.py``'s dev draw (its Quiroga,
Martinez and generated tiers, ``sort_snippets`` with the default clustering): mean accuracy per set beside PCA's.

Writes ``bench/results/foundation_sweep.json`` and ``.md`` (the table of the model card).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._common import RESULTS, machine, write_json  # noqa: E402
from bench.embedding import TIERS  # noqa: E402

KEYS = (
    "model.objective", "model.recon_target", "model.contrastive.loss", "model.contrastive.positives",
    "model.pretext.tasks", "model.input_norm.normalization", "model.input_norm.norm_clip", "model.band.p",
    "model.net.linear_skip", "model.net.variational", "data.shuffle_buffer", "model/net", "model.latent",
    "model.hidden", "trainer.limit_val_batches", "data.shards",
)  # fmt: skip
BENCH_SETS = ("quiroga", "martinez", *(f"synth_{t}" for t in TIERS))  # bench/embedding.py's headline sets


def run_dirs(paths: list[str]) -> list[Path]:
    out = []
    for p in map(Path, paths):
        if (p / "result.json").exists():
            out.append(p)
        else:
            out += sorted((d for d in p.iterdir() if (d / "result.json").exists()), key=lambda d: d.name)
    return out


def history(run: Path) -> list[tuple[int, float]]:
    """(step, val/score) of every validation of the run."""
    f = run / "csv" / "metrics.csv"
    if not f.exists():
        return []
    return [(int(r["step"]) + 1, float(r["val/score"])) for r in csv.DictReader(f.open()) if r.get("val/score")]


def describe(run: Path) -> dict[str, Any]:
    res = json.loads((run / "result.json").read_text())
    cfg = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in res.get("overrides", []) if "=" in o}
    hist = history(run)
    return {
        "run": f"{run.parent.name}/{run.name}",  # no machine paths in results
        "settings": {k: cfg[k] for k in KEYS if k in cfg},
        "val_score_last": round(hist[-1][1], 4) if hist else res.get("metric"),
        "val_score_best": round(max(s for _, s in hist), 4) if hist else res.get("metric"),
        "history": hist,
        "steps": int(res.get("metrics", {}).get("trainer/global_step", 0)),
        "samples_per_s": round(float(res.get("metrics", {}).get("train/samples_per_s", 0.0))),
        "num_parameters": res.get("num_parameters"),
        "corpus_manifest_sha256": res.get("corpus_manifest_sha256"),
    }


def baselines(corpus: str, max_recordings: int | None = None) -> dict[str, float]:
    import torch
    from sklearn.decomposition import PCA

    from deepspike.data.sample import sample_windows, val_windows
    from deepspike.model.collapse import gmm_scores
    from deepspike.model.export import load_encoder
    from deepspike.sorting.features import DEFAULT_CHECKPOINT, pca_features
    from deepspike.spec import WindowSpec, normalize

    spec = WindowSpec()
    glob_pca = PCA(8, random_state=0).fit(normalize(sample_windows(corpus), spec))
    enc = load_encoder(DEFAULT_CHECKPOINT)
    scores: dict[str, list[float]] = {"pca": [], "pca_global": [], "bundled": []}
    torch.set_num_threads(1)
    for w, lab in val_windows(corpus, 3000)[:max_recordings]:
        if lab is None:
            continue
        feats = {"pca": pca_features(w, spec, 8, 0), "pca_global": glob_pca.transform(normalize(w, spec)),
                 "bundled": enc.embed(w)}  # fmt: skip
        for k, f in feats.items():
            scores[k].append(gmm_scores(f, lab)[0])
    return {k: round(float(np.nanmean(v)), 4) for k, v in scores.items()}


def bench_runs(runs: list[Path], draw: str) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean accuracy per ``BENCH_SETS`` set of PCA features and of each run's encoder (``bench/embedding.py`` cases,
    scored as it scores them)."""
    from bench import embedding as eb

    cases = [c for c in eb.quiroga_cases() + eb.martinez_cases() + eb.synthetic_cases(draw) if c[0] in BENCH_SETS]

    def means(checkpoint: str | None, features: str) -> dict[str, float]:
        acc: dict[str, list[float]] = {}
        for ds, _, frames, gt, fs, peak, noise in cases:
            acc.setdefault(ds, []).append(
                eb.snippet_accuracy(frames, gt, fs, peak, checkpoint, "gmm", noise, features)[0]
            )
        return {d: round(float(np.mean(v)), 4) for d, v in acc.items()}

    per_run: dict[str, dict[str, float]] = {}
    for run in runs:
        per_run[f"{run.parent.name}/{run.name}"] = means(str(run / "encoder.safetensors"), "encoder")
        print(f"bench {run}: {per_run[f'{run.parent.name}/{run.name}']}", flush=True)
    return means(None, "pca"), per_run


def table(doc: dict[str, Any]) -> str:
    sets = list(doc.get("bench_pca") or {})
    head = "| run | settings | steps | val/score last | best |" + "".join(f" {d} |" for d in sets)
    rows = [head, "|---|---|---|---|---|" + "---|" * len(sets)]
    for name, v in doc["baselines"].items():
        extra = "".join(f" {doc['bench_pca'][d]:.3f} |" for d in sets) if name == "pca" else " |" * len(sets)
        rows.append(f"| baseline `{name}` | (no training) | 0 | {v:.3f} | {v:.3f} |{extra}")
    for r in doc["runs"]:
        s = ", ".join(f"{k}={v}" for k, v in r["settings"].items() if k != "data.shards")
        b = r.get("bench") or {}
        extra = "".join(f" {b[d]:.3f} |" if d in b else " |" for d in sets)
        rows.append(
            f"| {r['run']} | {s} | {r['steps']} | {r['val_score_last']:.3f} | {r['val_score_best']:.3f} |{extra}"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run or sweep directories written by train.py")
    ap.add_argument("--corpus", required=True, help="the corpus the runs validated on (for the baselines)")
    ap.add_argument("--out", default=str(RESULTS / "foundation_sweep.json"))
    ap.add_argument(
        "--val-recordings",
        type=int,
        default=None,
        help="baselines on the first N validation recordings (what a run's trainer.limit_val_batches covers: about "
        "limit x batch size / spikes per recording; default: all)",
    )
    ap.add_argument(
        "--bench",
        choices=("dev", "report"),
        default=None,
        help="also score every run's encoder on bench/embedding.py's sets of this draw (dev: choosing)",
    )
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    runs = run_dirs(args.runs)
    doc = {
        "machine": machine(),
        "corpus": args.corpus,
        "metric": "val/gmm_acc: GMM at the true unit count per labelled validation recording, mean matched accuracy",
        "baselines": baselines(args.corpus, args.val_recordings),
        "baseline_val_recordings": args.val_recordings or "all",
        "runs": [describe(r) for r in runs],
    }
    if args.bench:
        doc["bench_draw"] = args.bench
        doc["bench_pca"], per_run = bench_runs(runs, args.bench)
        for r in doc["runs"]:
            r["bench"] = per_run[r["run"]]
    doc["wall_s"] = round(time.perf_counter() - t0, 1)
    out = write_json(Path(args.out), doc)
    out.with_suffix(".md").write_text(table(doc))
    print(table(doc))
    return doc


if __name__ == "__main__":
    main()
