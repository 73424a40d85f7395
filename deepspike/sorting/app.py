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
from deepspike.sorting.cache import CACHE_DIR
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
            hints = [f"{k!r}: did you mean {best!r}?" for k in unknown if (best := _closest(k, top | pipeline))]
            hint = f" ({'; '.join(hints)})" if hints else ""
            raise DeepSpikeError(f"unknown sort option(s) {unknown}{hint}; see conf/sort.yaml for the documented keys")
        params = SortParams(**{k: v for k, v in d.items() if k in pipeline})
        return cls(params=params, **{k: v for k, v in d.items() if k in top})

    def validate(self) -> None:
        if self.delta_time_ms <= 0:
            raise DeepSpikeError(f"delta_time_ms must be > 0 ms, got {self.delta_time_ms}")
        if self.recording is not None and not Path(self.recording).exists():
            raise RecordingError(f"recording {self.recording!r} not found; pass recording=PATH to an existing file")
        if self.gt is not None and not Path(self.gt).exists():
            raise DeepSpikeError(f"ground truth {self.gt!r} not found; pass gt=PATH or leave it out")
        if self.checkpoint is not None:
            from deepspike.sorting.features import checkpoint_path

            # from the current directory, else the repository / checkpoints/ (the error names the paths tried)
            self.checkpoint = str(checkpoint_path(self.checkpoint))


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
    result = run_sort(recording_path, conf.checkpoint, conf.params, conf.recording_options, cache_dir=out / CACHE_DIR)
    gt_sorting = lambda: _ground_truth(recording_path, result.recording, gt_path)  # noqa: E731 (a bad file costs metrics.csv only)
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
    """Human summary: units with their quality metrics and curation label (the first ``SUMMARY_UNIT_LINES``; all of
    them are in units.csv), time per stage, accuracy with the matched units and the redundant / false-positive
    counts when GT was scored, and any output that is missing."""
    from deepspike.sorting.quality import label_counts

    units = result.units_table()
    n_noise = int((result.labels == NOISE).sum())
    labels = ", ".join(f"{n} {lab}" for lab, n in label_counts(units["label"]).items())
    lines = [
        f"DeepSpike sort: {len(result.labels)} spikes -> {len(units)} units ({labels}), {n_noise} noise/unassigned "
        f"({result.duration_s:.1f} s, {result.params.features} features, {result.params.cluster.method})",
    ]
    if result.finetuned is not None:
        ft = result.finetuned.spec["provenance"]["finetune"]
        lines.append(f"  fine-tuned encoder: kept {ft.get('kept')} ({ft.get('reason')}), {ft.get('seconds', 0):.1f}s")
    motion = result.info.get("motion") or {}
    if motion.get("corrected"):
        most = motion["max_abs_displacement_um"]
        lines.append(
            f"  motion corrected ({motion['preset']}): up to {most:.1f} um, {motion['temporal_bins']} time bins"
        )
    for row in units.head(SUMMARY_UNIT_LINES).itertuples(index=False):
        why = f" ({row.label_reason})" if row.label_reason else ""
        lines.append(
            f"  unit {row.unit:3d}: {row.spike_count:7d} spikes  {row.rate_hz:6.2f} Hz  snr {row.snr:5.1f}  "
            f"ch {row.peak_channel:<3d} isi {row.isi_violations_ratio:5.2f}  presence {row.presence_ratio:4.2f}  "
            f"cutoff {row.amplitude_cutoff:4.2f}  {row.label}{why}"
        )
    if len(units) > SUMMARY_UNIT_LINES:
        lines.append(f"  ... {len(units) - SUMMARY_UNIT_LINES} more units in units.csv")
    stages = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    lines.append(f"  time: {stages} (total {sum(result.timings.values()):.2f}s)")
    if result.info.get("resumed"):
        lines.append(f"  resumed: the {', '.join(result.info['resumed'])} stage(s) came from a killed run's cache")
    lines += _ground_truth_lines(result)
    for part, why in (result.info.get("missing") or {}).items():
        lines.append(f"  MISSING {part}: {why} (the sorting and tables are written; see missing.txt)")
    if out is not None:
        lines.append(f"  outputs: {out}")
    return "\n".join(lines)


SUMMARY_UNIT_LINES = 40  # units listed one per line in the console summary


