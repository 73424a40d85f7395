"""``python sort.py`` / ``deepspike-sort``: the Hydra app over ``conf/sort.yaml``. It reads the recording and its
ground truth, runs the pipeline, writes the outputs and prints the summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from deepspike.defaults import conf_field
from deepspike.errors import DeepSpikeError, RecordingError, cli_errors
from deepspike.paths import CONF_DIR, DATA_DIR
from deepspike.paths import REPO_ROOT as REPO
from deepspike.sorting.clustering.params import NOISE
from deepspike.sorting.outputs import FINETUNED_NAME, check_output, write_outputs
from deepspike.sorting.params import CONF, SortParams
from deepspike.sorting.pipeline import run_sort
from deepspike.sorting.result import SortResult

DEMO_RECORDING = DATA_DIR / "demo" / "demo_recording"


DEMO_GT = DATA_DIR / "demo" / "demo_recording.gt"


@dataclass
class SortConfig:
    """Validated ``conf/sort.yaml`` (each key is documented there)."""

    recording: str | None = conf_field(CONF, "recording")
    checkpoint: str | None = conf_field(CONF, "checkpoint")
    out: str | None = conf_field(CONF, "out")
    gt: str | None = conf_field(CONF, "gt")
    overwrite: bool = conf_field(CONF, "overwrite")
    delta_time_ms: float = conf_field(CONF, "delta_time_ms")
    export_phy: bool = conf_field(CONF, "export_phy")
    plots: bool = conf_field(CONF, "plots")
    quiet: bool = conf_field(CONF, "quiet")
    debug: bool = conf_field(CONF, "debug")
    recording_options: dict[str, Any] = conf_field(CONF, "recording_options")
    params: SortParams = field(default_factory=SortParams)

    @classmethod
    def from_cfg(cls, cfg: Any) -> SortConfig:
        from omegaconf import DictConfig, OmegaConf

        d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        d.pop("hydra", None)
        top = {f.name for f in fields(cls)} - {"params"}
        pipeline = {f.name for f in fields(SortParams)}
        unknown = sorted(set(d) - top - pipeline)
        if unknown:
            raise DeepSpikeError(f"unknown sort option(s) {unknown}; see conf/sort.yaml for the documented keys")
        params = SortParams(**{k: v for k, v in d.items() if k in pipeline})
        return cls(params=params, **{k: v for k, v in d.items() if k in top})

    def validate(self) -> None:
        if self.delta_time_ms <= 0:
            raise DeepSpikeError(f"delta_time_ms must be > 0 ms, got {self.delta_time_ms}")
        if self.recording is not None and not Path(self.recording).exists():
            raise RecordingError(f"recording {self.recording!r} not found; pass recording=PATH to an existing file")
        if self.gt is not None and not Path(self.gt).exists():
            raise DeepSpikeError(f"ground truth {self.gt!r} not found; pass gt=PATH or leave it out")
        if self.checkpoint is not None and not Path(self.checkpoint).exists():
            raise DeepSpikeError(
                f"checkpoint {self.checkpoint!r} not found; pass checkpoint=PATH to an exported encoder"
            )


def run_from_config(cfg: Any) -> SortResult:
    """What ``python sort.py`` does: validate, sort, write outputs, print a summary."""
    conf = SortConfig.from_cfg(cfg)
    conf.validate()
    demo = conf.recording is None
    recording_path = str(DEMO_RECORDING) if demo else conf.recording
    if demo and not DEMO_RECORDING.exists():
        raise RecordingError(f"bundled demo recording {str(DEMO_RECORDING)!r} is missing; pass recording=PATH")
    gt_path = str(DEMO_GT) if demo and conf.gt is None and DEMO_GT.exists() else conf.gt
    out = Path(conf.out) if conf.out else REPO / "outputs" / "sort" / _stem(recording_path)
    inputs = [recording_path, gt_path, conf.checkpoint]
    check_output(out, conf.overwrite, inputs)  # before any work: a refusal touches nothing
    result = run_sort(recording_path, conf.checkpoint, conf.params, conf.recording_options)
    gt_sorting = _ground_truth(recording_path, result.recording, gt_path)
    config = _resolved_config(cfg, recording_path, out, gt_path, result)
    result.timings.update(
        write_outputs(
            result,
            out,
            overwrite=conf.overwrite,
            config=config,
            gt_sorting=gt_sorting,
            data_file=Path(recording_path).name,
            delta_time_ms=conf.delta_time_ms,
            export_phy=conf.export_phy,
            plots=conf.plots,
            inputs=inputs,
        )
    )
    if not conf.quiet:
        print(summary(result, out))
    return result


def _resolved_config(cfg: Any, recording: str, out: Path, gt: str | None, result: SortResult) -> dict[str, Any]:
    """The run's config as sort.yaml keys, with defaults filled in (re-runnable as is)."""
    from omegaconf import DictConfig, OmegaConf

    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    d.pop("hydra", None)
    d.update(recording=recording, out=str(out), gt=gt, checkpoint=result.checkpoint)
    if result.finetuned is not None:
        ft = result.finetuned.spec["provenance"]["finetune"]
        d["finetuned_encoder"] = {"path": str(out / FINETUNED_NAME), "steps": ft.get("steps"), "kept": ft.get("kept"),
                                  "seconds": ft.get("seconds")}  # fmt: skip
    d["extract"] = {**result.params.extract, **d.get("extract", {})}
    d["cluster"] = result.params.cluster.to_dict()
    return d


