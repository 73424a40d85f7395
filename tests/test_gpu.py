"""CUDA paths: bf16-mixed training learns like fp32 on CPU does, and a sort on the GPU equals the CPU sort.

Marked ``gpu``: skipped where CUDA is absent (conftest). Run them on a GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tests.test_train import TINY, cfg_for, make_corpus

pytestmark = pytest.mark.gpu


def test_bf16_training_on_cuda_lowers_the_loss_and_exports_an_encoder_that_matches_on_cpu(tmp_path: Path) -> None:
    from deepspike.model.export import load_encoder
    from deepspike.model.train import resolve_precision, run

    corpus = make_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    cfg = cfg_for(out, [*TINY, f"data.shards={corpus}", "trainer=gpu", "trainer.max_steps=60", "data.num_workers=2",
                        "model.optimizer.lr=5e-3", "trainer.val_check_interval=30"])  # fmt: skip
    assert resolve_precision(cfg.trainer) == "bf16-mixed"
    res = run(cfg)
    with open(out / "loss_history.csv") as fh:
        train = [float(r["loss"]) for r in csv.DictReader(fh) if r["split"] == "train"]
    assert len(train) == 60 and np.all(np.isfinite(train))
    assert np.mean(train[-10:]) < 0.6 * np.mean(train[:10]), (train[:10], train[-10:])
    assert 0.0 <= res["metrics"]["val/gmm_acc"] <= 1.0
    waves = np.random.default_rng(0).normal(size=(4096, 20)).astype(np.float32) * 3
    gpu = load_encoder(out / "encoder.safetensors", device="cuda").embed(waves)
    cpu = load_encoder(out / "encoder.safetensors", device="cpu").embed(waves)
    np.testing.assert_allclose(gpu, cpu, atol=1e-3, rtol=1e-3)


def test_sort_on_cuda_equals_the_cpu_sort() -> None:
    from deepspike.evaluation.compare import matched_accuracy
    from deepspike.recording.synthetic import generate_recording
    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    recording, _ = generate_recording(seed=5, duration_s=10.0)
    cpu = run_sort(recording, None, SortParams.from_options({"device": "cpu"}))
    gpu = run_sort(recording, None, SortParams.from_options({"device": "cuda"}))
    np.testing.assert_array_equal(gpu.sample_index, cpu.sample_index)  # same spikes: detection does not use the GPU
    np.testing.assert_allclose(gpu.embeddings, cpu.embeddings, atol=1e-3, rtol=1e-3)
    assert len(gpu.unit_ids) == len(cpu.unit_ids) >= 2
    assert matched_accuracy(cpu.labels, gpu.labels) >= 0.99
