"""A long run in segments (issue 25, item 3): ``callbacks.time_budget.seconds`` stops a segment cleanly at a wall-clock
budget, ``last.ckpt`` holds the stop step, and segments resumed one after another end on the weights of one run that
was never stopped. The clock is the callback's ``_now`` (patched here), so the stop steps do not depend on the
machine's speed. Runs use the tiny corpus and settings of ``test_train``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from test_train import TINY, cfg_for, make_corpus

import deepspike.model.callbacks as cb


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def ticking(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each reading of the budget's clock advances it by one second (one reading per training batch end)."""
    t = [0.0]

    def now() -> float:
        t[0] += 1.0
        return t[0]

    monkeypatch.setattr(cb, "_now", now)
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _load(ckpt: Path) -> dict[str, Any]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def _val_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "loss_history.csv") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh) if r["split"] == "val"]


def test_segments_stopped_by_a_time_budget_resume_to_the_uninterrupted_weights(
    corpus: Path, tmp_path: Path, ticking: None
) -> None:
    from deepspike.model.train import run

    common = [*TINY, f"data.shards={corpus}", "trainer.max_steps=30", "trainer.val_check_interval=6",
              "callbacks.last.every_n_train_steps=5", "cpu_threads=1"]  # fmt: skip
    ckpt = None
    stops = []
    for k, budget in enumerate([8, 9]):  # segment 1 stops mid-interval (step ~9), segment 2 on no save step
        over = [*common, f"callbacks.time_budget.seconds={budget}"] + ([f"ckpt_path={ckpt}"] if ckpt else [])
        run(cfg_for(tmp_path / f"seg{k}", over))
        ckpt = tmp_path / f"seg{k}" / "checkpoints" / "last.ckpt"
        stops.append(int(_load(ckpt)["global_step"]))
    assert 0 < stops[0] < stops[1] < 30, stops
    run(cfg_for(tmp_path / "seg2", [*common, f"ckpt_path={ckpt}"]))  # no budget: to max_steps
    run(cfg_for(tmp_path / "straight", common))
    a = _load(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    b = _load(tmp_path / "seg2" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 30
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    # every scheduled validation happened once over the segments
    seen = sorted(set(_val_steps(tmp_path / "seg0") + _val_steps(tmp_path / "seg1") + _val_steps(tmp_path / "seg2")))
    assert {6, 12, 18, 24, 30} <= set(seen), seen


def test_no_budget_runs_to_max_steps(corpus: Path, tmp_path: Path, ticking: None) -> None:
    from deepspike.model.train import run

    run(cfg_for(tmp_path, [*TINY, f"data.shards={corpus}", "trainer.max_steps=12", "cpu_threads=1"]))
    assert int(_load(tmp_path / "checkpoints" / "last.ckpt")["global_step"]) == 12


def test_corpus_content_hash_ignores_only_the_build_time_fields() -> None:
    """Two builds of one corpus differ in ``created`` and each recording's ``seconds`` only (checked on a real
    rebuild of two broad recordings): the content hash ignores those and nothing else."""
    from deepspike.provenance import corpus_content_sha256

    a = {"created": "2026-01-01T00:00:00Z", "num_spikes": 10, "shards": [{"path": "s.tar", "sha256": "x"}],
         "recordings": [{"id": "r", "seconds": 0.9, "num_spikes": 10}]}  # fmt: skip
    b = a | {"created": "2026-01-02T00:00:00Z", "recordings": [{"id": "r", "seconds": 0.2, "num_spikes": 10}]}
    assert corpus_content_sha256(a) == corpus_content_sha256(b)
    assert corpus_content_sha256(a) != corpus_content_sha256(a | {"shards": [{"path": "s.tar", "sha256": "y"}]})
    other = a | {"recordings": [{"id": "r", "seconds": 0.9, "num_spikes": 9}]}
    assert corpus_content_sha256(a) != corpus_content_sha256(other)