def _stem(path: str) -> str:
    name = Path(path.rstrip("/")).name
    for suffix in (".safetensors", ".mat", ".npy", ".bin", ".dat", ".nwb", ".raw"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or "recording"


def _ground_truth(recording_path: str, recording: Any, gt: str | None) -> Any:
    """GT from ``gt=PATH`` or carried by the recording's format (``recording.ground_truth.load_ground_truth``)."""
    from deepspike.recording.ground_truth import load_ground_truth

    return load_ground_truth(recording_path, recording=recording, gt=gt)


def summary(result: SortResult, out: Path | None = None) -> str:
    """Human summary: units, spikes per unit, time per stage (and accuracy when GT was scored)."""
    units = result.units_table()
    n_noise = int((result.labels == NOISE).sum())
    lines = [
        f"DeepSpike sort: {len(result.labels)} spikes -> {len(units)} units, {n_noise} noise/unassigned "
        f"({result.duration_s:.1f} s, {result.params.features} features, {result.params.cluster.method})",
    ]
    if result.finetuned is not None:
        ft = result.finetuned.spec["provenance"]["finetune"]
        lines.append(f"  fine-tuned encoder: kept {ft.get('kept')} ({ft.get('reason')}), {ft.get('seconds', 0):.1f}s")
    for row in units.itertuples(index=False):
        lines.append(
            f"  unit {row.unit:3d}: {row.spike_count:7d} spikes  {row.rate_hz:6.2f} Hz  "
            f"snr {row.snr:5.1f}  ch {row.peak_channel}"
        )
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    lines.append(f"  time: {stages} (total {sum(result.timings.values()):.2f}s)")
    metrics = result.info.get("metrics")
    if metrics is not None and len(metrics):
        acc = ", ".join(f"{u}: {a:.3f}" for u, a in zip(metrics["gt_unit"], metrics["accuracy"], strict=True))
        lines.append(f"  ground truth accuracy (mean {metrics['accuracy'].mean():.3f}): {acc}")
    if out is not None:
        lines.append(f"  outputs: {out}")
    return "\n".join(lines)


def main() -> None:
    """Console entry (``deepspike-sort`` / ``python sort.py``): Hydra over ``conf/sort.yaml``."""
    import hydra

    @hydra.main(config_path=str(CONF_DIR), config_name="sort", version_base="1.3")
    def _app(cfg: Any) -> None:
        with cli_errors("sort", bool(cfg.get("debug", False))):  # one line naming the file and the fix
            run_from_config(cfg)

    _app()
