"""CUDA paths: bf16-mixed training with the stream's pinned batches, and the encoder on the GPU.

Marked ``gpu``: skipped where CUDA is absent (conftest). Run them on a GPU machine with ``pytest -m gpu``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_train import TINY, cfg_for, make_corpus

pytestmark = pytest.mark.gpu


def test_bf16_training_on_cuda_exports_an_encoder_that_matches_on_cpu(tmp_path: Path) -> None:
    from deepspike.export import load_encoder
    from deepspike.train import run

    corpus = make_corpus(tmp_path / "corpus")
    out = tmp_path / "run"
    cfg = cfg_for(out, [*TINY, f"data.shards={corpus}", "trainer=gpu", "trainer.max_steps=30", "data.num_workers=2"])
    res = run(cfg)
    assert np.isfinite(res["metrics"]["train/loss"])
    waves = np.random.default_rng(0).normal(size=(4096, 20)).astype(np.float32) * 3
    gpu = load_encoder(out / "encoder.safetensors", device="cuda").embed(waves)
    cpu = load_encoder(out / "encoder.safetensors", device="cpu").embed(waves)
    assert np.allclose(gpu, cpu, atol=1e-3)


def test_sort_runs_the_encoder_on_cuda() -> None:
    from deepspike.sorting import SortParams, run_sort
    from deepspike.synthetic import generate_recording

    recording, _ = generate_recording(seed=5, duration_s=10.0)
    result = run_sort(recording, None, SortParams.from_options({"device": "cuda"}))
    assert len(result.labels) > 0 and torch.cuda.is_available()
