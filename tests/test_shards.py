"""The shard format: exact round trip, slicing by block, and clear errors for damaged files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from deepspike.data.shards import Block, iter_blocks, slug, write_shard
from deepspike.errors import ShardError


def _blocks(n_blocks: int, size: int, seed: int = 0) -> list[Block]:
    rng = np.random.default_rng(seed)
    return [
        Block(
            waves=rng.normal(size=(size + i, 20)).astype(np.float16),
            times=np.arange(size + i, dtype=np.int64) * 7 + i,
            chans=np.full(size + i, i, dtype=np.int16),
            labels=rng.integers(-1, 3, size + i),
            meta={"recording": "rec.a"},
        )
        for i in range(n_blocks)
    ]


def test_round_trip_is_exact(tmp_path: Path) -> None:
    blocks = _blocks(4, 100)
    info = write_shard(tmp_path / "s.tar", blocks, key_prefix="rec.a")
    data = (tmp_path / "s.tar").read_bytes()
    assert info == {"num_spikes": 406, "num_blocks": 4, "block_sizes": [100, 101, 102, 103], "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    back = list(iter_blocks(str(tmp_path / "s.tar")))
    assert len(back) == 4
    for a, b in zip(blocks, back, strict=True):
        for f in ("waves", "times", "chans", "labels"):
            assert np.array_equal(getattr(a, f), getattr(b, f)) and getattr(a, f).dtype == getattr(b, f).dtype
        assert b.meta["recording"] == "rec.a" and b.meta["num_spikes"] == len(a)
    assert not list(tmp_path.glob("*.tmp"))


def test_skip_and_limit_take_a_contiguous_slice(tmp_path: Path) -> None:
    blocks = _blocks(5, 10)
    write_shard(tmp_path / "s.tar", blocks, key_prefix="r")
    got = list(iter_blocks(str(tmp_path / "s.tar"), skip=1, limit=3))
    assert [len(b) for b in got] == [11, 12, 13]
    assert list(iter_blocks(str(tmp_path / "s.tar"), skip=5)) == []
    assert len(list(iter_blocks(f"file:{tmp_path / 's.tar'}", skip=4))) == 1  # URL schemes via webdataset.gopen


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_shard_raises_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "bad.tar"
    write_shard(path, _blocks(3, 500), key_prefix="r")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 999)
    with pytest.raises(ShardError, match=r"bad\.tar"):
        list(iter_blocks(str(path)))


def test_slug_has_no_dots() -> None:
    assert "." not in slug("C_Easy1.noise 0.05") and slug("...") == "rec"
