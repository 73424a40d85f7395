"""The fine-tuning corpus of a lab's own recordings: content-addressed (the same recordings and settings reuse one
build) and split by time within each recording, so validation never sees training spikes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from filelock import FileLock

from deepspike import __version__
from deepspike.data.corpus import CorpusConfig, build_corpus, expand_recordings, log, source_fingerprint
from deepspike.errors import DeepSpikeError
from deepspike.paths import write_json_atomic
from deepspike.spec import WindowSpec


def corpus_key(paths: list[Path], window: WindowSpec, extract: dict[str, Any], split: dict[str, Any]) -> str:
    """Content address of a fine-tuning corpus: the recordings' bytes, the window spec and the extract options."""
    from deepspike.spikes.extract import ExtractParams

    doc = {
        "recordings": sorted(source_fingerprint(p)["sha256"] for p in paths),
        "window": window.to_dict(),
        "extract": asdict(ExtractParams.from_config(extract)),
        "split": split,
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def split_shards_by_time(manifest: dict[str, Any], val_fraction: float) -> dict[str, Any]:
    """Hold out the last ``val_fraction`` of each recording's shards (at least one when it has two) as val.

    The corpus builder splits by recording, which leaves nothing to validate on when a lab brings one or two
    recordings; fine-tuning holds out part of every recording instead (no spike is in both splits).
    """
    m = copy.deepcopy(manifest)
    for rec in m["recordings"]:
        own = [s for s in m["shards"] if s["recording"] == rec["id"]]
        n_val = max(1, math.floor(val_fraction * len(own) + 0.5)) if val_fraction > 0 and len(own) >= 2 else 0
        for i, s in enumerate(own):
            s["split"] = "val" if i >= len(own) - n_val else "train"
        rec["split"] = "train+val" if n_val else "train"
    m["splits"] = {
        name: {"num_spikes": sum(s["num_spikes"] for s in m["shards"] if s["split"] == name),
               "num_shards": sum(s["split"] == name for s in m["shards"])}
        for name in ("train", "val")
    }  # fmt: skip
    m["split_by"] = f"shard: last {val_fraction:g} of each recording's shards"
    return m


def build_finetune_corpus(
    recordings: list[str],
    window: WindowSpec,
    cache_dir: str | os.PathLike,
    extract: dict[str, Any] | None = None,
    val_fraction: float = 0.1,
    shard_spikes: int = 512,
    block_size: int = 256,
    workers: int = 1,
    recording_options: dict[str, Any] | None = None,
) -> Path:
    """Build (or reuse) the corpus of ``recordings`` under ``cache_dir/<content hash>``; return its manifest path.

    Small shards (``shard_spikes``) so a single recording still splits into train and validation shards.
    """
    paths = expand_recordings([str(r) for r in recordings])
    if not paths:
        raise DeepSpikeError("fine-tuning needs recordings: pass data.recordings='[PATH_OR_GLOB,...]'")
    extract = dict(extract or {})
    split = {"val_fraction": val_fraction, "shard_spikes": shard_spikes, "block_size": block_size}
    out = Path(cache_dir) / corpus_key(paths, window, extract, split)
    final = out / "finetune_manifest.json"
    # One builder at a time per corpus (DDP ranks started by the launcher all reach the build); filelock, unlike
    # fcntl, also works on Windows.
    with FileLock(str(Path(cache_dir) / f".{out.name}.lock")):
        if final.exists():
            log.info("fine-tuning corpus reused: %s", out)
            return final
        cfg = CorpusConfig(
            recordings=[str(p) for p in paths], out=str(out), overwrite=True, workers=workers, block_size=block_size,
            shard_spikes=shard_spikes, val_fraction=0.0, progress=False, window=window.to_dict(), extract=extract,
            recording_options=dict(recording_options or {}),
        )  # fmt: skip
        cfg.validate()
        manifest = json.loads(Path(build_corpus(cfg)).read_text())
        write_json_atomic(final, split_shards_by_time(manifest, val_fraction))
    return final
