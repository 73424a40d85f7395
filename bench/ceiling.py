"""Benchmark: how high can any feature go on the third-party GT sets? Supervised ceilings beside PCA and the goals.

    python bench/ceiling.py                        # Quiroga + Martinez, writes bench/results/ceiling.{json,png}

Issue 12 asks the encoder for ``sort_snippets(features="pca")`` + 0.02 on the Quiroga frames and on the Martinez
waveforms. Before spending training on that, this script measures what *supervised* read-outs of the same spikes
reach, on the same score (``deepspike.compare_labels``' mean accuracy over GT units, tp / (tp + fn + fp)); an
unsupervised clustering of any feature cannot be expected above them. Per file:

- ``pca``: ``sort_snippets(features="pca")``, the default clustering (the goals' baseline);
  ``encoder:<name>``: ``sort_snippets(features="encoder")`` with each of ``--checkpoints`` (``bundled``: the default).
- ``lda``, ``qda``, ``svm``, ``mlp``: 5-fold cross-validated predictions of scikit-learn's linear and quadratic
  discriminants, an RBF support-vector machine and a two-layer perceptron on the model's conformed windows (the
  windows ``sort_snippets`` clusters). ``lda_reject``: LDA that leaves spikes unassigned below the best posterior
  threshold, chosen on the scored spikes themselves (optimistic: a sorter may drop ambiguous spikes, and an unassigned
  spike costs one fn where a wrong one costs an fn and an fp).
- ``lda_raw``: LDA on the frames as published (no resampling, no re-peaking, every sample): what the window grid
  loses. ``lda_window_B_A``: LDA on conformed windows of B samples before and A from the peak (``--windows``).
- ``*_fraction_correct``: the same predictions scored as the fraction of spikes classified right, the figure
  classifier papers (and issue 12's table, 0.968) quote; it is higher than the sorting score of the same labels.
- ``clustered_lda_projection``: the default clustering run on the LDA discriminant projection fitted on all labels:
  the best linear feature there is, told the units. Where it still scores low, the clustering (not the feature)
  decides the file.

Writes ``bench/results/ceiling.json`` (per file and per dataset mean, with each goal beside the highest ceiling) and
``bench/results/ceiling.png``. About 2 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._common import RESULTS, machine, save_figure, write_json  # noqa: E402
from bench.embedding import (  # noqa: E402
    MARTINEZ,
    QUIROGA,
    martinez_cases,
    mean_accuracy,
    quiroga_cases,
    snippet_accuracy,
    supervised_labels,
)

GOAL_MARGIN = {"quiroga": 0.02, "martinez": 0.02}  # issue 12: encoder >= PCA + this, per dataset mean
CLASSIFIERS = ("lda", "qda", "svm", "mlp")
BUNDLED = "bundled"  # --checkpoints name of the default checkpoint


def classifier(name: str, seed: int = 0) -> Any:
    """The supervised read-outs, untuned except for QDA's shrinkage (its covariances are singular without)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis, QuadraticDiscriminantAnalysis
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return {
        "lda": lambda: LinearDiscriminantAnalysis(),
        "qda": lambda: QuadraticDiscriminantAnalysis(reg_param=0.1),
        "svm": lambda: make_pipeline(StandardScaler(), SVC(C=3.0)),
        "mlp": lambda: make_pipeline(
            StandardScaler(), MLPClassifier((128, 64), alpha=1e-3, early_stopping=True, random_state=seed)
        ),
    }[name]()


