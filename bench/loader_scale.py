"""The stream at the published run's scale, simulated on one machine, and loader cores per GPU (issue #25, item 5).

1. Simulation: a 5,000-shard corpus of uneven tiny shards (built once under bench/.cache/) streamed to 64 ranks x
   8 workers, each rank's loader built with ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set as torchrun sets them and
   its workers read in this process in the DataLoader's order (``StreamLoader.in_process``). Checked for every
   epoch: (a) every rank yields the same number of batches, of the same sizes; (b) every row of the split is read,
   and the only repeats are each rank's documented padding (``padding_rows()``, at most 1 row per slot); (c) a
   loader restarted from ``state_dict()`` taken after k batches (random k, mid-epoch and epoch boundaries) yields
   exactly the rest of the uninterrupted run; (d) the next epoch is another permutation (every rank's order and
   row set change) with the same invariants. A failed check raises.
2. Loader speed per core: rows per CPU-second, shuffle on, on the corpus of ``bench/loader.py`` (0 workers: one
   process; 1 worker: main + worker CPU together), against what one H100 consumes: bf16 dense peak (989 TFLOP/s) x
   an assumed model FLOP utilisation / FLOPs per training sample (35 MFLOP: ~6 x the published VAE's 5.87 M
   parameters, forward + backward). Cores per GPU = samples/s per GPU / rows per CPU-second.

Writes bench/results/loader_scale.json. ``python bench/loader_scale.py`` (defaults: the full sizes); the test
``tests/test_loader_scale.py`` runs the same simulation at 200 shards x 8 ranks x 4 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, write_results

WINDOW = 20
H100_BF16_DENSE_FLOPS = 989e12
FLOPS_PER_SAMPLE = 35e6


# ---------------------------------------------------------------------------------------------------- the corpus


def build_corpus(root: Path, shards: int, lo: int, hi: int, block: int = 256, seed: int = 0) -> Path:
    """``shards`` tiny shards of ``lo``..``hi`` rows (uneven), 10 shards per recording, written once into ``root``.

    Rows are random float16 waves; the stream's ``return_ids`` names each row by its manifest position, which is
    all the checks need. Marked ``row_order: shuffled`` like the corpora ``deepspike-corpus`` writes.
    """
    from deepspike.data.shards import Block, write_shard

    if (root / "manifest.json").exists():
        return root
    (root / "shards").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = rng.integers(lo, hi + 1, size=shards)
    entries, recordings = [], []
    for i, n in enumerate(sizes.tolist()):
        rec = f"rec-{i // 10:04d}"
        w = rng.standard_normal((n, WINDOW), dtype=np.float32).astype(np.float16)
        blocks = [Block(w[a : a + block], np.arange(a, min(n, a + block)), np.zeros(min(block, n - a), np.int16),
                        np.full(min(block, n - a), -1), {"recording": rec}) for a in range(0, n, block)]  # fmt: skip
        path = f"shards/{rec}-{i % 10:04d}.tar"
        entries.append({"path": path, **write_shard(root / path, blocks, key_prefix=rec), "recording": rec,
                        "split": "train"})  # fmt: skip
        if i % 10 == 0:
            recordings.append({"id": rec, "split": "train"})
    manifest = {"format": "deepspike-corpus", "format_version": 1, "num_spikes": int(sizes.sum()),
                "row_order": "shuffled", "shards": entries, "recordings": recordings}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


# ---------------------------------------------------------------------------------------------------- simulation


class CheckFailed(AssertionError):
    """A stream invariant does not hold (raised even under ``python -O``)."""


def require(ok: bool, what: str) -> None:
    if not ok:
        raise CheckFailed(what)


@contextmanager
def launcher_env(rank: int, world: int, per_node: int = 8) -> Iterator[None]:
    """The environment torchrun gives rank ``rank`` of ``world`` (``per_node`` GPUs per node), restored after."""
    env = {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank % per_node),
           "LOCAL_WORLD_SIZE": str(per_node), "GROUP_RANK": str(rank // per_node)}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def rank_loader(root: Path, rank: int, world: int, workers: int, batch: int) -> Any:
    """The train loader of one rank as the launcher starts it: rank and world size come from the environment."""
    from deepspike.data.loader import make_loader

    with launcher_env(rank, world), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)  # no processes start here
        return make_loader(root, batch_size=batch, num_workers=workers, return_ids=True, shuffle=True)


def epoch_batches(loader: Any, epoch: int) -> list[np.ndarray]:
    """The row ids of each batch the loader yields in ``epoch`` (its workers run in this process)."""
    loader.dataset.set_epoch(epoch)
    return [b["id"].numpy() for b in loader.in_process()]


def check_epoch(runs: list[list[np.ndarray]], lens: list[int], padding: list[int], rows: int, nw: int) -> None:
    """(a) equal batches (count and sizes) on every rank; (b) every row read, repeats = each rank's padding."""
    require(len(set(lens)) == 1, f"ranks report different epoch lengths: {sorted(set(lens))}")
    counts = [len(r) for r in runs]
    require(counts == lens, f"batches yielded per rank {sorted(set(counts))} != len(loader) {lens[0]}")
    sizes = {tuple(sorted(len(b) for b in r)) for r in runs}
    require(len(sizes) == 1, "ranks yield batches of different sizes")
    for rank, r in enumerate(runs):
        ids = np.concatenate(r)
        repeats = len(ids) - len(np.unique(ids))
        require(repeats == padding[rank] <= nw, f"rank {rank} repeats {repeats} rows, padding {padding[rank]}")
    seen = np.bincount(np.concatenate([np.concatenate(r) for r in runs]), minlength=rows)
    require(len(seen) == rows and int(seen.min()) == 1, f"{int((seen == 0).sum())} rows of {rows} never read")
    require(int(seen.sum()) - rows == sum(padding), f"{int(seen.sum()) - rows} repeated rows, padding {sum(padding)}")


