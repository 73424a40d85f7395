"""`make demo`: the main job on bundled, seeded demo data, with no download.

Builds (or reuses) a small corpus from synthetic ground-truth recordings, streams one epoch of it the way
training does, and, when a checkpoint is bundled, sorts the demo recording and scores it against its ground truth.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from deepspike.data.corpus import MANIFEST, CorpusConfig, build_corpus
from deepspike.paths import DATA_DIR

DEMO_CORPUS = DATA_DIR / "demo_corpus"
DEMO_SYNTH = DATA_DIR / "generated" / "demo"


def build_demo_corpus(out: Path = DEMO_CORPUS) -> Path:
    """Eight seeded synthetic recordings (20 s each, mixed sampling rates) -> a corpus in ``out``."""
    if (out / MANIFEST).exists():
        print(f"demo corpus: reusing {out}")
        return out / MANIFEST
    cfg = {
        "recordings": [],
        "out": str(out),
        "synthetic": {"n": 8, "dir": str(DEMO_SYNTH), "seed": 0, "duration_s": 20.0, "sampling_frequency": "random"},
        "block_size": 1024,
        "shard_spikes": 4096,
        "val_fraction": 0.25,
    }
    manifest = build_corpus(CorpusConfig.from_cfg(cfg))
    assert manifest is not None
    return manifest


def stream_epoch(manifest: Path) -> None:
    """One epoch through the training loader; prints throughput and how well batches mix recordings."""
    from deepspike.data.loader import make_loader

    loader = make_loader(manifest.parent, batch_size=512, num_workers=0, return_labels=True)
    t0 = time.perf_counter()
    n, recs = 0, []
    for batch in loader:
        n += len(batch["wave"])
        recs.append(len(set(batch["rec"].tolist())))
    dt = time.perf_counter() - t0
    print(
        f"stream: {n} spikes in {len(recs)} batches, {n / dt:,.0f} spikes/s; "
        f"recordings per batch: {min(recs)}-{max(recs)}"
    )


def main() -> None:
    manifest = build_demo_corpus()
    m = json.loads(manifest.read_text())
    print(
        f"corpus: {m['num_spikes']} spikes, {len(m['shards'])} shards, {len(m['recordings'])} recordings -> {manifest}"
    )
    stream_epoch(manifest)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
