"""Benchmark: features against the supervised ceiling. Does an encoder close the gap from PCA to what the windows hold?

    python bench/features.py                                    # report draw, every set (9.4 min, 2 shared cores)
    python bench/features.py --draw dev                         # dev draw, also PCA sizes 3,4,6,8,12 (10.4 min)
    python bench/features.py --checkpoints bundled,checkpoints/deepspike_foundation_v2.safetensors,runs/x.safetensors
    python bench/features.py --quick                            # smoke test: 1 short recording of 3 tiers

For every set, on the same windows and with the sort's default clustering (``conf/cluster/gmm.yaml``):

- ``ceiling``: a supervised read-out told the units, scikit-learn's ``LinearDiscriminantAnalysis``, 5-fold
  cross-validated (``bench.embedding.supervised_labels``): what a linear read-out of the window reaches;
- ``pca``: the model-free features of the sort, its size chosen on the dev draw (``PCA_COMPONENTS``);
- ``encoder:NAME``: each encoder of ``--checkpoints`` (``bundled``: the default, ``deepspike_synth_v1``);
- ``hybrid:NAME``: ``features=hybrid`` with that encoder (its embedding and the PCA side by side; ``--no-hybrid``
  leaves it out);
- per feature, ``minus_pca`` and the share of the PCA-to-ceiling gap it closes, (feature - pca) / (ceiling - pca),
  on sets where ceiling - pca >= ``ROOM`` (else null: there, read ``minus_pca``).

Score: ``deepspike.compare_labels``' accuracy per GT unit (units matched one-to-one), the mean over units, then over
the set's recordings. Sets:

- single channel (``sort_snippets``: conformed windows, then the features, then the clustering): ``quiroga`` (the 8
  Easy1/Easy2 frame files), ``martinez`` (the 5 simulations, classes 1-2: class 0 is probably multi-unit), and the
  generated tiers of ``bench.embedding`` (``few``, ``many``, ``similar``, ``low_snr``, ``overlap``) plus ``broad``
  (``conf/synthetic/broad.yaml``: the foundation corpus's recipe, 2-20 units, 16-48 kHz, bursts, near-copies,
  background units) with ``--per-tier`` recordings of 30 s each; windows of GT-matched detections.
- multi-channel (``sorting.multichannel``: detection, one event per spike across neighbouring channels, motion
  correction where the sort would apply it, then per neighbourhood ``neighbourhood_features`` with the encoder or
  ``embed=None`` (PCA of the concatenated windows) and the neighbourhood clustering): ``tetrode`` and ``shank`` (the
  recipes of ``conf/bench.yaml``'s tiers, 30 s) and ``drift`` (``generate_drifting_probe_recording``, 64 channels,
  60 s, 20 units, +-25 um zigzag). Only GT-matched events are clustered and scored, and per neighbourhood only the
  units with at least ``MIN_PAIR_EVENTS`` events there (a unit's events spread over the neighbourhoods of its
  peak channels; the merge of units across neighbourhoods, which uses templates, not features, is left out). The
  ceiling is LDA on the concatenated neighbourhood windows.

Draws: the generated recordings of ``--draw dev`` and ``--draw report`` have disjoint seeds (``DRAW_SEEDS``):
choose on dev (the PCA size, the hybrid), quote report. Quiroga and Martinez are fixed files, in both draws: their
report figures are not held out. Writes ``bench/results/features.json`` (dev: ``features_dev.json``) and a PNG beside
it (a bar chart per set), and prints the table.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench._common import RESULTS, machine, save_figure, write_json  # noqa: E402
from bench.ceiling import BUNDLED  # noqa: E402
from bench.embedding import (  # noqa: E402
    DRAW_SEEDS,
    MARTINEZ,
    QUIROGA,
    TIERS,
    martinez_cases,
    mean_accuracy,
    quiroga_cases,
    snippet_accuracy,
    supervised_labels,
    synthetic_cases,
)

ROOM = 0.05  # a gap share is computed where ceiling - pca is at least this; below, minus_pca is the figure
NEVER_WORSE = 0.01  # goal: the default encoder at most this below PCA on any set
GAP_GOAL = 0.25  # goal: at least this share of the gap closed, mean over the sets with room
PCA_SIZES = (3, 4, 6, 8, 12)  # measured on the dev draw
# Chosen on the dev draw (bench/results/features_dev.json, "pca_choice"): the size with the best mean over the sets
# of each kind. Single channel: sort_snippets' pca_components (the sort's default: 8); multi-channel: the principal
# components of the concatenated neighbourhood windows (multichannel.n_components of features=pca; default 12).
# Dev means, sizes 3/4/6/8/12: single 0.691/0.688/0.644/0.621/0.557, multi 0.846/0.822/0.829/0.814/0.815.
PCA_COMPONENTS = {"single": 3, "multi": 3}
SINGLE_TIERS: dict[str, dict[str, Any]] = {**TIERS, "broad": {"recipe": "broad"}}  # seeds: tier index 0-5
PROBE_TIERS = ("tetrode", "shank")  # conf/bench.yaml set.tiers recipes; seeds: tier index 10, 11
DRIFT = {"num_channels": 64, "duration_s": 60.0, "num_units": 20, "drift_um": 25.0}  # seeds: tier index 12
PER_TIER = {"single": 6, "multi": 3}
PROBE_DURATION_S = 30.0
MIN_PAIR_EVENTS = 20  # events of one GT unit in one neighbourhood for the pair to be clustered and scored
QUICK = {"per_tier": 1, "duration_s": 8.0, "single": ("few", "similar"), "multi": ("tetrode",)}

Case = dict[str, Any]  # one recording of a set: {"set", "name", "kind", ...the data its scorer needs}


# ------------------------------------------------------------------------------------------------ the figures


def gap(ceiling: float, pca: float, feature: float, room: float = ROOM) -> dict[str, float | None]:
    """``feature``'s place between PCA and the ceiling: its margin over PCA, and the share of the gap it closes
    where there is room for one (ceiling - pca >= ``room``; else None, since a tiny gap makes the share noise)."""
    width = ceiling - pca
    return {"minus_pca": feature - pca, "share": (feature - pca) / width if width >= room else None}


def set_summary(recordings: dict[str, dict[str, float]], features: list[str]) -> dict[str, Any]:
    """Mean of every figure over a set's recordings, its room (ceiling - pca) and each feature's gap share."""
    keys = [k for k in next(iter(recordings.values())) if k not in ("n_events", "n_units")]
    mean = {k: float(np.mean([r[k] for r in recordings.values()])) for k in keys}
    out: dict[str, Any] = {"mean": mean, "room": mean["ceiling"] - mean["pca"]}
    out["gap"] = {f: gap(mean["ceiling"], mean["pca"], mean[f]) for f in features}
    return out


def goals(sets: dict[str, Any], features: list[str]) -> dict[str, Any]:
    """Per kind (single / multi) and feature: the worst margin over PCA (goal: >= -NEVER_WORSE) and the mean gap
    share over the sets with room (goal: >= GAP_GOAL; None when no set has room)."""
    out: dict[str, Any] = {}
    for kind in ("single", "multi"):
        mine = {n: s for n, s in sets.items() if s["kind"] == kind}
        if not mine:
            continue
        out[kind] = {}
        for f in features:
            worst = min(mine, key=lambda n: mine[n]["gap"][f]["minus_pca"])
            shares = [s["gap"][f]["share"] for s in mine.values() if s["gap"][f]["share"] is not None]
            share = float(np.mean(shares)) if shares else None
            out[kind][f] = {
                "worst_minus_pca": mine[worst]["gap"][f]["minus_pca"],
                "worst_set": worst,
                "never_worse_met": bool(mine[worst]["gap"][f]["minus_pca"] >= -NEVER_WORSE),
                "mean_share": share,
                "sets_with_room": len(shares),
                "share_met": None if share is None else bool(share >= GAP_GOAL),
            }
    return out


def choose_pca(sets: dict[str, Any], sizes: tuple[int, ...]) -> dict[str, Any]:
    """Per kind, the PCA size with the best mean over the sets (dev draw), with every size's mean."""
    out: dict[str, Any] = {}
    for kind in ("single", "multi"):
        means = [s["mean"] for s in sets.values() if s["kind"] == kind]
        if means:
            by_size = {k: float(np.mean([m[f"pca_{k}"] for m in means])) for k in sizes}
            out[kind] = {"mean_by_size": by_size, "chosen": max(by_size, key=lambda k: by_size[k])}
    return out


