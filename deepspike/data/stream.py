"""Stream stage: corpus shards -> shuffled float32 batches, identical batch counts on every DDP rank.

Over 600 lines: the epoch plan, the rank/worker slots, the row-shuffle pool and the worker side of the shared-memory
ring are one state machine whose resume contract (the same rows after a restart) is checked in one place; the
DataLoader around it is ``data.loader``.

Why this shape (see ``docs/ARCHITECTURE.md`` and the DDP pitfalls in ``DESIGN.md``):

* **One global row order per epoch.** The shards of the split are ordered by ``rng([seed, epoch])`` (the same on
  every rank), blocks stay in file order; that sequence of ``T`` rows is cut into ``C = S * chunks_per_slot``
  contiguous chunks, ``S = world_size * max(1, num_workers)`` *slots*, and chunk ``c`` goes to slot ``c % S``.
  Slot mapping: ``slot = rank * nw + worker`` (``nw = max(1, num_workers)``). Chunk ``c`` holds
  ``T // C + (c < T % C)`` rows, so any two slots differ by at most **one** row, whatever the shard sizes.
* **Sequential reads.** A chunk is read as (shard, first block, n blocks, row trim at both ends): a forward-only
  pass over each shard it touches, skipped blocks are seeked over (local files) or read and dropped (pipes,
  HTTP), never decoded. Only the blocks cut by a chunk boundary are read twice (by two slots).
* **Row-level shuffle.** With ``shuffle=True`` the chunks of a slot are read interleaved (``interleave`` open at
  once, the next block taken from a random one) into a vectorized shuffle pool of ``buffer_rows`` rows: when the
  pool is full, a random half (whole batches) is emitted in random order and its places refilled. A batch thus
  mixes rows from many shards / recordings. On corpora whose rows are stored in random order within each
  recording (manifest ``row_order: shuffled``, see ``deepspike.data.shards``) the pool moves runs of ``run_rows``
  consecutive rows (default 32, at most ``batch_size / 128`` so a batch holds >= 128 runs) instead of single
  rows: each run is a random sample of one recording, at a fraction of the gather cost. Caveat: rows stored next
  to each other tend to share a batch in every epoch. ``shuffle=False``: manifest shard order, no pool.
* **Equal batches per rank (no DDP hang).** Every slot emits exactly ``target[worker]`` rows: the largest row
  count among the slots of that worker index over all ranks. A slot short of it repeats rows it has already read.
  Padding bound: at most **1 row per slot**, so at most ``nw`` rows per rank and ``(world_size - 1) * nw``
  repeated rows per epoch in all (like ``DistributedSampler``); without resampling every other row is read
  exactly once per epoch across ranks. Rows lost to corrupt shards (``on_corrupt="warn"``) are filled the same
  way, so batch counts never change. ``len(stream)`` is the number of batches this rank yields per epoch.
* **Resampling** (``resample=True``): each slot draws chunks with replacement with ``rng([seed, epoch, rank,
  worker])`` until it has ``target[worker]`` rows: an endless-looking stream with the exact same epoch length.
* Randomness inside a slot (interleaving, pool) comes from ``rng([seed, epoch, rank, worker])``: different on
  every rank and worker, reproducible run to run. Call ``set_epoch`` before each epoch (the value is shared with
  persistent worker processes).

* **Exact resume.** ``StreamLoader.state_dict()`` is the position ``{epoch, batches}``; Lightning stores it in
  every checkpoint and a resumed loader replays that epoch, dropping the batches already trained on (see
  ``StreamLoader``). Nothing but the position is saved: batches are a function of (seed, epoch, rank, worker).

Why not webdataset's own pipeline (``wds.WebDataset(urls, nodesplitter=split_by_node,
workersplitter=split_by_worker).shuffle(n).batched(b).with_epoch(k)``): measured on the same corpus (2 M spikes in
4 shards, batch 4096, a 65,536-row pool, first 100 batches, shared 2-core VM under load; ``python bench/loader.py
--vs-webdataset``, bench/results/loader_vs_webdataset.json): this stream 2.59 M spikes/s with 0 workers and
0.80 M with 2 (worker start-up included), webdataset 0.12 M and 0.07 M: its row-level shuffle moves one Python
object per spike, where the pool here moves rows (or runs of rows) with vectorized gathers from memory-mapped
shards. Webdataset also lacks what DDP training needs here: the same number of batches on every rank (its
``with_epoch`` is a nominal count per worker), and a ``state_dict`` for exact mid-epoch resume.

Shards are read with ``deepspike.data.shards.read_blocks`` (the one shard reader, which ``iter_blocks`` wraps), decoding
only the members a batch needs. ``make_loader`` with workers ships several batches per message and passes their
float16 waves through a shared-memory ring (``_Ring``); the main process converts them to float32.
"""

from __future__ import annotations