def check_new_order(before: list[list[np.ndarray]], after: list[list[np.ndarray]]) -> None:
    """(d) Every rank reads other rows in another order in the next epoch (a new global shard order)."""
    for rank, (a, b) in enumerate(zip(before, after, strict=True)):
        ia, ib = np.concatenate(a), np.concatenate(b)
        require(len(ia) != len(ib) or not np.array_equal(ia, ib), f"rank {rank}: the next epoch repeats the order")
        require(set(ia.tolist()) != set(ib.tolist()), f"rank {rank}: the next epoch gives it the same rows")


def resume_positions(length: int, epochs: int, world: int, n: int, seed: int) -> list[tuple[int, int, int]]:
    """(rank, epoch, batches) states to resume from: both epoch boundaries, the last batch, and ``n`` random ones."""
    rng = np.random.default_rng(seed)
    fixed = [(0, 0, 0), (world - 1, 0, length), (world // 2, epochs - 1, 0), (1 % world, epochs - 1, length - 1)]
    rand = [(int(rng.integers(world)), int(rng.integers(epochs)), int(rng.integers(1, length))) for _ in range(n)]
    return fixed + rand


def check_resume(root: Path, runs: list[list[list[np.ndarray]]], world: int, nw: int, batch: int,
                 at: tuple[int, int, int]) -> None:  # fmt: skip
    """(c) Stop rank ``at[0]`` after ``at[2]`` batches of epoch ``at[1]``, restart a fresh loader from its
    ``state_dict()``: it yields exactly what the uninterrupted run yields from there."""
    rank, epoch, k = at
    first = rank_loader(root, rank, world, nw, batch)
    first.dataset.set_epoch(epoch)
    it = first.in_process()
    for _ in range(k):
        next(it)
    state = first.state_dict()
    require(state["epoch"] == epoch and state["batches"] == k, f"state_dict {state} after {k} batches of {epoch}")
    again = rank_loader(root, rank, world, nw, batch)
    again.load_state_dict(state)
    rest = [b["id"].numpy() for b in again.in_process()]
    want = runs[rank][epoch][k:] if k < len(runs[rank][epoch]) else runs[rank][epoch + 1]
    same = len(rest) == len(want) and all(np.array_equal(a, b) for a, b in zip(rest, want, strict=True))
    require(same, f"rank {rank} resumed after {k} batches of epoch {epoch} differs from the uninterrupted run")


def simulate(root: Path, world: int, workers: int, batch: int, epochs: int = 2, resumes: int = 6,
             seed: int = 0, log: Any = print) -> dict[str, Any]:  # fmt: skip
    """Stream every rank's ``epochs`` epochs and run the checks (a)-(d); return the figures (raises if one fails)."""
    t0, c0 = time.perf_counter(), time.process_time()
    runs: list[list[list[np.ndarray]]] = []  # [rank][epoch] -> batch ids
    lens, padding, build_cpu = [], [], 0.0
    for rank in range(world):
        b0 = time.process_time()
        loader = rank_loader(root, rank, world, workers, batch)
        build_cpu += time.process_time() - b0
        lens.append(len(loader))
        padding.append(loader.dataset.padding_rows())
        runs.append([epoch_batches(loader, e) for e in range(epochs)])
        rows = loader.dataset.num_rows
        del loader
    stream_s, stream_cpu = time.perf_counter() - t0, time.process_time() - c0
    read = sum(len(b) for r in runs for e in r for b in e)
    log(f"streamed {epochs} epochs x {world} ranks x {workers} workers: {read:,} rows in {stream_s:.1f} s")
    nw = max(1, workers)
    for e in range(epochs):
        check_epoch([r[e] for r in runs], lens, padding, rows, nw)
        if e:
            check_new_order([r[e - 1] for r in runs], [r[e] for r in runs])
    positions = resume_positions(lens[0], epochs, world, resumes, seed)
    for at in positions:
        check_resume(root, runs, world, workers, batch, at)
    log(f"checks (a)-(d) passed; resumed at (rank, epoch, batches) {positions}")
    return {
        "ranks": world, "workers_per_rank": workers, "slots": world * nw, "rows": rows, "batch_size": batch,
        "epochs": epochs, "batches_per_rank_per_epoch": lens[0], "padding_rows_per_epoch": sum(padding),
        "max_padding_rows_per_rank": max(padding), "resume_positions": [list(p) for p in positions],
        "stream_wall_s": round(stream_s, 1), "rows_per_cpu_s_tiny_shards": round(read / (stream_cpu - build_cpu)),
        "loader_build_cpu_s_per_rank": round(build_cpu / world, 3),
        "wall_s": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------- cores per GPU


def gpu_samples_per_s(mfu: float, flops_per_sample: float = FLOPS_PER_SAMPLE,
                      peak: float = H100_BF16_DENSE_FLOPS) -> float:  # fmt: skip
    """Training samples per second one GPU consumes at model FLOP utilisation ``mfu``."""
    return peak * mfu / flops_per_sample


def _cpu_s() -> float:
    """CPU seconds of this process and its reaped children (DataLoader workers), at microsecond resolution."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def rows_per_cpu_s(root: Path, workers: int, batch: int, buffer_rows: int, epochs: int) -> tuple[float, float]:
    """Rows per CPU-second of all processes (main + workers) and per wall second over ``epochs`` epochs of the
    train loader (shuffle on, ``drop_last``). Workers are not persistent: each epoch's are reaped when it ends, so
    their CPU time is counted (their start-up, a fork, is counted too)."""
    from deepspike.data.loader import make_loader

    loader = make_loader(root, batch_size=batch, num_workers=workers, buffer_rows=buffer_rows, drop_last=True,
                         rank=0, world_size=1)  # fmt: skip
    n, t0, c0 = 0, time.perf_counter(), _cpu_s()
    for e in range(epochs):
        loader.dataset.set_epoch(e)
        n += sum(b["wave"].shape[0] for b in loader)
    return n / (_cpu_s() - c0), n / (time.perf_counter() - t0)


def loader_speed(args: argparse.Namespace) -> dict[str, int]:
    """Rows per CPU-second per worker setting (the best of ``repeat``: the least disturbed on a shared machine),
    on bench/loader.py's corpus (``speed_shards`` x ``speed_rows`` spikes, blocks of 4096, rows stored shuffled)."""
    from loader import build_corpus as build_big

    root = build_big(args.speed_shards, args.speed_rows, 4096)
    rows_per_cpu_s(root, 0, args.speed_batch, args.speed_buffer, 1)  # page cache and imports
    out = {}
    for w in args.speed_workers:
        runs = [
            rows_per_cpu_s(root, w, args.speed_batch, args.speed_buffer, args.speed_epochs) for _ in range(args.repeat)
        ]
        cpu, wall = max(runs)
        out[f"rows_per_cpu_s_workers{w}"] = round(cpu)
        print(f"workers={w}: {', '.join(f'{c / 1e6:.2f}' for c, _ in runs)} M rows per CPU-s; best run "
              f"{wall / 1e6:.2f} M rows/s wall", flush=True)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=5000)
    ap.add_argument("--rows", type=int, nargs=2, default=[100, 1500], help="rows per shard: lowest, highest")
    ap.add_argument("--ranks", type=int, default=64)
    ap.add_argument("--workers", type=int, default=8, help="DataLoader workers per rank")
    ap.add_argument("--batch", type=int, default=512, help="simulation batch per rank")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--resumes", type=int, default=6, help="random resume positions (besides the boundaries)")
    ap.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOP utilisation of the GPU")
    ap.add_argument("--flops-per-sample", type=float, default=FLOPS_PER_SAMPLE)
    ap.add_argument("--speed-shards", type=int, default=10, help="bench/loader.py corpus for the speed figure")
    ap.add_argument("--speed-rows", type=int, default=1_000_000)
    ap.add_argument("--speed-batch", type=int, default=4096, help="conf/data/corpus.yaml's batch per rank")
    ap.add_argument("--speed-buffer", type=int, default=262144, help="conf/data/corpus.yaml's shuffle pool rows")
    ap.add_argument("--speed-epochs", type=int, default=2, help="epochs per speed measurement")
    ap.add_argument("--speed-workers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    lo, hi = args.rows
    t = time.perf_counter()
    root = build_corpus(CACHE / f"loader_scale_{args.shards}x{lo}-{hi}", args.shards, lo, hi)
    print(f"corpus ready in {time.perf_counter() - t:.1f} s: {root}", flush=True)
    figures: dict[str, Any] = {"shards": args.shards, "rows_per_shard": [lo, hi]}
    figures |= simulate(root, args.ranks, args.workers, args.batch, args.epochs, args.resumes)
    if not args.skip_speed:
        speed = loader_speed(args)
        gpu = gpu_samples_per_s(args.mfu, args.flops_per_sample)
        figures |= {"speed_corpus_rows": args.speed_shards * args.speed_rows, "speed_batch": args.speed_batch,
                    "speed_buffer_rows": args.speed_buffer, "speed_epochs": args.speed_epochs, **speed,
                    "mfu_assumed": args.mfu, "flops_per_sample": args.flops_per_sample,
                    "gpu_peak_flops": H100_BF16_DENSE_FLOPS, "h100_samples_per_s": round(gpu)}  # fmt: skip
        for key, v in speed.items():
            figures[f"cores_per_gpu_{key.rsplit('_', 1)[1]}"] = round(gpu / v, 2)
    figures["load_average"] = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    write_results("loader_scale", figures)


if __name__ == "__main__":
    main()
