"""The validation metric of the long run(s) against training steps and corpus size (issue 25, item 3).

    python bench/training_curve.py            # -> bench/results/training_curve.png + .json

Reads every run folder ``checkpoints/runs/foundation_v3*`` that ``bench/long_run.py segment`` fills: the segments'
Lightning CSV logs (``logs/segment_*.csv``), ``segments.json`` and the corpus record (``corpus.json``; a subset run
``foundation_v3_train<N>`` trains on the first N training spikes of the same corpus and validates on the same
validation split). The metric is ``val/score``: the GMM matched accuracy of the validation embeddings against ground
truth at the true unit count, per validation recording (``deepspike/model/module.py``), the one that selects
checkpoints. Left: the metric against steps (top axis: windows seen), segment ends (grey) and passes over the
training corpus (dotted); right: the same against windows seen per training window (passes): if a smaller corpus
falls behind at equal steps, more data helps; if the long run still rises, more steps help.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "checkpoints" / "runs"
BATCH = 1024  # conf/experiment/foundation_v2.yaml data.batch_size (the v3 run's too)


def _rows(files: list[Path]) -> dict[str, dict[int, float]]:
    """Column -> {optimizer step: value} over the segments' logs (a later segment's value for a step wins).

    Lightning's logger step (the CSV's ``step``) is not the optimizer step: it trails it by one in a fresh run and
    by one more after each resume (its batch counter is saved before the step that wrote the checkpoint counts), so
    each file's offset is read from its training rows, which log ``trainer/global_step`` (steps done after the
    row's step) beside the logger step, and applied to every row of that file.
    """
    out: dict[str, dict[int, float]] = {}
    for f in files:
        with open(f) as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("step") not in (None, "")]
        offsets = sorted(round(float(r["trainer/global_step"])) - int(float(r["step"]))
                         for r in rows if r.get("trainer/global_step") not in (None, ""))  # fmt: skip
        offset = offsets[len(offsets) // 2] if offsets else 1
        for r in rows:
            step = int(float(r["step"])) + offset
            for k, v in r.items():
                if k in ("step", "epoch") or v in (None, ""):
                    continue
                out.setdefault(k, {})[step] = float(v)
    return out


def _train_spikes(run: Path) -> int | None:
    m = re.search(r"_train(\d+)$", run.name)
    if m:
        sub = ROOT / "data" / "corpora" / "broad_v3" / f"manifest_train{m.group(1)}.json"
        if sub.exists():
            return int(json.loads(sub.read_text())["splits"]["train"]["num_spikes"])
        return int(m.group(1))
    rec = run / "corpus.json"
    return int(json.loads(rec.read_text())["splits"]["train"]["num_spikes"]) if rec.exists() else None


def collect(runs_dir: Path = RUNS) -> list[dict]:
    runs = []
    for run in sorted(runs_dir.glob("foundation_v3*")):
        logs = sorted((run / "logs").glob("segment_*.csv"))
        if not logs:
            continue
        cols = _rows(logs)
        n = _train_spikes(run)
        val = sorted(cols.get("val/score", {}).items())
        recon = cols.get("val/recon", {})
        loss = sorted(cols.get("train/loss", {}).items())
        segs = json.loads((run / "segments.json").read_text()) if (run / "segments.json").exists() else []
        runs.append({
            "run": run.name, "train_spikes": n,
            "validation": [{"step": s, "windows_seen": s * BATCH, "passes": (s * BATCH / n) if n else None,
                            "val_score": v, "val_recon": recon.get(s)} for s, v in val],
            "train_loss": [[s, v] for s, v in loss[:: max(1, len(loss) // 400)]],
            "segments": [{k: g.get(k) for k in ("segment", "start_step", "end_step", "wall_s")} for g in segs],
        })  # fmt: skip
    return runs


REFS = ROOT / "bench" / "results" / "training_curve_references.json"
REFERENCES = {  # the same validation windows through fixed features (horizontal lines on the figure)
    "PCA (3 per recording)": None,
    "deepspike_foundation_v2": "checkpoints/deepspike_foundation_v2.safetensors",
    "deepspike_synth_v1": "checkpoints/deepspike_synth_v1.safetensors",
}


def references(corpus: str = "data/corpora/broad_v3", batches: int = 120, max_spikes: int = 3000) -> dict:
    """``val/score`` of fixed features on the windows the run validates on: the first ``batches`` validation batches
    of 1024 (``trainer.limit_val_batches``, ``data.val_batch_size``), GMM at the true unit count per recording with
    the module's seed and subsample (``deepspike.model.collapse.gmm_scores``), averaged over recordings."""
    import numpy as np
    from sklearn.decomposition import PCA

    from deepspike.data.loader import make_loader
    from deepspike.model.collapse import gmm_scores
    from deepspike.model.export import load_encoder

    loader = make_loader(corpus, split="val", batch_size=1024, shuffle=False, seed=3, num_workers=0,
                         return_labels=True, drop_last=False)  # fmt: skip
    waves, labels, recs = [], [], []
    for i, b in enumerate(loader):
        if i >= batches:
            break
        waves.append(np.asarray(b["wave"], dtype=np.float32))
        labels.append(np.asarray(b["label"]))
        recs.append(np.asarray(b["rec"]))
    w, lab, rec = np.concatenate(waves), np.concatenate(labels), np.concatenate(recs)
    out = {"windows": len(w), "recordings": len(np.unique(rec))}
    for name, path in REFERENCES.items():
        emb = w if path is None else load_encoder(ROOT / path).embed(w)
        accs = []
        for r in np.unique(rec):
            x = emb[rec == r]
            if path is None:
                x = PCA(3, random_state=0).fit_transform(x)
            a, _ = gmm_scores(x, lab[rec == r], seed=0, max_spikes=max_spikes)
            if a == a:
                accs.append(a)
        out[name] = float(np.mean(accs))
        print(f"{name}: {out[name]:.3f} on {len(accs)} validation recordings")
    REFS.write_text(json.dumps(out, indent=1) + "\n")
    return out


