"""Corpus build speed and memory: 1 hour of single-channel 24 kHz recording -> shards.

Goal: under 20 s and under 1.5 GB peak RSS on a 2-core machine. The build runs in a fresh subprocess so its
peak RSS is measured alone (the recording is generated once and cached under bench/.cache/).
Writes bench/results/corpus.json with seconds_per_recording_hour and peak_rss_mb.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, write_results


def make_recording(duration_s: float) -> Path:
    """A cached single-channel 24 kHz ground-truth recording of ``duration_s`` seconds (SI binary folder)."""
    folder = CACHE / f"recording_{int(duration_s)}s_24k"
    if (folder / "si_folder.json").exists() or (folder / "binary.json").exists():
        return folder
    from deepspike.recording.synthetic import generate_recording

    gc.freeze()  # SpikeInterface's save collects garbage per chunk: very slow once torch is imported
    rec, _ = generate_recording(seed=1, duration_s=duration_s, sampling_frequency=24000.0, num_units=3)
    shutil.rmtree(folder, ignore_errors=True)
    rec.save(folder=folder, chunk_duration="60s", n_jobs=1, progress_bar=True)
    return folder


def build_once(recording: Path, out: Path) -> None:
    """The measured work: one corpus build, in this (child) process."""
    from deepspike.data.corpus import CorpusConfig, build_corpus

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    manifest = build_corpus(CorpusConfig.from_cfg({"recordings": [str(recording)], "out": str(out), "progress": False}))
    seconds = time.perf_counter() - t0
    m = json.loads(Path(manifest).read_text())
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "num_spikes": m["num_spikes"], "peak_rss_mb": rss_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration-s", type=float, default=3600.0, help="recording length in seconds")
    ap.add_argument("--child", nargs=2, metavar=("RECORDING", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        build_once(Path(args.child[0]), Path(args.child[1]))
        return
    recording = make_recording(args.duration_s)
    out = CACHE / "corpus_out"
    res = subprocess.run(
        [sys.executable, __file__, "--child", str(recording), str(out)], capture_output=True, text=True, check=True
    )
    fig = json.loads(res.stdout.strip().splitlines()[-1])
    hours = args.duration_s / 3600.0
    bytes_on_disk = sum(p.stat().st_size for p in (out / "shards").glob("*.tar"))
    write_results(
        "corpus",
        {
            "recording_seconds": args.duration_s,
            "num_spikes": fig["num_spikes"],
            "build_seconds": round(fig["seconds"], 2),
            "seconds_per_recording_hour": round(fig["seconds"] / hours, 2),
            "peak_rss_mb": round(fig["peak_rss_mb"], 1),
            "spikes_per_s": round(fig["num_spikes"] / fig["seconds"]),
            "bytes_per_spike": round(bytes_on_disk / max(1, fig["num_spikes"]), 1),
        },
    )


if __name__ == "__main__":
    main()
