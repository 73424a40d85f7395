"""Stage cache of a sort, so a long sort killed midway (SIGTERM, SIGKILL, a lost node) restarts from its last
finished stage instead of from the start.

Each finished stage (``motion``, ``spikes``, ``clustered``, ``sorted``) is saved in ``out/.deepspike-cache/`` as
``<stage>.npz`` (plain arrays, loaded with ``allow_pickle=False``: data never runs code) beside ``<stage>.json``,
which holds the stage's key: a digest of everything the stage depends on (the recording's files by name, size and
modification time; every option that reaches the stage; the encoder file's digest; the upstream stage's key). A
rerun with the same key loads the stage; any other key recomputes it and every later stage (never a mix of
settings), saying so in the log. The result folder replaces the cache when the sort's outputs land.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CACHE_DIR = ".deepspike-cache"
PARTIAL_MARKER = ".deepspike-partial"  # in `out` while only a cache is there (a sort that did not finish)
STAGES = ("motion", "spikes", "clustered", "sorted")


def digest(*parts: Any) -> str:
    """A stable digest of JSON-able ``parts`` (dict keys sorted; numbers and paths as text)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def path_identity(source: Any) -> dict[str, Any] | None:
    """Name, size and modification time of every file of a path (a recording, an encoder; cheap: an hour of 384
    channels is tens of GB, too much to hash at each start); None for no path (an in-memory recording: not cached)."""
    if source is None:
        return None
    p = Path(source).expanduser().resolve()
    if not p.exists():
        return None
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    return {
        "path": str(p),
        "files": [[str(f.relative_to(p.parent)), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
    }


class StageCache:
    """Load or save each stage's arrays under ``folder`` by key; a disabled cache (``folder`` None) does nothing."""

    def __init__(self, folder: str | os.PathLike | None) -> None:
        self.folder = None if folder is None else Path(folder)
        self.loaded: list[str] = []  # stages this run took from the cache (result.info["resumed"])
        self._stale = False  # a stage was recomputed: later stages are recomputed too, whatever their keys

    def load(self, stage: str, key: str) -> dict[str, np.ndarray] | None:
        """The stage's arrays if it was saved with ``key`` (and nothing upstream was recomputed), else None."""
        if self.folder is None or self._stale:
            return None
        meta, data = self.folder / f"{stage}.json", self.folder / f"{stage}.npz"
        if not (meta.is_file() and data.is_file()):
            self._stale = True
            return None
        saved = json.loads(meta.read_text()).get("key")
        if saved != key:
            log.warning("%s: cached %s stage was made with other settings; recomputing it and the later stages",
                        self.folder, stage)  # fmt: skip
            self._stale = True
            return None
        with np.load(data, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        log.info("resumed: %s stage from %s", stage, data)
        self.loaded.append(stage)
        return arrays

    def save(self, stage: str, key: str, arrays: dict[str, np.ndarray], info: dict[str, Any] | None = None) -> None:
        """Save atomically (temporary names, then rename: the .json last, so a kill never pairs a key with
        half-written arrays)."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder.parent / PARTIAL_MARKER).touch()
        tag = f"{os.getpid()}-{secrets.token_hex(4)}"
        tmp_npz = self.folder / f".{stage}.{tag}.npz"
        np.savez(tmp_npz, **arrays)
        os.replace(tmp_npz, self.folder / f"{stage}.npz")
        tmp_json = self.folder / f".{stage}.{tag}.json"
        tmp_json.write_text(json.dumps({"key": key, "info": info or {}}, default=str))
        os.replace(tmp_json, self.folder / f"{stage}.json")

    def info(self, stage: str) -> dict[str, Any]:
        """The ``info`` saved with a stage (e.g. the clustering's record)."""
        if self.folder is None or not (self.folder / f"{stage}.json").is_file():
            return {}
        return dict(json.loads((self.folder / f"{stage}.json").read_text()).get("info") or {})