def lda_reject(waves: np.ndarray, gt: np.ndarray, seed: int = 0) -> float:
    """Best mean accuracy of cross-validated LDA that leaves spikes below a posterior threshold unassigned."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    units = np.unique(gt)
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    post = cross_val_predict(LinearDiscriminantAnalysis(), waves, gt, cv=cv, method="predict_proba")
    best = units[post.argmax(1)]
    return max(
        mean_accuracy(gt, np.where(post.max(1) >= t, best, -1)) for t in (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
    )


def clustered_projection(waves: np.ndarray, gt: np.ndarray) -> float:
    """Default clustering of the supervised LDA projection (all labels used): the best linear feature there is."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from deepspike.sorting.clustering.cluster import cluster_spikes
    from deepspike.sorting.params import SortParams
    from deepspike.spec import WindowSpec

    proj = LinearDiscriminantAnalysis().fit(waves, gt).transform(waves).astype(np.float32)
    peak = waves[:, WindowSpec().n_before]  # the amplitudes sort_snippets passes
    return mean_accuracy(gt, cluster_spikes(proj, waves, None, peak, SortParams.from_options({}).cluster).labels)


def score_file(
    frames: np.ndarray, gt: np.ndarray, fs: float, peak: int, windows: list[tuple[int, int]], checkpoints: list[str]
) -> dict[str, float]:
    """Every figure of one GT file (see the module docstring)."""
    from deepspike.spec import WindowSpec
    from deepspike.spikes.windows import conform_snippets

    pca, waves = snippet_accuracy(frames, gt, fs, peak, None, "gmm", None, "pca")
    out: dict[str, float] = {"pca": pca}
    for ckpt in checkpoints:
        path = None if ckpt == BUNDLED else ckpt
        out[f"encoder:{Path(ckpt).stem}"] = snippet_accuracy(frames, gt, fs, peak, path, "gmm", None, "encoder")[0]
    for name in CLASSIFIERS:
        pred = supervised_labels(waves, gt, classifier(name))
        out[name], out[f"{name}_fraction_correct"] = mean_accuracy(gt, pred), float(np.mean(pred == gt))
    out["lda_reject"] = lda_reject(waves, gt)
    raw = supervised_labels(np.asarray(frames, dtype=np.float64), gt)
    out["lda_raw"], out["lda_raw_fraction_correct"] = mean_accuracy(gt, raw), float(np.mean(raw == gt))
    for before, after in windows:
        w, _ = conform_snippets(frames, fs, WindowSpec(n_before=before, n_after=after), peak)
        out[f"lda_window_{before}_{after}"] = mean_accuracy(gt, supervised_labels(w, gt))
    out["clustered_lda_projection"] = clustered_projection(waves, gt)
    out.update(n_spikes=float(len(gt)), n_units=float(len(np.unique(gt))))
    return out


def summarize(files: dict[str, dict[str, float]], margin: float) -> dict[str, float]:
    """Per-dataset means, the goal (PCA mean + margin), the highest ceiling and the goal's distance above it."""
    keys = [k for k in next(iter(files.values())) if k not in ("n_spikes", "n_units")]
    mean = {k: float(np.mean([f[k] for f in files.values()])) for k in keys}
    ceilings = [k for k in keys if (k.startswith("lda") or k in CLASSIFIERS) and "fraction" not in k]
    best = max(ceilings, key=lambda k: mean[k])
    mean.update(goal=mean["pca"] + margin, best_ceiling=mean[best])
    mean["goal_minus_best_ceiling"] = mean["goal"] - mean[best]
    return {**mean, "best_ceiling_is": best}  # type: ignore[dict-item]


