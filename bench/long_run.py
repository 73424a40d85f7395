"""A long training run in segments across sessions (issue 25, item 3): ``experiment=foundation_v3``.

Every session (a fresh machine has only what git holds):

    python bench/long_run.py corpus                   # rebuild the corpus (or reuse it) and check its content hash
    nice -n 19 python bench/long_run.py segment --minutes 60   # resume, train 60 min, copy the state into git
    git add checkpoints/runs/foundation_v3 bench/results/training_curve.* && git commit -m "foundation_v3 segment N"

``corpus`` runs ``deepspike-corpus`` with the run's recipe (``CORPUS`` below: seeded, so a rebuild is the same
corpus) and compares ``deepspike.provenance.corpus_content_sha256`` of its manifest with the one the first segment
recorded in ``checkpoints/runs/foundation_v3/corpus.json`` (a mismatch stops the run: resuming on other data would
not continue the same run). The recordings go to a fixed absolute folder because recording ids hash their path.

``segment`` trains ``python train.py experiment=foundation_v3`` from ``RUN/last.ckpt`` (if any) with
``callbacks.time_budget.seconds`` (a clean stop at a step boundary; ``last.ckpt`` holds that step, and the resume is
exact: ``tests/test_long_run.py``), then copies ``last.ckpt`` and the segment's ``metrics.csv`` into ``RUN`` (atomic
copies), appends the segment to ``RUN/segments.json`` and redraws ``bench/training_curve.py``'s figure. A segment
killed before its budget leaves ``RUN`` at the previous segment (its own ``last.ckpt`` is in its run directory:
``--resume-from`` takes it).

``subset --spikes N``: a manifest of the corpus's first training recordings holding N training spikes (all of the
validation split kept), ``data/corpora/broad_v3/manifest_train<N>.json``, for runs on a smaller corpus
(``--corpus-spikes N`` on ``segment``, its own RUN folder) that ``bench/training_curve.py`` draws beside the long run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deepspike.provenance import corpus_content_sha256, git_commit  # noqa: E402

EXPERIMENT = "foundation_v3"
CORPUS_DIR = "data/corpora/broad_v3"
RECORDINGS = "/var/tmp/deepspike/foundation_v3/recordings"  # absolute: recording ids hash the path
CORPUS = [  # deepspike-corpus overrides: 1,000 broad recordings of 60 s from seed 3 (about 4 M spikes)
    "synthetic=broad", "synthetic.n=1000", "synthetic.seed=3", f"synthetic.dir={RECORDINGS}", f"out={CORPUS_DIR}",
    "seed=0", "val_fraction=0.1", "progress=false",
]  # fmt: skip
RUN = ROOT / "checkpoints" / "runs" / EXPERIMENT


def _manifest(path: Path | None = None) -> dict:
    return json.loads((path or ROOT / CORPUS_DIR / "manifest.json").read_text())


def corpus(workers: int = 1, build: bool = True) -> dict:
    """Build (or reuse) the corpus and check it is the run's; return the corpus record."""
    if build and not (ROOT / CORPUS_DIR / "manifest.json").exists():  # a finished corpus is only checked
        exe = Path(sys.executable).with_name("deepspike-corpus")
        cmd = [str(exe) if exe.exists() else "deepspike-corpus", *CORPUS, f"workers={workers}"]
        subprocess.run(cmd, cwd=ROOT, check=True)
    m = _manifest()
    rec = {
        "command": "deepspike-corpus " + " ".join(CORPUS),
        "content_sha256": corpus_content_sha256(m),
        "num_spikes": m["num_spikes"],
        "splits": m["splits"],
        "num_shards": len(m["shards"]),
    }
    ref = RUN / "corpus.json"
    if ref.exists():
        want = json.loads(ref.read_text())
        if want["content_sha256"] != rec["content_sha256"]:
            raise SystemExit(
                f"corpus {CORPUS_DIR}: content sha256 {rec['content_sha256']} is not the run's "
                f"{want['content_sha256']} ({ref}); rebuild it (delete {CORPUS_DIR} and {RECORDINGS}) with the "
                "same tool version, or start a new run"
            )
        print(f"corpus {CORPUS_DIR}: the run's corpus ({rec['num_spikes']} spikes, content sha256 "
              f"{rec['content_sha256'][:16]}...)")  # fmt: skip
    else:
        RUN.mkdir(parents=True, exist_ok=True)
        ref.write_text(json.dumps(rec, indent=1) + "\n")
        print(f"corpus {CORPUS_DIR}: recorded as the run's corpus in {ref}")
    return rec


