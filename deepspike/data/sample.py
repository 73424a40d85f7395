"""Windows sampled from a corpus's shards without the stream: the validation sets of the collapse metric and the
sample that fits the PCA initialization.
"""

from __future__ import annotations

import numpy as np

from deepspike.errors import DeepSpikeError


def split_shards(shards: str, split: str) -> list[tuple[str, str]]:
    """(recording, URL) of each shard of ``split`` in manifest order (a shard without a split is training data)."""
    from deepspike.data.stream import load_manifest

    manifest, base = load_manifest(shards)
    return [(sh["recording"], f"{base}/{sh['path']}" if base else sh["path"])
            for sh in manifest["shards"] if sh.get("split", "train") == split]  # fmt: skip


def val_windows(shards: str, max_spikes: int = 3000) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(waves, labels or None) per recording of the corpus' validation split, at most ``max_spikes`` each.

    Read straight from the shards (not the rank-split stream), so every DDP rank sees the same spikes.
    """
    from deepspike.data.shards import iter_blocks

    per: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for recording, url in split_shards(shards, "val"):
        waves, labels = per.setdefault(recording, ([], []))
        for block in iter_blocks(url):
            if sum(len(w) for w in waves) >= max_spikes:
                break
            waves.append(np.asarray(block.waves, dtype=np.float32))
            labels.append(np.asarray(block.labels, dtype=np.int64))
    out = []
    for waves, labels in per.values():
        w, lab = np.concatenate(waves)[:max_spikes], np.concatenate(labels)[:max_spikes]
        out.append((w, lab if (lab >= 0).any() else None))
    return out


def sample_windows(shards: str, split: str = "train", per_shard: int = 256, max_spikes: int = 65536) -> np.ndarray:
    """The first ``per_shard`` windows of each shard of ``split`` (in manifest order), at most ``max_spikes``:
    a deterministic spread over recordings, e.g. for the PCA that initializes ``linear_skip`` nets."""
    from deepspike.data.shards import iter_blocks

    out, n = [], 0
    for _, url in split_shards(shards, split):
        if n >= max_spikes:
            break
        block = next(iter_blocks(url, limit=1), None)
        if block is not None:
            out.append(np.asarray(block.waves[:per_shard], dtype=np.float32))
            n += len(out[-1])
    if not out:
        raise DeepSpikeError(f"corpus {shards}: no {split} windows to sample")
    return np.concatenate(out)[:max_spikes]