# ------------------------------------------------------------------------------------------------ single channel


def single_cases(draw: str, per_tier: int, duration_s: float, tiers: tuple[str, ...], fixed: bool) -> list[Case]:
    """Quiroga and Martinez (``fixed``: the third-party files) and the generated single-channel tiers."""
    raw = []
    if fixed:
        raw += quiroga_cases() + [c for c in martinez_cases() if c[0] == "martinez"]
    raw += synthetic_cases(draw, {t: SINGLE_TIERS[t] for t in tiers}, per_tier, duration_s) if tiers else []
    return [
        {"set": ds, "name": name, "kind": "single", "frames": frames, "gt": gt, "fs": fs, "peak": peak, "noise": noise}
        for ds, name, frames, gt, fs, peak, noise in raw
    ]


def score_single(case: Case, encoders: dict[str, str | None], pca_sizes: tuple[int, ...], hybrid: bool) -> dict:
    """Every figure of one single-channel recording, all through ``sort_snippets`` (same windows, clustering)."""
    args = (case["frames"], case["gt"], case["fs"], case["peak"])
    out: dict[str, float] = {}
    for k in pca_sizes:
        out[f"pca_{k}"], waves = snippet_accuracy(*args, None, "gmm", case["noise"], "pca", k)
    out["ceiling"] = mean_accuracy(case["gt"], supervised_labels(waves, case["gt"]))
    for name, path in encoders.items():
        out[f"encoder:{name}"] = snippet_accuracy(*args, path, "gmm", case["noise"], "encoder")[0]
        if hybrid:
            k = PCA_COMPONENTS["single"]
            out[f"hybrid:{name}"] = snippet_accuracy(*args, path, "gmm", case["noise"], "hybrid", k)[0]
    out.update(n_events=float(len(case["gt"])), n_units=float(len(np.unique(case["gt"]))))
    return out


