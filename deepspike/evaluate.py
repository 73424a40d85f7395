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


def compare_labels(
    gt_labels: np.ndarray, labels: np.ndarray, data_file: str = "", sorter_name: str = "deepspike"
) -> pd.DataFrame:
    """Scores of a clustering of pre-cut snippets (no spike times) against their ground-truth labels, in the
    columns of :func:`compare_to_ground_truth`: one row per GT unit, units matched one-to-one (Hungarian on
    accuracy = tp / (n_gt + n_unit - tp), SpikeInterface's definition). Label ``-1`` = unassigned (a miss).
    """
    from scipy.optimize import linear_sum_assignment

    gt, lab = np.asarray(gt_labels), np.asarray(labels)
    if gt.shape != lab.shape:
        raise DeepSpikeError(f"ground truth has {gt.shape} labels but the clustering {lab.shape}; they must match")
    units = np.unique(gt)
    clusters = np.unique(lab[lab >= 0])
    tp = np.array([[np.sum((gt == u) & (lab == c)) for c in clusters] for u in units], dtype=np.float64)
    n_gt = np.array([np.sum(gt == u) for u in units], dtype=np.float64)
    n_cl = np.array([np.sum(lab == c) for c in clusters], dtype=np.float64)
    acc = tp / (n_gt[:, None] + n_cl[None, :] - tp) if clusters.size else np.zeros((len(units), 0))
    hit = np.zeros(len(units))
    found = np.zeros(len(units))
    rows, cols = linear_sum_assignment(-acc) if clusters.size else (np.array([], int), np.array([], int))
    hit[rows], found[rows] = tp[rows, cols], n_cl[cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(found > 0, hit / found, 0.0)
    recall = hit / n_gt
    out = pd.DataFrame(
        {
            "data_file": data_file,
            "sorter_name": sorter_name,
            "accuracy": hit / (n_gt + found - hit),
            "recall": recall,
            "precision": precision,
            "false_discovery_rate": np.where(found > 0, 1.0 - precision, np.nan),
            "miss_rate": 1.0 - recall,
            "tolerance_ms": np.nan,
            "gt_unit": [str(u) for u in units],
        }
    )
    return out[COLUMNS]
