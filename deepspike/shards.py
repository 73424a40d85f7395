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
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepspike.errors import ShardError

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
    """Write ``blocks`` to a tar shard at ``path`` atomically; return ``{num_spikes, num_blocks, block_sizes}``."""
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
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"num_spikes": int(sum(sizes)), "num_blocks": len(sizes), "block_sizes": sizes}


def _decode(url: str, key: str, members: dict[str, bytes]) -> Block:
    missing = [m for m in MEMBERS if m not in members]
    if missing:
        raise ShardError(f"{url}: block {key!r} lacks {missing}; the shard is corrupt, rebuild it")
    try:
        arr = {m: np.load(io.BytesIO(members[m]), allow_pickle=False) for m in MEMBERS if m.endswith(".npy")}
        meta = json.loads(members["meta.json"])
    except Exception as e:
        raise ShardError(f"{url}: block {key!r} cannot be decoded ({e}); the shard is corrupt, rebuild it") from e
    w = arr["wave.npy"]
    n = w.shape[0] if w.ndim == 2 else -1
    if n < 0 or any(arr[m].shape != (n,) for m in ("time.npy", "chan.npy", "label.npy")):
        raise ShardError(f"{url}: block {key!r} has inconsistent shapes; the shard is corrupt, rebuild it")
    return Block(w, arr["time.npy"], arr["chan.npy"], arr["label.npy"], meta)


def iter_blocks(url: str, skip: int = 0, limit: int | None = None) -> Iterator[Block]:
    """Stream blocks from a shard at ``url`` (a path or any URL ``webdataset.gopen`` opens).

    ``skip`` blocks are passed over without decoding and at most ``limit`` are yielded, so a reader can take
    a contiguous slice of a shard while reading it sequentially (object stores need no seeks).
    Raises ``ShardError`` naming the shard for truncated or corrupt files.
    """
    import webdataset as wds

    done = 0
    index = -1
    current: str | None = None
    members: dict[str, bytes] = {}
    try:
        stream = wds.gopen(str(url), "rb")
    except Exception as e:
        raise ShardError(f"cannot open shard {url}: {e}") from e
    try:
        with stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, member = info.name.partition(".")
                if key != current:
                    if current is not None and index >= skip:
                        yield _decode(url, current, members)
                        done += 1
                        if limit is not None and done >= limit:
                            return
                    current, members, index = key, {}, index + 1
                if index >= skip:
                    f = tar.extractfile(info)
                    members[member] = f.read() if f is not None else b""
            if current is not None and index >= skip and (limit is None or done < limit):
                yield _decode(url, current, members)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ShardError(f"{url}: truncated or corrupt tar ({e}); rebuild this shard") from e
