"""The result folder: spikes/units/metrics tables, config, plots and the optional Phy export, written into a
temporary folder and renamed into ``out``; a folder DeepSpike did not write is never overwritten.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepspike.errors import DeepSpikeError, OutputExistsError
from deepspike.sorting.result import SortResult, timed

RESULT_MARKER = ".deepspike-result"


FINETUNED_NAME = "encoder_finetuned.safetensors"  # the adapted encoder in `out` (+ .json sidecar), finetune=true


def check_output(out: str | os.PathLike, overwrite: bool, inputs: Sequence[Any] = ()) -> Path:
    """Fail early, before any work, unless ``out`` can take a result without losing anything.

    Only a folder that DeepSpike wrote (it holds ``RESULT_MARKER``) is ever replaced, only with ``overwrite``, and
    never one that holds an input (``inputs``: recording, ground truth, checkpoint); the folder (or the nearest
    existing one above it) must be writable, so a bad ``out`` is reported before the sort, not after it.
    """
    out = Path(out)
    existing = next(p for p in (out, *out.parents) if p.exists() or p == Path(p.anchor))
    if not existing.is_dir():
        what = "exists and is a file" if existing == out else f"cannot be created: {str(existing)!r} is a file"
        raise OutputExistsError(f"output {str(out)!r} {what}; choose another out=DIR")
    _check_no_input_inside(out, inputs)
    if out.is_dir() and any(out.iterdir()):
        if not (out / RESULT_MARKER).is_file():
            raise OutputExistsError(
                f"output folder {str(out)!r} holds files DeepSpike did not write (no {RESULT_MARKER} marker); it is "
                "never replaced, even with overwrite=true: choose another out=DIR (e.g. a new subfolder)"
            )
        if not overwrite:
            raise OutputExistsError(
                f"output folder {str(out)!r} already holds a result; pass overwrite=true to replace it "
                "or choose another out=DIR"
            )
    for folder in dict.fromkeys((existing, existing if existing != out else out.parent)):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DeepSpikeError(
                f"output {str(out)!r}: folder {str(folder)!r} is not writable; make it writable or choose another "
                "out=DIR"
            )
    return out


def _check_no_input_inside(out: Path, inputs: Sequence[Any]) -> None:
    """``out`` (which replacing would delete) must not be, or hold, one of the run's inputs."""
    target = out.resolve()
    for item in inputs:
        if item is None or str(item) == "":
            continue
        path = Path(item).resolve()
        if path == target or target in path.parents:
            raise OutputExistsError(
                f"output folder {str(out)!r} holds the input {str(item)!r}; DeepSpike never writes over its input: "
                "choose another out=DIR (e.g. a new subfolder)"
            )


def write_outputs(
    result: SortResult,
    out: str | os.PathLike,
    overwrite: bool = False,
    config: dict[str, Any] | None = None,
    gt_sorting: Any = None,
    data_file: str = "",
    delta_time_ms: float = 0.4,
    export_phy: bool = False,
    plots: bool = True,
    inputs: Sequence[Any] = (),
) -> dict[str, float]:
    """Write every output into a temporary sibling folder, then rename it to ``out`` (atomic on one filesystem).

    ``out`` may exist only as an earlier DeepSpike result (with ``overwrite``) that holds none of ``inputs``
    (see :func:`check_output`); the marker file ``RESULT_MARKER`` goes into every result.
    Returns the wall time per part (``write``, ``plots``, ``phy``, ``metrics``).
    """
    out = check_output(out, overwrite, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))  # a new name: nothing else is touched
    timings: dict[str, float] = {}
    try:
        with timed(timings, "write"):
            _write_tables(result, tmp, config)
            (tmp / RESULT_MARKER).write_text("written by DeepSpike sort; overwrite=true may replace this folder\n")
        if gt_sorting is not None:
            with timed(timings, "metrics"):
                from deepspike.evaluation.compare import compare_to_ground_truth

                metrics = compare_to_ground_truth(result.sorting, gt_sorting, delta_time_ms, data_file=data_file)
                metrics.to_csv(tmp / "metrics.csv", index=False)
                result.info["metrics"] = metrics
        if plots:
            with timed(timings, "plots"):
                from deepspike.sorting.plots import plot_all

                plot_all(result, tmp)
        if export_phy:
            with timed(timings, "phy"):
                _export_phy(result, tmp / "phy")
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return timings