# ------------------------------------------------------------------------------------------------ multi-channel


def multi_cases(draw: str, per_tier: int, duration_s: float, tiers: tuple[str, ...]) -> list[Case]:
    """Generated tetrodes and shanks (conf/bench.yaml recipes) and the drifting 64-channel probe, as events per
    neighbourhood (``neighbourhood_events``)."""
    from deepspike.defaults import conf_values
    from deepspike.evaluation.bench_set import _tier_kwargs
    from deepspike.recording.synthetic import generate_drifting_probe_recording, generate_probe_recording

    recipes = conf_values("bench.yaml")["set"]["tiers"]
    cases = []
    for tier in tiers:
        for i in range(per_tier if tier != "drift" else 1):
            seed = DRAW_SEEDS[draw] + 100 * (10 + (*PROBE_TIERS, "drift").index(tier)) + i
            if tier == "drift":  # its own size: a probe long enough for the motion estimate
                opts = {k: v for k, v in DRIFT.items() if k != "duration_s"}
                _, rec, gt, _ = generate_drifting_probe_recording(seed, DRIFT["duration_s"], **opts)
            else:
                rec, gt = generate_probe_recording(seed, duration_s, **_tier_kwargs(recipes[tier], seed, {}))
            events = neighbourhood_events(rec, gt)
            pairs = sum(len(np.unique(e["gt"])) for e in events)
            cases.append({"set": tier, "name": f"seed{seed}_units{len(gt.unit_ids)}_ch{rec.get_num_channels()}",
                          "kind": "multi", "events": events, "pairs": pairs})  # fmt: skip
    return cases