def _ground_truth_lines(result: SortResult) -> list[str]:
    """Accuracy per GT neuron with its matched unit, beside the counts of redundant and false-positive units."""
    metrics = result.info.get("metrics")
    if metrics is None or not len(metrics):
        return []
    matched = metrics["matched_unit"] if "matched_unit" in metrics else [-1] * len(metrics)
    acc = ", ".join(
        f"{g}: {a:.3f}" + (f" (unit {m})" if m >= 0 else " (no unit)")
        for g, a, m in zip(metrics["gt_unit"], metrics["accuracy"], matched, strict=True)
    )
    cats = result.info.get("unit_categories") or {}
    counts = (
        f"; redundant units {cats.get('num_redundant', 0)}, false-positive units {cats.get('num_false_positive', 0)}"
        if cats
        else ""
    )
    return [f"  ground truth accuracy (mean {metrics['accuracy'].mean():.3f}{counts}): {acc}"]


def main() -> None:
    """Console entry (``deepspike-sort`` / ``python sort.py``): Hydra over ``conf/sort.yaml``."""
    import sys

    import hydra

    with cli_errors("sort", any(a.lower() == "debug=true" for a in sys.argv[1:])):
        check_overrides(sys.argv[1:])  # before Hydra composes: its hint for an unknown key (`+key=`) leads astray

    @hydra.main(config_path=str(CONF_DIR), config_name="sort", version_base="1.3")
    def _app(cfg: Any) -> None:
        with cli_errors("sort", bool(cfg.get("debug", False))):  # one line naming the file and the fix
            run_from_config(cfg)

    _app()


# --------------------------------------------------------------------------------------------------------------
# command-line keys, checked before Hydra composes
# --------------------------------------------------------------------------------------------------------------


def check_overrides(argv: list[str]) -> None:
    """Refuse a ``key=value`` whose key conf/sort.yaml does not declare, suggesting the closest one.

    Hydra answers ``clustr=gmm`` with "use +clustr=gmm", which composes and then fails as an unknown sort option:
    the first message must name the typo. Hydra's own syntax passes through: ``+key`` / ``++key`` (adding a key is
    explicit), ``hydra.*`` and ``hydra/...``, flags (``--cfg job``, ``-m``), group selections (``cluster=dpgmm``,
    ``finetuning@finetune_options=default``); ``~key`` must name a declared key like any override.
    """
    known = _declared_options(argv)
    for arg in argv:
        key = _override_key(arg)
        if key is None:
            continue
        parts = key.split(".")
        if parts[0] not in known:
            raise _unknown(key, parts[0], set(known))
        below = known[parts[0]]  # a block's keys (recording_options, cluster as selected); deeper levels: Hydra's
        if len(parts) > 1 and isinstance(below, dict) and parts[1] not in below:
            raise _unknown(key, parts[1], set(below), prefix=f"{parts[0]}.")


def _override_key(arg: str) -> str | None:
    """The dotted key an override sets, or None for what Hydra alone handles (flags, ``+``, ``hydra``, a group
    selection by package ``group@package=``)."""
    if arg.startswith("-") or arg.startswith("+") or ("=" not in arg and not arg.startswith("~")):
        return None
    key = arg.lstrip("~").split("=", 1)[0]
    if "@" in key:
        key = key.split("@", 1)[0]  # group@package=option: the group must be one of sort.yaml's
    key = key.replace("/", ".")
    return None if key.split(".")[0] == "hydra" else key


def _declared_options(argv: list[str]) -> dict[str, Any]:
    """conf/sort.yaml's keys (nested dicts kept) plus its config groups, each with the keys of the file selected on
    the command line (or by default): ``cluster=dpgmm cluster.dpgmm_concentration=0.1`` is checked against dpgmm."""
    from omegaconf import OmegaConf

    from deepspike.defaults import conf_values

    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / CONF), resolve=False)
    known: dict[str, Any] = {k: v for k, v in raw.items() if k not in ("defaults", "hydra")}
    selected = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith(("-", "+", "~")))
    for entry in raw.get("defaults", []):
        if not isinstance(entry, dict) or str(next(iter(entry))).startswith("override"):
            continue
        ((name, option),) = entry.items()
        group, _, package = str(name).partition("@")
        option = selected.get(name, selected.get(group, option))
        path = CONF_DIR / group / f"{option}.yaml"
        keys = {k: None for k in conf_values(f"{group}/{option}.yaml")} if path.is_file() else None
        known[group] = keys  # the group, as selected (cluster=gmm)
        known[package or group] = keys  # its keys, where they land (cluster.max_units, finetune_options.steps)
    return known


def _unknown(key: str, part: str, choices: set[str], prefix: str = "") -> DeepSpikeError:
    best = _closest(part, choices)
    hint = f"; did you mean '{prefix}{best}'?" if best else f"; the options here are {sorted(choices)}"
    return DeepSpikeError(f"unknown option '{key}'{hint} Every option is declared, with a comment, in conf/sort.yaml")


def _closest(name: str, choices: set[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.6)
    return found[0] if found else None