def plot(datasets: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.5), squeeze=False)
    for ax, (name, d) in zip(axes[0], datasets.items(), strict=True):
        m = d["mean"]
        encoders = [k for k in m if k.startswith("encoder:")]
        ceilings = ["lda", "qda", "svm", "mlp", "lda_reject", "lda_raw"]
        bars = ["pca", *encoders, "clustered_lda_projection", *ceilings]
        colors = ["C0"] + ["C4"] * len(encoders) + ["C1"] + ["C2"] * len(ceilings)
        ax.bar(np.arange(len(bars)), [m[b] for b in bars], color=colors)
        ax.axhline(m["goal"], color="C3", ls="--", label=f"goal: PCA + {GOAL_MARGIN[name]} = {m['goal']:.3f}")
        ax.set_xticks(np.arange(len(bars)), bars, rotation=35, ha="right", fontsize=8)
        lo = min(m[b] for b in bars)
        ax.set_ylim(max(0.0, lo - 0.05), 1.0)
        ax.set_title(f"{name}: mean accuracy (compare_labels)")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def parse_windows(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(b), int(a)) for b, a in (w.split(":") for w in text.split(",") if w.strip())]
    except ValueError:
        raise SystemExit(
            f"--windows: expected BEFORE:AFTER pairs separated by commas (e.g. 8:24,10:22), got {text!r}"
        ) from None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", default="8:16,8:24,10:22", help="wider windows for LDA, BEFORE:AFTER at 24 kHz")
    ap.add_argument(
        "--checkpoints",
        default=f"{BUNDLED},checkpoints/deepspike_foundation_v2.safetensors",
        help=f"encoders to score beside PCA, comma separated ({BUNDLED} = the default checkpoint; empty: none)",
    )
    ap.add_argument("--out", default=str(RESULTS / "ceiling.json"), help="JSON path (the PNG goes beside it)")
    args = ap.parse_args(argv)
    windows = parse_windows(args.windows)
    checkpoints = [c.strip() for c in args.checkpoints.split(",") if c.strip()]
    for c in checkpoints:
        if c != BUNDLED and not Path(c).exists():
            ap.error(f"--checkpoints: {c} not found")
    for path in (QUIROGA, MARTINEZ):
        if not path.exists():
            ap.error(f"{path} not found (third-party data lives in ../shared/data)")
    t0 = time.perf_counter()
    datasets: dict[str, Any] = {}
    for ds, name, frames, gt, fs, peak, _ in quiroga_cases() + martinez_cases():
        if ds not in GOAL_MARGIN:
            continue  # martinez_all: class 0 is probably multi-unit, no goal there
        r = score_file(frames, gt, fs, peak, windows, checkpoints)
        datasets.setdefault(ds, {"files": {}})["files"][name] = r
        enc = "  ".join(f"{k} {v:.3f}" for k, v in r.items() if k.startswith("encoder:"))
        print(f"{ds:9s} {name:18s} pca {r['pca']:.3f}  {enc}  lda {r['lda']:.3f}  qda {r['qda']:.3f}  "
              f"svm {r['svm']:.3f}  mlp {r['mlp']:.3f}  reject {r['lda_reject']:.3f}  raw {r['lda_raw']:.3f} "
              f"(fraction correct {r['lda_raw_fraction_correct']:.3f})  "
              f"clustered projection {r['clustered_lda_projection']:.3f}", flush=True)  # fmt: skip
    for ds, d in datasets.items():
        d["mean"] = summarize(d["files"], GOAL_MARGIN[ds])
    doc = {
        "machine": machine(),
        "command": " ".join(["python bench/ceiling.py", *(sys.argv[1:] if argv is None else argv)]),
        "wall_s": round(time.perf_counter() - t0, 1),
        "score": "deepspike.compare_labels mean accuracy over GT units (tp / (tp + fn + fp)), mean over files",
        "datasets": datasets,
    }
    out = write_json(Path(args.out), doc)
    plot(datasets, out.with_suffix(".png"))
    for ds, d in datasets.items():
        m = d["mean"]
        print(f"{ds}: PCA {m['pca']:.4f}, goal {m['goal']:.4f}; best feature clustered "
              f"{m['clustered_lda_projection']:.4f}; highest supervised ceiling {m['best_ceiling']:.4f} "
              f"({m['best_ceiling_is']}); goal - ceiling {m['goal_minus_best_ceiling']:+.4f}")  # fmt: skip
    print(f"wall {doc['wall_s']} s -> {out}, {out.with_suffix('.png')}")
    return doc


if __name__ == "__main__":
    main()
