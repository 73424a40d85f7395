"""The shard stream: exact round trip, DDP partition with equal batch counts, shuffling, epochs, corrupt shards."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from deepspike.data.loader import make_loader
from deepspike.data.shards import Block, iter_blocks, read_blocks, write_shard
from deepspike.data.stream import ShardStream, load_manifest
from deepspike.errors import ShardError

SIZES = [300, 3000, 1234, 777, 2048, 513, 1999, 900, 640]  # the last shard is the val split
BLOCK = 256
WINDOW = 20
REPO = Path(__file__).resolve().parents[1]


class Corpus:
    """A tiny on-disk corpus plus, per global row id, what was written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        rng = np.random.default_rng(0)
        shards, waves, labels, recs = [], [], [], []
        recordings = [{"id": f"rec-{i}", "split": "val" if i == 6 else "train"} for i in range(7)]
        (root / "shards").mkdir(parents=True)
        for i, n in enumerate(SIZES):
            r = 6 if i == len(SIZES) - 1 else i % 6
            w = rng.normal(size=(n, WINDOW)).astype(np.float16)
            lab = rng.integers(-1, 5, n)
            blocks = [
                Block(w[a : a + BLOCK], np.arange(a, min(n, a + BLOCK)), np.zeros(min(BLOCK, n - a), np.int16),
                      lab[a : a + BLOCK], {"recording": f"rec-{r}"})
                for a in range(0, n, BLOCK)
            ]  # fmt: skip
            path = f"shards/rec-{r}-{i:04d}.tar"
            info = write_shard(root / path, blocks, key_prefix=f"rec-{r}")
            shards.append({"path": path, **info, "recording": f"rec-{r}", "split": recordings[r]["split"]})
            waves.append(w), labels.append(lab), recs.append(np.full(n, r))
        manifest = {"format": "deepspike-corpus", "num_spikes": sum(SIZES), "shards": shards, "recordings": recordings}
        (root / "manifest.json").write_text(json.dumps(manifest))
        self.waves, self.labels, self.recs = np.concatenate(waves), np.concatenate(labels), np.concatenate(recs)
        self.train_ids = np.arange(sum(SIZES[:-1]))

    def shard_path(self, i: int) -> Path:
        return next(self.root.glob(f"shards/*-{i:04d}.tar"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("corpus"))


def _collect(ds: ShardStream, num_workers: int = 0, persistent: bool = False) -> list[dict[str, np.ndarray]]:
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers, persistent_workers=persistent)
    return [{k: v.numpy() for k, v in b.items()} for b in loader]


