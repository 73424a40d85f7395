"""The benchmark set (``deepspike-bench make_set=true``): seeded, tiered recordings of SpikeInterface's generators
(single-channel tiers, probe tiers and drift tiers, whose recordings come with a static twin) plus included third-party
files with their ground truth, with an index that lets a rerun keep what is already there. Tiers marked ``opt_in``
(large: drift, dense, long) are built only when ``set.select`` names them, so the default set stays as it was.
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


TIER_KEYS = {"n", "num_units", "snr_range", "recipe", "recipe_overrides", "amplitude_drift"}  # single-channel tiers


PROBE_TIER_KEYS = {"n", "probe", "num_channels", "num_units", "snr_range", "sampling_frequency"}  # multi-channel


DRIFT_TIER_KEYS = {"n", "motions", "drift_um", "num_channels", "num_units", "sampling_frequency"}  # drift + twin


OPTIONAL_TIER_KEYS = {"duration_s", "opt_in"}  # any tier: its own length (default set.duration_s); built on request


MOTION_KEYS = {"drift_mode", "non_rigid_gradient", "period_s", "t_start_drift", "t_end_drift", "bump_interval_s"}


STATIC_SUFFIX = "_static"  # drift tier NAME writes NAME_static_i beside NAME_i: same spikes, no motion


INCLUDE_KEYS = {"path", "sampling_frequency", "tier", "probe", "gt_shift_samples"}


SET_KEYS = {"seed", "duration_s", "include", "broad_overrides", "tiers", "select"}


def make_set(conf: BenchConfig) -> Path:
    """Write the benchmark set to ``conf.out`` (seeded; complete recordings are kept, so a rerun resumes)."""
    s = conf.set
    for key in sorted(set(s) - SET_KEYS):
        raise DeepSpikeError(f"set.{key}: unknown key (known: {sorted(SET_KEYS)}; see conf/bench.yaml)")
    tiers = selected_tiers(s)
    for tier, t in tiers.items():  # every tier is checked before anything is generated
        _check_tier(tier, t, set(s["tiers"]))
    out = own_folder(Path(conf.out))
    index_file = out / SET_INDEX
    index = json.loads(index_file.read_text()) if index_file.is_file() else {"recordings": {}}
    for tier, t in tiers.items():
        for i in range(int(t.get("n", 0))):
            _make_recording(s, tier, t, i, out, index)
            write_json_atomic(index_file, index, default=str)
    for i, item in enumerate(s.get("include") or []):
        _include(item, out, index, f"set.include[{i}]")
        write_json_atomic(index_file, index, default=str)
    write_json_atomic(index_file, index, default=str)
    print(f"benchmark set: {len(index['recordings'])} recordings in {out} (index {index_file})")
    return out


def selected_tiers(s: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The tiers to build: those ``set.select`` names, or (null) every tier not marked ``opt_in``."""
    tiers = s.get("tiers") or {}
    select = s.get("select")
    if select is None:
        return {name: t for name, t in tiers.items() if not t.get("opt_in", False)}
    if isinstance(select, str) or not all(isinstance(name, str) for name in select):
        raise DeepSpikeError(
            f"set.select must be a list of tier names, e.g. 'set.select=[drift,dense]', got {select!r}"
        )
    for name in select:
        if name not in tiers:
            raise DeepSpikeError(f"set.select: unknown tier {name!r} (tiers of set.tiers: {sorted(tiers)})")
    return {name: tiers[name] for name in select}


