"""``deepspike-bench``'s options (``BenchConfig``, declared once in ``conf/bench.yaml``) and the output-folder rule it
shares with the set builder: a folder is written only if it is empty or carries deepspike-bench's marker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from deepspike.defaults import conf_field
from deepspike.errors import DeepSpikeError, OutputExistsError

CONF = "bench.yaml"


MARKER = ".deepspike-bench"  # written into every folder deepspike-bench creates; other folders are not touched


INSTALL_HINT = "pip install -e '.[bench]'"


BENCH_PEERS = ("mountainsort5", "kilosort4")  # what the `bench` extra installs (pyproject.toml)


@dataclass
class BenchConfig:
    """Validated ``conf/bench.yaml`` (each key is documented there)."""

    recordings: list[str] = conf_field(CONF, "recordings")
    sorters: list[str] = conf_field(CONF, "sorters")
    out: str = conf_field(CONF, "out")
    checkpoint: str | None = conf_field(CONF, "checkpoint")
    delta_time_ms: float = conf_field(CONF, "delta_time_ms")
    timeout_s: float = conf_field(CONF, "timeout_s")
    resume: bool = conf_field(CONF, "resume")
    plots: bool = conf_field(CONF, "plots")
    snr_band_hz: list[float] = conf_field(CONF, "snr_band_hz")
    make_set: bool = conf_field(CONF, "make_set")
    debug: bool = conf_field(CONF, "debug")
    sorter_params: dict[str, Any] = conf_field(CONF, "sorter_params")
    sorter_params_single_channel: dict[str, Any] = conf_field(CONF, "sorter_params_single_channel")
    sorter_params_by_tier: dict[str, Any] = conf_field(CONF, "sorter_params_by_tier")
    recording_options: dict[str, Any] = conf_field(CONF, "recording_options")
    set: dict[str, Any] = conf_field(CONF, "set")

    @classmethod
    def from_cfg(cls, cfg: Any) -> BenchConfig:
        from omegaconf import DictConfig, OmegaConf

        d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        d.pop("hydra", None)
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise DeepSpikeError(f"unknown bench option(s) {unknown}; see conf/bench.yaml for the documented keys")
        conf = cls(**d)
        conf.validate()
        return conf

    def validate(self) -> None:
        if isinstance(self.recordings, str):
            self.recordings = [self.recordings]
        if isinstance(self.sorters, str):
            self.sorters = [self.sorters]
        checks = [
            (bool(self.out), "out must name a folder, e.g. out=outputs/bench"),
            (self.delta_time_ms > 0, f"delta_time_ms must be > 0 ms, got {self.delta_time_ms}"),
            (self.timeout_s > 0, f"timeout_s must be > 0 seconds, got {self.timeout_s}"),
            (len(self.snr_band_hz) == 2 and 0 < self.snr_band_hz[0] < self.snr_band_hz[1],
             f"snr_band_hz must be [low, high] Hz with 0 < low < high, got {self.snr_band_hz}"),
            (self.make_set or bool(self.recordings), "no recordings: pass recordings='[PATH_OR_GLOB,...]'"),
            (self.make_set or bool(self.sorters), "no sorters: pass sorters='[deepspike,mountainsort5,...]'"),
            (len(set(self.sorters)) == len(self.sorters), f"sorters lists a name twice: {self.sorters}"),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise DeepSpikeError(msg)
        check_params_by_tier(self.sorter_params_by_tier)
        if self.checkpoint is not None and not Path(self.checkpoint).exists():
            raise DeepSpikeError(f"checkpoint {self.checkpoint!r} not found; pass checkpoint=PATH or leave it null")


def check_params_by_tier(by_tier: Any) -> None:
    """``sorter_params_by_tier`` is {tier: {sorter: {param: value}}}; a wrong level fails naming its key."""
    if not isinstance(by_tier, dict):
        raise DeepSpikeError(f"sorter_params_by_tier must map tier -> sorter -> parameters, got {by_tier!r}")
    for tier, sorters in by_tier.items():
        if not isinstance(sorters, dict):
            raise DeepSpikeError(
                f"sorter_params_by_tier.{tier} must map sorter -> parameters, e.g. {{kilosort4: {{do_correction: "
                f"true}}}}, got {sorters!r}"
            )
        for sorter, params in sorters.items():
            if not isinstance(params, dict):
                raise DeepSpikeError(
                    f"sorter_params_by_tier.{tier}.{sorter} must map parameter -> value, got {params!r}"
                )


def own_folder(out: Path) -> Path:
    """``out``, created with a marker; an existing folder without the marker (not ours) is refused."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise OutputExistsError(
            f"{out} exists and was not written by deepspike-bench; choose another folder with out=DIR"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    return out


def jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))
