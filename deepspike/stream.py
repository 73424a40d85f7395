"""Stream stage: corpus shards -> shuffled float32 batches, identical batch counts on every DDP rank.

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
  mixes rows from many shards / recordings. ``shuffle=False``: manifest shard order, chunks in order, no pool.
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

Shards are read by a fast sequential tar / ``.npy`` reader (``read_blocks``) that yields the same arrays as
``deepspike.shards.iter_blocks`` but decodes only the members a batch needs, without copies (frombuffer) and with
``.npy`` headers parsed once per shape: the general reader spends most of its time in tarfile and ``np.load``.
"""

from __future__ import annotations

import ast
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
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from deepspike.errors import ShardError
from deepspike.shards import MEMBERS

MANIFEST = "manifest.json"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")

__all__ = ["ShardStream", "StreamLoader", "load_manifest", "make_loader", "read_blocks"]


# ----------------------------------------------------------------------------------------------- manifest / URLs


def _is_local(url: str) -> bool:
    return not _SCHEME.match(url) or url.startswith("file:")


def _local_path(url: str) -> str:
    return url[len("file:") :] if url.startswith("file:") else url


def _read_text(url: str) -> str:
    """Read a small text file from a path or any URL webdataset.gopen opens."""
    if _is_local(url):
        return Path(_local_path(url)).read_text()
    import webdataset as wds

    with wds.gopen(url, "rb") as fh:
        return fh.read().decode()


def _exists(url: str) -> bool:
    if _is_local(url):
        return os.path.isfile(_local_path(url))
    try:
        _read_text(url)
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


def _manifest_url(source: str | os.PathLike | Sequence[str]) -> tuple[str, list[str] | None]:
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
        if _exists(cand):
            return cand, shards
    raise ShardError(
        f"no {MANIFEST} found next to the shards ({' or '.join(candidates)}): the stream needs the manifest for "
        "row counts (equal batches per rank); pass the corpus directory or point at its manifest.json"
    )


def load_manifest(source: str | os.PathLike | Sequence[str]) -> tuple[dict[str, Any], str]:
    """Load the corpus manifest for ``source``; return ``(manifest, base_url)`` (shard paths are relative to it).

    ``source``: a corpus directory, a ``manifest.json`` path/URL, or a glob / brace pattern / list of shard URLs
    (the manifest is then looked up in the shards' common directory, then its parent).
    """
    return _load(source)[:2]


def _load(source: str | os.PathLike | Sequence[str]) -> tuple[dict[str, Any], str, list[str] | None]:
    url, shards = _manifest_url(source)
    try:
        manifest = json.loads(_read_text(url))
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


# ------------------------------------------------------------------------------------------------ fast block reader

_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


