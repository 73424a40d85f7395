"""The issue-12 sweep table: every training run's validation metric beside baselines on the same windows.

    python bench/foundation_sweep.py --corpus data/corpora/sweep300 RUN_DIR_OR_SWEEP_DIR [...]

A run directory is what ``train.py`` writes (``result.json``, ``csv/metrics.csv``); a sweep directory holds
numbered run directories. The metric is the one runs are selected by, ``val/score`` = ``val/gmm_acc``: a GMM with
the true number of units on each labelled validation recording's embeddings (at most 3000 spikes each), matched
accuracy, mean over recordings. The same metric is computed here, on the same windows, for the baselines:

- ``pca``: PCA-8 of each recording's normalized windows (what ``features="pca"`` does);
- ``pca_global``: one PCA-8 fitted on a sample of the corpus's training windows (``corpus.sample_windows``): the
  embedding a ``linear_skip`` net starts from, i.e. the best a fixed linear encoder does without training;
- ``bundled``: the encoder ``sort.py`` uses by default.

Writes ``bench/results/foundation_sweep.json`` and ``.md`` (the table of the model card).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._common import RESULTS, machine  # noqa: E402

KEYS = (
    "model.objective", "model.contrastive.loss", "model.contrastive.positives", "model.input_norm.norm_clip",
    "model.net.linear_skip", "data.shuffle_buffer", "model/net", "model.latent", "model.hidden", "data.shards",
)  # fmt: skip


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


def baselines(corpus: str) -> dict[str, float]:
    import torch
    from sklearn.decomposition import PCA

    from deepspike.corpus import sample_windows, val_windows
    from deepspike.evaluate import gmm_scores
    from deepspike.export import load_encoder
    from deepspike.sorting import DEFAULT_CHECKPOINT, pca_features
    from deepspike.spec import WindowSpec, normalize

    spec = WindowSpec()
    glob_pca = PCA(8, random_state=0).fit(normalize(sample_windows(corpus), spec))
    enc = load_encoder(DEFAULT_CHECKPOINT)
    scores: dict[str, list[float]] = {"pca": [], "pca_global": [], "bundled": []}
    torch.set_num_threads(1)
    for w, lab in val_windows(corpus, 3000):
        if lab is None:
            continue
        feats = {"pca": pca_features(w, spec, 8, 0), "pca_global": glob_pca.transform(normalize(w, spec)),
                 "bundled": enc.embed(w)}  # fmt: skip
        for k, f in feats.items():
            scores[k].append(gmm_scores(f, lab)[0])
    return {k: round(float(np.nanmean(v)), 4) for k, v in scores.items()}


def table(doc: dict[str, Any]) -> str:
    rows = ["| run | settings | steps | val/score last | best |", "|---|---|---|---|---|"]
    for name, v in doc["baselines"].items():
        rows.append(f"| baseline `{name}` | (no training) | 0 | {v:.3f} | {v:.3f} |")
    for r in doc["runs"]:
        s = ", ".join(f"{k}={v}" for k, v in r["settings"].items() if k != "data.shards")
        rows.append(f"| {r['run']} | {s} | {r['steps']} | {r['val_score_last']:.3f} | {r['val_score_best']:.3f} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run or sweep directories written by train.py")
    ap.add_argument("--corpus", required=True, help="the corpus the runs validated on (for the baselines)")
    ap.add_argument("--out", default=str(RESULTS / "foundation_sweep.json"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    doc = {
        "machine": machine(),
        "corpus": args.corpus,
        "metric": "val/gmm_acc: GMM at the true unit count per labelled validation recording, mean matched accuracy",
        "baselines": baselines(args.corpus),
        "runs": [describe(r) for r in run_dirs(args.runs)],
    }
    doc["wall_s"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, out)
    out.with_suffix(".md").write_text(table(doc))
    print(table(doc))
    return doc


if __name__ == "__main__":
    main()
