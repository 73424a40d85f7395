"""Training throughput of the real stack: corpus shards -> stream -> ``SpikeAutoencoder.training_step`` in Lightning.

What is measured: a short ``Trainer.fit`` of the published-size MLP VAE (20-2048-1024-512-512-8, shuffle pretext)
over a corpus built here with deepspike's shard and manifest writers (``deepspike.data.shards.write_shard``,
``deepspike.data.corpus.write_manifest``) from random spike-like windows. The corpus (default 1,048,576 spikes in 32
shards) is 16x the stream's 65,536-row shuffle pool, and the run never reaches the end of an epoch, so every
measured step is fed by shard reads and pool refills, as in a long pretraining run. The warm-up steps (the
batches of the first pool fill) are left out; the measured steps should be whole refill cycles (the pool emits half
its rows, ``pool / 2 / batch`` batches, then reads as many rows again: 8 steps at the defaults).

Figures (per measured step, from a callback and a profiler that records Lightning's fetch spans):
``samples_per_s`` = batch / wall time between consecutive batch starts; ``input_wait_fraction`` = time in the
training loop's ``next(dataloader)`` (shard reads, pool, batch assembly, transfer) / wall time;
``outside_step_fraction`` = all time between the end of one step and the start of the next (input wait plus
Lightning's own bookkeeping) / wall time. Writes ``bench/results/train_step.json``.

    python bench/train_step.py [--spikes 1048576] [--shards 32] [--batch 4096] [--warmup 8] [--steps 32]
                               [--workers 0] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.profilers import Profiler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_results

FETCH = "[_TrainingEpochLoop].train_dataloader_next"  # profiler action around next(train dataloader)


def build_corpus(root: Path, n_spikes: int, n_shards: int, block: int = 4096, seed: int = 0) -> Path:
    """``n_shards`` shards (one recording each) of spike-like random windows, plus the manifest."""
    from deepspike.data.corpus import CorpusConfig, write_manifest
    from deepspike.data.shards import Block, write_shard

    rng = np.random.default_rng(seed)
    t = np.arange(20) - 8
    (root / "shards").mkdir(parents=True)
    records = []
    for i, part in enumerate(np.array_split(np.arange(n_spikes), n_shards)):
        rec = f"bench-{i:03d}"

        def blocks(part: np.ndarray = part, rec: str = rec) -> Any:
            for a in range(0, len(part), block):
                n = min(block, len(part) - a)
                amp, width = rng.uniform(-30, -5, (n, 1)), rng.uniform(1.0, 3.0, (n, 1))
                w = amp * np.exp(-(t**2) / (2 * width**2)) + rng.standard_normal((n, 20))
                yield Block(w.astype(np.float16), part[a : a + n].astype(np.int64) * 30, np.zeros(n, np.int16),
                            np.full(n, -1, np.int64), {"recording": rec})  # fmt: skip

        rel = f"shards/{rec}-0000.tar"
        info = write_shard(root / rel, blocks(), key_prefix=rec)
        records.append({"id": rec, "num_spikes": len(part), "has_labels": False, "row_order": "shuffled",
                        "shards": [{"path": rel, "recording": rec, **info}]})  # fmt: skip
    cfg = CorpusConfig(recordings=[], out=str(root), val_fraction=0.0, block_size=block, seed=seed)
    write_manifest(root, records, cfg)  # rows are i.i.d. draws, so "shuffled" row order is truthful
    return root


class StepTimer(pl.Callback):
    """Wall time of each step (batch start to next batch start) and the gap outside the step."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.gaps: list[float] = []
        self._end: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._end is not None:
            self.gaps.append(now - self._end)
        self.starts.append(now)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self._end = time.perf_counter()


