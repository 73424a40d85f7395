"""The stream at many ranks x workers: bench/loader_scale.py's simulation scaled down, its checks, and
``StreamLoader.in_process`` (the simulation's worker order) against a real DataLoader."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scale() -> ModuleType:
    spec = importlib.util.spec_from_file_location("loader_scale", REPO / "bench" / "loader_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def corpus(scale: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 uneven tiny shards (20-300 rows, blocks of 64): 33,812 rows."""
    return scale.build_corpus(tmp_path_factory.mktemp("scale") / "corpus", 200, 20, 300, block=64)


def test_simulation_200_shards_8_ranks_4_workers(scale: ModuleType, corpus: Path) -> None:
    """(a)-(d) hold at 32 slots (simulate raises otherwise), with padding and both epoch boundaries exercised."""
    fig = scale.simulate(corpus, world=8, workers=4, batch=64, epochs=2, resumes=6, log=lambda *a: None)
    assert fig["slots"] == 32 and fig["rows"] == 33_812 and fig["batches_per_rank_per_epoch"] == 4 * 17
    assert 0 < fig["padding_rows_per_epoch"] <= 7 * 4 and fig["max_padding_rows_per_rank"] <= 4
    boundaries = {(e, k) for _, e, k in fig["resume_positions"]}
    assert {(0, 0), (0, 4 * 17), (1, 0)} <= boundaries and len(fig["resume_positions"]) == 10


@pytest.fixture(scope="module")
def runs(scale: ModuleType, corpus: Path) -> tuple[list, list[int], list[int], int]:
    """Two epochs of 4 ranks x 2 workers, with each rank's epoch length and padding."""
    out, lens, pads = [], [], []
    for rank in range(4):
        loader = scale.rank_loader(corpus, rank, 4, 2, 128)
        lens.append(len(loader)), pads.append(loader.dataset.padding_rows())
        out.append([scale.epoch_batches(loader, e) for e in range(2)])
    return out, lens, pads, loader.dataset.num_rows


def test_checks_pass_on_the_stream_and_fail_on_broken_runs(scale: ModuleType, corpus: Path, runs: tuple) -> None:
    """The checks are not vacuous: each one rejects a run broken the way it guards against."""
    per_rank, lens, pads, rows = runs
    epoch0, epoch1 = [r[0] for r in per_rank], [r[1] for r in per_rank]
    scale.check_epoch(epoch0, lens, pads, rows, 2)
    scale.check_new_order(epoch0, epoch1)
    short = [r[:-1] if i == 1 else r for i, r in enumerate(epoch0)]  # one rank a batch short: a DDP hang
    with pytest.raises(scale.CheckFailed, match="batches yielded per rank"):
        scale.check_epoch(short, lens, pads, rows, 2)
    stolen = [list(r) for r in epoch0]  # rank 0 reads one of rank 1's rows instead of its own
    stolen[0][0] = stolen[0][0].copy()
    stolen[0][0][0] = stolen[1][0][0]
    with pytest.raises(scale.CheckFailed, match="never read"):
        scale.check_epoch(stolen, lens, pads, rows, 2)
    with pytest.raises(scale.CheckFailed, match="repeats the order"):
        scale.check_new_order(epoch0, epoch0)  # set_epoch did not reach the stream
    wrong = [[r[0][::-1], r[1]] for r in per_rank]  # an uninterrupted run in another batch order
    with pytest.raises(scale.CheckFailed, match="differs from the uninterrupted run"):
        scale.check_resume(corpus, wrong, 4, 2, 128, (2, 0, 5))
    scale.check_resume(corpus, per_rank, 4, 2, 128, (2, 0, 5))


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("transfer", [1, 7])
def test_in_process_is_the_dataloader_order(scale: ModuleType, corpus: Path, transfer: int) -> None:
    """``in_process`` yields what the real DataLoader (3 worker processes) yields, also resumed mid-epoch, here
    where one worker runs out of batches (and, with 7 batches per message, of messages) before the others."""
    from deepspike.data.loader import make_loader

    def loader() -> object:
        with scale.launcher_env(1, 2):
            return make_loader(corpus, batch_size=115, num_workers=3, return_ids=True, transfer_batches=transfer)

    first = loader()
    assert [-(-int(n) // 115) for n in first.dataset.target_rows] == [50, 50, 49]  # worker 2 ends first
    first.dataset.set_epoch(1)
    real, state = [], None
    for i, b in enumerate(first):
        real.append(b["id"].numpy().copy())
        if i == 60:
            state = first.state_dict()
    again = loader()
    again.dataset.set_epoch(1)
    sim = [b["id"].numpy() for b in again.in_process()]
    assert len(sim) == len(real) == 149 and all(np.array_equal(a, b) for a, b in zip(sim, real, strict=True))
    again.load_state_dict(state)
    rest = [b["id"].numpy() for b in again.in_process()]
    assert len(rest) == 149 - 61 and all(np.array_equal(a, b) for a, b in zip(rest, real[61:], strict=True))