def _make_recording(s: dict[str, Any], tier: str, t: dict[str, Any], i: int, out: Path, index: dict[str, Any]) -> None:
    """Recording ``i`` of a tier (and a drift tier's static twin), unless it is already there, made the same way."""
    from deepspike.recording.synthetic import (
        generate_drifting_pair,
        generate_probe_recording,
        generate_recording,
        save_pair,
    )

    name = f"{tier}_{i:02d}"
    seed = int(np.random.default_rng([int(s["seed"]), zlib.crc32(tier.encode()), i]).integers(0, 2**31 - 1))
    kwargs = _tier_kwargs(t, seed, s.get("broad_overrides") or {})
    if "motions" in t:  # rigid and non-rigid cases take turns
        kwargs["motion"] = dict(t["motions"][i % len(t["motions"])])
    duration = float(t.get("duration_s", s["duration_s"]))
    made = {"tier": tier, "seed": seed, "duration_s": duration, **jsonable(kwargs)}
    if "motion" in kwargs:
        twin = f"{tier}{STATIC_SUFFIX}_{i:02d}"
        pairs = {name: {**made, "static_twin": twin}, twin: {**made, "tier": tier + STATIC_SUFFIX, "twin_of": name}}
    else:
        pairs = {name: made}
    if all(_kept(out / n, index["recordings"].get(n), m) for n, m in pairs.items()):
        return
    if "motion" in kwargs:
        drifting, static, gt = generate_drifting_pair(seed, duration, **kwargs)
        recordings = [drifting, static]
    elif "probe" in kwargs:
        rec, gt = generate_probe_recording(seed, duration, **kwargs)
        recordings = [rec]
    else:
        rec, gt = generate_recording(seed, duration, "random", **kwargs)
        recordings = [rec]
    for (n, m), rec in zip(pairs.items(), recordings, strict=True):
        save_pair(rec, gt, out / n, out / f"{n}.gt", progress=False)
        info = {"fs": rec.get_sampling_frequency(), "num_units": len(gt.unit_ids),
                "num_channels": rec.get_num_channels()}  # fmt: skip
        index["recordings"][n] = {**m, **info}
        print(f"{n}: {info['num_units']} units, {info['num_channels']} channels at {info['fs']:g} Hz, {duration:g} s",
              flush=True)  # fmt: skip


def _check_tier(tier: str, t: dict[str, Any], declared: set[str] | None = None) -> None:
    """Unknown keys and bad values of ``set.tiers.NAME`` fail before anything is generated, naming the key."""
    from deepspike.recording.probes import PROBES

    where = f"set.tiers.{tier}"
    required = DRIFT_TIER_KEYS if "motions" in t else PROBE_TIER_KEYS if "probe" in t else set()
    known = (required or TIER_KEYS) | OPTIONAL_TIER_KEYS
    if t.get("probe") == "tetrode":
        required, known = required - {"num_channels"}, known - {"num_channels"}  # always 4
    for key in sorted(set(t) - known):
        raise DeepSpikeError(f"{where}.{key}: unknown key (known: {sorted(known)}; see conf/bench.yaml)")
    for key in sorted(required - set(t)):  # no hidden defaults: probe and drift tiers state all their ranges
        raise DeepSpikeError(f"{where}.{key}: missing (this tier needs {sorted(required)})")
    checks = [
        ("n", int(t.get("n", 0)) >= 0, "must be >= 0"),
        ("probe", t.get("probe", "tetrode") in PROBES, f"must be one of {list(PROBES)}"),
        ("num_units", _range_ok(t.get("num_units", [1, 1]), 1), "must be [low, high] with 1 <= low <= high"),
        ("num_channels", _range_ok(t.get("num_channels", [4, 4]), 4), "must be [low, high] with 4 <= low <= high"),
        ("snr_range", _range_ok(t.get("snr_range", [1, 1]), 0), "must be [low, high] with 0 < low <= high"),
        ("duration_s", _positive(t.get("duration_s", 1.0)), "must be a number of seconds > 0"),
        ("opt_in", isinstance(t.get("opt_in", False), bool), "must be true or false"),
        ("amplitude_drift", 0 <= float(t.get("amplitude_drift", 0.0)) < 1 and not ("recipe" in t and
         t.get("amplitude_drift")), "must be in [0, 1) and only without a recipe (a recipe drifts by its `drift`)"),
        ("drift_um", _positive(t.get("drift_um", 1.0)), "must be > 0 um"),
        ("num_channels", ("motions" not in t and t.get("probe") != "neuropixels")
         or all(int(v) % 4 == 0 for v in t["num_channels"]),
         "must be multiples of 4 (a Neuropixels-like probe: 4 columns)"),
    ]  # fmt: skip
    for key, ok, msg in checks:
        if not ok:
            raise DeepSpikeError(f"{where}.{key} {msg}, got {t.get(key)!r} (see conf/bench.yaml)")
    if "motions" in t:
        _check_motions(where, t["motions"], tier + STATIC_SUFFIX in (declared or set()))


