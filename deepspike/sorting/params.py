"""The sort pipeline's options (``SortParams``), declared once with comments in ``conf/sort.yaml`` and validated
here with the key to fix in every message.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from deepspike.defaults import conf_field
from deepspike.errors import DeepSpikeError
from deepspike.recording.probes import check_probe_spec
from deepspike.sorting.clustering.params import ClusterParams
from deepspike.sorting.matching import MatchParams
from deepspike.sorting.motion import MotionParams
from deepspike.sorting.multichannel import MultichannelParams
from deepspike.sorting.quality import CurationParams

FEATURES = ("encoder", "pca", "hybrid")


DEVICES = ("auto", "cpu", "cuda")


CONF = "sort.yaml"  # every option's default and comment; the dataclasses below read them from there


@dataclass
class SortParams:
    """Pipeline options of ``sort()``; documented once, with comments, in ``conf/sort.yaml``."""

    features: str = conf_field(CONF, "features")
    pca_components: int = conf_field(CONF, "pca_components")
    device: str = conf_field(CONF, "device")
    batch_size: int = conf_field(CONF, "batch_size")
    seed: int = conf_field(CONF, "seed")
    noise_unit: bool = conf_field(CONF, "noise_unit")
    echo_ms: float = conf_field(CONF, "echo_ms")
    echo_ratio: float = conf_field(CONF, "echo_ratio")
    progress: bool | str = conf_field(CONF, "progress")  # auto: bars when stderr is a terminal
    finetune: bool = conf_field(CONF, "finetune")
    filter_cache_mb: float = conf_field(CONF, "filter_cache_mb")
    filter_cache_disk: bool = conf_field(CONF, "filter_cache_disk")
    n_jobs: int = conf_field(CONF, "n_jobs")
    probe: Any = conf_field(CONF, "probe")  # str (file, layout) | Path | probeinterface Probe / ProbeGroup | None
    finetune_options: dict[str, Any] = conf_field("finetuning/default.yaml")
    extract: dict[str, Any] = conf_field("extract/default.yaml")
    cluster: ClusterParams = field(default_factory=ClusterParams)
    matching: MatchParams = field(default_factory=MatchParams)
    multichannel: MultichannelParams = field(default_factory=MultichannelParams)
    motion: MotionParams = field(default_factory=MotionParams)
    curation: CurationParams = field(default_factory=CurationParams)

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise DeepSpikeError(
                f"features={self.features!r}: choose 'encoder' (the frozen model), 'pca' (model-free baseline) or "
                "'hybrid' (both side by side)"
            )
        if self.device not in DEVICES:
            raise DeepSpikeError(f"device={self.device!r}: choose one of {DEVICES}")
        if (
            isinstance(self.filter_cache_mb, bool)
            or not isinstance(self.filter_cache_mb, (int, float))
            or (self.filter_cache_mb < 0)
        ):
            raise DeepSpikeError(f"filter_cache_mb={self.filter_cache_mb!r}: must be >= 0 MB (0 = never cache)")
        if self.progress == "auto":
            import sys

            self.progress = sys.stderr.isatty()
        if not isinstance(self.progress, bool):
            raise DeepSpikeError(f"progress={self.progress!r}: choose auto (bars on a terminal), true or false")
        if not isinstance(self.filter_cache_disk, bool):
            raise DeepSpikeError(f"filter_cache_disk={self.filter_cache_disk!r}: must be true or false")
        if isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, int) or self.n_jobs == 0 or self.n_jobs < -1:
            raise DeepSpikeError(f"n_jobs={self.n_jobs!r}: must be an integer >= 1, or -1 for all cores")
        if int(self.batch_size) < 1 or int(self.pca_components) < 1:
            raise DeepSpikeError("batch_size and pca_components must be positive integers")
        if self.echo_ms < 0 or (self.echo_ratio != 0 and self.echo_ratio < 1):
            raise DeepSpikeError(
                f"echo_ms={self.echo_ms} must be >= 0 and echo_ratio={self.echo_ratio} 0 (off) or >= 1 "
                "(an echo is an event within echo_ms of one echo_ratio times larger)"
            )
        check_probe_spec(self.probe)  # a typo fails here, before any work
        if isinstance(self.cluster, str):
            self.cluster = ClusterParams(method=self.cluster, seed=self.seed)
        elif not isinstance(self.cluster, ClusterParams):
            self.cluster = ClusterParams.from_dict({"seed": self.seed, **dict(self.cluster or {})})
        self.matching = MatchParams.from_dict(self.matching)
        self.multichannel = MultichannelParams.from_dict(self.multichannel)
        self.motion = MotionParams.from_dict(self.motion)
        self.curation = CurationParams.from_dict(self.curation)
        self.extract = dict(self.extract or {})
        self.finetune_options = dict(self.finetune_options or {})
        if self.finetune and self.features == "pca":
            raise DeepSpikeError("finetune=true adapts the encoder: it needs features=encoder or hybrid, not pca")
        if self.finetune:
            from deepspike.model.finetune import FinetuneParams

            FinetuneParams.from_options(self.finetune_params())  # fail early on bad options

    def needs_geometry(self) -> bool:
        """Whether the sort groups neighbouring channels, which takes a probe (else each channel is sorted alone)."""
        return bool(self.multichannel.enabled and self.multichannel.radius_um > 0)

    def workers(self) -> int:
        """``n_jobs`` as a count (-1: the CPUs this process may use)."""
        if self.n_jobs > 0:
            return int(self.n_jobs)
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def finetune_params(self) -> dict[str, Any]:
        """``finetune_options`` with the sort's seed and device where they say null / auto."""
        opts = dict(self.finetune_options)
        if opts.get("seed") is None:
            opts["seed"] = self.seed
        if opts.get("device", "auto") == "auto":
            opts["device"] = self.device
        return opts

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SortParams:
        """``sort(**options)``: pipeline keys here, unknown keys are rejected with the list of known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise DeepSpikeError(
                f"unknown sort option(s) {unknown}; known: {sorted(known)} (clustering options go in cluster={{...}})"
            )
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cluster"] = self.cluster.to_dict()
        d["matching"] = self.matching.to_dict()
        d["multichannel"] = self.multichannel.to_dict()
        d["motion"] = self.motion.to_dict()
        d["curation"] = self.curation.to_dict()
        if self.probe is not None and not isinstance(self.probe, str):
            d["probe"] = str(self.probe)  # a Path or a probeinterface object, named in the run's config
        return d
