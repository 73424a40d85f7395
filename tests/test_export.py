"""Encoder artifacts: exact embeddings, self-describing header, no pickle, clear spec errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepspike.errors import DeepSpikeError, SpecMismatchError
from deepspike.model.export import export_encoder, load_encoder
from deepspike.model.inference import load_numpy_encoder, read_header
from deepspike.model.module import SpikeAutoencoder
from deepspike.model.nets import ConvNet, MLPNet
from deepspike.spec import WindowSpec

LOADERS = pytest.mark.parametrize("load", [load_encoder, load_numpy_encoder], ids=["torch", "numpy"])


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


@LOADERS
def test_not_an_artifact(load, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(DeepSpikeError, match="header"):
        load(tmp_path / "x.safetensors")
    with pytest.raises(DeepSpikeError, match=r"train\.py"):
        load(tmp_path / "missing.safetensors")


def _rewrite(path: Path, tensors: dict[str, torch.Tensor] | None = None, header: dict | None = None) -> None:
    """Re-save an artifact with other tensors and/or header (what a damaged or hand-edited file looks like)."""
    from safetensors.torch import load_file, save_file

    sd = tensors if tensors is not None else load_file(str(path))
    doc = header if header is not None else read_header(path)
    save_file(sd, str(path), metadata={"deepspike": json.dumps(doc)})


@LOADERS
def test_nan_weights_are_named_at_load(load, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    path = export_encoder(_module(MLPNet(hidden=32)), tmp_path / "e.safetensors")
    sd = load_file(str(path))
    name = sorted(sd)[0]
    sd[name] = sd[name].clone()
    sd[name].view(-1)[0] = float("nan")
    _rewrite(path, tensors=sd)
    with pytest.raises(DeepSpikeError, match=r"NaN") as e:
        load(path)
    assert str(path) in str(e.value) and name in str(e.value)


def test_nan_checkpoint_is_named_when_exported(tmp_path: Path) -> None:
    m = _module(MLPNet(hidden=32))
    with torch.no_grad():
        next(m.net.parameters()).fill_(float("inf"))
    ckpt = {"state_dict": m.state_dict(), "global_step": 3}
    m.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "diverged.ckpt")
    with pytest.raises(DeepSpikeError, match=r"(?s)diverged\.ckpt.*Inf"):
        export_encoder(str(tmp_path / "diverged.ckpt"), tmp_path / "e.safetensors")
    assert not (tmp_path / "e.safetensors").exists()


@LOADERS
def test_architecture_mismatch_names_file_and_tensors(load, tmp_path: Path) -> None:
    path = export_encoder(_module(MLPNet(hidden=32)), tmp_path / "e.safetensors")
    header = read_header(path)
    header["arch"]["widths"][0] = 48  # the header now describes another net than the stored tensors
    _rewrite(path, header=header)
    (tmp_path / "e.json").unlink()  # the weights file alone: its header and tensors disagree
    with pytest.raises(DeepSpikeError, match=r"(?s)architecture.*encoder\.0\.weight.*\[48, 20\].*\[32, 20\]") as e:
        load(path)
    assert str(path) in str(e.value) and "size mismatch" not in str(e.value)


@LOADERS
def test_edited_sidecar_is_named(load, tmp_path: Path) -> None:
    path = export_encoder(_module(MLPNet(hidden=32)), tmp_path / "e.safetensors")
    sidecar = tmp_path / "e.json"
    doc = json.loads(sidecar.read_text())
    doc["window"]["n_before"], doc["window"]["n_after"] = 10, 10
    sidecar.write_text(json.dumps(doc))
    with pytest.raises(SpecMismatchError, match=r"(?s)e\.json.*n_before.*8.*10") as e:
        load(path)
    assert str(path) in str(e.value)
    sidecar.unlink()  # no sidecar: the weights file's own header is enough
    assert load(path).window_spec == WindowSpec()