class FetchSpans(Profiler):
    """A profiler that keeps only the (start, end) times of each ``next(train dataloader)`` in the loop."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[tuple[float, float]] = []
        self._t: float | None = None

    def start(self, action_name: str) -> None:
        if action_name == FETCH:
            self._t = time.perf_counter()

    def stop(self, action_name: str) -> None:
        if action_name == FETCH and self._t is not None:
            self.spans.append((self._t, time.perf_counter()))
            self._t = None

    def summary(self) -> str:
        return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spikes", type=int, default=1 << 20, help="corpus size (keep it >> --pool)")
    ap.add_argument("--shards", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--pool", type=int, default=65536, help="stream shuffle pool rows (data.shuffle_buffer)")
    ap.add_argument("--warmup", type=int, default=8, help="steps left out (the first pool fill and its batches)")
    ap.add_argument("--steps", type=int, default=32, help="measured steps")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (data.num_workers)")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    if args.spikes < 8 * args.pool:
        ap.error(f"--spikes {args.spikes} must be >= 8 x --pool {args.pool}: a corpus the pool holds measures memory")
    if args.spikes < (args.warmup + args.steps) * args.batch + args.pool:
        ap.error("the run would reach the end of the epoch: raise --spikes or lower --steps/--warmup")

    from deepspike.model.module import SpikeAutoencoder, SpikeDataModule
    from deepspike.model.nets import MLPNet, count_parameters
    from deepspike.model.pretext import Pretext
    from deepspike.spec import WindowSpec

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        corpus = build_corpus(Path(tmp) / "corpus", args.spikes, args.shards)
        build_s = time.perf_counter() - t0
        pl.seed_everything(0, workers=True)
        model = SpikeAutoencoder(
            MLPNet(hidden=args.hidden), functools.partial(torch.optim.AdamW, lr=1e-3), pretext=Pretext(["shuffle"]),
            window=WindowSpec().to_dict(), warmup_steps=10, cluster_metric=False,
        )  # fmt: skip
        data = SpikeDataModule(str(corpus), batch_size=args.batch, num_workers=args.workers, shuffle_buffer=args.pool)
        timer, profiler = StepTimer(), FetchSpans()
        gpu = args.device == "cuda"
        trainer = pl.Trainer(
            accelerator="gpu" if gpu else "cpu", devices=1, precision="bf16-mixed" if gpu else "32-true",
            max_steps=args.warmup + args.steps + 1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
            gradient_clip_val=1.0, callbacks=[timer], profiler=profiler,
        )  # fmt: skip
        trainer.fit(model, datamodule=data)
    first, last = args.warmup, args.warmup + args.steps  # step k runs from starts[k] to starts[k + 1]
    a, b = timer.starts[first], timer.starts[last]
    wall = b - a
    waits = sum(e - s for s, e in profiler.spans if a <= s < b)  # Lightning fetches one batch ahead: count by time
    gaps = sum(timer.gaps[first:last])  # gaps[k] lies between the end of step k and the start of step k + 1
    figures = {
        "samples_per_s": round(args.steps * args.batch / wall, 1),
        "input_wait_fraction": round(waits / wall, 4),
        "outside_step_fraction": round(gaps / wall, 4),
        "step_s": round(wall / args.steps, 4),
        "input_wait_s_per_step": round(waits / args.steps, 4),
        "batch_size": args.batch,
        "steps_measured": args.steps,
        "warmup_steps": args.warmup,
        "corpus_spikes": args.spikes,
        "corpus_shards": args.shards,
        "shuffle_pool_rows": args.pool,
        "rows_read_when_measured": (last + 1) * args.batch + args.pool,
        "num_workers": args.workers,
        "num_parameters": count_parameters(MLPNet(hidden=args.hidden)),
        "device": args.device if not gpu else torch.cuda.get_device_name(0),
        "precision": "bf16-mixed" if gpu else "32-true",
        "torch_threads": torch.get_num_threads(),
        "corpus_build_s": round(build_s, 2),
    }
    write_results("train_step", figures)


if __name__ == "__main__":
    main()