def _write_tables(result: SortResult, folder: Path, config: dict[str, Any] | None) -> None:
    import yaml

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not serializable.*")  # an in-memory sorting: no provenance
        result.sorting.save(folder=folder / "sorting")
    result.spikes_table().to_csv(folder / "spikes.csv", index=False, float_format="%.6g")
    result.units_table().to_csv(folder / "units.csv", index=False, float_format="%.6g")
    np.save(folder / "embeddings.npy", result.embeddings)
    if result.templates is not None:
        np.save(folder / "templates.npy", result.templates)
    if result.finetuned is not None:
        from deepspike.model.export import save_encoder

        save_encoder(result.finetuned, folder / FINETUNED_NAME)
    resolved = dict(config) if config is not None else {"params": result.params.to_dict()}
    resolved.setdefault("window", result.spec.to_dict())
    resolved.setdefault("checkpoint_resolved", result.checkpoint)
    (folder / "config.yaml").write_text(yaml.safe_dump(_plain(resolved), sort_keys=False))


def _plain(x: Any) -> Any:
    """YAML-safe copy (Paths, numpy scalars and tuples to plain types)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    return x


def _replace(tmp: Path, out: Path) -> None:
    """Swap ``tmp`` in as ``out``; an old result is only deleted once the new one is in place."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.replace(old)  # onto the empty folder just made: a name nobody else uses
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _export_phy(result: SortResult, folder: Path) -> None:
    """Phy folder via SpikeInterface's exporter (a SortingAnalyzer on the band-passed recording).

    A multi-channel recording with a probe gets a sparse analyzer (each unit's channels within
    ``_phy_radius_um`` of its best contact), so Phy shows each unit where it is on the probe and
    channel_positions.npy holds the probe's contact positions; one channel (or no geometry) stays dense.
    """
    from spikeinterface.core import create_sorting_analyzer
    from spikeinterface.exporters import export_to_phy

    from deepspike.recording.preprocess import bandpass

    sorting = result.sorting
    if len(sorting.unit_ids) == 0:
        warnings.warn("no unit to export to Phy; skipped", stacklevel=3)
        return
    filt = bandpass(result.recording, **_band(result.params.extract))
    sparse = filt.get_num_channels() > 1 and filt.has_probe()
    radius = {"method": "radius", "radius_um": _phy_radius_um(filt.get_channel_locations())} if sparse else None
    analyzer = create_sorting_analyzer(sorting, filt, format="memory", sparse=sparse, sparsity_kwargs=radius)
    analyzer.compute(["random_spikes", "waveforms", "templates", "noise_levels"])
    export_to_phy(
        analyzer, output_folder=folder, compute_pc_features=False, compute_amplitudes=True, copy_binary=True,
        use_relative_path=True, verbose=False,
    )  # fmt: skip  # relative dat_path, no "Run: phy ..." line: the result is written in a temporary folder, renamed


PHY_RADIUS_CONTACTS = 3.0  # sparse Phy export: a unit's channels lie within this many contact pitches of its best


def _phy_radius_um(positions: np.ndarray) -> float:
    """Sparsity radius of the Phy export: ``PHY_RADIUS_CONTACTS`` x the probe's median nearest-contact distance.

    A tetrode (contacts 14-20 um apart) keeps all 4 channels; a 22 um-pitch shank keeps about a dozen neighbours.
    """
    d = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float(PHY_RADIUS_CONTACTS * np.median(d.min(axis=1)))


def _band(extract: dict[str, Any]) -> dict[str, Any]:
    return {k: extract[k] for k in ("freq_min", "freq_max") if extract.get(k) is not None}