import glob
import json
import math
import multiprocessing as mp
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import IterableDataset

from deepspike.data.shards import RawBlock, check_url, read_blocks
from deepspike.data.shards import is_local as _is_local
from deepspike.data.shards import local_path as _local_path
from deepspike.errors import ShardError

MANIFEST = "manifest.json"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")

__all__ = ["ShardStream", "load_manifest", "read_blocks"]


# ----------------------------------------------------------------------------------------------- manifest / URLs


def _read_text(url: str, allow_pipe: bool = False) -> str:
    """Read a small text file from a path or any URL webdataset.gopen opens (``pipe:`` only if allowed)."""
    check_url(url, allow_pipe, what="manifest")
    if _is_local(url):
        return Path(_local_path(url)).read_text()
    import webdataset as wds

    with wds.gopen(url, "rb") as fh:
        return fh.read().decode()


def _exists(url: str, allow_pipe: bool = False) -> bool:
    if _is_local(url):
        return os.path.isfile(_local_path(url))
    check_url(url, allow_pipe, what="manifest")
    try:
        _read_text(url, allow_pipe)
    except Exception:  # any failure means "not there"
        return False
    return True


def _join(base: str, path: str) -> str:
    """Join a shard path from the manifest to the corpus URL (absolute paths and URLs are kept)."""
    if _SCHEME.match(path) or path.startswith("/"):
        return path
    return f"{base.rstrip('/')}/{path}" if base else path


def _expand(patterns: Sequence[str]) -> list[str]:
    """Brace- and glob-expand shard URLs (globs only for local paths)."""
    import braceexpand

    out: list[str] = []
    for p in patterns:
        for u in braceexpand.braceexpand(str(p)):
            if _is_local(u) and any(ch in u for ch in "*?["):
                prefix = "file:" if u.startswith("file:") else ""
                out.extend(prefix + g for g in sorted(glob.glob(_local_path(u))))
            else:
                out.append(u)
    return out


def _common_dir(urls: Sequence[str]) -> str:
    """The longest common directory of ``urls``, compared by '/'-separated components."""
    dirs = [u.split("/")[:-1] for u in urls]
    out: list[str] = []
    for parts in zip(*dirs, strict=False):
        if any(p != parts[0] for p in parts):
            break
        out.append(parts[0])
    return "/".join(out) if out != [""] else "/"


def _manifest_url(source: str | os.PathLike | Sequence[str], allow_pipe: bool) -> tuple[str, list[str] | None]:
    """The manifest URL for ``source`` and, for a shard list, the expanded shard URLs."""
    if not isinstance(source, (str, os.PathLike)):
        shards = _expand([str(s) for s in source])
    else:
        s = str(source)
        if s.endswith(".json"):
            return s, None
        if not any(ch in s for ch in "*?[{") and not s.endswith(".tar"):
            return f"{s.rstrip('/')}/{MANIFEST}", None
        shards = _expand([s])
    if not shards:
        raise ShardError(f"no shard matches {source!r}; pass a corpus directory, its manifest.json or shard URLs")
    common = _common_dir(shards)
    candidates = [f"{common}/{MANIFEST}" if common else MANIFEST]
    if "/" in common:
        candidates.append(f"{common.rsplit('/', 1)[0]}/{MANIFEST}")
    for cand in candidates:
        if _exists(cand, allow_pipe):
            return cand, shards
    raise ShardError(
        f"no {MANIFEST} found next to the shards ({' or '.join(candidates)}): the stream needs the manifest for "
        "row counts (equal batches per rank); pass the corpus directory or point at its manifest.json"
    )


def load_manifest(source: str | os.PathLike | Sequence[str], allow_pipe: bool = False) -> tuple[dict[str, Any], str]:
    """Load the corpus manifest for ``source``; return ``(manifest, base_url)`` (shard paths are relative to it).

    ``source``: a corpus directory, a ``manifest.json`` path/URL, or a glob / brace pattern / list of shard URLs
    (the manifest is then looked up in the shards' common directory, then its parent). ``pipe:`` URLs run a shell
    command: refused unless ``allow_pipe``.
    """
    return _load(source, allow_pipe)[:2]


def _load(
    source: str | os.PathLike | Sequence[str], allow_pipe: bool = False
) -> tuple[dict[str, Any], str, list[str] | None]:
    url, shards = _manifest_url(source, allow_pipe)
    try:
        manifest = json.loads(_read_text(url, allow_pipe))
    except FileNotFoundError as e:
        raise ShardError(
            f"{url} not found: the stream needs the corpus manifest for row counts; build the corpus with "
            "deepspike-corpus or pass its directory"
        ) from e
    except (OSError, ValueError) as e:
        raise ShardError(f"cannot read manifest {url}: {e}") from e
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise ShardError(f"{url} is not a DeepSpike corpus manifest (no 'shards' list)")
    base = url.rsplit("/", 1)[0] if "/" in url else ""
    return manifest, base, shards


