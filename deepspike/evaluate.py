"""Ground-truth comparison: SpikeInterface's matching, reported in the published tables' columns."""

from __future__ import annotations

import numpy as np
import pandas as pd

from deepspike.errors import DeepSpikeError

METRIC_COLUMNS = ["accuracy", "recall", "precision", "false_discovery_rate", "miss_rate"]
COLUMNS = ["data_file", "sorter_name", *METRIC_COLUMNS, "tolerance_ms", "gt_unit"]


def compare_to_ground_truth(
    sorting, gt_sorting, delta_time_ms: float = 0.4, data_file: str = "", sorter_name: str = "deepspike"
) -> pd.DataFrame:
    """One row per ground-truth unit (``compare_sorter_to_ground_truth``, Hungarian matching within ``delta_time_ms``).

    A GT unit with no matched unit scores 0 accuracy/recall/precision (SpikeInterface's convention); a sorting
    with no unit at all gets the same rows instead of an error.
    """
    if delta_time_ms <= 0:
        raise DeepSpikeError(f"delta_time_ms must be > 0 (matching tolerance in ms), got {delta_time_ms}")
    fs, gt_fs = float(sorting.get_sampling_frequency()), float(gt_sorting.get_sampling_frequency())
    if abs(fs - gt_fs) > 1e-6 * fs:
        raise DeepSpikeError(
            f"ground truth is at {gt_fs} Hz but the sorting at {fs} Hz; load the ground truth with the recording's rate"
        )
    gt_ids = list(gt_sorting.unit_ids)
    if len(sorting.unit_ids) == 0 or len(gt_ids) == 0:
        perf = pd.DataFrame(0.0, index=gt_ids, columns=METRIC_COLUMNS)
        perf["false_discovery_rate"] = np.nan
        perf["miss_rate"] = 1.0
    else:
        from spikeinterface.comparison import compare_sorter_to_ground_truth

        cmp = compare_sorter_to_ground_truth(
            gt_sorting, sorting, gt_name="ground_truth", tested_name=sorter_name, delta_time=delta_time_ms
        )
        perf = cmp.get_performance(method="by_unit").astype(float)
    rows = pd.DataFrame(
        {
            "data_file": data_file,
            "sorter_name": sorter_name,
            **{c: perf[c].to_numpy(dtype=float) for c in METRIC_COLUMNS},
            "tolerance_ms": float(delta_time_ms),
            "gt_unit": [str(u) for u in perf.index],
        }
    )
    return rows[COLUMNS]
