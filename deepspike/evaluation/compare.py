"""Ground-truth comparison: SpikeInterface's matching, reported in the published tables' columns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from deepspike.errors import DeepSpikeError

METRIC_COLUMNS = ["accuracy", "recall", "precision", "false_discovery_rate", "miss_rate"]
COLUMNS = ["data_file", "sorter_name", *METRIC_COLUMNS, "tolerance_ms", "gt_unit"]


UNIT_CATEGORIES = ("num_redundant", "num_false_positive")


def compare_to_ground_truth(
    sorting, gt_sorting, delta_time_ms: float = 0.4, data_file: str = "", sorter_name: str = "deepspike"
) -> pd.DataFrame:
    """One row per ground-truth unit (``compare_sorter_to_ground_truth``, Hungarian matching within ``delta_time_ms``).

    A GT unit with no matched unit scores 0 accuracy/recall/precision (SpikeInterface's convention); a sorting
    with no unit at all gets the same rows instead of an error.
    """
    return compare_with_categories(sorting, gt_sorting, delta_time_ms, data_file, sorter_name)[0][COLUMNS]


def compare_with_categories(
    sorting, gt_sorting, delta_time_ms: float = 0.4, data_file: str = "", sorter_name: str = "deepspike"
) -> tuple[pd.DataFrame, dict[str, int]]:
    """:func:`compare_to_ground_truth`'s rows plus SpikeInterface's unit categories of the sorting, from one matching.

    Besides :data:`COLUMNS`, each row has ``matched_unit``: the sorted unit the Hungarian matching pairs with that
    ground-truth unit (``None``: none).

    ``num_redundant``: found units that match an already matched GT unit well (agreement >= 0.2), i.e. neurons
    split into several units; ``num_false_positive``: found units matching no GT unit. Both assume the ground
    truth lists every neuron (true of generated recordings; a paired recording's one neuron makes every other
    unit a "false positive").
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
        categories = {"num_redundant": 0, "num_false_positive": len(sorting.unit_ids)}
        matched: dict[Any, Any] = {}
    else:
        from spikeinterface.comparison import compare_sorter_to_ground_truth

        cmp = compare_sorter_to_ground_truth(
            gt_sorting, sorting, gt_name="ground_truth", tested_name=sorter_name, delta_time=delta_time_ms,
            exhaustive_gt=True,
        )  # fmt: skip
        perf = cmp.get_performance(method="by_unit").astype(float)
        counts = cmp.count_units_categories()
        categories = {k: int(counts[k]) for k in UNIT_CATEGORIES}
        matched = {g: u for g, u in cmp.hungarian_match_12.items() if u != -1 and u != "-1"}
    rows = pd.DataFrame(
        {
            "data_file": data_file,
            "sorter_name": sorter_name,
            **{c: perf[c].to_numpy(dtype=float) for c in METRIC_COLUMNS},
            "tolerance_ms": float(delta_time_ms),
            "gt_unit": [str(u) for u in perf.index],
            "matched_unit": [matched.get(u) for u in perf.index],
        }
    )
    return rows[[*COLUMNS, "matched_unit"]], categories


def compare_labels(
    gt_labels: np.ndarray, labels: np.ndarray, data_file: str = "", sorter_name: str = "deepspike"
) -> pd.DataFrame:
    """Scores of a clustering of pre-cut snippets (no spike times) against their ground-truth labels, in the
    columns of :func:`compare_to_ground_truth`: one row per GT unit, units matched one-to-one (Hungarian on
    accuracy = tp / (n_gt + n_unit - tp), SpikeInterface's definition). Label ``-1`` = unassigned (a miss).
    """
    gt, lab = np.asarray(gt_labels), np.asarray(labels)
    if gt.shape != lab.shape:
        raise DeepSpikeError(f"ground truth has {gt.shape} labels but the clustering {lab.shape}; they must match")
    units = np.unique(gt)
    clusters = np.unique(lab[lab >= 0])
    tp = contingency(gt, lab, units, clusters)
    n_gt = np.array([np.sum(gt == u) for u in units], dtype=np.float64)
    n_cl = np.array([np.sum(lab == c) for c in clusters], dtype=np.float64)
    acc = tp / (n_gt[:, None] + n_cl[None, :] - tp) if clusters.size else np.zeros((len(units), 0))
    hit = np.zeros(len(units))
    found = np.zeros(len(units))
    rows, cols = match_units(acc)
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


# ------------------------------------------------------------------------ matching and embedding quality
# The one home of Hungarian matching (the embedding-quality scores that use it are in model/collapse.py).


def contingency(gt: np.ndarray, pred: np.ndarray, units: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """``[len(units), len(clusters)]`` counts of spikes with each (ground-truth unit, cluster) pair."""
    gi = np.searchsorted(units, gt)
    ci = np.searchsorted(clusters, pred)
    ok = (gi < len(units)) & (ci < len(clusters))
    ok[ok] &= (units[gi[ok]] == gt[ok]) & (clusters[ci[ok]] == pred[ok])
    table = np.zeros((len(units), len(clusters)), dtype=np.float64)
    np.add.at(table, (gi[ok], ci[ok]), 1.0)
    return table


def match_units(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the one-to-one matching of units to clusters that maximizes the summed ``score``."""
    from scipy.optimize import linear_sum_assignment

    if score.size == 0:
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    return linear_sum_assignment(-score)


def matched_accuracy(labels: np.ndarray, pred: np.ndarray) -> float:
    """Fraction of spikes in clusters matched one-to-one to units (the matching that keeps the most spikes)."""
    labels, pred = np.asarray(labels), np.asarray(pred)
    table = contingency(labels, pred, np.unique(labels), np.unique(pred))
    r, c = match_units(table)
    return float(table[r, c].sum() / max(1, len(labels)))
