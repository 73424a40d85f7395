"""The corpus shard format: WebDataset tar files whose samples are *blocks* of spikes from one recording.

A block (one WebDataset sample, key ``<recording-slug>_<block:06d>``) holds:

- ``wave.npy``  float16 ``[n, window]`` waveforms in noise units (see ``deepspike.spec``)
- ``time.npy``  int64 ``[n]`` peak sample index at the recording's native rate
- ``chan.npy``  int16 ``[n]`` channel index within the recording
- ``label.npy`` int64 ``[n]`` ground-truth unit id, -1 where unknown or unmatched
- ``meta.json`` recording id, block index, spike count, native sampling rate

Blocks, not single spikes, keep tar overhead at a few bytes per spike and let readers decode thousands of
rows per call. Shards are written under a temporary name and renamed, so a killed writer never leaves a
half shard under a final name.

Row order: blocks of a recording hold its spikes in the order the corpus builder wrote them. ``deepspike.data.corpus``
writes each recording's spikes in a seeded random order (``rng`` seeded from the recording id; the peak time of
every row is stored, so nothing is lost) and marks the manifest ``"row_order": "shuffled"``: any contiguous run of
rows is then a random sample of its recording, which lets the stream mix batches at run granularity (cheap
contiguous copies) instead of row by row. Corpora without the mark are read with row-level mixing.

Reading: ``iter_blocks`` (all members, as ``Block``) and ``read_blocks`` (only waves and labels, for the stream)
share one sequential tar / ``.npy`` reader that decodes members without copies (``frombuffer``) and parses each
distinct ``.npy`` header once; it is forward-only (skipped blocks and members are seeked over, or read and
dropped on pipes / HTTP), so object stores need no seeks.
"""

from __future__ import annotations

import ast
import io
import json
import math
import mmap
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from deepspike.errors import ShardError
from deepspike.provenance import file_digest

MEMBERS = ("wave.npy", "time.npy", "chan.npy", "label.npy", "meta.json")


@dataclass
class Block:
    """A block of spikes from one recording (one WebDataset sample)."""

    waves: np.ndarray  # float16 [n, window]
    times: np.ndarray  # int64 [n]
    chans: np.ndarray  # int16 [n]
    labels: np.ndarray  # int64 [n], -1 = unknown
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.waves.shape[0])


def slug(name: str) -> str:
    """A WebDataset-safe key part (no dots: WebDataset splits keys at the first dot)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-") or "rec"


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: str | Path, blocks: Iterable[Block], key_prefix: str) -> dict[str, Any]:
    """Write ``blocks`` to a tar shard at ``path`` atomically.

    Returns ``{num_spikes, num_blocks, block_sizes, size, sha256}`` (size and hash of the file as written).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    sizes: list[int] = []
    prefix = slug(key_prefix)
    try:
        with open(tmp, "wb") as fh, tarfile.open(fileobj=fh, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for b in blocks:
                key = f"{prefix}_{len(sizes):06d}"
                meta = {**b.meta, "num_spikes": len(b), "block": len(sizes)}
                _add(tar, f"{key}.wave.npy", _npy_bytes(b.waves.astype(np.float16, copy=False)))
                _add(tar, f"{key}.time.npy", _npy_bytes(b.times.astype(np.int64, copy=False)))
                _add(tar, f"{key}.chan.npy", _npy_bytes(b.chans.astype(np.int16, copy=False)))
                _add(tar, f"{key}.label.npy", _npy_bytes(b.labels.astype(np.int64, copy=False)))
                _add(tar, f"{key}.meta.json", json.dumps(meta).encode())
                sizes.append(len(b))
            fh.flush()
            os.fsync(fh.fileno())
        digest = file_digest(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"num_spikes": int(sum(sizes)), "num_blocks": len(sizes), "block_sizes": sizes, **digest}


# ----------------------------------------------------------------------------------------------------- reading

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")
_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}


def is_local(url: str) -> bool:
    """A plain path or a ``file:`` URL (read with ``open``; anything else goes through ``webdataset.gopen``)."""
    return not _SCHEME.match(url) or url.startswith("file:")