def _ids(batches: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([b["id"] for b in batches])


def _stream(corpus: Corpus, **kw: Any) -> ShardStream:
    opts = {"batch_size": 256, "buffer_rows": 1024, "return_ids": True, "rank": 0, "world_size": 1} | kw
    return ShardStream(corpus.root, **opts)


def test_round_trip_every_row_once_bit_exact(corpus: Corpus) -> None:
    ds = _stream(corpus, return_labels=True)
    batches = _collect(ds)
    ids = _ids(batches)
    assert np.array_equal(np.sort(ids), corpus.train_ids)
    assert len(batches) == len(ds) == -(-len(corpus.train_ids) // 256)
    assert all(len(b["id"]) == 256 for b in batches[:-1])
    wave = np.concatenate([b["wave"] for b in batches])
    assert wave.dtype == np.float32 and wave.shape == (len(ids), WINDOW)
    assert np.array_equal(wave, corpus.waves[ids].astype(np.float32))  # float16 -> float32 is exact
    assert np.array_equal(np.concatenate([b["label"] for b in batches]), corpus.labels[ids])
    assert np.array_equal(np.concatenate([b["rec"] for b in batches]), corpus.recs[ids])
    assert not np.array_equal(ids, np.sort(ids))  # shuffled


def test_unshuffled_is_manifest_order(corpus: Corpus) -> None:
    ids = _ids(_collect(_stream(corpus, shuffle=False)))
    assert np.array_equal(ids, corpus.train_ids)


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_partition_rows_with_equal_batch_counts(corpus: Corpus, world: int, workers: int) -> None:
    per_rank = []
    for rank in range(world):
        ds = _stream(corpus, rank=rank, world_size=world, num_workers=workers)
        batches = _collect(ds, num_workers=workers)
        assert len(batches) == len(ds)
        per_rank.append((len(batches), [len(b["id"]) for b in batches], _ids(batches)))
    assert len({n for n, _, _ in per_rank}) == 1  # no DDP hang
    assert len({tuple(sorted(s)) for _, s, _ in per_rank}) == 1  # same batch sizes too
    counts = Counter(np.concatenate([i for _, _, i in per_rank]).tolist())
    assert sorted(counts) == corpus.train_ids.tolist()  # every row read
    repeated = sum(c - 1 for c in counts.values())
    assert repeated <= (world - 1) * max(1, workers)  # documented padding bound: <= 1 row per slot
    if world > 1:  # ranks see different rows
        assert not set(per_rank[0][2].tolist()) & set(per_rank[1][2].tolist()) - {i for i, c in counts.items() if c > 1}


def test_more_slots_than_rows(corpus: Corpus) -> None:
    lens, seen = [], []
    for rank in range(3):
        ds = ShardStream([str(corpus.shard_path(0))], batch_size=64, chunks_per_slot=200, return_ids=True,
                         rank=rank, world_size=3)  # fmt: skip
        batches = _collect(ds)
        lens.append(len(batches))
        seen.extend(_ids(batches).tolist())
    assert len(set(lens)) == 1 and set(seen) == set(range(SIZES[0])) and len(seen) - SIZES[0] <= 2


def test_batches_mix_recordings(corpus: Corpus) -> None:
    batches = _collect(_stream(corpus, batch_size=512, buffer_rows=4096, return_labels=True))
    full = [b for b in batches if len(b["rec"]) == 512]
    mixes = [len(np.unique(b["rec"])) for b in full]
    assert min(mixes) >= 4, mixes


@pytest.fixture(scope="module")
def shuffled(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same corpus marked ``row_order: shuffled`` (its random rows are in random order): run-level mixing."""
    root = tmp_path_factory.mktemp("shuffled") / "corpus"
    shutil.copytree(corpus.root, root)
    m = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps(m | {"row_order": "shuffled"}))
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_run_mixing_round_trip_and_mix(corpus: Corpus, shuffled: Path, workers: int) -> None:
    opts = {"batch_size": 512, "buffer_rows": 4096, "return_ids": True, "return_labels": True, "rank": 0}
    loader = make_loader(shuffled, num_workers=workers, world_size=1, transfer_batches=3, **opts)
    assert loader.dataset.run_rows == 4 and _stream(corpus).run_rows == 1  # runs only on shuffled corpora
    batches = [{k: v.numpy() for k, v in b.items()} for b in loader]
    ids = _ids(batches)
    assert len(batches) == len(loader) and np.array_equal(np.sort(ids), corpus.train_ids)
    assert not np.array_equal(ids, np.sort(ids))
    wave = np.concatenate([b["wave"] for b in batches])
    assert wave.dtype == np.float32 and np.array_equal(wave, corpus.waves[ids].astype(np.float32))
    assert np.array_equal(np.concatenate([b["rec"] for b in batches]), corpus.recs[ids])
    mixes = [len(np.unique(b["rec"])) for b in batches if len(b["rec"]) == 512]
    assert min(mixes) >= 4, mixes


def test_epochs_and_seeds(corpus: Corpus) -> None:
    ds = _stream(corpus)
    e0 = _ids(_collect(ds))
    assert np.array_equal(e0, _ids(_collect(ds)))  # same seed + epoch: same order
    ds.set_epoch(1)
    e1 = _ids(_collect(ds))
    assert not np.array_equal(e0, e1) and np.array_equal(np.sort(e0), np.sort(e1))
    assert not np.array_equal(e0, _ids(_collect(_stream(corpus, seed=1))))


def _loader_ids(corpus: Corpus, epoch: int | None = None, **kw: Any) -> tuple[Any, np.ndarray]:
    opts = {"batch_size": 256, "num_workers": 2, "buffer_rows": 1024, "return_ids": True, "rank": 0, "world_size": 1}
    loader = make_loader(corpus.root, **(opts | kw))
    if epoch is not None:
        loader.dataset.set_epoch(epoch)
    return loader, np.concatenate([b["id"].numpy() for b in loader])


def test_persistent_workers_follow_set_epoch(corpus: Corpus) -> None:
    loader, e0 = _loader_ids(corpus, persistent_workers=True)
    loader.dataset.set_epoch(1)
    e1 = np.concatenate([b["id"].numpy() for b in loader])
    assert not np.array_equal(e0, e1)
    assert np.array_equal(e1, _loader_ids(corpus, epoch=1)[1])  # reproducible with fresh workers


def test_grouped_transfer_keeps_the_batches(corpus: Corpus) -> None:
    loader, _ = _loader_ids(corpus, transfer_batches=3)
    grouped = [tuple(b["id"].tolist()) for b in loader]
    plain = [tuple(b["id"].tolist()) for b in _collect(_stream(corpus, num_workers=2), num_workers=2)]
    assert len(grouped) == len(loader) == len(plain) and sorted(grouped) == sorted(plain)


def test_resample_keeps_epoch_length(corpus: Corpus) -> None:
    for rank in range(2):
        plain = _stream(corpus, rank=rank, world_size=2)
        res = _stream(corpus, rank=rank, world_size=2, resample=True)
        batches = _collect(res)
        assert len(batches) == len(res) == len(plain)
        assert [len(b["id"]) for b in batches] == [len(b["id"]) for b in _collect(plain)]
        assert set(_ids(batches).tolist()) <= set(corpus.train_ids.tolist())


def test_drop_last_gives_full_batches(corpus: Corpus) -> None:
    ds = _stream(corpus, drop_last=True)
    batches = _collect(ds)
    assert len(batches) == len(ds) == len(corpus.train_ids) // 256
    assert {len(b["id"]) for b in batches} == {256}


@pytest.fixture
def damaged(corpus: Corpus, tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "damaged"
    shutil.copytree(corpus.root, root)
    cut, junk = (
        root / corpus.shard_path(1).relative_to(corpus.root),
        root / corpus.shard_path(4).relative_to(corpus.root),
    )
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    junk.write_bytes(b"\x00garbage" * 999)
    pad = root / corpus.shard_path(6).relative_to(corpus.root)  # only end-of-archive padding lost: size check
    pad.write_bytes(pad.read_bytes()[:-512])
    return root, [cut.name, junk.name, pad.name]


@pytest.mark.parametrize("world", [1, 2])
def test_corrupt_shards_are_skipped_and_counts_kept(damaged: tuple[Path, list[str]], world: int) -> None:
    root, names = damaged
    lens = []
    for rank in range(world):
        ds = ShardStream(root, batch_size=256, buffer_rows=1024, return_ids=True, rank=rank, world_size=world)
        with pytest.warns(RuntimeWarning, match="skipping corrupt shard") as rec:
            batches = _collect(ds)
        assert len(batches) == len(ds)
        lens.append(len(batches))
        warned = {n for n in names if any(n in str(w.message) for w in rec)}
        assert warned and len(warned) == ds.corrupt_shards
        assert set(_ids(batches).tolist()) <= set(range(sum(SIZES)))
    assert len(set(lens)) == 1
    if world == 1:
        assert warned == set(names)


def test_corrupt_shard_raises_when_asked(damaged: tuple[Path, list[str]]) -> None:
    root, names = damaged
    ds = ShardStream(root, batch_size=256, on_corrupt="raise", shuffle=False, rank=0, world_size=1)
    with pytest.raises(ShardError, match=names[0]):
        _collect(ds)


def test_manifest_lookup(corpus: Corpus, tmp_path: Path) -> None:
    m, base = load_manifest(corpus.root)
    assert base == str(corpus.root) and len(m["shards"]) == len(SIZES)
    assert load_manifest(corpus.root / "manifest.json")[1] == str(corpus.root)
    assert load_manifest(f"{corpus.root}/shards/*.tar")[1] == str(corpus.root)  # manifest in the parent dir
    one = ShardStream([str(corpus.shard_path(2))], return_ids=True, shuffle=False, rank=0, world_size=1)
    ids = _ids(_collect(one))
    assert np.array_equal(ids, np.arange(sum(SIZES[:2]), sum(SIZES[:3])))  # global ids in manifest order
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(corpus.shard_path(0), lone / "a.tar")
    with pytest.raises(ShardError, match="needs the manifest"):
        ShardStream(f"{lone}/*.tar")
    with pytest.raises(ShardError, match="manifest"):
        ShardStream(tmp_path / "nowhere")


def test_fast_reader_matches_iter_blocks(corpus: Corpus) -> None:
    url = str(corpus.shard_path(1))
    for skip, limit in [(0, None), (3, 4), (11, None), (12, 1)]:
        ref = list(iter_blocks(url, skip, limit))
        got = list(read_blocks(f"file:{url}", skip, limit))
        assert len(ref) == len(got)
        for a, b in zip(ref, got, strict=True):
            assert np.array_equal(a.waves, b.waves) and np.array_equal(a.labels, b.labels)


def test_batch_dtypes(corpus: Corpus) -> None:
    b = next(iter(_stream(corpus, return_labels=True)))
    assert b["wave"].dtype == torch.float32 and b["id"].dtype == b["label"].dtype == b["rec"].dtype == torch.int64


# ---- exact resume through the real train app ------------------------------------------------------------------
def _train_corpus(root: Path, train: tuple[int, ...] = (300, 170, 410), val: int = 200) -> Path:
    """A tiny labelled corpus with uneven train shards and one validation recording, built from real shards."""
    from deepspike.spec import WindowSpec

    rng = np.random.default_rng(1)
    (root / "shards").mkdir(parents=True)
    shards, recs = [], []
    for i, n in enumerate([*train, val]):
        split, rec = ("val" if i == len(train) else "train"), f"rec{i}"
        tpl = rng.normal(scale=8, size=(3, WINDOW))
        lab = rng.integers(0, 3, n)
        w = (tpl[lab] + rng.standard_normal((n, WINDOW))).astype(np.float16)
        blocks = [Block(w[a : a + 64], np.arange(a, min(n, a + 64)), np.zeros(min(64, n - a), np.int16),
                        lab[a : a + 64], {"recording": rec}) for a in range(0, n, 64)]  # fmt: skip
        info = write_shard(root / f"shards/{rec}.tar", blocks, key_prefix=rec)
        shards.append({"path": f"shards/{rec}.tar", **info, "recording": rec, "split": split})
        recs.append({"id": rec, "split": split, "num_spikes": n, "has_labels": True})
    m = {"format": "deepspike-corpus", "num_spikes": sum(s["num_spikes"] for s in shards), "shards": shards,
         "recordings": recs, "window": WindowSpec().to_dict()}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(m))
    return root


class StopAt(pl.Callback):
    """Test callback: stop training after ``step`` steps (a killed run; the schedule still spans max_steps)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


class SaveWeights(pl.Callback):
    """Test callback: write the final weights and the number of batches each rank trained on."""

    def __init__(self, path: str) -> None:
        self.path, self.batches = path, 0

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.batches += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save({"state": state, "batches": self.batches}, f"{self.path}.rank{trainer.global_rank}.pt")


def _train_cfg(out: Path, corpus: Path, extra: list[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    tiny = ["logger=none", "model.hidden=32", "model.latent=4", "data.batch_size=64", "data.val_batch_size=1024",
            "data.shuffle_buffer=256", "trainer.enable_progress_bar=false", "model.warmup_steps=5",
            "model.pretext.tasks=[shuffle,noise,amplitude]", f"data.shards={corpus}", "trainer=cpu"]  # fmt: skip
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*tiny, *extra, f"paths.output_dir={out}"])
    with open_dict(cfg):
        cfg.export.enabled = False
        cfg.callbacks["weights"] = {"_target_": "test_stream.SaveWeights", "path": str(out / "final")}
    return cfg


def _straight_and_stopped(tmp_path: Path, corpus: Path, common: list[str], k: int) -> Path:
    """Run ``common`` straight into ``a/``, and again into ``b/`` stopped after step ``k``; return b's last.ckpt."""
    from omegaconf import open_dict

    from deepspike.model.train import run

    run(_train_cfg(tmp_path / "a", corpus, common))
    killed = _train_cfg(tmp_path / "b", corpus, common)
    with open_dict(killed):
        killed.callbacks["stop"] = {"_target_": "test_stream.StopAt", "step": k}
    run(killed)
    return tmp_path / "b" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    ("workers", "k", "objective"),
    [(0, 10, "reconstruction"), pytest.param(2, 10, "reconstruction", marks=pytest.mark.slow),
     pytest.param(0, 13, "reconstruction", marks=pytest.mark.slow),
     pytest.param(0, 10, "both", marks=pytest.mark.slow)],
    ids=["workers0-mid-epoch", "workers2-mid-epoch", "workers0-epoch-end", "contrastive+recon-mid-epoch"],
)  # fmt: skip
def test_resume_mid_epoch_is_bit_identical(
    tmp_path: Path, workers: int, k: int, objective: str, one_thread: None
) -> None:
    """Train N steps straight vs stop at k (mid-epoch, last.ckpt) and resume to N: the same weights, bit for bit.

    The killed run stops through a callback, not ``max_steps=k``: the LR schedule spans max_steps, so a run with
    another max_steps would not be the same run.
    """

    from deepspike.model.train import run

    corpus = _train_corpus(tmp_path / "corpus")
    n = 30  # epochs of 12 (2 workers) or 13 batches: k=10 is mid-epoch, 13 an epoch end; n crosses two boundaries
    common = [f"trainer.max_steps={n}", f"trainer.val_check_interval={k}", f"data.num_workers={workers}",
              f"model.objective={objective}"]  # fmt: skip
    last = _straight_and_stopped(tmp_path, corpus, common, k)
    assert torch.load(last, weights_only=True)["global_step"] == k
    run(_train_cfg(tmp_path / "c", corpus, [*common, f"ckpt_path={last}"]))
    a = torch.load(tmp_path / "a" / "final.rank0.pt", weights_only=True)
    c = torch.load(tmp_path / "c" / "final.rank0.pt", weights_only=True)
    assert a["batches"] == n and c["batches"] == n - k
    assert a["state"].keys() == c["state"].keys()
    diff = {key: float((a["state"][key].float() - c["state"][key].float()).abs().max()) for key in a["state"]}
    assert all(torch.equal(a["state"][key], c["state"][key]) for key in a["state"]), diff


class RowLog(pl.Callback):
    """Test callback: the waves of every training batch, by epoch, one file per rank (rows identify themselves)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rows: dict[int, list[torch.Tensor]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.rows.setdefault(trainer.current_epoch, []).append(batch["wave"].detach().cpu().clone())

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        rows = {e: torch.cat(v) for e, v in self.rows.items()}
        sizes = {e: [len(b) for b in v] for e, v in self.rows.items()}
        torch.save({"rows": rows, "sizes": sizes}, f"{self.path}.rank{trainer.global_rank}.pt")


@pytest.mark.timeout(300)  # a rank short of batches would hang DDP: fail instead
def test_ddp_two_ranks_two_workers_uneven_shards_three_epochs(
    tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real Lightning DDP (2 CPU ranks, gloo) x 2 workers per rank over uneven shards and two epoch boundaries.

    Equal batches on both ranks every epoch (else DDP would hang: the run would not finish), and per epoch every
    row is trained on once, except what the design allows: at most one padding row per slot (ranks x workers) and,
    with ``drop_last``, fewer than one batch of rows per slot.
    """
    from omegaconf import open_dict

    from deepspike.data.stream import ShardStream
    from deepspike.model.train import run

    corpus = _train_corpus(tmp_path / "corpus")
    stream = ShardStream(corpus, batch_size=64, num_workers=2, rank=0, world_size=2, drop_last=True)
    per_epoch = len(stream)  # batches per rank per epoch
    epochs = 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the spawned ranks: one thread each on a 2-core machine
    steps = epochs * per_epoch
    cfg = _train_cfg(tmp_path / "run", corpus, ["trainer=ddp_cpu", f"trainer.max_steps={steps}", "callbacks=none",
                                                 f"trainer.val_check_interval={steps}", "model.cluster_metric=false",
                                                 "data.num_workers=2"])  # fmt: skip
    with open_dict(cfg):
        cfg.callbacks["rows"] = {"_target_": "test_stream.RowLog", "path": str(tmp_path / "rows")}
    run(cfg)

    m = json.loads((corpus / "manifest.json").read_text())
    waves = [blk.waves for s in m["shards"] if s["split"] == "train" for blk in iter_blocks(str(corpus / s["path"]))]
    ids = {row.tobytes(): i for i, row in enumerate(np.concatenate(waves))}
    assert len(ids) == stream.num_rows  # every row is distinct, so a batch row names its id
    logs = [torch.load(tmp_path / f"rows.rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert sorted(logs[0]["sizes"]) == sorted(logs[1]["sizes"]) == list(range(epochs))
    orders = []
    for e in range(epochs):
        assert len(logs[0]["sizes"][e]) == len(logs[1]["sizes"][e]) == per_epoch  # equal batches, every epoch
        assert set(logs[0]["sizes"][e]) == set(logs[1]["sizes"][e]) == {64}  # drop_last: full batches only
        seen = [ids[row.numpy().astype(np.float16).tobytes()] for lg in logs for row in lg["rows"][e]]
        counts = Counter(seen)
        slots = 2 * 2
        assert sum(c - 1 for c in counts.values()) <= slots  # repeats: padding only, <= 1 row per slot
        assert stream.num_rows - len(counts) < slots * 64  # rows left out: the drop_last remainder of each slot
        r0 = {ids[row.numpy().astype(np.float16).tobytes()] for row in logs[0]["rows"][e]}
        r1 = {ids[row.numpy().astype(np.float16).tobytes()] for row in logs[1]["rows"][e]}
        assert len(r0 & r1) <= slots  # the ranks split the rows
        orders.append(seen)
    assert orders[0] != orders[1] != orders[2]  # set_epoch reaches the workers: each epoch is shuffled anew


def test_pipe_url_in_a_manifest_runs_nothing(corpus: Corpus, tmp_path: Path) -> None:
    """A manifest naming a shard ``pipe:CMD`` (someone else's corpus) must not run CMD unless the user opts in."""
    root = tmp_path / "evil"
    shutil.copytree(corpus.root, root)
    witness = tmp_path / "SOMEFILE"
    m = json.loads((root / "manifest.json").read_text())
    m["shards"][0]["path"] = f"pipe:touch {witness}"
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ShardError, match=r"pipe:.*data\.allow_pipe=true"):
        loader = make_loader(root, batch_size=256, num_workers=0, rank=0, world_size=1, shuffle=False)
        next(iter(loader))
    with pytest.raises(ShardError, match="allow_pipe"):
        list(read_blocks(f"pipe:touch {witness}"))
    with pytest.raises(ShardError, match="allow_pipe"):
        load_manifest(f"pipe:touch {witness}")
    assert not witness.exists()
    # opted in, the command runs (here: `cat` of a real shard), so trusted pipelines keep working
    m["shards"][0]["path"] = f"pipe:cat {corpus.shard_path(0)}"
    (root / "manifest.json").write_text(json.dumps(m))
    ds = ShardStream(root, batch_size=256, shuffle=False, rank=0, world_size=1, return_ids=True, allow_pipe=True)
    assert np.array_equal(_ids(_collect(ds)), corpus.train_ids)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_state_dict_resumes_at_the_same_batch(corpus: Corpus, workers: int) -> None:
    """A loader restored from ``state_dict()`` taken after j batches yields exactly the rest of that epoch."""
    opts = {"batch_size": 256, "buffer_rows": 1024, "return_ids": True, "rank": 0, "world_size": 1}
    first = make_loader(corpus.root, num_workers=workers, transfer_batches=3, **opts)
    first.dataset.set_epoch(2)
    full, state = [], None
    for i, b in enumerate(first):
        full.append(b["id"].numpy().copy())
        if i == 6:
            state = first.state_dict()
    assert state is not None and state["epoch"] == 2 and state["batches"] == 7
    again = make_loader(corpus.root, num_workers=workers, transfer_batches=3, **opts)
    again.load_state_dict(state)
    rest = [b["id"].numpy() for b in again]
    assert len(rest) == len(full) - 7 and all(np.array_equal(a, b) for a, b in zip(rest, full[7:], strict=True))
    assert again.dataset.epoch == 2 and len([b for b in again]) == len(full)  # the next epoch starts clean
    other = make_loader(corpus.root, num_workers=workers, **(opts | {"batch_size": 128}))
    with pytest.warns(RuntimeWarning, match="not identical"):
        other.load_state_dict(state)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ddp_resume_is_bit_identical(tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """2 CPU ranks x 2 workers: stop mid-epoch, resume from last.ckpt: both ranks end on the uninterrupted weights."""

    from deepspike.model.train import run

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    corpus = _train_corpus(tmp_path / "corpus")
    n, k = 16, 5  # 6 batches per rank per epoch
    common = ["trainer=ddp_cpu", f"trainer.max_steps={n}", f"trainer.val_check_interval={k}", "data.num_workers=2",
              "model.cluster_metric=false"]  # fmt: skip
    last = _straight_and_stopped(tmp_path, corpus, common, k)
    assert len(torch.load(last, weights_only=True)["deepspike"]["rng_per_rank"]) == 2
    run(_train_cfg(tmp_path / "c", corpus, [*common, f"ckpt_path={last}"]))
    for rank in (0, 1):
        a = torch.load(tmp_path / "a" / f"final.rank{rank}.pt", weights_only=True)["state"]
        c = torch.load(tmp_path / "c" / f"final.rank{rank}.pt", weights_only=True)["state"]
        assert all(torch.equal(a[key], c[key]) for key in a), rank
