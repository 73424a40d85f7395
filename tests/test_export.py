"""Encoder artifacts: exact embeddings, self-describing header, no pickle, clear spec errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepspike.errors import DeepSpikeError, SpecMismatchError
from deepspike.export import export_encoder, load_encoder, read_header
from deepspike.models import ConvNet, MLPNet
from deepspike.module import SpikeAutoencoder
from deepspike.spec import WindowSpec


def _module(net: torch.nn.Module) -> SpikeAutoencoder:
    torch.manual_seed(0)
    return SpikeAutoencoder(net, torch.optim.AdamW, window=WindowSpec().to_dict())


@pytest.mark.parametrize("net", [MLPNet(hidden=64, norm="batch"), ConvNet(channels=[4], hidden=16, variational=False)])
def test_artifact_reproduces_module_embeddings(net: torch.nn.Module, tmp_path: Path) -> None:
    m = _module(net)
    m.net.train()(torch.randn(64, 20))  # move BatchNorm running stats off their init
    waves = (np.random.default_rng(0).standard_normal((300, 20)) * 8).astype(np.float32)
    path = export_encoder(m, tmp_path / "encoder.safetensors", {"steps": 7, "corpus_manifest_sha256": "abc"})
    enc = load_encoder(path)
    np.testing.assert_array_equal(enc.embed(waves, batch_size=300), m.embed(waves))
    assert enc.embed(waves).shape == (300, net.latent) and enc.embed(waves).dtype == np.float32
    assert load_encoder(tmp_path).path == path  # a run directory works too
    sidecar = json.loads((tmp_path / "encoder.json").read_text())
    assert sidecar == read_header(path)
    s = enc.spec
    assert s["window"] == WindowSpec().to_dict() and s.sampling_frequency == 24000.0
    assert s.normalization == "noise_softclip" and s.provenance["steps"] == 7 and "tool_version" in s.provenance
    assert s.provenance["parent"] is None and s.latent_dim == net.latent


def test_export_from_checkpoint_without_pickle(tmp_path: Path) -> None:
    m = _module(MLPNet(hidden=32))
    ckpt = {"state_dict": m.state_dict(), "global_step": 3}
    m.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "m.ckpt")
    enc = load_encoder(export_encoder(str(tmp_path / "m.ckpt"), tmp_path / "e.safetensors"))
    x = np.random.default_rng(1).standard_normal((10, 20)).astype(np.float32)
    np.testing.assert_array_equal(enc.embed(x), m.embed(x))


def test_spec_mismatch_is_clear(tmp_path: Path) -> None:
    enc = load_encoder(export_encoder(_module(MLPNet(hidden=32)), tmp_path / "e.safetensors"))
    with pytest.raises(SpecMismatchError, match="sampling_frequency"):
        enc.check_spec(WindowSpec(sampling_frequency=30000.0))
    with pytest.raises(SpecMismatchError, match="n_before"):
        enc.embed(np.zeros((4, 20), np.float32), spec={"n_before": 10, "n_after": 10})
    with pytest.raises(SpecMismatchError, match=r"\[n, 20\]"):
        enc.embed(np.zeros((4, 32), np.float32))
    enc.check_spec(WindowSpec())


def test_not_an_artifact(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(DeepSpikeError, match="header"):
        load_encoder(tmp_path / "x.safetensors")
    with pytest.raises(DeepSpikeError, match=r"train\.py"):
        load_encoder(tmp_path / "missing.safetensors")