# ------------------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class _Shard:
    url: str
    starts: np.ndarray  # int64 [num_blocks + 1] first row of each block
    rec: int  # index into manifest["recordings"], -1 if unknown
    id0: int  # global row index of the shard's first row (manifest order)
    size: int | None = None  # bytes, from the manifest (corpora built since it records them)

    @property
    def rows(self) -> int:
        return int(self.starts[-1])


class _Rows(NamedTuple):
    """A run of rows on its way to a batch: waves plus the per-row fields that were asked for."""

    wave: np.ndarray  # float16 [n, window]
    label: np.ndarray | None
    rec: np.ndarray | None
    id: np.ndarray | None


def _shards(manifest: dict[str, Any], base: str, split: str | None, only: list[str] | None) -> list[_Shard]:
    """The shards of ``split`` (and of ``only``, if given) with block offsets and global id offsets."""
    recs = {r.get("id"): i for i, r in enumerate(manifest.get("recordings", []))}
    keep = None if only is None else {_norm(u) for u in only}
    out, id0, seen = [], 0, set()
    for s in manifest["shards"]:
        sizes = np.asarray(s.get("block_sizes", []), dtype=np.int64)
        if int(sizes.sum()) != int(s["num_spikes"]):
            raise ShardError(f"manifest entry {s.get('path')!r}: block_sizes do not sum to num_spikes")
        url = _join(base, s["path"])
        if (split is None or s.get("split") == split) and (keep is None or _norm(url) in keep):
            starts = np.concatenate([[0], np.cumsum(sizes)])
            out.append(_Shard(url, starts, recs.get(s.get("recording"), -1), id0, s.get("size")))
            seen.add(_norm(url))
        id0 += int(s["num_spikes"])
    if keep is not None and keep - seen:
        raise ShardError(f"shards not in the manifest's {split!r} split: {sorted(keep - seen)[:5]}")
    if not out or sum(s.rows for s in out) == 0:
        splits = sorted({str(s.get("split")) for s in manifest["shards"]})
        raise ShardError(f"no spikes in split {split!r} of the corpus at {base or '.'} (splits: {splits})")
    return out


def _norm(url: str) -> str:
    return os.path.realpath(_local_path(url)) if _is_local(url) else url


def _slot_rows(total: int, slots: int, per_slot: int) -> np.ndarray:
    """Rows per slot: chunk c holds ``total // C + (c < total % C)`` rows and goes to slot ``c % slots``."""
    q, r = divmod(total, slots * per_slot)
    c = np.arange(slots * per_slot)
    sizes = q + (c < r)
    return sizes.reshape(per_slot, slots).sum(axis=0)


class _SharedEpoch:
    """The epoch, shared with (persistent) DataLoader workers like open_clip's SharedEpoch."""

    def __init__(self, epoch: int = 0) -> None:
        self.value = mp.Value("i", epoch)

    def set(self, epoch: int) -> None:
        self.value.value = epoch

    def get(self) -> int:
        return int(self.value.value)


# -------------------------------------------------------------------------------------------------------- batches


def _int_view(a: np.ndarray) -> np.ndarray:
    """View float16 rows as wider ints so row gathers move words, not 2-byte items (about 4x faster)."""
    nbytes = a.shape[1] * a.itemsize
    for t in (np.int64, np.int32):
        if nbytes % np.dtype(t).itemsize == 0:
            return a.view(t)
    return a.view(np.int16)


def _to_batch(wave16: np.ndarray, label: np.ndarray | None, rec: np.ndarray | None, ids: np.ndarray | None) -> dict:
    """Build the yielded dict; float16 -> float32 once per batch (torch's converter is vectorized)."""
    wave = torch.empty(wave16.shape, dtype=torch.float32)
    wave.copy_(torch.from_numpy(wave16))
    out: dict[str, torch.Tensor] = {"wave": wave}
    if label is not None:
        out["label"] = torch.from_numpy(label)
        out["rec"] = torch.from_numpy(rec)
    if ids is not None:
        out["id"] = torch.from_numpy(ids)
    return out


def _runs(a: np.ndarray, start: int, n: int, r: int) -> np.ndarray:
    """Rows ``[start, start + n * r)`` of ``a`` as ``n`` runs of ``r`` rows, one run per row of the view."""
    return a[start : start + n * r].reshape(n, -1)


