"""Torch-free encoder inference: same embeddings as torch, same checks, and a CPU sort that never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepspike.model.export import export_encoder, load_encoder
from deepspike.model.inference import load_numpy_encoder, mlp_shapes, numpy_capable, torch_accelerator_build
from deepspike.model.nets import ConvNet, MLPNet
from deepspike.paths import REPO_ROOT
from deepspike.sorting.features import DEFAULT_CHECKPOINT

ARCHS = [
    {},
    {"norm": "layer", "activation": "relu"},
    {"norm": "batch", "activation": "silu", "dropout": 0.1},
    {"activation": "elu", "variational": False, "linear_skip": True},
    {"activation": "tanh", "widths": [24, 12], "latent": 3},
]


@pytest.mark.parametrize("kwargs", ARCHS, ids=lambda k: json.dumps(k, sort_keys=True))
def test_numpy_embeddings_equal_torch(kwargs: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = MLPNet(hidden=48, **kwargs)
    net.train()(torch.randn(256, 20))  # move BatchNorm running stats off their init
    with torch.no_grad():  # a non-zero skip path and head, so both count
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert set(mlp_shapes(net.arch)) == set(net.state_dict())
    path = export_encoder(net.eval(), tmp_path / "e.safetensors")
    waves = (np.random.default_rng(1).standard_normal((500, 20)) * 12).astype(np.float32)
    ref = load_encoder(path).embed(waves)
    got = load_numpy_encoder(path).embed(waves, batch_size=128)
    assert got.shape == ref.shape == (500, net.latent) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5)


def test_conv_encoders_stay_on_torch(tmp_path: Path) -> None:
    path = export_encoder(ConvNet(channels=[4], hidden=16, variational=False), tmp_path / "c.safetensors")
    assert not numpy_capable(path) and numpy_capable(DEFAULT_CHECKPOINT)
    with pytest.raises(Exception, match="numpy forward pass"):
        load_numpy_encoder(path)


def test_accelerator_build_is_read_from_the_installed_torch() -> None:
    v = torch.version
    assert torch_accelerator_build() == bool(v.cuda or getattr(v, "hip", None) or getattr(v, "xpu", None))


SCRIPT = """
import sys, numpy as np
from deepspike.sorting.params import SortParams
from deepspike.sorting.pipeline import run_sort
from deepspike.recording.synthetic import generate_recording
rec, _ = generate_recording(seed=5, duration_s=10.0)
r = run_sort(rec, None, SortParams.from_options({"device": "cpu"}))
print("TORCH_LOADED", "torch" in sys.modules, type(r.sorting).__name__)
np.save(sys.argv[1], r.embeddings); np.save(sys.argv[2], r.labels)
"""


def test_cpu_sort_runs_without_importing_torch_and_matches_the_torch_sort(tmp_path: Path) -> None:
    from deepspike.evaluation.compare import matched_accuracy
    from deepspike.recording.synthetic import generate_recording
    from deepspike.sorting.features import embed_waves, load_sort_encoder

    emb_f, lab_f = tmp_path / "emb.npy", tmp_path / "lab.npy"
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(emb_f), str(lab_f)], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "TORCH_LOADED False NumpySorting" in out.stdout
    # the same windows through torch: same embeddings, and the sort's labels as in-process (torch imported here)
    from deepspike.sorting.params import SortParams
    from deepspike.sorting.pipeline import run_sort

    rec, _ = generate_recording(seed=5, duration_s=10.0)
    here = run_sort(rec, None, SortParams.from_options({"device": "cpu"}))
    torch_emb = embed_waves(load_encoder(DEFAULT_CHECKPOINT), here.waves, device="cpu")
    np.testing.assert_allclose(np.load(emb_f), torch_emb, rtol=1e-4, atol=2e-5)
    assert type(load_sort_encoder(None)).__name__ == "NumpyEncoder"
    assert matched_accuracy(np.load(lab_f), here.labels) == 1.0


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "checkpoints").glob("*.safetensors")), ids=lambda p: p.stem)
def test_shipped_checkpoints_load_embed_alike_and_carry_no_machine_paths(path: Path) -> None:
    """Every bundled artifact (the default and the opt-in ones): numpy and torch embed alike, the JSON sidecar is the
    header, and the provenance names no absolute path (artifacts travel between machines)."""
    enc = load_encoder(path)
    header = json.loads(path.with_suffix(".json").read_text())
    assert header["arch"] == enc.spec["arch"] and header["window"] == enc.spec["window"]
    x = np.random.default_rng(0).normal(size=(256, enc.window_spec.length)).astype(np.float32) * 3
    x[:, enc.window_spec.n_before] -= 12.0  # a spike-like trough at the peak index
    np.testing.assert_allclose(load_numpy_encoder(path).embed(x), enc.embed(x), rtol=1e-4, atol=2e-5)
    text = json.dumps(header)
    assert '"/' not in text and ":\\\\" not in text, "absolute path in the provenance"