def _check_motions(where: str, motions: Any, twin_clash: bool) -> None:
    """A drift tier's ``motions``: a non-empty list of SpikeInterface motion_list entries with known keys."""
    if twin_clash:
        raise DeepSpikeError(f"{where}: its static twins are written as tier {where.split('.')[-1]}{STATIC_SUFFIX}, "
                             "which set.tiers also declares; rename one of them")  # fmt: skip
    if not isinstance(motions, list | tuple) or not motions or not all(isinstance(m, dict) for m in motions):
        raise DeepSpikeError(
            f"{where}.motions must be a list of motions, e.g. [{{drift_mode: zigzag}}], got {motions!r}"
        )
    for k, m in enumerate(motions):
        for key in sorted(set(m) - MOTION_KEYS):
            raise DeepSpikeError(f"{where}.motions[{k}].{key}: unknown key (known: {sorted(MOTION_KEYS)})")
        if m.get("drift_mode", "zigzag") not in ("zigzag", "bump", "random_walk"):
            raise DeepSpikeError(f"{where}.motions[{k}].drift_mode must be zigzag, bump or random_walk, got "
                                 f"{m.get('drift_mode')!r}")  # fmt: skip


def _positive(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and float(v) > 0


def _range_ok(v: Any, low: float) -> bool:
    return isinstance(v, list | tuple) and len(v) == 2 and low <= float(v[0]) <= float(v[1]) and float(v[0]) > 0


def _tier_kwargs(t: dict[str, Any], seed: int, recipe_overrides: dict[str, Any]) -> dict[str, Any]:
    """generate_recording (or, with ``probe``, generate_probe_recording) arguments of one recording of a tier.

    num_units (and a shank's num_channels) are drawn from the tier's ranges with the recording's seed.
    """
    if t.get("motions"):
        return _drift_tier_kwargs(t, seed)
    if t.get("probe"):
        return _probe_tier_kwargs(t, seed)
    if t.get("recipe"):
        recipe = conf_values(f"synthetic/{t['recipe']}.yaml")["recipe"]
        recipe.update(recipe_overrides)
        recipe.update(t.get("recipe_overrides") or {})
        return {"recipe": recipe}
    lo, hi = t.get("num_units", [3, 3])
    num_units = int(np.random.default_rng(seed).integers(int(lo), int(hi) + 1))
    kwargs = {"num_units": num_units, "snr_range": tuple(t.get("snr_range", (8.0, 25.0)))}
    if t.get("amplitude_drift"):  # only when set: the index of the tiers without it stays as it was
        kwargs["amplitude_drift"] = float(t["amplitude_drift"])
    return kwargs


def _probe_tier_kwargs(t: dict[str, Any], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    lo, hi = t["num_units"]
    kwargs: dict[str, Any] = {"probe": str(t["probe"]), "num_units": int(rng.integers(int(lo), int(hi) + 1))}
    if "num_channels" in t:
        c_lo, c_hi = t["num_channels"]
        step = 4 if t["probe"] == "neuropixels" else 2  # columns: a shank has two, a neuropixels probe four
        kwargs["num_channels"] = step * int(rng.integers(int(c_lo) // step, int(c_hi) // step + 1))
    kwargs["snr_range"] = tuple(t["snr_range"])
    kwargs["sampling_frequency"] = float(t["sampling_frequency"])
    return kwargs


def _drift_tier_kwargs(t: dict[str, Any], seed: int) -> dict[str, Any]:
    """generate_drifting_pair arguments: recording i of the tier takes motion ``i % len(motions)`` (see make_set)."""
    rng = np.random.default_rng(seed)
    lo, hi = t["num_units"]
    c_lo, c_hi = t["num_channels"]
    return {
        "num_units": int(rng.integers(int(lo), int(hi) + 1)),
        "num_channels": 4 * int(rng.integers(int(c_lo) // 4, int(c_hi) // 4 + 1)),
        "drift_um": float(t["drift_um"]),
        "sampling_frequency": float(t["sampling_frequency"]),
    }


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
