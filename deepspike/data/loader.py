"""The DataLoader over a ``ShardStream``: worker seeding, pinned ring buffers and a stateful position for exact
mid-epoch resume.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from deepspike.data.stream import ShardStream, _keep, _Ring


def _tensors(item: dict, ring: _Ring, pin: bool) -> dict[str, torch.Tensor]:
    """A ring message -> tensors in the main process: float32 waves from the slot, int arrays as they are."""
    out = {"wave": ring.take(item.pop("_ring"), pin)}
    for key, v in item.items():
        t = torch.from_numpy(v if v.flags.writeable else v.copy())
        out[key] = t.pin_memory() if pin and key != "_sizes" else t
    return out


class StreamLoader(DataLoader):
    """A DataLoader that turns ShardStream worker messages back into batches: waves from the shared ring
    (float16 -> float32, pinned if ``pin_memory``) and multi-batch messages split into views.

    Resumable (Lightning's ``_Stateful`` protocol: Lightning saves ``state_dict()`` of a train loader in every
    checkpoint and calls ``load_state_dict`` before it iterates again). The state is the *position*, not buffers:
    ``{epoch, batches}`` yielded so far in the epoch. Every batch is a deterministic function of (seed, epoch,
    rank, worker) and the DataLoader hands worker messages over in a fixed round-robin order, so a resumed loader
    replays the epoch and drops the first ``batches``: the batches that follow are bit-identical to those of an
    uninterrupted run. Replay costs reading the skipped part of the epoch once (no decode into float32).
    """

    _position = 0  # batches yielded in the current epoch
    _skip = 0  # batches to drop at the start of the next iteration (load_state_dict)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self._positioned(self._batches)

    def in_process(self) -> Iterator[dict[str, torch.Tensor]]:
        """The batches ``iter(self)`` yields (resume position included), with the workers run in this process.

        A DataLoader takes worker messages (``transfer_batches`` batches each) from its workers in turn, skipping
        the workers that are done; here each worker's ``ShardStream.slot_batches`` is read in that same order. It
        lets a check walk many ranks x workers (``bench/loader_scale.py``) without starting a process per worker;
        a test checks it against ``iter(self)``.
        """
        return self._positioned(lambda skip: _round_robin(self.dataset, self.num_workers))

    def _positioned(self, source: Callable[[int], Iterator[dict]]) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of ``source(skip)`` after the resume position, counting ``_position`` for ``state_dict``."""
        skip, self._skip = self._skip, 0
        self._position = 0
        for batch in source(skip):
            self._position += 1
            if self._position > skip:
                yield batch

    def _batches(self, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        pin = bool(self.pin_memory) and torch.cuda.is_available()
        done = 0
        for item in super().__iter__():
            sizes = item.get("_sizes")
            n = 1 if sizes is None else len(sizes)
            if done + n <= skip:  # a whole message of replayed batches: no float32 conversion
                done += n
                self._position += n - 1
                yield {}
                continue
            done += n
            if "_ring" in item:
                item = _tensors(item, self.dataset.ring, pin)
            sizes = item.pop("_sizes", None)
            if sizes is None or len(sizes) == 1:
                yield item
                continue
            parts = {key: torch.split(v, sizes.tolist()) for key, v in item.items()}
            for i in range(len(sizes)):
                yield {key: p[i] for key, p in parts.items()}

    def state_dict(self) -> dict[str, Any]:
        """Where this loader is: the epoch and the batches yielded in it, plus the layout they refer to."""
        ds = self.dataset
        return {"epoch": ds.epoch, "batches": int(self._position), "layout": _layout_key(ds)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at ``state``'s position: the next iteration replays its epoch and drops the batches before it."""
        ds = self.dataset
        if state.get("layout") != _layout_key(ds):
            warnings.warn(
                f"resuming a stream saved with {state.get('layout')} on {_layout_key(ds)}: the batch order differs, "
                "so the resumed run is not identical to an uninterrupted one (same data.batch_size, "
                "data.num_workers, data.seed, devices and corpus give exact resume)",
                RuntimeWarning,
                stacklevel=2,
            )
        ds.set_epoch(int(state["epoch"]))
        self._skip = int(state["batches"]) if int(state["batches"]) < len(self) else 0
        if int(state["batches"]) >= len(self):  # saved at the end of an epoch: the next one starts clean
            ds.set_epoch(int(state["epoch"]) + 1)


def _round_robin(ds: ShardStream, num_workers: int) -> Iterator[dict[str, torch.Tensor]]:
    """The workers' batches in a DataLoader's order: one message from each worker still running, in turn."""
    per_message = ds.transfer_batches if num_workers > 0 else 1
    live = [ds.slot_batches(w) for w in range(max(1, num_workers))]
    while live:
        running = []
        for worker in live:
            message = list(islice(worker, per_message))
            if message:
                running.append(worker)
                yield from message
        live = running


def _layout_key(ds: ShardStream) -> dict[str, Any]:
    """What the batch order depends on besides the epoch (a resume with other values cannot be exact)."""
    return {
        "seed": ds.seed, "batch_size": ds.batch_size, "num_workers": ds.num_workers, "world_size": ds.world_size,
        "num_rows": ds.num_rows, "shuffle": ds.shuffle, "buffer_rows": ds.buffer_rows, "resample": ds.resample,
    }  # fmt: skip


def _seed_worker(worker_id: int) -> None:
    """Seed numpy's and Python's global RNGs from torch's per-worker seed (the stream itself uses its own)."""
    import random

    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_loader(
    source: str | os.PathLike | Sequence[str],
    batch_size: int = 4096,
    num_workers: int = 0,
    persistent_workers: bool = False,
    pin_memory: bool = False,
    prefetch_factor: int = 4,
    transfer_batches: int = 8,
    **stream_kw: Any,
) -> DataLoader:
    """A DataLoader over a ``ShardStream`` (batches come ready-made: ``batch_size=None`` in the DataLoader).

    With workers, each worker message carries ``transfer_batches`` batches (split again in the main process by
    ``StreamLoader``; ``prefetch_factor`` counts messages): the batches, their count and order are unchanged.
    """
    ds = ShardStream(source, batch_size=batch_size, num_workers=num_workers, **stream_kw)
    kw: dict[str, Any] = {}
    if num_workers > 0:
        ds.transfer_batches = max(1, int(transfer_batches))
        ds.ring = _Ring(num_workers, prefetch_factor + 3, ds.transfer_batches * ds.batch_size, ds.window())
        kw = {"persistent_workers": persistent_workers, "prefetch_factor": prefetch_factor, "collate_fn": _keep}
        if "fork" in mp.get_all_start_methods():
            # Linux's default, made explicit: inside a spawned DDP rank (ddp_spawn) the inherited default is spawn,
            # and each worker then re-imports torch every epoch (measured: ~30 s per epoch start, 2 ranks x 2
            # workers on the 2-core VM; forked workers start in well under a second). Workers only read shards.
            kw["multiprocessing_context"] = "fork"
    # its own generator: a DataLoader draws its workers' base seed at each iter(); from the global torch RNG that
    # draw would shift the model's random stream (VAE sampling) between a resumed and an uninterrupted run
    gen = torch.Generator().manual_seed(ds.seed)
    return StreamLoader(
        ds, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, worker_init_fn=_seed_worker,
        generator=gen, **kw,
    )  # fmt: skip
