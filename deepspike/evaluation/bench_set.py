"""The benchmark set (``deepspike-bench make_set=true``): seeded, tiered recordings of SpikeInterface's generators
(single-channel tiers and probe tiers) plus included third-party files with their ground truth, with an index that
lets a rerun keep what is already there.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from deepspike.defaults import conf_values
from deepspike.errors import DeepSpikeError, RecordingError
from deepspike.evaluation.bench_config import BenchConfig, jsonable, own_folder
from deepspike.paths import write_json_atomic

SET_INDEX = "bench_set.json"


TIER_KEYS = {"n", "num_units", "snr_range", "recipe", "recipe_overrides"}  # single-channel tiers


PROBE_TIER_KEYS = {"n", "probe", "num_channels", "num_units", "snr_range", "sampling_frequency"}  # multi-channel


INCLUDE_KEYS = {"path", "sampling_frequency", "tier", "probe", "gt_shift_samples"}


SET_KEYS = {"seed", "duration_s", "include", "broad_overrides", "tiers"}


def make_set(conf: BenchConfig) -> Path:
    """Write the benchmark set to ``conf.out`` (seeded; complete recordings are kept, so a rerun resumes)."""
    from deepspike.recording.synthetic import generate_probe_recording, generate_recording, save_pair

    s = conf.set
    for key in sorted(set(s) - SET_KEYS):
        raise DeepSpikeError(f"set.{key}: unknown key (known: {sorted(SET_KEYS)}; see conf/bench.yaml)")
    out = own_folder(Path(conf.out))
    index_file = out / SET_INDEX
    index = json.loads(index_file.read_text()) if index_file.is_file() else {"recordings": {}}
    for tier, t in s["tiers"].items():
        _check_tier(tier, t)
        for i in range(int(t.get("n", 0))):
            name = f"{tier}_{i:02d}"
            seed = int(np.random.default_rng([int(s["seed"]), zlib.crc32(tier.encode()), i]).integers(0, 2**31 - 1))
            kwargs = _tier_kwargs(t, seed, s.get("broad_overrides") or {})
            folder, gt_folder = out / name, out / f"{name}.gt"
            made = {"tier": tier, "seed": seed, "duration_s": float(s["duration_s"]), **jsonable(kwargs)}
            if not _kept(folder, index["recordings"].get(name), made):
                if "probe" in kwargs:
                    rec, gt = generate_probe_recording(seed, float(s["duration_s"]), **kwargs)
                else:
                    rec, gt = generate_recording(seed, float(s["duration_s"]), "random", **kwargs)
                save_pair(rec, gt, folder, gt_folder, progress=False)
                info = {"fs": rec.get_sampling_frequency(), "num_units": len(gt.unit_ids),
                        "num_channels": rec.get_num_channels()}  # fmt: skip
                index["recordings"][name] = {**made, **info}
                write_json_atomic(index_file, index, default=str)
                print(f"{name}: {info['num_units']} units at {info['fs']:g} Hz", flush=True)
    for i, item in enumerate(s.get("include") or []):
        _include(item, out, index, f"set.include[{i}]")
        write_json_atomic(index_file, index, default=str)
    write_json_atomic(index_file, index, default=str)
    print(f"benchmark set: {len(index['recordings'])} recordings in {out} (index {index_file})")
    return out


def _check_tier(tier: str, t: dict[str, Any]) -> None:
    """Unknown keys and bad values of ``set.tiers.NAME`` fail before anything is generated, naming the key."""
    from deepspike.recording.probes import PROBES

    known = PROBE_TIER_KEYS if "probe" in t else TIER_KEYS
    if t.get("probe") == "tetrode":
        known = known - {"num_channels"}  # always 4
    for key in sorted(set(t) - known):
        raise DeepSpikeError(f"set.tiers.{tier}.{key}: unknown key (known: {sorted(known)}; see conf/bench.yaml)")
    if "probe" in t:  # no hidden defaults: a probe tier states all its ranges in conf/bench.yaml
        for key in sorted(known - set(t)):
            raise DeepSpikeError(f"set.tiers.{tier}.{key}: missing (a probe tier needs {sorted(known)})")
    checks = [
        ("n", int(t.get("n", 0)) >= 0, "must be >= 0"),
        ("probe", t.get("probe", "tetrode") in PROBES, f"must be one of {list(PROBES)}"),
        ("num_units", _range_ok(t.get("num_units", [1, 1]), 1), "must be [low, high] with 1 <= low <= high"),
        ("num_channels", _range_ok(t.get("num_channels", [4, 4]), 4), "must be [low, high] with 4 <= low <= high"),
        ("snr_range", _range_ok(t.get("snr_range", [1, 1]), 0), "must be [low, high] with 0 < low <= high"),
    ]
    for key, ok, msg in checks:
        if not ok:
            raise DeepSpikeError(f"set.tiers.{tier}.{key} {msg}, got {t.get(key)!r} (see conf/bench.yaml)")


def _range_ok(v: Any, low: float) -> bool:
    return isinstance(v, list | tuple) and len(v) == 2 and low <= float(v[0]) <= float(v[1]) and float(v[0]) > 0


def _tier_kwargs(t: dict[str, Any], seed: int, recipe_overrides: dict[str, Any]) -> dict[str, Any]:
    """generate_recording (or, with ``probe``, generate_probe_recording) arguments of one recording of a tier.

    num_units (and a shank's num_channels) are drawn from the tier's ranges with the recording's seed.
    """
    if t.get("probe"):
        return _probe_tier_kwargs(t, seed)
    if t.get("recipe"):
        recipe = conf_values(f"synthetic/{t['recipe']}.yaml")["recipe"]
        recipe.update(recipe_overrides)
        recipe.update(t.get("recipe_overrides") or {})
        return {"recipe": recipe}
    lo, hi = t.get("num_units", [3, 3])
    num_units = int(np.random.default_rng(seed).integers(int(lo), int(hi) + 1))
    return {"num_units": num_units, "snr_range": tuple(t.get("snr_range", (8.0, 25.0)))}


def _probe_tier_kwargs(t: dict[str, Any], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    lo, hi = t["num_units"]
    kwargs: dict[str, Any] = {"probe": str(t["probe"]), "num_units": int(rng.integers(int(lo), int(hi) + 1))}
    if "num_channels" in t:
        c_lo, c_hi = t["num_channels"]
        kwargs["num_channels"] = 2 * int(rng.integers(int(c_lo) // 2, int(c_hi) // 2 + 1))  # two columns: even
    kwargs["snr_range"] = tuple(t["snr_range"])
    kwargs["sampling_frequency"] = float(t["sampling_frequency"])
    return kwargs


def _include(item: dict[str, Any], out: Path, index: dict[str, Any], where: str = "set.include") -> None:
    """Convert someone else's ground-truth recording into the set (a SpikeInterface folder + NAME.gt/).

    ``probe`` attaches a generated geometry to a file that has none (``tetrode``: the 4 channels in file order);
    ``gt_shift_samples`` moves every GT time by that many samples (after recording.readers's reading, which already
    makes MATLAB's 1-based times 0-based), for files whose times follow another event than the extracellular spike.
    """
    from deepspike.recording.ground_truth import load_ground_truth
    from deepspike.recording.readers import open_recording
    from deepspike.recording.synthetic import save_pair

    _check_include(item, where)
    path = Path(str(item["path"]))
    fs = item.get("sampling_frequency")
    tier = str(item.get("tier") or "included")
    name = f"{tier}_{path.name.split('.')[0]}"
    folder, gt_folder = out / name, out / f"{name}.gt"
    made = {"tier": tier, "source": str(path.resolve()), "sampling_frequency": fs}
    made.update({k: item[k] for k in ("probe", "gt_shift_samples") if item.get(k) is not None})
    if _kept(folder, index["recordings"].get(name), made):
        return
    rec = open_recording(path, **({"sampling_frequency": float(fs)} if fs else {}))
    gt = load_ground_truth(path, recording=rec)
    if gt is None:
        raise RecordingError(f"{path}: no ground truth to include in the set; give a recording that carries it")
    if item.get("probe"):
        rec = _with_probe(rec, str(item["probe"]), f"{where}.probe")
    if item.get("gt_shift_samples"):
        gt = shift_ground_truth(gt, int(item["gt_shift_samples"]), rec.get_num_samples(segment_index=0))
    save_pair(rec, gt, folder, gt_folder, progress=False)
    index["recordings"][name] = {**made, "fs": rec.get_sampling_frequency(), "num_units": len(gt.unit_ids),
                                 "num_channels": rec.get_num_channels()}  # fmt: skip


def _check_include(item: Any, where: str) -> None:
    if not isinstance(item, dict) or not item.get("path"):
        raise DeepSpikeError(f"{where}.path: each include needs a path, e.g. {{path: FILE.mat, tier: NAME}}")
    for key in sorted(set(item) - INCLUDE_KEYS):
        raise DeepSpikeError(f"{where}.{key}: unknown key (known: {sorted(INCLUDE_KEYS)}; see conf/bench.yaml)")
    shift = item.get("gt_shift_samples")
    if shift is not None and (isinstance(shift, bool) or not float(shift).is_integer()):
        raise DeepSpikeError(f"{where}.gt_shift_samples must be a whole number of samples, got {shift!r}")


def _with_probe(rec: Any, kind: str, where: str) -> Any:
    """``rec`` with a generated probe (contacts wired to its channels in order); a channel-count mismatch is refused."""
    from deepspike.recording.probes import make_probe

    try:
        probe = make_probe(kind, rec.get_num_channels() if kind != "tetrode" else None)
    except DeepSpikeError as e:
        raise DeepSpikeError(f"{where}: {e}") from e
    if probe.get_contact_count() != rec.get_num_channels():
        raise DeepSpikeError(
            f"{where}: a {kind} has {probe.get_contact_count()} contacts but the recording has "
            f"{rec.get_num_channels()} channels; drop the probe key or pick the matching probe"
        )
    attached = rec.set_probe(probe)
    return rec if attached is None else attached  # in place since SpikeInterface 0.105


def shift_ground_truth(gt: Any, shift: int, num_samples: int) -> Any:
    """GT sorting with every spike time moved by ``shift`` samples; spikes moved off the recording are dropped."""
    from spikeinterface.core import NumpySorting

    trains = {}
    for u in gt.unit_ids:
        t = np.asarray(gt.get_unit_spike_train(u, segment_index=0), dtype=np.int64) + int(shift)
        trains[u] = t[(t >= 0) & (t < num_samples)]
    shifted = NumpySorting.from_unit_dict([trains], gt.get_sampling_frequency())
    for key in gt.get_property_keys():
        shifted.set_property(key, gt.get_property(key))
    shifted.annotate(gt_shift_samples=int(shift))
    return shifted


def _kept(folder: Path, stored: dict[str, Any] | None, made: dict[str, Any]) -> bool:
    """A recording of the set is kept when both folders are complete and it was made the same way."""
    complete = all((f / "si_folder.json").is_file() for f in (folder, folder.with_name(folder.name + ".gt")))
    return complete and stored is not None and {k: stored.get(k) for k in made} == made


def _stamp(path: str) -> list[int]:
    """Size and modification time of a recording file, or of a folder's files: a remade recording is a new job."""
    p = Path(path)
    files = sorted(p.rglob("*")) if p.is_dir() else [p]
    stats = [f.stat() for f in files if f.is_file()]
    return [sum(st.st_size for st in stats), max((st.st_mtime_ns for st in stats), default=0)]