def local_path(url: str) -> str:
    return url[len("file:") :] if url.startswith("file:") else url


def check_url(url: str, allow_pipe: bool = False, what: str = "shard") -> None:
    """Refuse a ``pipe:CMD`` URL (webdataset.gopen runs CMD in a shell) unless the user opted in.

    Shard and manifest URLs come from files someone else may have written: data must not run code. Local paths,
    ``file:``, http(s) and the object-store schemes webdataset opens (gs, s3 through a URL rewrite, ais, hf)
    run no command named by the data.
    """
    if not allow_pipe and url.strip().lower().startswith("pipe:"):
        raise ShardError(
            f"{what} {url!r} is a `pipe:` URL: reading it would run the shell command after 'pipe:'. DeepSpike does "
            "not run commands named by data. Use a local path or an http(s)/gs/s3 URL, or, only for a corpus you "
            "built and trust, pass `data.allow_pipe=true` (ShardStream(allow_pipe=True))"
        )


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


def _npy(url: str, buf: memoryview, size: int) -> np.ndarray:
    """Decode an .npy member held in ``buf[:size]`` without copying (a read-only view of ``buf``)."""
    head = bytes(buf[:12])
    if len(head) < 12 or head[:6] != b"\x93NUMPY":
        raise ShardError(f"{url}: member is not an .npy array; the shard is corrupt, rebuild it")
    wide = head[6] >= 2
    start = 12 if wide else 10
    hlen = int.from_bytes(head[8:start], "little")
    dtype, shape, fortran = _npy_header(url, bytes(buf[start : start + hlen]))
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
    """Read ``n`` bytes; shorter only at end of file."""
    data = fh.read(n)
    while 0 < len(data) < n and (more := fh.read(n - len(data))):  # pipes and sockets may return short reads
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
        hdr = bytes(fh.read(512))
        if len(hdr) < 512:
            hdr = bytes(hdr) + _read(fh, 512 - len(hdr))
            if len(hdr) < 512:
                raise ShardError(f"{url}: truncated tar (no end-of-archive marker); rebuild this shard")
        if hdr.count(0) == 512:
            return
        if _octal(url, hdr[148:156]) != sum(hdr) - sum(hdr[148:156]) + 256:  # checksum field counts as spaces
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


