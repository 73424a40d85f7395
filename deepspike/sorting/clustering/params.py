"""Clustering options (``ClusterParams``), declared once in ``conf/cluster/*.yaml``, and the method names.

The methods are the files of ``conf/cluster/`` (``common.yaml`` holds the options every method shares); each has
a module of the same name in this package (``methods.py``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from deepspike.defaults import conf_field
from deepspike.errors import DeepSpikeError
from deepspike.paths import CONF_DIR

METHODS = tuple(sorted(p.stem for p in (CONF_DIR / "cluster").glob("*.yaml") if p.stem != "common"))


NOISE = -1


COMMON = "cluster/common.yaml"  # options of every method; a method's own are in cluster/<method>.yaml


@dataclass
class ClusterParams:
    """Clustering options. Their defaults, meanings and ranges are declared once, in ``conf/cluster/*.yaml``
    (shared options in ``common.yaml``, a method's own in its file); the fields read them from there."""

    method: str = conf_field(COMMON, "method")
    max_units: int = conf_field(COMMON, "max_units")
    max_fit_spikes: int = conf_field(COMMON, "max_fit_spikes")
    min_spikes: int = conf_field(COMMON, "min_spikes")
    min_snr: float = conf_field(COMMON, "min_snr")
    noise_margin: float = conf_field(COMMON, "noise_margin")
    max_residual: float = conf_field(COMMON, "max_residual")
    outlier_quantile: float = conf_field(COMMON, "outlier_quantile")
    broad_factor: float = conf_field(COMMON, "broad_factor")
    merge_similarity: float = conf_field(COMMON, "merge_similarity")
    merge_amplitude_ratio: float = conf_field(COMMON, "merge_amplitude_ratio")
    merge_max_dprime: float = conf_field(COMMON, "merge_max_dprime")
    merge_valley: float = conf_field(COMMON, "merge_valley")
    covariance_type: str = conf_field(COMMON, "covariance_type")
    n_init: int = conf_field(COMMON, "n_init")
    dpgmm_concentration: float = conf_field("cluster/dpgmm.yaml", "dpgmm_concentration")
    hdbscan_min_cluster_size: int = conf_field("cluster/hdbscan.yaml", "hdbscan_min_cluster_size")
    hdbscan_min_samples: int | None = conf_field("cluster/hdbscan.yaml", "hdbscan_min_samples")
    kmeans_criterion: str = conf_field("cluster/kmeans.yaml", "kmeans_criterion")
    kmeans_min_silhouette: float = conf_field("cluster/kmeans.yaml", "kmeans_min_silhouette")
    branch_dims: int = conf_field(COMMON, "branch_dims")
    refractory_ms: list[float] | None = conf_field(COMMON, "refractory_ms")
    refractory_split: float = conf_field(COMMON, "refractory_split")
    refractory_merge: float = conf_field(COMMON, "refractory_merge")
    refractory_overlap: float = conf_field(COMMON, "refractory_overlap")
    merge_turns: float = conf_field(COMMON, "merge_turns")
    iterative: bool = conf_field(COMMON, "iterative")
    iterative_thresholds: list[float] = conf_field(COMMON, "iterative_thresholds")
    seed: int = conf_field("sort.yaml", "seed")  # the run's seed (top-level `seed`), not a cluster.* key

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> DeepSpikeError:
            return DeepSpikeError(f"cluster.{name}={getattr(self, name)!r}: {why}")

        if self.method not in METHODS:
            raise bad("method", f"unknown clustering method; choose one of {METHODS}")
        if self.covariance_type not in ("full", "diag"):
            raise bad("covariance_type", "choose 'full' or 'diag'")
        if self.kmeans_criterion not in ("silhouette", "bic"):
            raise bad("kmeans_criterion", "choose 'silhouette' or 'bic'")
        for name in ("max_units", "max_fit_spikes", "min_spikes", "n_init", "hdbscan_min_cluster_size"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be a positive integer")
        if self.max_fit_spikes < 100:
            raise bad("max_fit_spikes", "must be >= 100 (a mixture needs enough spikes to fit)")
        if not 0.5 < self.outlier_quantile <= 1.0:
            raise bad("outlier_quantile", "must be in (0.5, 1]; 1 keeps every spike")
        if self.broad_factor <= 1:
            raise bad("broad_factor", "must be > 1 (ratio of a component's volume to the others' median)")
        if not 0.0 < self.merge_similarity <= 1.0:
            raise bad("merge_similarity", "must be in (0, 1]; 1 disables merging")
        if self.merge_amplitude_ratio < 1.0:
            raise bad("merge_amplitude_ratio", "must be >= 1")
        if not 0.0 < self.merge_valley <= 1.0:
            raise bad(
                "merge_valley", "must be in (0, 1] (density valley/peak ratio above which units merge; 1 = never)"
            )
        if not self.merge_max_dprime > 0:
            raise bad("merge_max_dprime", "must be > 0 (.inf merges on templates alone)")
        if self.max_residual <= 1:
            raise bad("max_residual", "must be > 1 (noise alone leaves a residual variance of about 1 noise sigma^2)")
        if not 0 <= self.noise_margin < 5:
            raise bad("noise_margin", "must be in [0, 5) noise sigmas (0 = keep units piled up at the threshold)")
        if self.min_snr < 0 or self.dpgmm_concentration <= 0:
            raise DeepSpikeError("cluster.min_snr must be >= 0 and cluster.dpgmm_concentration > 0")
        if not isinstance(self.branch_dims, (int, np.integer)) or self.branch_dims < 0:
            raise bad("branch_dims", "must be an integer >= 0 (principal components of each unit's re-split; 0 = off)")
        self._check_refractory(bad)
        if self.hdbscan_min_samples is not None and self.hdbscan_min_samples < 1:
            raise bad("hdbscan_min_samples", "must be null or a positive integer")
        self.iterative_thresholds = sorted((float(t) for t in self.iterative_thresholds), reverse=True)
        if any(t <= 0 for t in self.iterative_thresholds):
            raise bad("iterative_thresholds", "thresholds are noise-sigma amplitudes, all > 0")

    def _check_refractory(self, bad: Any) -> None:
        r = self.refractory_ms
        if r is not None and (len(r) != 2 or not 0 <= float(r[0]) < float(r[1]) <= 10):
            raise bad("refractory_ms", "must be null (off) or [low, high] lags in ms with 0 <= low < high <= 10")
        if not self.refractory_overlap > 1:
            raise bad(
                "refractory_overlap", "must be > 1 (times the chance count of near-coincident spikes; .inf = off)"
            )
        if not isinstance(self.merge_turns, (int, float)) or not 0 <= self.merge_turns <= 1:
            raise bad("merge_turns", "must be in [0, 1] (share of two units' spike-time histograms in common; 0 = off)")
        if not 0 <= self.refractory_merge < self.refractory_split:
            raise bad("refractory_merge", f"must be >= 0 and below cluster.refractory_split={self.refractory_split!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ClusterParams:
        """Build from a (Hydra) mapping, rejecting unknown keys with the list of known ones."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DeepSpikeError(f"unknown cluster option(s) {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