def neighbourhood_events(recording: Any, gt: Any) -> list[dict[str, Any]]:
    """The sort's multi-channel front end with the default options, up to the features: band-pass, motion correction
    (where ``motion.enabled=auto`` applies it), detection, one event per spike across neighbouring channels, windows
    on each event's neighbourhood; per clustering key, the GT-matched events of units with >= MIN_PAIR_EVENTS there."""
    from deepspike.recording.preprocess import bandpass, in_memory
    from deepspike.sorting.motion import correct_motion
    from deepspike.sorting.multichannel import clustering_keys, deduplicate_events, neighbourhoods
    from deepspike.sorting.params import SortParams
    from deepspike.spec import WindowSpec
    from deepspike.spikes.extract import ExtractParams, chunk_seconds, extract_spikes
    from deepspike.spikes.windows import extract_neighbour_windows

    params, spec = SortParams.from_options({}), WindowSpec()
    ex = ExtractParams.from_config(params.extract)
    filtered = bandpass(recording, ex.freq_min, ex.freq_max, ex.filtered)
    chunk = chunk_seconds(filtered, ex)
    filtered = in_memory(filtered, 4096.0, chunk, params.workers())
    filtered = correct_motion(filtered, params.motion, params.workers(), False, 4096.0).recording
    spikes = extract_spikes(filtered, ExtractParams.from_config(params.extract, filtered=True), spec, gt=gt)
    near = neighbourhoods(recording, params.multichannel)
    window = round(params.multichannel.dedup_ms * recording.get_sampling_frequency() / 1000)
    keep = deduplicate_events(spikes.sample_index, spikes.channel, spikes.amplitude, near, window)
    keep &= spikes.labels >= 0
    sample, channel = spikes.sample_index[keep], spikes.channel[keep].astype(np.int64)
    label, amp = spikes.labels[keep], spikes.amplitude[keep].astype(np.float64)
    layout = np.full((len(near), int(near.sum(axis=1).max())), -1, dtype=np.int64)
    for c in range(len(near)):
        layout[c, : near[c].sum()] = np.flatnonzero(near[c])
    every = extract_neighbour_windows(filtered, sample, channel, layout[channel], spikes.noise_levels, spec, chunk)
    keys = clustering_keys(near)[channel]
    events = []
    for key in np.unique(keys):
        idx = np.flatnonzero(keys == key)
        units, counts = np.unique(label[idx], return_counts=True)
        idx = idx[np.isin(label[idx], units[counts >= MIN_PAIR_EVENTS])]
        if not len(idx):
            continue
        width = int(near[channel[idx[0]]].sum())
        events.append({"key": int(key), "waves": every[idx, :width], "gt": label[idx], "amplitude": amp[idx]})
    return events


def cluster_neighbourhoods(
    events: list[dict[str, Any]], embed: Callable[[np.ndarray], np.ndarray] | None, spec: Any, n_components: int,
    hybrid: bool = False,
) -> float:  # fmt: skip
    """Mean accuracy over the (neighbourhood, GT unit) pairs of the neighbourhood clustering of these features."""
    from deepspike.evaluation.compare import compare_labels
    from deepspike.sorting.clustering.cluster import cluster_spikes
    from deepspike.sorting.multichannel import neighbourhood_features
    from deepspike.sorting.params import SortParams

    params = SortParams.from_options({})
    mc = replace(params.multichannel, n_components=n_components)
    cluster = replace(params.cluster, covariance_type=mc.covariance_type)
    threshold = float(params.extract["threshold"])
    acc = []
    for e in events:
        w = e["waves"]
        feats = neighbourhood_features(w, embed, mc, spec, params.seed, hybrid)
        with warnings.catch_warnings():  # a small neighbourhood caps its unit count: expected, it would bury the table
            warnings.filterwarnings("ignore", message=r"\d+ spikes allow at most", category=UserWarning)
            res = cluster_spikes(
                feats, w.reshape(len(w), -1), None, e["amplitude"], cluster, threshold, params.workers()
            )
        acc += list(compare_labels(e["gt"], res.labels)["accuracy"])
    return float(np.mean(acc))


def score_multi(case: Case, encoders: dict[str, str | None], pca_sizes: tuple[int, ...], hybrid: bool) -> dict:
    """Every figure of one multi-channel recording: the neighbourhood features and clustering of the sort."""
    from deepspike.evaluation.compare import compare_labels
    from deepspike.sorting.features import embed_waves, load_sort_encoder
    from deepspike.sorting.params import SortParams
    from deepspike.spec import WindowSpec

    events = case["events"]
    out: dict[str, float] = {f"pca_{k}": cluster_neighbourhoods(events, None, WindowSpec(), k) for k in pca_sizes}
    acc = []
    for e in events:
        flat = e["waves"].reshape(len(e["waves"]), -1)
        acc += list(compare_labels(e["gt"], supervised_labels(flat, e["gt"]))["accuracy"])
    out["ceiling"] = float(np.mean(acc))
    n_components = SortParams.from_options({}).multichannel.n_components
    for name, path in encoders.items():
        enc = load_sort_encoder(path)
        grid = ("n_before", "n_after", "sampling_frequency")
        if any(getattr(enc.window_spec, g) != getattr(WindowSpec(), g) for g in grid):
            raise SystemExit(f"encoder {name}: its window grid is not the default one the events were cut on")

        def embed(x: np.ndarray, enc: Any = enc) -> np.ndarray:
            return embed_waves(enc, x)

        out[f"encoder:{name}"] = cluster_neighbourhoods(events, embed, enc.window_spec, n_components)
        if hybrid:
            out[f"hybrid:{name}"] = cluster_neighbourhoods(events, embed, enc.window_spec, n_components, True)
    out.update(n_events=float(sum(len(e["gt"]) for e in events)), n_units=float(case["pairs"]))
    return out