def plot(runs: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6))
    for i, r in enumerate(sorted(runs, key=lambda r: -(r["train_spikes"] or 0))):
        pts = r["validation"]
        if not pts:
            continue
        n = r["train_spikes"]
        label = f"{r['run']}: {n / 1e6:.2f} M training windows" if n else r["run"]
        color = f"C{i}"
        ax.plot([p["step"] for p in pts], [p["val_score"] for p in pts], "o-", ms=3, color=color, label=label)
        if n:
            bx.plot([p["passes"] for p in pts], [p["val_score"] for p in pts], "o-", ms=3, color=color, label=label)
        for g in r["segments"][:-1] if i == 0 else []:
            ax.axvline(g["end_step"], color="0.6", lw=0.8)
        if i == 0 and n:
            last = max(p["step"] for p in pts)
            for k in range(1, int(last * BATCH / n) + 1):
                ax.axvline(k * n / BATCH, color=color, ls=":", lw=0.6)
    refs = json.loads(REFS.read_text()) if REFS.exists() else {}
    for j, name in enumerate(REFERENCES):
        if name in refs:
            for a in (ax, bx):
                a.axhline(refs[name], color=f"C{j + 5}", ls="--", lw=0.9, label=f"{name}: {refs[name]:.3f}")
    ax.set_xlabel("optimizer step (batch 1024)")
    ax.set_ylabel("val/score (GMM accuracy vs ground truth)")
    fig.suptitle("val/score vs steps (grey: segment ends; dotted: passes over the largest corpus) and vs passes",
                 fontsize=10)  # fmt: skip
    top = ax.secondary_xaxis("top", functions=(lambda s: s * BATCH / 1e6, lambda w: w * 1e6 / BATCH))
    top.set_xlabel("windows seen (M)")
    ax.legend(fontsize=8, loc="lower right")
    bx.set_xscale("log")
    bx.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    bx.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    bx.set_xlabel("passes over the training corpus (windows seen / corpus size)")
    bx.set_title("metric vs data reuse (curves: corpus sizes)", fontsize=9)
    bx.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "training_curve.png"))
    ap.add_argument("--references", action="store_true", help="first score PCA and the shipped encoders (~1 min)")
    a = ap.parse_args()
    if a.references:
        references()
    runs = collect()
    out = Path(a.out)
    plot(runs, out)
    summary = []
    for r in runs:
        v = r["validation"]
        summary.append({
            "run": r["run"], "train_spikes": r["train_spikes"],
            "steps": max((g["end_step"] for g in r["segments"]), default=None),
            "first": v[0] if v else None, "last": v[-1] if v else None,
            "best": max(v, key=lambda p: p["val_score"]) if v else None,
        })  # fmt: skip
    refs = json.loads(REFS.read_text()) if REFS.exists() else None
    doc = {"metric": "val/score", "batch": BATCH, "references": refs, "summary": summary, "runs": runs}
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1) + "\n")
    for s in summary:
        f, la = s["first"], s["last"]
        if f and la:
            print(f"{s['run']}: step {f['step']} {f['val_score']:.3f} -> step {la['step']} {la['val_score']:.3f}")
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
