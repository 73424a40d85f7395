"""Benchmark: the thread defaults of the three CPU entry points, on an idle machine and on a loaded one.

    python bench/threads.py                  # -> bench/results/threads.json
    python bench/threads.py --only finetune  # one entry point (finetune, train, sort)

Each entry point runs in a fresh process with each thread setting, first with the machine idle, then with one
busy-looping Python process per core beside it (what a shared lab machine or a second job looks like to torch's
spin-waiting threads):

- fine-tuning: ``deepspike.sort(rec, finetune=True)`` on a generated 32-channel, 60 s, 10-unit recording (issue 23's
  case), ``finetune_options.threads`` 1 vs null (torch's default, one per core); the figure is the fine-tuning stage;
- training: ``python train.py`` on the demo corpus (``make demo`` builds it; 400 steps), ``cpu_threads`` 1 vs null;
- sorting: the same recording, no fine-tuning, ``n_jobs`` 1 vs -1 (all cores).

The defaults in ``conf/`` cite these figures. Wall times compare only within one run of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

REPO = Path(__file__).resolve().parents[1]

SORT_SNIPPET = """
import json, sys, time
from spikeinterface.core import generate_ground_truth_recording
import deepspike
rec, gt = generate_ground_truth_recording(durations=[60.0], num_channels=32, num_units=10, seed=1)
opts = json.loads(sys.argv[1])
t = time.perf_counter()
s = deepspike.sort(rec, **opts)
print(json.dumps({"wall_s": time.perf_counter() - t, "timings": s.deepspike.timings}))
"""


@contextmanager
def load(busy: int) -> Iterator[None]:
    """``busy`` processes spinning on a core each, for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(1.0 if busy else 0.0)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def run_sort(options: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", SORT_SNIPPET, json.dumps(options)], capture_output=True, text=True, check=True, cwd=REPO
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def finetune(threads: int | None) -> float:
    r = run_sort({"finetune": True, "finetune_options": {"threads": threads}})
    return round(r["timings"]["finetune"], 2)


def sort(n_jobs: int) -> float:
    return round(run_sort({"n_jobs": n_jobs})["wall_s"], 2)


def train(threads: int | None, tmp: Path) -> float:
    value = "null" if threads is None else str(threads)
    cmd = [
        sys.executable, "train.py", f"cpu_threads={value}", "logger=none", "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp / value}", "export.enabled=false",
    ]  # fmt: skip
    t = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return round(time.perf_counter() - t, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("finetune", "train", "sort"), nargs="*", default=None)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    tmp = REPO / "outputs" / "bench_threads"
    cases = {
        "finetune": ("finetune_options.threads", (1, None), finetune),
        "train": ("cpu_threads", (1, None), lambda t: train(t, tmp)),
        "sort": ("n_jobs", (1, -1), sort),
    }
    figures: dict[str, Any] = {"cores": cores, "loaded_by": f"{cores} busy-looping processes", "seconds": {}}
    for name, (key, values, fn) in cases.items():
        if args.only and name not in args.only:
            continue
        rows = {}
        for state, busy in (("idle", 0), ("loaded", cores)):
            with load(busy):
                rows[state] = {str(v): fn(v) for v in values}
            print(f"{name} ({key}) {state}: " + ", ".join(f"{v}: {s} s" for v, s in rows[state].items()), flush=True)
        figures["seconds"][name] = {"key": key, **rows}
    write_results("threads", figures)


if __name__ == "__main__":
    main()