class _ShufflePool:
    """Shuffle buffer, all vectorized: fill ``cap`` rows, emit a random half in whole batches, keep half.

    Rows are always appended contiguously; the kept half is compacted in order (a monotone gather) into a second
    buffer, so the only random memory access is the one gather that forms a batch. The pool moves *runs* of
    ``run`` consecutive rows (``run=1``: single rows). Runs are only used on corpora whose rows are stored in
    random order within each recording (manifest ``row_order: shuffled``), where a run of rows is itself a random
    sample of its recording; run boundaries start at a random phase on every emission. Runs of 32 rows cut the
    pool's CPU cost about 5x (the row gather was ~2/3 of a worker's time).
    """

    def __init__(self, cap: int, batch: int, run: int, labels: bool, ids: bool, rng: np.random.Generator) -> None:
        self.cap, self.batch, self.run, self.labels, self.ids, self.rng = cap, batch, run, labels, ids, rng
        self.n = 0
        self.bufs: list[list[np.ndarray | None]] | None = None  # [current, spare] x FIELDS

    def _alloc(self, rows: _Rows) -> None:
        self.window = rows.wave.shape[1]

        def one() -> list[np.ndarray | None]:
            extra = [np.empty(self.cap, np.int64) if f else None for f in (self.labels, self.labels, self.ids)]
            return [_int_view(np.empty((self.cap, self.window), np.float16)), *extra]

        self.bufs = [one(), one()]

    def put(self, rows: _Rows) -> Iterator[tuple]:
        if self.bufs is None:
            self._alloc(rows)
        src = [_int_view(rows.wave), rows.label, rows.rec, rows.id]
        total, a = len(rows.wave), 0
        while a < total:
            k = min(total - a, self.cap - self.n)
            for dst, f in zip(self.bufs[0], src, strict=True):
                if dst is not None:
                    dst[self.n : self.n + k] = f[a : a + k]
            self.n += k
            a += k
            if self.n == self.cap:
                yield from self._emit_half()

    def _emit_half(self) -> Iterator[tuple]:
        r, cap = self.run, self.cap
        m = max(self.batch, cap // 2 // self.batch * self.batch)  # a multiple of r (r divides batch)
        phase = int(self.rng.integers(r)) if r > 1 else 0
        nruns = (cap - phase) // r
        sel = self.rng.choice(nruns, m // r, replace=False, shuffle=True)
        cur, spare = self.bufs
        out = [None if f is None else np.take(_runs(f, phase, nruns, r), sel, axis=0, mode="clip") for f in cur]
        out = [None if o is None else o.reshape(m, *f.shape[1:]) for o, f in zip(out, cur, strict=True)]
        for i in range(0, m, self.batch):
            yield _numpy_batch(*(None if o is None else o[i : i + self.batch] for o in out))
        keep = np.ones(nruns, bool)
        keep[sel] = False
        kept = np.flatnonzero(keep)
        end, new_end = phase + nruns * r, phase + len(kept) * r
        for src, dst in zip(cur, spare, strict=True):
            if src is not None:
                dst[:phase] = src[:phase]
                np.take(_runs(src, phase, nruns, r), kept, axis=0, out=_runs(dst, phase, len(kept), r), mode="clip")
                dst[new_end : new_end + cap - end] = src[end:cap]
        self.bufs = [spare, cur]
        self.n = cap - m

    def _gather(self, idx: np.ndarray) -> tuple:
        wv, lab, rec, ids = (None if f is None else np.take(f, idx, axis=0, mode="clip") for f in self.bufs[0])
        return _numpy_batch(wv, lab, rec, ids)

    def repeat(self, n: int) -> _Rows | None:
        """``n`` rows repeated from those in the pool (padding), or None if the pool is empty."""
        if n <= 0 or self.n == 0:
            return None
        idx = self.rng.integers(self.n, size=n)
        return _Rows(*self._gather(idx))

    def flush(self, drop_last: bool) -> Iterator[tuple]:
        v = self.rng.permutation(self.n)
        end = len(v) // self.batch * self.batch if drop_last else len(v)
        for i in range(0, end, self.batch):
            yield self._gather(v[i : min(i + self.batch, end)])


def _numpy_batch(wave: np.ndarray, label: np.ndarray | None, rec: np.ndarray | None, ids: np.ndarray | None) -> tuple:
    """A batch as numpy (float16 waves viewed back from the pool's int view)."""
    return wave.view(np.float16), label, rec, ids


class _Sequential:
    """Batches in read order (shuffle=False); keeps the first rows it saw for padding."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.parts: list[_Rows] = []
        self.n = 0
        self.first: list[_Rows] = []
        self.nfirst = 0

    def put(self, rows: _Rows) -> Iterator[dict]:
        if self.nfirst < self.batch:
            self.first.append(rows)
            self.nfirst += len(rows.wave)
        self.parts.append(rows)
        self.n += len(rows.wave)
        while self.n >= self.batch:
            yield self._take(self.batch)

    def _take(self, k: int) -> tuple:
        out, got, rest = [], 0, []
        for i, p in enumerate(self.parts):
            need = k - got
            if len(p.wave) <= need:
                out.append(p)
                got += len(p.wave)
            else:
                out.append(_Rows(*(None if f is None else f[:need] for f in p)))
                rest = [_Rows(*(None if f is None else f[need:] for f in p)), *self.parts[i + 1 :]]
                got = k
                break
        else:
            rest = []
        self.parts, self.n = rest, self.n - got
        return tuple(None if out[0][j] is None else np.concatenate([p[j] for p in out]) for j in range(4))

    def repeat(self, n: int) -> _Rows | None:
        if n <= 0 or self.nfirst == 0:
            return None
        first = [np.concatenate([p[j] for p in self.first]) if self.first[0][j] is not None else None for j in range(4)]
        idx = np.arange(n) % len(first[0])
        return _Rows(*(None if f is None else f[idx] for f in first))

    def flush(self, drop_last: bool) -> Iterator[dict]:
        if self.n and not drop_last:
            yield self._take(self.n)


# --------------------------------------------------------------------------------------------------------- stream


def _dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """rank / world size: explicit, else torch.distributed if initialized, else env RANK / WORLD_SIZE, else 0 / 1."""
    if rank is not None and world_size is not None:
        return int(rank), int(world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        r, w = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        r, w = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return (r if rank is None else int(rank)), (w if world_size is None else int(world_size))


class ShardStream(IterableDataset):
    """An IterableDataset of shuffled batches from corpus shards, with the same batch count on every rank.

    Yields dicts ``wave`` float32 ``[B, window]`` (+ ``label``, ``rec`` int64 with ``return_labels``, ``id``
    int64 with ``return_ids``). Use with ``DataLoader(batch_size=None, num_workers=num_workers)`` or
    ``make_loader``; ``num_workers`` must match the DataLoader's since it decides the partition and ``len``.
    See the module docstring for the partition, padding and shuffle design.
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[str],
        split: str | None = "train",
        batch_size: int = 4096,
        seed: int = 0,
        shuffle: bool = True,
        buffer_rows: int = 65536,
        interleave: int = 8,
        chunks_per_slot: int = 8,
        run_rows: int = 32,
        resample: bool = False,
        drop_last: bool = False,
        return_labels: bool = False,
        return_ids: bool = False,
        on_corrupt: str = "warn",
        num_workers: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        allow_pipe: bool = False,
    ) -> None:
        super().__init__()
        if on_corrupt not in ("warn", "raise"):
            raise ValueError(f"on_corrupt must be 'warn' or 'raise', got {on_corrupt!r}")
        if batch_size < 1 or chunks_per_slot < 1 or interleave < 1 or num_workers < 0:
            raise ValueError("batch_size, chunks_per_slot and interleave must be >= 1, num_workers >= 0")
        self.allow_pipe = bool(allow_pipe)  # pipe:CMD URLs run CMD: only for corpora the user trusts
        self.manifest, self.base_url, only = _load(source, self.allow_pipe)
        self.split = split
        self.shards = _shards(self.manifest, self.base_url, split, only)
        for shard in self.shards:  # refuse before any worker starts, naming the manifest
            check_url(shard.url, self.allow_pipe, what=f"shard in the manifest at {self.base_url or '.'}:")
        self.batch_size, self.seed, self.shuffle = int(batch_size), int(seed), bool(shuffle)
        self.buffer_rows = max(int(buffer_rows), 2 * self.batch_size)
        # Rows the shuffle pool moves together: only where the corpus stores rows in random order (see _ShufflePool),
        # a divisor of the batch, and small enough that a batch holds >= 128 runs (it mixes as many draws).
        self.row_order = str(self.manifest.get("row_order", "stored"))
        r = math.gcd(max(1, int(run_rows)), max(1, self.batch_size // 128))
        self.run_rows = r if self.row_order == "shuffled" else 1
        self.interleave, self.chunks_per_slot = int(interleave), int(chunks_per_slot)
        self.resample, self.drop_last = bool(resample), bool(drop_last)
        self.return_labels, self.return_ids, self.on_corrupt = bool(return_labels), bool(return_ids), on_corrupt
        self.num_workers = int(num_workers)
        self.rank, self.world_size = _dist_rank_world(rank, world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world_size {self.world_size}")
        self.num_rows = sum(s.rows for s in self.shards)
        nw = max(1, self.num_workers)
        self.num_slots = self.world_size * nw
        self.num_chunks = self.num_slots * self.chunks_per_slot
        rows = _slot_rows(self.num_rows, self.num_slots, self.chunks_per_slot)
        self.slot_rows = rows  # rows each slot owns, slot = rank * nw + worker
        self.target_rows = rows.reshape(self.world_size, nw).max(axis=0)  # rows each worker index emits, any rank
        self._epoch = _SharedEpoch(0)
        self.corrupt_urls: set[str] = set()
        self.transfer_batches = 1  # >1: workers ship that many batches per message (StreamLoader splits them)
        self.ring: _Ring | None = None  # make_loader: workers ship waves through shared memory (StreamLoader)

    # -- public

    @property
    def corrupt_shards(self) -> int:
        """Distinct shards found corrupt and skipped by this process (each worker process counts its own)."""
        return len(self.corrupt_urls)

    @property
    def epoch(self) -> int:
        return self._epoch.get()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's shard order and seeds; seen by persistent workers too."""
        self._epoch.set(int(epoch))

    def window(self) -> int:
        """Samples per spike window, from the first block of the first readable shard."""
        for shard in self.shards:
            try:
                with closing(read_blocks(shard.url, 0, 1, labels=False, allow_pipe=self.allow_pipe)) as blocks:
                    for raw in blocks:
                        return int(raw.waves.shape[1])
            except ShardError:
                continue
        raise ShardError(f"no readable block in split {self.split!r} of {self.base_url}")

    def _batches(self, rows: int) -> int:
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def __len__(self) -> int:
        """Batches this rank yields per epoch (the same on every rank)."""
        return int(sum(self._batches(int(n)) for n in self.target_rows))

    def padding_rows(self) -> int:
        """Rows this rank repeats per epoch to match the other ranks (<= num_workers or 1), absent corruption."""
        nw = max(1, self.num_workers)
        own = self.slot_rows[self.rank * nw : (self.rank + 1) * nw]
        return int((self.target_rows - own).sum())

    # -- iteration

    def _worker(self) -> tuple[int, int]:
        info = torch.utils.data.get_worker_info()
        worker, nw = (0, 1) if info is None else (info.id, info.num_workers)
        if nw != max(1, self.num_workers):
            raise ValueError(
                f"ShardStream(num_workers={self.num_workers}) runs in a DataLoader with {nw if info else 0} workers;"
                " pass the DataLoader's num_workers to the stream (make_loader does) so ranks get equal batches"
            )
        return worker, nw

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker, nw = self._worker()
        batches = self._slot(worker, nw)
        if torch.utils.data.get_worker_info() is not None and (self.ring is not None or self.transfer_batches > 1):
            return _grouped(batches, self.transfer_batches, self.ring)
        return (_to_batch(*b) for b in batches)

    def slot_batches(self, worker: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """The batches DataLoader worker ``worker`` of this rank yields this epoch, computed in this process.

        Exactly what ``__iter__`` yields inside that worker (slot ``rank * nw + worker``), so the partition and
        resume at many ranks x workers can be checked without starting their processes (``bench/loader_scale.py``,
        ``StreamLoader.in_process``).
        """
        nw = max(1, self.num_workers)
        if not 0 <= worker < nw:
            raise ValueError(f"worker {worker} is outside this stream's {nw} worker slot(s) per rank")
        return (_to_batch(*b) for b in self._slot(worker, nw))

    def _slot(self, worker: int, nw: int) -> Iterator[tuple]:
        """The batches of slot ``rank * nw + worker`` for the current epoch."""
        epoch = self._epoch.get()
        slot = self.rank * nw + worker
        target = int(self.target_rows[worker])
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker])
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards)) if self.shuffle else None
        layout = self._layout(order)
        empty: set[int] = set()
        if self.resample:
            chunks: Iterable[int] = self._draws(rng, empty)
        else:
            mine = np.arange(slot, self.num_chunks, self.num_slots)
            chunks = rng.permutation(mine) if self.shuffle else mine
        if self.shuffle:
            sink: _ShufflePool | _Sequential = _ShufflePool(
                self.buffer_rows, self.batch_size, self.run_rows, self.return_labels, self.return_ids, rng
            )
            rows = self._interleaved(chunks, layout, rng, empty)
        else:
            sink = _Sequential(self.batch_size)
            rows = (r for c in chunks for r in self._tracked(int(c), layout, empty))
        got = 0
        for r in _limit(rows, target):
            got += len(r.wave)
            yield from sink.put(r)
        if got < target:
            pad = sink.repeat(target - got) or self._fallback(slot, target - got, layout)
            yield from sink.put(pad)
        yield from sink.flush(self.drop_last)

    def _layout(self, order: np.ndarray | None) -> tuple[list[_Shard], np.ndarray]:
        """Shards in this epoch's global order and their first global row (cumulative)."""
        shards = self.shards if order is None else [self.shards[i] for i in order]
        cum = np.concatenate([[0], np.cumsum([s.rows for s in shards])])
        return shards, cum

    def _bounds(self, c: int) -> tuple[int, int]:
        q, r = divmod(self.num_rows, self.num_chunks)
        lo = c * q + min(c, r)
        return lo, lo + q + (c < r)

    def _chunk(self, c: int, layout: tuple[list[_Shard], np.ndarray]) -> Iterator[_Rows]:
        """Rows of chunk ``c``: a contiguous run of the global order, one sequential read per shard it touches."""
        shards, cum = layout
        lo, hi = self._bounds(c)
        j = int(np.searchsorted(cum, lo, side="right")) - 1
        while lo < hi and j < len(shards):
            a, b = lo - int(cum[j]), min(hi, int(cum[j + 1])) - int(cum[j])
            if b > a:
                yield from self._piece(shards[j], a, b)
            lo, j = int(cum[j + 1]), j + 1

    def _piece(self, shard: _Shard, a: int, b: int) -> Iterator[_Rows]:
        """Rows ``[a, b)`` of one shard; a corrupt shard warns (and ends the piece) or raises, per on_corrupt."""
        b0 = int(np.searchsorted(shard.starts, a, side="right")) - 1
        b1 = int(np.searchsorted(shard.starts, b, side="left"))
        blk = b0
        try:
            _check_size(shard)
            with closing(read_blocks(shard.url, b0, b1 - b0, self.return_labels, self.allow_pipe)) as blocks:
                for raw in blocks:
                    s0, s1 = int(shard.starts[blk]), int(shard.starts[blk + 1])
                    if len(raw.waves) != s1 - s0:
                        raise ShardError(f"{shard.url}: block {blk} has {len(raw.waves)} rows, manifest: {s1 - s0}")
                    i, k = max(a, s0) - s0, min(b, s1) - s0
                    yield self._rows(raw, shard, i, k, s0)
                    blk += 1
            if blk < b1:
                raise ShardError(f"{shard.url}: {blk} blocks, the manifest says at least {b1}; rebuild the corpus")
        except ShardError as e:
            if self.on_corrupt == "raise":
                raise
            if shard.url not in self.corrupt_urls:
                warnings.warn(f"skipping corrupt shard {shard.url}: {e}", RuntimeWarning, stacklevel=2)
            self.corrupt_urls.add(shard.url)

    def _rows(self, raw: RawBlock, shard: _Shard, i: int, k: int, s0: int) -> _Rows:
        n = k - i
        lab = rec = ids = None
        if self.return_labels:
            lab, rec = raw.labels[i:k], np.full(n, shard.rec, np.int64)
        if self.return_ids:
            ids = np.arange(shard.id0 + s0 + i, shard.id0 + s0 + k, dtype=np.int64)
        return _Rows(raw.waves[i:k], lab, rec, ids)

    def _interleaved(
        self, chunks: Iterable[int], layout: tuple, rng: np.random.Generator, empty: set[int]
    ) -> Iterator[_Rows]:
        """Read up to ``interleave`` chunks at once, taking each next block from a random open chunk."""
        todo = iter(chunks)
        live: list[Iterator[_Rows]] = []
        try:
            while True:
                while len(live) < self.interleave:
                    c = next(todo, None)
                    if c is None:
                        break
                    live.append(self._tracked(int(c), layout, empty))
                if not live:
                    return
                i = int(rng.integers(len(live)))
                r = next(live[i], None)
                if r is None:
                    live.pop(i)
                else:
                    yield r
        finally:
            for g in live:
                g.close()

    def _draws(self, rng: np.random.Generator, empty: set[int]) -> Iterator[int]:
        """Endless chunk draws with replacement (resample mode); raises once every non-empty chunk read nothing."""
        q, r = divmod(self.num_rows, self.num_chunks)
        nonempty = self.num_chunks if q else r
        for _ in count():
            if len(empty) >= nonempty:
                raise ShardError(f"no readable shard in split {self.split!r} of {self.base_url}: all are corrupt")
            yield int(rng.integers(nonempty))  # chunks [0, r) hold q + 1 rows: only they are non-empty if q == 0

    def _tracked(self, c: int, layout: tuple, empty: set[int]) -> Iterator[_Rows]:
        """Chunk ``c``'s rows, noting in ``empty`` a chunk that gave none (all its shards corrupt)."""
        n = 0
        for r in self._chunk(c, layout):
            n += 1
            yield r
        if n == 0:
            empty.add(c)

    def _fallback(self, slot: int, n: int, layout: tuple) -> _Rows:
        """Padding rows for a slot that read nothing (all its shards corrupt, or fewer rows than slots)."""
        for k in range(1, self.num_chunks + 1):
            c = (slot + k) % self.num_chunks
            got = list(_limit(self._chunk(c, layout), n))
            if got:
                parts = [np.concatenate([g[j] for g in got]) if got[0][j] is not None else None for j in range(4)]
                idx = np.arange(n) % len(parts[0])
                return _Rows(*(None if p is None else p[idx] for p in parts))
        raise ShardError(f"no readable shard in split {self.split!r} of {self.base_url}: every shard is corrupt")


def _check_size(shard: _Shard) -> None:
    """A local shard whose size differs from the manifest's is truncated or replaced (one stat, no read)."""
    if shard.size is None or not _is_local(shard.url):
        return
    try:
        got = os.path.getsize(_local_path(shard.url))
    except OSError as e:
        raise ShardError(f"cannot open shard {shard.url}: {e}") from e
    if got != shard.size:
        raise ShardError(f"{shard.url}: {got} bytes, the manifest records {shard.size}; rebuild this shard")


def _limit(rows: Iterable[_Rows], n: int) -> Iterator[_Rows]:
    """At most ``n`` rows in all (cuts the last run; closes the source so open shards are released)."""
    got = 0
    it = iter(rows)
    try:
        for r in it:
            if got >= n:
                return
            k = min(len(r.wave), n - got)
            got += k
            yield r if k == len(r.wave) else _Rows(*(None if f is None else f[:k] for f in r))
            if got >= n:
                return
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


# --------------------------------------------------------------------------------------------------------- loader


_FIELDS = ("wave", "label", "rec", "id")


class _Ring:
    """Shared-memory slots for the float16 waves of worker messages, made once before the workers start.

    Measured on the 2-core VM (10 M spikes, batch 4096): a torch tensor in a worker message crosses through a new
    shared-memory file per tensor (shm_open + mmap + page faults, ~2.5 ms per message); numpy pickled through the
    worker's pipe costs the main process three copies (pipe read, buffer, unpickle: ~0.7 CPU-s per 10 M spikes).
    Here a worker writes each message's waves into its next slot (``seq % slots``) and sends only the slot number;
    the main process reads them once, converting to float32. The DataLoader keeps at most ``prefetch_factor``
    messages per worker in flight, and one is being converted, so ``prefetch_factor + 3`` slots are never
    overwritten while in use; a per-slot stamp checks that anyway.
    """

    def __init__(self, workers: int, slots: int, rows: int, window: int) -> None:
        self.waves = torch.empty((workers, slots, rows, window), dtype=torch.float16).share_memory_()
        self.stamps = torch.full((workers, slots), -1, dtype=torch.int64).share_memory_()
        self.seq = 0  # messages sent by this (worker) process

    def put(self, worker: int, waves: list[np.ndarray]) -> np.ndarray:
        """Write one message's waves into the worker's next slot; return the ``[worker, slot, seq, rows]`` ticket."""
        seq, slot = self.seq, self.seq % self.waves.shape[1]
        self.seq += 1
        n = sum(len(w) for w in waves)
        if n > self.waves.shape[2] or waves[0].shape[1] != self.waves.shape[3]:
            raise ShardError(f"a worker message of {n} rows x {waves[0].shape[1]} does not fit the transfer slots")
        stamps = self.stamps.numpy()
        stamps[worker, slot] = -1
        np.concatenate(waves, out=self.waves[worker, slot, :n].numpy())
        stamps[worker, slot] = seq
        return np.array([worker, slot, seq, n], dtype=np.int64)

    def take(self, ticket: np.ndarray, pin: bool) -> torch.Tensor:
        """The waves of a ticket as a fresh float32 tensor (the slot can be reused afterwards)."""
        worker, slot, seq, n = (int(x) for x in ticket)
        out = torch.empty((n, self.waves.shape[3]), dtype=torch.float32, pin_memory=pin)
        out.copy_(self.waves[worker, slot, :n])
        if int(self.stamps[worker, slot]) != seq:
            raise RuntimeError("a DataLoader worker overwrote a transfer slot still in use; raise prefetch slots")
        return out


def _grouped(batches: Iterator[tuple], k: int, ring: _Ring | None) -> Iterator[dict]:
    """Up to ``k`` batches per worker message (+ ``_sizes``): a DataLoader worker pays its IPC cost per message.

    With a ``ring`` (make_loader), waves go through shared memory and the message holds numpy arrays only
    (``StreamLoader`` makes the tensors in the main process); otherwise it holds ready tensors."""
    group: list[tuple] = []
    for b in batches:
        group.append(b)
        if len(group) == k:
            yield _pack(group, ring)
            group = []
    if group:
        yield _pack(group, ring)


def _pack(group: list[tuple], ring: _Ring | None) -> dict:
    out: dict[str, Any] = {}
    for j, key in enumerate(_FIELDS[1:], 1):
        if group[0][j] is not None:
            out[key] = group[0][j] if len(group) == 1 else np.concatenate([b[j] for b in group])
    out["_sizes"] = np.array([len(b[0]) for b in group], dtype=np.int64)
    if ring is not None:
        out["_ring"] = ring.put(torch.utils.data.get_worker_info().id, [b[0] for b in group])
        return out
    wave = group[0][0] if len(group) == 1 else np.concatenate([b[0] for b in group])
    batch = _to_batch(wave, out.get("label"), out.get("rec"), out.get("id"))
    return {**batch, "_sizes": torch.from_numpy(out["_sizes"])}


def _keep(item: Any) -> Any:
    """The DataLoader's collate_fn for ring messages: keep the numpy arrays (no per-array tensor conversion)."""
    return item
