"""Benchmark: wall time and peak RSS to sort 60 s and 1 h of one channel at 24 kHz, split by stage.

    python bench/sort.py            # both cases -> bench/results/sort.json
    python bench/sort.py --only 60  # just the 60 s case (quick)

Each recording is generated once (SpikeInterface ground-truth generator, 3 units at 20/25/15 Hz, so about
216k spikes per hour) and saved as a SpikeInterface binary folder under data/generated/bench/; each case then
runs in a fresh process, so peak RSS is that of sorting alone. Stages (as ``run_sort`` times them): load (open
the recording and the encoder), filter (the band-pass cache when the traces fit ``filter_cache_mb``, else ~0:
filtering is then lazy), detect (peaks and windows), encode, cluster, match (template matching), write (all
outputs but plots); bandpass_reads: time spent producing band-passed traces, summed over all stages;
``wall_s_fresh_process_*`` is the whole fresh process (imports included), the figure compared with other
sorters. The encoder is the bundled checkpoint when it exists, else an untrained stand-in of the bundled size
class (MLP, hidden 512), recorded in the JSON. Goals (issue 4): 60 s in < 3 s; 1 h in < 60 s with RSS < 2 GB;
issue 13: RSS < 1 GB for 1 h, fresh-process wall time <= 1/10 of the fastest peer's on 1 h.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "generated" / "bench"
RESULTS = REPO / "bench" / "results" / "sort.json"
CASES = {"60s": 60.0, "1h": 3600.0}


def generate(duration_s: float, folder: Path) -> None:
    """Write the recording folder (and NAME.gt/) unless it is already there."""
    if (folder / "si_folder.json").exists():
        return
    from deepspike.recording.synthetic import templated_recording

    units = [(-160.0, 0.10, 0.15, 0.4), (110.0, 0.20, 0.15, 0.6), (-100.0, 0.28, 0.1, 0.8)]
    rec, gt = templated_recording(units, [20.0, 25.0, 15.0], duration_s, seed=0)
    folder.parent.mkdir(parents=True, exist_ok=True)
    rec.save(folder=folder, chunk_duration="30s", overwrite=True)
    gt.save(folder=folder.parent / f"{folder.name}.gt", overwrite=True)


def encoder_path() -> tuple[Path, str]:
    from deepspike.sorting.features import DEFAULT_CHECKPOINT

    if DEFAULT_CHECKPOINT.exists():
        return DEFAULT_CHECKPOINT, f"bundled {DEFAULT_CHECKPOINT.name}"
    stand_in = DATA / "standin_mlp512.safetensors"
    if not stand_in.exists():
        from deepspike.model.export import export_encoder
        from deepspike.model.nets import build_net

        net = build_net({"kind": "mlp", "in_dim": 20, "hidden": 512, "latent": 8})
        export_encoder(net, stand_in, provenance={"note": "untrained bench stand-in"})
    return stand_in, "untrained stand-in MLP (hidden 512; bundled checkpoint not found)"


def _timed_call(fn, acc: dict):
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc["filter"] += time.perf_counter() - t0

    return wrapper


def run_case(folder: Path) -> dict:
    """Sort ``folder`` in this process, timing stages; returns the figures."""
    import gc

    import sklearn.mixture  # noqa: F401  heavy imports before the clock starts: time sorting, not imports
    import spikeinterface.preprocessing  # noqa: F401
    import torch  # noqa: F401

    import deepspike.recording.preprocess as pre
    from deepspike.evaluation.compare import compare_to_ground_truth
    from deepspike.recording.ground_truth import load_ground_truth
    from deepspike.sorting.outputs import write_outputs
    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    gc.freeze()  # SpikeInterface collects garbage per chunk; slow once torch is imported
    traced = {"filter": 0.0}
    bandpass = pre.bandpass

    def timed_bandpass(*a, **k):
        """The filtered recording, with the time spent producing its traces counted as filter time."""
        rec = bandpass(*a, **k)
        for seg in rec._recording_segments:
            seg.get_traces = _timed_call(seg.get_traces, traced)
        return rec

    pre.bandpass = timed_bandpass
    ckpt, which = encoder_path()
    t0 = time.perf_counter()
    result = run_sort(str(folder), ckpt, SortParams())
    out = DATA / "out" / folder.name
    write_timings = write_outputs(result, out, overwrite=True, plots=False)
    total = time.perf_counter() - t0
    stages = {
        "load": result.timings["load"],
        "filter": result.timings.get("filter", 0.0),  # the band-pass cache (sort.filter_cache_mb); ~0 when lazy
        "detect": result.timings["extract"],  # peaks and windows (lazy: filtering its traces included)
        "encode": result.timings["encode"],
        "cluster": result.timings["cluster"],
        "match": result.timings.get("match", 0.0),  # template matching, its own band-pass pass included
        "write": write_timings["write"],
        "bandpass_reads": traced["filter"],  # time spent producing band-passed traces, over all stages
    }
    gt = load_ground_truth(str(folder), recording=result.recording)
    acc = compare_to_ground_truth(result.sorting, gt)["accuracy"] if gt is not None else None
    return {
        "seconds": total,
        "stages": stages,
        "spikes": len(result.labels),
        "units": len(result.unit_ids),
        "mean_accuracy": None if acc is None else float(acc.mean()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # the largest matching worker (n_jobs processes, forked: pages shared with this one count in both)
        "peak_rss_mb_worker": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "encoder": which,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["60", "1h"], help="run one case only")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this (fresh) process
    args = ap.parse_args()
    if args.case:
        print(json.dumps(run_case(Path(args.case))))
        return
    cases = {"60": ["60s"], "1h": ["1h"]}.get(args.only or "", list(CASES))
    figures = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in cases:
        folder = DATA / f"rec_{name}"
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sys; sys.path.insert(0, {str(REPO)!r}); "
                f"from bench.sort import generate; from pathlib import Path; "
                f"generate({CASES[name]}, Path({str(folder)!r}))",
            ],
            check=True,
            cwd=REPO,
        )
        print(f"{name}: recording ready in {time.perf_counter() - t0:.1f}s ({folder})", flush=True)
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, __file__, "--case", str(folder)], capture_output=True, text=True, env=env, cwd=REPO
        )
        if proc.returncode:
            sys.exit(f"{name} failed:\n{proc.stderr[-4000:]}")
        wall = time.perf_counter() - t0  # the fresh process: imports, sort, outputs, exit
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(
            f"{name}: {r['seconds']:.2f}s, peak RSS {r['peak_rss_mb']:.0f} MB, {r['spikes']} spikes, "
            f"{r['units']} units, accuracy {r['mean_accuracy']}; "
            + ", ".join(f"{k} {v:.2f}s" for k, v in r["stages"].items()),
            flush=True,
        )
        figures[f"seconds_{name}"] = round(r["seconds"], 3)
        figures[f"wall_s_fresh_process_{name}"] = round(wall, 3)
        figures[f"peak_rss_mb_{name}"] = round(r["peak_rss_mb"], 1)
        figures[f"peak_rss_mb_worker_{name}"] = round(r["peak_rss_mb_worker"], 1)
        figures[f"stages_{name}"] = {k: round(v, 3) for k, v in r["stages"].items()}
        figures[f"spikes_{name}"] = r["spikes"]
        figures[f"units_{name}"] = r["units"]
        figures[f"mean_accuracy_{name}"] = r["mean_accuracy"]
        figures["encoder"] = r["encoder"]
    figures["machine"] = f"{os.cpu_count()} CPU cores, no GPU used"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(figures, indent=2) + "\n")
    tmp.replace(RESULTS)
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