# ------------------------------------------------------------------------------------------------ output


def plot(sets: dict[str, Any], features: list[str], path: Path) -> None:
    """One bar chart per set: ceiling, PCA and each feature (mean accuracy over the set's recordings)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(sets))
    rows = -(-len(sets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    bars = ["ceiling", "pca", *features]
    colors = ["C2", "C0"] + [("C4" if f.startswith("encoder:") else "C1") for f in features]
    for ax, (name, s) in zip(axes.flat, sets.items(), strict=False):
        ax.bar(np.arange(len(bars)), [s["mean"][b] for b in bars], color=colors)
        ax.set_xticks(np.arange(len(bars)), [short(b) for b in bars], rotation=40, ha="right", fontsize=7)
        lo = min(s["mean"][b] for b in bars)
        ax.set_ylim(max(0.0, lo - 0.1), 1.0)
        ax.set_title(f"{name} ({s['kind']}, room {s['room']:+.3f})", fontsize=9)
    for ax in list(axes.flat)[len(sets) :]:
        ax.axis("off")
    fig.suptitle("mean accuracy over GT units: ceiling (LDA, cross-validated), PCA, encoders, hybrids", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def short(feature: str) -> str:
    """A bar or column label: ``encoder:deepspike_synth_v1`` -> ``enc:synth_v1``."""
    kind, _, name = feature.partition(":")
    name = name.removeprefix("deepspike_")
    return {"encoder": f"enc:{name}", "hybrid": f"hyb:{name}"}.get(kind, feature)


def table(sets: dict[str, Any], features: list[str]) -> list[str]:
    """The printed table: per set the ceiling, PCA, each feature, and each feature's gap share (or margin)."""
    head = f"{'set':14s} {'kind':6s} {'ceiling':>7s} {'pca':>7s} " + " ".join(f"{short(f):>18s}" for f in features)
    lines = [head]
    for name, s in sets.items():
        m = s["mean"]
        cells = []
        for f in features:
            g = s["gap"][f]
            share = f"{g['share']:+.0%}" if g["share"] is not None else f"d{g['minus_pca']:+.3f}"
            cells.append(f"{m[f]:.3f} ({share:>6s})".rjust(18))
        lines.append(f"{name:14s} {s['kind']:6s} {m['ceiling']:7.3f} {m['pca']:7.3f} " + " ".join(cells))
    return lines


