"""Benchmark: motion (drift) correction presets on generated drifting probe recordings (issue 24).

    python bench/motion.py --set dev                # choose the preset: dev seeds 101, 102 (64 ch, 60 s, 20 units)
    python bench/motion.py --set report             # before / after on seed 7 (128 ch, 120 s, 30 units, +-25 um)
    python bench/motion.py --set nonrigid           # seed 8 (128 ch, 60 s, 30 units; drift x0.2 to x1 with depth)
    python bench/motion.py --seeds 7 --channels 128 --duration 120 --units 30 --runs off,dredge_fast,static

Each recording is ``deepspike.recording.synthetic.generate_drifting_probe_recording`` (SpikeInterface's drifting
generator on a Neuropixels-1.0-like 4-column shank, rigid zigzag of +-``--drift`` um unless ``--gradient``); each
run sorts it with the bundled encoder and the defaults, except ``motion``: ``off`` (motion.enabled=false), a preset
name (motion.enabled=true, motion.preset=NAME), ``static`` (the same spikes without drift, motion off) or
``static-NAME`` (the same spikes without drift, corrected with preset NAME: what correction costs where there is
no drift). Figures:
accuracy (mean over GT units), units found, redundant and false-positive units
(``compare_with_categories``), wall time of the sort and of its motion stage, and the estimate's error against the
generator's drift (RMS um after removing the mean offset, over the units' own displacements). Written to
bench/results/motion_<set>_seeds<seeds>.json. SpikeInterface 0.105.3's ``dredge`` preset fails
(``batching_mode="offline"`` is refused by its own check), so it is not among the runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

SETS = {
    "dev": {"seeds": [101, 102], "channels": 64, "duration": 60.0, "units": 20, "drift": 25.0, "gradient": None,
            "runs": ["off", "dredge_fast", "rigid_fast", "nonrigid_fast_and_accurate", "kilosort_like"]},
    "report": {"seeds": [7], "channels": 128, "duration": 120.0, "units": 30, "drift": 25.0, "gradient": None,
               "runs": ["static", "static-dredge_fast", "off", "dredge_fast"]},
    "nonrigid": {"seeds": [8], "channels": 128, "duration": 60.0, "units": 30, "drift": 25.0, "gradient": 0.2,
                 "runs": ["static", "off", "dredge_fast"]},
}  # fmt: skip


def motion_error_um(motion: Any, drift: Any) -> float:
    """RMS error (um) over all GT units of the estimated displacement at their depths (``motion_errors_um``)."""
    from deepspike.sorting.motion import motion_errors_um

    err = motion_errors_um(motion, drift.times_s, drift.displacement_um, drift.unit_depth_um)
    return float(np.sqrt(np.mean(np.square(err))))


def one_run(name: str, static: Any, drifting: Any, gt: Any, drift: Any) -> dict[str, Any]:
    from deepspike import sort
    from deepspike.evaluation.compare import compare_with_categories

    preset = name.removeprefix("static-")
    motion = {"enabled": False} if preset in ("off", "static") else {"enabled": True, "preset": preset}
    t0 = time.perf_counter()
    sorting = sort(static if name.startswith("static") else drifting, motion=motion)
    wall = time.perf_counter() - t0
    metrics, cats = compare_with_categories(sorting, gt)
    result = sorting.deepspike
    row = {"accuracy": round(float(metrics["accuracy"].mean()), 3), "units": len(sorting.unit_ids),
           "redundant": int(cats["num_redundant"]), "false_positive": int(cats["num_false_positive"]),
           "wall_s": round(wall, 1), "motion_s": round(result.timings.get("motion", 0.0), 1)}  # fmt: skip
    row["stages_s"] = {k: round(v, 1) for k, v in result.timings.items()}
    if result.motion is not None:
        row["motion_rms_error_um"] = round(motion_error_um(result.motion, drift), 2)
    print(name, row, flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", choices=sorted(SETS), default="dev")
    for key in ("seeds", "channels", "duration", "units", "drift", "gradient", "runs"):
        ap.add_argument(f"--{key}", default=None, help=f"override the set's {key}")
    args = ap.parse_args(argv)
    conf = dict(SETS[args.set])
    for key, cast in (("channels", int), ("duration", float), ("units", int), ("drift", float), ("gradient", float)):
        if getattr(args, key) is not None:
            conf[key] = cast(getattr(args, key))
    if args.seeds is not None:
        conf["seeds"] = [int(s) for s in args.seeds.split(",")]
    if args.runs is not None:
        conf["runs"] = args.runs.split(",")
    from deepspike.recording.synthetic import generate_drifting_probe_recording

    figures: dict[str, Any] = {"command": " ".join(["python bench/motion.py", *(argv or sys.argv[1:])]), **conf}
    for seed in conf["seeds"]:
        static, drifting, gt, drift = generate_drifting_probe_recording(
            seed, conf["duration"], conf["channels"], conf["units"], conf["drift"],
            non_rigid_gradient=conf["gradient"],
        )  # fmt: skip
        for name in conf["runs"]:
            figures[f"seed{seed}_{name}"] = one_run(name, static, drifting, gt, drift)
    for name in conf["runs"]:
        rows = [figures[f"seed{s}_{name}"] for s in conf["seeds"]]
        figures[f"mean_{name}"] = {
            k: round(float(np.mean([r[k] for r in rows])), 3) for k in rows[0] if k != "stages_s"
        }
    write_results(f"motion_{args.set}_seeds{'_'.join(str(s) for s in conf['seeds'])}", figures)


if __name__ == "__main__":
    main()