def _npy_header(url: str, header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    """Parse an .npy header dict once per distinct header (block shapes repeat, the literal_eval is slow)."""
    spec = _NPY_HEADERS.get(header)
    if spec is None:
        try:
            d = ast.literal_eval(header.decode("latin1"))
            spec = (np.dtype(d["descr"]), tuple(int(n) for n in d["shape"]), bool(d["fortran_order"]))
        except Exception as e:  # any parse failure means a corrupt member
            raise ShardError(f"{url}: bad .npy header ({e}); the shard is corrupt, rebuild it") from e
        if spec[0].hasobject:
            raise ShardError(f"{url}: .npy member holds Python objects; the shard is corrupt, rebuild it")
        if len(_NPY_HEADERS) > 4096:
            _NPY_HEADERS.clear()
        _NPY_HEADERS[header] = spec
    return spec


def _npy(url: str, buf: bytes, size: int) -> np.ndarray:
    """Decode an .npy member held in ``buf[:size]`` without copying (read-only array)."""
    if buf[:6] != b"\x93NUMPY":
        raise ShardError(f"{url}: member is not an .npy array; the shard is corrupt, rebuild it")
    wide = buf[6] >= 2
    start = 12 if wide else 10
    hlen = int.from_bytes(buf[8:start], "little")
    dtype, shape, fortran = _npy_header(url, buf[start : start + hlen])
    n = math.prod(shape)
    if size - start - hlen != n * dtype.itemsize:
        raise ShardError(f"{url}: .npy member has the wrong size; the shard is corrupt, rebuild it")
    a = np.frombuffer(buf, dtype=dtype, count=n, offset=start + hlen)
    return a.reshape(shape[::-1]).T if fortran else a.reshape(shape)


def _octal(url: str, field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.strip(b"\0 ") or b"0", 8)
    except ValueError as e:
        raise ShardError(f"{url}: bad tar header; the shard is corrupt or not a tar file, rebuild it") from e


def _read(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    while len(data) < n:  # pipes and sockets may return short reads
        more = fh.read(n - len(data))
        if not more:
            break
        data += more
    return data


def _skip(fh: BinaryIO, n: int) -> None:
    if n <= 0:
        return
    if getattr(fh, "seekable", lambda: False)():
        fh.seek(n, os.SEEK_CUR)
        return
    while n > 0:
        got = fh.read(min(n, 1 << 20))
        if not got:
            return  # the next header read reports the truncation
        n -= len(got)


def _members(fh: BinaryIO, url: str) -> Iterator[tuple[str, int]]:
    """Walk a tar stream: yield ``(name, size)`` of each regular file; the caller reads or skips its data.

    The caller must consume exactly ``(size + 511) // 512 * 512`` bytes (``_read``/``_skip``) before resuming.
    Handles USTAR prefixes, GNU long names and pax ``path`` records; raises ShardError when truncated.
    """
    long_name: str | None = None
    while True:
        hdr = _read(fh, 512)
        if len(hdr) < 512:
            raise ShardError(f"{url}: truncated tar (no end-of-archive marker); rebuild this shard")
        if hdr.count(0) == 512:
            return
        chk = _octal(url, hdr[148:156])
        if chk != sum(hdr[:148]) + 256 + sum(hdr[156:]):
            raise ShardError(f"{url}: bad tar header checksum; the shard is corrupt or not a tar file, rebuild it")
        size = _octal(url, hdr[124:136])
        padded = (size + 511) & ~511
        kind = hdr[156:157]
        if kind in (b"L", b"x"):
            data = _read(fh, padded)[:size]
            if kind == b"L":
                long_name = data.rstrip(b"\0").decode()
            else:
                for rec in data.decode("utf-8", "replace").split("\n"):
                    if " path=" in rec:
                        long_name = rec.split(" path=", 1)[1]
            continue
        if kind not in (b"0", b"\0"):
            _skip(fh, padded)
            long_name = None
            continue
        name = hdr[:100].split(b"\0", 1)[0].decode()
        if hdr[257:262] == b"ustar" and hdr[345] != 0:
            name = hdr[345:500].split(b"\0", 1)[0].decode() + "/" + name
        if long_name is not None:
            name, long_name = long_name, None
        yield name, size


class RawBlock(NamedTuple):
    """The decoded members of one block a stream needs (read-only views of the read buffers)."""

    waves: np.ndarray  # float16 [n, window]
    labels: np.ndarray | None  # int64 [n]


def read_blocks(url: str, skip: int = 0, limit: int | None = None, labels: bool = True) -> Iterator[RawBlock]:
    """Stream blocks like ``shards.iter_blocks(url, skip, limit)``, decoding only waves (and labels).

    Sequential and forward-only (skipped blocks and unused members are seeked over or read and dropped), so it
    works on pipes and HTTP as well as files. Raises ShardError naming ``url`` for truncated / corrupt shards.
    """
    try:
        if _is_local(url):
            fh: BinaryIO = open(_local_path(url), "rb", buffering=0)  # noqa: SIM115 - closed below
        else:
            import webdataset as wds

            fh = wds.gopen(url, "rb")
    except Exception as e:  # gopen raises many kinds
        raise ShardError(f"cannot open shard {url}: {e}") from e
    want = {"wave.npy", "label.npy"} if labels else {"wave.npy"}
    try:
        with fh:
            yield from _blocks(fh, url, skip, limit, want)
    except (OSError, EOFError) as e:
        raise ShardError(f"{url}: truncated or unreadable shard ({e}); rebuild this shard") from e


def _blocks(fh: BinaryIO, url: str, skip: int, limit: int | None, want: set[str]) -> Iterator[RawBlock]:
    index, done = -1, 0
    current: str | None = None
    found: dict[str, np.ndarray | None] = {}
    for name, size in _members(fh, url):
        key, _, member = name.partition(".")
        if key != current:
            if current is not None and index >= skip:
                yield _raw(url, current, found)
                done += 1
                if limit is not None and done >= limit:
                    return
            current, found, index = key, {}, index + 1
        padded = (size + 511) & ~511
        if index >= skip and member in want:
            buf = _read(fh, padded)
            if len(buf) < size:
                raise ShardError(f"{url}: truncated tar member {name!r}; rebuild this shard")
            found[member] = _npy(url, buf, size)
        else:
            _skip(fh, padded)
            found[member] = None
    if current is not None and index >= skip and (limit is None or done < limit):
        yield _raw(url, current, found)


def _raw(url: str, key: str, found: dict[str, np.ndarray | None]) -> RawBlock:
    missing = [m for m in MEMBERS if m not in found]
    if missing:
        raise ShardError(f"{url}: block {key!r} lacks {missing}; the shard is corrupt, rebuild it")
    w, lab = found["wave.npy"], found.get("label.npy")
    if w is None or w.ndim != 2 or w.dtype != np.float16 or (lab is not None and lab.shape != (w.shape[0],)):
        raise ShardError(f"{url}: block {key!r} has bad shapes or dtypes; the shard is corrupt, rebuild it")
    return RawBlock(w, lab)


# ------------------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class _Shard:
    url: str
    starts: np.ndarray  # int64 [num_blocks + 1] first row of each block
    rec: int  # index into manifest["recordings"], -1 if unknown
    id0: int  # global row index of the shard's first row (manifest order)

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
            out.append(_Shard(url, np.concatenate([[0], np.cumsum(sizes)]), recs.get(s.get("recording"), -1), id0))
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


class _ShufflePool:
    """Row-level shuffle buffer, all vectorized: fill ``cap`` rows, emit a random half in whole batches, keep half.

    Rows are always appended contiguously; the kept half is compacted in order (a monotone gather) into a second
    buffer, so the only random memory access per row is the one gather that forms its batch.
    """

    FIELDS = ("wave", "label", "rec", "id")

    def __init__(self, cap: int, batch: int, labels: bool, ids: bool, rng: np.random.Generator) -> None:
        self.cap, self.batch, self.labels, self.ids, self.rng = cap, batch, labels, ids, rng
        self.n = 0
        self.bufs: list[list[np.ndarray | None]] | None = None  # [current, spare] x FIELDS

    def _alloc(self, rows: _Rows) -> None:
        self.window = rows.wave.shape[1]

        def one() -> list[np.ndarray | None]:
            extra = [np.empty(self.cap, np.int64) if f else None for f in (self.labels, self.labels, self.ids)]
            return [_int_view(np.empty((self.cap, self.window), np.float16)), *extra]

        self.bufs = [one(), one()]

    def put(self, rows: _Rows) -> Iterator[dict]:
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

    def _emit_half(self) -> Iterator[dict]:
        m = max(self.batch, self.cap // 2 // self.batch * self.batch)
        sel = self.rng.choice(self.cap, m, replace=False, shuffle=True)
        for i in range(0, m, self.batch):
            yield self._gather(sel[i : i + self.batch])
        keep = np.ones(self.cap, bool)
        keep[sel] = False
        kept = np.flatnonzero(keep)
        cur, spare = self.bufs
        for src, dst in zip(cur, spare, strict=True):
            if src is not None:
                np.take(src, kept, axis=0, out=dst[: len(kept)], mode="clip")  # clip: no bounds pass
        self.bufs = [spare, cur]
        self.n = len(kept)

    def _gather(self, idx: np.ndarray) -> dict:
        wv, lab, rec, ids = (None if f is None else np.take(f, idx, axis=0, mode="clip") for f in self.bufs[0])
        return _to_batch(wv.view(np.float16), lab, rec, ids)

    def repeat(self, n: int) -> _Rows | None:
        """``n`` rows repeated from those in the pool (padding), or None if the pool is empty."""
        if n <= 0 or self.n == 0:
            return None
        idx = self.rng.integers(self.n, size=n)
        wv, lab, rec, ids = (None if f is None else np.take(f, idx, axis=0, mode="clip") for f in self.bufs[0])
        return _Rows(wv.view(np.float16), lab, rec, ids)

    def flush(self, drop_last: bool) -> Iterator[dict]:
        v = self.rng.permutation(self.n)
        end = len(v) // self.batch * self.batch if drop_last else len(v)
        for i in range(0, end, self.batch):
            yield self._gather(v[i : min(i + self.batch, end)])


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
            yield _to_batch(*self._take(self.batch))

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
            yield _to_batch(*self._take(self.n))


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
        resample: bool = False,
        drop_last: bool = False,
        return_labels: bool = False,
        return_ids: bool = False,
        on_corrupt: str = "warn",
        num_workers: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if on_corrupt not in ("warn", "raise"):
            raise ValueError(f"on_corrupt must be 'warn' or 'raise', got {on_corrupt!r}")
        if batch_size < 1 or chunks_per_slot < 1 or interleave < 1 or num_workers < 0:
            raise ValueError("batch_size, chunks_per_slot and interleave must be >= 1, num_workers >= 0")
        self.manifest, self.base_url, only = _load(source)
        self.split = split
        self.shards = _shards(self.manifest, self.base_url, split, only)
        self.batch_size, self.seed, self.shuffle = int(batch_size), int(seed), bool(shuffle)
        self.buffer_rows = max(int(buffer_rows), 2 * self.batch_size)
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
        if self.transfer_batches > 1 and torch.utils.data.get_worker_info() is not None:
            return _grouped(batches, self.transfer_batches)
        return batches

    def _slot(self, worker: int, nw: int) -> Iterator[dict[str, torch.Tensor]]:
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
                self.buffer_rows, self.batch_size, self.return_labels, self.return_ids, rng
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
            with closing(read_blocks(shard.url, b0, b1 - b0, labels=self.return_labels)) as blocks:
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


def _grouped(batches: Iterator[dict[str, torch.Tensor]], k: int) -> Iterator[dict[str, torch.Tensor]]:
    """Concatenate up to ``k`` batches into one message (+ ``_sizes``): a DataLoader worker pays its IPC cost
    (shared-memory file, fd passing, page faults) per message, about 2 ms on a small VM, so per-batch messages
    cap a loader near 2 M spikes/s at batch 4096."""
    group: list[dict[str, torch.Tensor]] = []
    for b in batches:
        group.append(b)
        if len(group) == k:
            yield _pack(group)
            group = []
    if group:
        yield _pack(group)


def _pack(group: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {key: torch.cat([b[key] for b in group]) for key in group[0]}
    out["_sizes"] = torch.tensor([len(b["wave"]) for b in group], dtype=torch.int64)
    return out


class StreamLoader(DataLoader):
    """A DataLoader that unpacks the multi-batch messages of ShardStream workers back into batches (views)."""

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for item in super().__iter__():
            sizes = item.pop("_sizes", None)
            if sizes is None:
                yield item
                continue
            parts = {key: torch.split(v, sizes.tolist()) for key, v in item.items()}
            for i in range(len(sizes)):
                yield {key: p[i] for key, p in parts.items()}


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
        kw = {"persistent_workers": persistent_workers, "prefetch_factor": prefetch_factor}
    return StreamLoader(
        ds, batch_size=None, num_workers=num_workers, pin_memory=pin_memory, worker_init_fn=_seed_worker, **kw
    )