def encoder_paths(text: str) -> dict[str, str | None]:
    """``--checkpoints``: name (the file's stem) -> path (None: the bundled default)."""
    from deepspike.sorting.features import DEFAULT_CHECKPOINT

    out: dict[str, str | None] = {}
    for c in (c.strip() for c in text.split(",") if c.strip()):
        path = None if c == BUNDLED else c
        if path is not None and not Path(path).exists():
            raise SystemExit(f"--checkpoints: {path} not found")
        out[Path(path).stem if path else DEFAULT_CHECKPOINT.stem] = path
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--checkpoints",
        default=f"{BUNDLED},checkpoints/deepspike_foundation_v2.safetensors",
        help=f"encoders, comma separated ({BUNDLED} = the default checkpoint)",
    )
    ap.add_argument("--draw", choices=sorted(DRAW_SEEDS), default="report", help="seeds of the generated recordings")
    ap.add_argument("--no-hybrid", action="store_true", help="leave out features=hybrid")
    ap.add_argument("--per-tier", type=int, default=None, help="generated recordings per tier (drift: always 1)")
    ap.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}, no third-party data")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/features[_dev].json; PNG beside)")
    args = ap.parse_args(argv)
    encoders = encoder_paths(args.checkpoints)
    if not encoders:
        ap.error("--checkpoints: name at least one encoder")
    dev = args.draw == "dev"
    pca_sizes = PCA_SIZES if dev else ()
    hybrid = not args.no_hybrid
    if args.quick:
        single_tiers, multi_tiers, fixed = QUICK["single"], QUICK["multi"], False
        per = {"single": QUICK["per_tier"], "multi": QUICK["per_tier"]}
        durations = (QUICK["duration_s"], QUICK["duration_s"])
    else:
        single_tiers, multi_tiers, fixed = tuple(SINGLE_TIERS), (*PROBE_TIERS, "drift"), True
        per = dict(PER_TIER) if args.per_tier is None else {"single": args.per_tier, "multi": args.per_tier}
        durations = (30.0, PROBE_DURATION_S)
        for path in (QUIROGA, MARTINEZ):
            if not path.exists():
                ap.error(f"{path} not found (third-party data lives in ../shared/data); --quick runs without it")
    out = Path(args.out) if args.out else RESULTS / ("features_dev.json" if dev else "features.json")

    t0 = time.perf_counter()
    cases = single_cases(args.draw, per["single"], durations[0], single_tiers, fixed)
    cases += multi_cases(args.draw, per["multi"], durations[1], multi_tiers)
    recordings: dict[str, dict[str, Any]] = {}
    for case in cases:
        t1 = time.perf_counter()
        scorer = score_single if case["kind"] == "single" else score_multi
        sizes = tuple(sorted({*pca_sizes, PCA_COMPONENTS[case["kind"]]}))
        r = scorer(case, encoders, sizes, hybrid)
        r["pca"] = r[f"pca_{PCA_COMPONENTS[case['kind']]}"]
        recordings.setdefault(case["set"], {})[case["name"]] = r
        figs = "  ".join(f"{short(k)} {v:.3f}" for k, v in r.items() if not k.startswith(("n_", "pca_")))
        print(f"{case['set']:10s} {case['name']:26s} {figs}  ({time.perf_counter() - t1:.1f} s)", flush=True)
    first = next(iter(next(iter(recordings.values())).values()))
    features = [k for k in first if ":" in k]  # encoder:NAME, hybrid:NAME
    kinds = {c["set"]: c["kind"] for c in cases}
    sets = {n: {"kind": kinds[n], **set_summary(r, features), "recordings": r} for n, r in recordings.items()}
    doc = {
        "machine": machine(),
        "command": " ".join(["python bench/features.py", *(sys.argv[1:] if argv is None else argv)]),
        "wall_s": round(time.perf_counter() - t0, 1),
        "draw": args.draw,
        "draw_seed_base": DRAW_SEEDS[args.draw],
        "fixed_files": "quiroga and martinez are the same third-party files in both draws (not held out)",
        "encoders": {n: p or "bundled" for n, p in encoders.items()},
        "pca_components": PCA_COMPONENTS,
        "pca_choice": choose_pca(sets, PCA_SIZES) if dev else "made on the dev draw (features_dev.json)",
        "room": ROOM,
        "score": "compare_labels mean accuracy over GT units (multi-channel: over (neighbourhood, unit) pairs with "
        f">= {MIN_PAIR_EVENTS} events), mean over the set's recordings; gap share = (feature - pca) / (ceiling - pca) "
        f"where ceiling - pca >= {ROOM}",
        "goals": goals(sets, features),
        "sets": sets,
    }
    write_json(out, doc)
    plot(sets, features, out.with_suffix(".png"))
    print("\n".join(table(sets, features)))
    for kind, g in doc["goals"].items():
        for f, v in g.items():
            share = "n/a" if v["mean_share"] is None else f"{v['mean_share']:+.0%} over {v['sets_with_room']} sets"
            print(f"{kind:6s} {short(f):18s} worst vs PCA {v['worst_minus_pca']:+.3f} ({v['worst_set']}) "
                  f"{'met' if v['never_worse_met'] else 'NOT met'}; gap share {share} "
                  f"{'' if v['share_met'] is None else 'met' if v['share_met'] else 'NOT met'}")  # fmt: skip
    if dev:
        for kind, c in doc["pca_choice"].items():
            print(f"PCA size ({kind}): " + ", ".join(f"{k}: {v:.4f}" for k, v in c["mean_by_size"].items())
                  + f" -> {c['chosen']}")  # fmt: skip
    print(f"wall {doc['wall_s']} s -> {out}, {out.with_suffix('.png')}")
    return doc


if __name__ == "__main__":
    main()
