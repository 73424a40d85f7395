"""Benchmark: motion options and merge rules on a bench set's drift recordings, with per-unit motion error (issue 24).

    deepspike-bench make_set=true out=data/generated/dev5001 set.seed=5001 'set.select=[drift]'
    python bench/nonrigid.py data/generated/dev5001 --runs '{"default": {}, "w100s200": {"motion":
        {"win_step_um": 100, "win_scale_um": 200}}}'
    python bench/nonrigid.py data/generated/dev0 --names tetrode_00,shank_00 --runs '{"default": {}}'

Each run sorts every recording of the set (or ``--names``) with the defaults plus that run's sort options (as
``sort(**options)``) and scores it against NAME.gt/ (SpikeInterface's comparison, exhaustive GT): accuracy (mean over
GT units), units, redundant and false-positive units, wall time. On a drift recording (bench_set.json names its motion)
the true drift is recomputed from the set's seed (SpikeInterface's generator with the same arguments as
``generate_drifting_pair``, traces never computed), and the estimate's RMS error at each GT unit's depth (mean over
time removed, as bench/motion.py) is given as its mean over units and per unit. Written to
bench/results/nonrigid_<set folder>.json. The dev seeds are 5001 and 5002; never the report draw's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results


def true_drift(made: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times s, displacement um [T, units], unit depths um) of a bench_set.json drift recording."""
    from spikeinterface.generation import generate_drifting_recording

    from deepspike.recording.synthetic import make_probe

    motion = {"drift_mode": "zigzag", "t_start_drift": 0.0, "non_rigid_gradient": None, **made["motion"]}
    displacement = {
        "displacement_sampling_frequency": 5.0, "drift_start_um": [0.0, made["drift_um"]],
        "drift_stop_um": [0.0, -made["drift_um"]], "drift_step_um": 1.0, "motion_list": [motion],
    }  # fmt: skip
    _, _, _, info = generate_drifting_recording(
        num_units=made["num_units"], duration=made["duration_s"], sampling_frequency=made["sampling_frequency"],
        probe=make_probe("neuropixels", made["num_channels"]), generate_displacement_vector_kwargs=displacement,
        extra_outputs=True, seed=made["seed"],
    )  # fmt: skip
    disp = np.asarray(info["unit_displacements"], dtype=np.float64)[..., 1]
    return np.arange(len(disp)) / 5.0, disp, np.asarray(info["unit_locations"])[:, 1]


def one_run(path: Path, options: dict[str, Any], drift: Any) -> dict[str, Any]:
    import spikeinterface.comparison as scmp
    import spikeinterface.core as sc

    from deepspike.sorting.motion import motion_errors_um
    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    t0 = time.perf_counter()
    result = run_sort(str(path), params=SortParams.from_options(options))
    wall = time.perf_counter() - t0
    cmp = scmp.compare_sorter_to_ground_truth(sc.load(f"{path}.gt"), result.sorting, exhaustive_gt=True)
    acc = cmp.get_performance()["accuracy"].astype(float)
    row = {"accuracy": round(float(acc.mean()), 4), "units": len(result.sorting.unit_ids),
           "redundant": int(cmp.count_redundant_units()), "false_positive": int(cmp.count_false_positive_units()),
           "wall_s": round(wall, 1), "per_unit_accuracy": [round(float(a), 2) for a in acc]}  # fmt: skip
    if result.motion is not None:
        row["depth_windows_um"] = [round(float(b)) for b in result.motion.spatial_bins_um]
        if drift is not None:
            err = motion_errors_um(result.motion, *drift)  # drift: (times s, displacement um, depths um)
            row["motion_rms_error_um"] = round(float(err.mean()), 2)
            row["per_unit_motion_error_um"] = [round(float(e), 1) for e in err]
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("set_dir", type=Path, help="a deepspike-bench make_set output folder (bench_set.json)")
    ap.add_argument("--names", default=None, help="comma-separated recordings (default: all of the set)")
    ap.add_argument("--runs", default='{"default": {}}', help="JSON: {run name: sort options}")
    args = ap.parse_args(argv)
    made = json.loads((args.set_dir / "bench_set.json").read_text())["recordings"]
    names = args.names.split(",") if args.names else sorted(made)
    runs = json.loads(args.runs)
    figures: dict[str, Any] = {"command": " ".join(["python bench/nonrigid.py", *(argv or sys.argv[1:])])}
    for name in names:
        drift = true_drift(made[name]) if "motion" in made[name] and "twin_of" not in made[name] else None
        if drift is not None:
            figures[f"{name}_unit_depths_um"] = [round(float(d)) for d in drift[2]]
        for run, options in runs.items():
            figures[f"{name}_{run}"] = row = one_run(args.set_dir / name, options, drift)
            print(name, run, {k: v for k, v in row.items() if not k.startswith("per_unit")}, flush=True)
    for run in runs:
        figures[f"mean_{run}"] = round(float(np.mean([figures[f"{n}_{run}"]["accuracy"] for n in names])), 4)
    write_results(f"nonrigid_{args.set_dir.name}", figures)


if __name__ == "__main__":
    main()