def subset(spikes: int) -> Path:
    """A manifest of the first training recordings (manifest order) holding at least ``spikes`` training spikes."""
    m = _manifest()
    keep, n = set(), 0
    for r in m["recordings"]:
        if r["split"] == "train" and n < spikes:
            keep.add(r["id"])
            n += r["num_spikes"]
        elif r["split"] == "val":
            keep.add(r["id"])
    shards = [s for s in m["shards"] if s["recording"] in keep]
    recs = [r for r in m["recordings"] if r["id"] in keep]
    splits = {
        name: {"num_spikes": sum(s["num_spikes"] for s in shards if s["split"] == name),
               "num_shards": sum(s["split"] == name for s in shards),
               "num_recordings": sum(r["split"] == name for r in recs)}
        for name in ("train", "val")
    }  # fmt: skip
    total = sum(s["num_spikes"] for s in shards)
    sub = m | {"shards": shards, "recordings": recs, "splits": splits, "num_spikes": total,
               "subset_of": corpus_content_sha256(m)}  # fmt: skip
    out = ROOT / CORPUS_DIR / f"manifest_train{spikes}.json"
    out.write_text(json.dumps(sub) + "\n")
    tr = splits["train"]
    print(f"{out.relative_to(ROOT)}: {tr['num_spikes']} training spikes in {tr['num_recordings']} recordings")
    return out


def _copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _step(ckpt: Path) -> int:
    import torch

    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def segment(minutes: float, extra: list[str], corpus_spikes: int | None, resume_from: str | None) -> None:
    run = RUN if corpus_spikes is None else RUN.with_name(f"{EXPERIMENT}_train{corpus_spikes}")
    run.mkdir(parents=True, exist_ok=True)
    corpus(build=False)  # the run's corpus, or stop
    log = run / "segments.json"
    segments = json.loads(log.read_text()) if log.exists() else []
    k = len(segments) + 1
    last = Path(resume_from) if resume_from else run / "last.ckpt"
    start_step = _step(last) if last.exists() else 0
    run_dir = ROOT / "runs" / run.name / f"segment_{k:03d}"
    over = [f"experiment={EXPERIMENT}", f"hydra.run.dir={run_dir}", f"callbacks.time_budget.seconds={minutes * 60:.0f}"]
    if corpus_spikes is not None:
        over.append(f"data.shards={subset(corpus_spikes)}")
    if last.exists():
        over.append(f"ckpt_path={last}")
    t0 = time.time()
    subprocess.run([sys.executable, str(ROOT / "train.py"), *over, *extra], cwd=ROOT, check=True)
    wall = time.time() - t0
    end = run_dir / "checkpoints" / "last.ckpt"
    _copy(end, run / "last.ckpt")
    (run / "logs").mkdir(exist_ok=True)
    _copy(run_dir / "csv" / "metrics.csv", run / "logs" / f"segment_{k:03d}.csv")
    end_step = _step(run / "last.ckpt")
    segments.append({
        "segment": k, "start_step": start_step, "end_step": end_step, "wall_s": round(wall, 1),
        "budget_s": round(minutes * 60), "git_commit": git_commit(), "overrides": extra,
        "corpus": str(Path(CORPUS_DIR) / (f"manifest_train{corpus_spikes}.json" if corpus_spikes else "")),
        "checkpoint_bytes": (run / "last.ckpt").stat().st_size,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })  # fmt: skip
    log.write_text(json.dumps(segments, indent=1) + "\n")
    print(f"segment {k}: steps {start_step} -> {end_step} in {wall / 60:.1f} min; state in {run.relative_to(ROOT)}")
    subprocess.run([sys.executable, str(ROOT / "bench" / "training_curve.py")], cwd=ROOT, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus", help="build or reuse the corpus and check its content sha256")
    c.add_argument("--workers", type=int, default=1)
    s = sub.add_parser("segment", help="resume, train for --minutes, copy the state into checkpoints/runs/")
    s.add_argument("--minutes", type=float, required=True, help="wall-clock training budget of this segment")
    s.add_argument("--corpus-spikes", type=int, default=None, help="train on a prefix subset of the corpus")
    s.add_argument("--resume-from", default=None, help="another last.ckpt (e.g. a killed segment's own)")
    s.add_argument("overrides", nargs="*", help="extra train.py overrides (e.g. cpu_threads=1)")
    b = sub.add_parser("subset", help="write a manifest of the first N training spikes")
    b.add_argument("--spikes", type=int, required=True)
    a = ap.parse_args()
    if a.cmd == "corpus":
        corpus(a.workers)
    elif a.cmd == "subset":
        subset(a.spikes)
    else:
        segment(a.minutes, a.overrides, a.corpus_spikes, a.resume_from)


if __name__ == "__main__":
    main()