class _Mapped:
    """A local shard memory-mapped: ``read`` returns zero-copy views of the page cache.

    Measured on 10 M spikes (2-core machine): file reads were a third of the stream's CPU time with
    ``FileIO.read`` (allocate + copy 400 MB); mapping leaves one copy per row, into the shuffle pool.
    """

    def __init__(self, path: str) -> None:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            self._mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self._view = memoryview(self._mm) if self._mm is not None else memoryview(b"")
        self._pos = 0

    def read(self, n: int) -> memoryview:
        out = self._view[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def seekable(self) -> bool:
        return True

    def seek(self, n: int, whence: int = os.SEEK_SET) -> None:
        self._pos = min(len(self._view), (self._pos if whence == os.SEEK_CUR else 0) + n)

    def close(self) -> None:
        self._view.release()
        with suppress(BufferError):  # arrays still viewing the map keep it alive; it is unmapped when they go
            if self._mm is not None:
                self._mm.close()

    def __enter__(self) -> _Mapped:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open(url: str, allow_pipe: bool = False) -> BinaryIO | _Mapped:
    check_url(url, allow_pipe)
    try:
        if is_local(url):
            return _Mapped(local_path(url))
        import webdataset as wds

        return wds.gopen(url, "rb")
    except Exception as e:  # gopen raises many kinds
        raise ShardError(f"cannot open shard {url}: {e}") from e


def _samples(
    url: str, skip: int, limit: int | None, want: frozenset[str], allow_pipe: bool = False
) -> Iterator[tuple[str, dict[str, memoryview | None]]]:
    """``(key, {member: data or None})`` per block: data for members in ``want``, None for the others.

    Blocks before ``skip`` are passed over without reading their data; at most ``limit`` blocks are yielded.
    """
    fh = _open(url, allow_pipe)
    index, done = -1, 0
    current: str | None = None
    found: dict[str, memoryview | None] = {}
    try:
        with fh:
            for name, size in _members(fh, url):
                key, _, member = name.partition(".")
                if key != current:
                    if current is not None and index >= skip:
                        yield current, found
                        done += 1
                        if limit is not None and done >= limit:
                            return
                    current, found, index = key, {}, index + 1
                padded = (size + 511) & ~511
                if index >= skip and member in want:
                    buf = _read(fh, padded)
                    if len(buf) < size:
                        raise ShardError(f"{url}: truncated tar member {name!r}; rebuild this shard")
                    found[member] = memoryview(buf)[:size]
                else:
                    _skip(fh, padded)
                    found[member] = None
            if current is not None and index >= skip and (limit is None or done < limit):
                yield current, found
    except (OSError, EOFError) as e:
        raise ShardError(f"{url}: truncated or corrupt tar ({e}); rebuild this shard") from e


def _missing(url: str, key: str, found: dict[str, Any]) -> None:
    missing = [m for m in MEMBERS if m not in found]
    if missing:
        raise ShardError(f"{url}: block {key!r} lacks {missing}; the shard is corrupt, rebuild it")


def iter_blocks(url: str, skip: int = 0, limit: int | None = None, allow_pipe: bool = False) -> Iterator[Block]:
    """Stream blocks from a shard at ``url`` (a path, a ``file:`` URL or any URL ``webdataset.gopen`` opens).

    ``skip`` blocks are passed over without decoding and at most ``limit`` are yielded, so a reader can take
    a contiguous slice of a shard while reading it sequentially (object stores need no seeks).
    Raises ``ShardError`` naming the shard for truncated or corrupt files, and for ``pipe:`` URLs unless
    ``allow_pipe`` (see ``check_url``).
    """
    for key, found in _samples(url, skip, limit, frozenset(MEMBERS), allow_pipe):
        _missing(url, key, found)
        try:
            # copies: writable arrays, as np.load gave (the stream's read_blocks keeps read-only views)
            arr = {m: _npy(url, found[m], len(found[m])).copy() for m in MEMBERS if m.endswith(".npy")}
            meta = json.loads(bytes(found["meta.json"]))
        except ShardError:
            raise
        except Exception as e:
            raise ShardError(f"{url}: block {key!r} cannot be decoded ({e}); the shard is corrupt, rebuild it") from e
        w = arr["wave.npy"]
        n = w.shape[0] if w.ndim == 2 else -1
        if n < 0 or any(arr[m].shape != (n,) for m in ("time.npy", "chan.npy", "label.npy")):
            raise ShardError(f"{url}: block {key!r} has inconsistent shapes; the shard is corrupt, rebuild it")
        yield Block(w, arr["time.npy"], arr["chan.npy"], arr["label.npy"], meta)


class RawBlock(NamedTuple):
    """The members of one block a stream needs: waves and, if asked for, labels (views of the read buffers)."""

    waves: np.ndarray  # float16 [n, window]
    labels: np.ndarray | None  # int64 [n]


def read_blocks(
    url: str, skip: int = 0, limit: int | None = None, labels: bool = True, allow_pipe: bool = False
) -> Iterator[RawBlock]:
    """Stream blocks like ``iter_blocks(url, skip, limit)``, decoding only waves (and labels): the stream's reader.

    Unused members are seeked over (or read and dropped), never decoded. Raises ShardError naming ``url``.
    """
    want = frozenset({"wave.npy", "label.npy"} if labels else {"wave.npy"})
    for key, found in _samples(url, skip, limit, want, allow_pipe):
        _missing(url, key, found)
        w, lab = (None if (b := found.get(m)) is None else _npy(url, b, len(b)) for m in ("wave.npy", "label.npy"))
        yield _raw(url, key, w, lab)


def _raw(url: str, key: str, w: np.ndarray | None, lab: np.ndarray | None) -> RawBlock:
    if w is None or w.ndim != 2 or w.dtype != np.float16 or (lab is not None and lab.shape != (w.shape[0],)):
        raise ShardError(f"{url}: block {key!r} has bad shapes or dtypes; the shard is corrupt, rebuild it")
    return RawBlock(w, lab)
