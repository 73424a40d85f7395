"""Where a result came from: file and folder digests, corpus manifest hashes, the tool version and git commit,
and the records of the data a model was fine-tuned on. Written into manifests, checkpoints and encoder artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from contextlib import suppress
from pathlib import Path
from typing import Any

from deepspike.paths import REPO_ROOT


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """Hash of the manifest's content (key order independent), naming the exact corpus a model saw."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()


def corpus_content_sha256(manifest: dict[str, Any]) -> str:
    """``manifest_sha256`` without what differs between two builds of the same corpus (the build's ``created`` time
    and each recording's build ``seconds``): equal for a corpus rebuilt from the same seeds and settings, with the
    recordings at the same path (recording ids hash it), so a fresh machine can check it rebuilt the very corpus."""
    recs = [{k: v for k, v in r.items() if k != "seconds"} for r in manifest.get("recordings", [])]
    return manifest_sha256({k: v for k, v in manifest.items() if k != "created"} | {"recordings": recs})


def data_provenance(manifest: dict[str, Any], corpus: str) -> dict[str, Any]:
    """The fine-tuning data: recordings (path, sha256, spikes) and the corpus manifest's hash."""
    recs = [{k: r.get(k) for k in ("path", "sha256", "size", "num_spikes", "duration_s", "sampling_frequency")}
            for r in manifest.get("recordings", [])]  # fmt: skip
    return {"corpus": corpus, "corpus_manifest_sha256": manifest_sha256(manifest), "recordings": recs,
            "splits": manifest.get("splits"), "split_by": manifest.get("split_by", "recording")}  # fmt: skip


def recording_record(recording: Any, source: Any, num_spikes: int) -> dict[str, Any]:
    """Provenance of the fine-tuning data of the sort path: the recording (path + sha256 when it is a file)."""
    rec: dict[str, Any] = {"num_spikes": int(num_spikes)}
    if source is not None and Path(source).exists():
        rec.update(path=str(Path(source).resolve()), **source_fingerprint(Path(source)))
    else:
        rec["recording"] = type(recording).__name__
    with suppress(Exception):
        rec.update(
            sampling_frequency=float(recording.get_sampling_frequency()),
            duration_s=float(recording.get_total_duration()),
            num_channels=int(recording.get_num_channels()),
        )
    return {"recordings": [rec]}


def git_commit() -> str:
    """``<sha>`` of the checkout holding this package (``+dirty`` with local changes), or ``unknown``."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        return sha + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def tool_version() -> str:
    from deepspike import __version__

    return __version__


def file_digest(path: str | Path) -> dict[str, Any]:
    """``{size, sha256}`` of a file: the one file hasher (shards, recordings, parent encoders in provenance)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return {"size": os.path.getsize(path), "sha256": h.hexdigest()}


def source_fingerprint(path: Path) -> dict[str, Any]:
    """Size and sha256 of a file (``file_digest``) or of every file in a folder (sorted, with their relative
    names), to record provenance and detect edits."""
    if path.is_file():
        return file_digest(path)
    h = hashlib.sha256()
    size = 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size += f.stat().st_size
        h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 22), b""):
                h.update(chunk)
    return {"size": size, "sha256": h.hexdigest()}
