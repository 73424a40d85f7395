"""Self-describing encoder artifacts: safetensors weights + a JSON header, loadable without Hydra or pickle.

``encoder.safetensors`` holds the net's tensors (``net.*`` without the prefix) and, in the safetensors
metadata under the key ``deepspike``, a JSON document::

    {"format": "deepspike-encoder", "format_version": 1,
     "arch": {...net.arch: kind, in_dim, hidden, latent, ...},
     "window": {...WindowSpec...},
     "provenance": {"corpus_manifest_sha256", "steps", "metrics", "tool_version", "git_commit", "parent", ...}}

The same document is written next to it as ``encoder.json`` for humans and tools. ``load_encoder`` rebuilds the
net from ``arch`` (``deepspike.model.nets.build_net``) and never unpickles anything.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepspike.errors import DeepSpikeError
from deepspike.model.inference import (  # the artifact format, shared with the torch-free loader
    FORMAT,
    FORMAT_VERSION,
    META_KEY,
    EncoderBase,
    EncoderSpec,
    check_weight_shapes,
    nonfinite_problem,
    open_artifact,
)
from deepspike.model.inference import make_spec as _make_spec
from deepspike.model.inference import read_header as read_header  # public here too (export's API before inference
from deepspike.model.nets import build_net
from deepspike.paths import resolve_repo_path
from deepspike.provenance import tool_version
from deepspike.spec import WindowSpec, normalize


@dataclass
class Encoder(EncoderBase):
    """A frozen encoder: ``embed`` maps raw windows (noise units, ``[n, window]``) to ``[n, latent]``."""

    net: nn.Module
    spec: EncoderSpec
    path: Path | None = None

    @torch.inference_mode()
    def embed(
        self,
        waveforms: np.ndarray | torch.Tensor,
        batch_size: int = 65536,
        device: str | torch.device | None = None,
        spec: WindowSpec | dict[str, Any] | None = None,
    ) -> np.ndarray:
        """Embeddings (posterior means) of ``waveforms`` float ``[n, window]`` in noise units, as float32.

        The encoder applies its own normalization; pass ``spec`` (the data's window spec) to check it.
        """
        if spec is not None:
            self.check_spec(spec)
        x = torch.as_tensor(np.asarray(waveforms, dtype=np.float32)) if not torch.is_tensor(waveforms) else waveforms
        self.check_windows(tuple(x.shape))
        ws = self.window_spec
        dev = torch.device(device) if device is not None else next(self.net.parameters()).device
        net = self.net.to(dev).eval()
        out = np.empty((x.shape[0], self.latent_dim), dtype=np.float32)
        for i in range(0, x.shape[0], max(1, int(batch_size))):
            xb = x[i : i + batch_size].to(dev, torch.float32)
            out[i : i + xb.shape[0]] = net.embed(normalize(xb, ws)).float().cpu().numpy()
        return out


def _net_state(obj: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(net state dict, arch, window) from a LightningModule, a bare net, or a Lightning checkpoint path."""
    if isinstance(obj, (str, Path)):
        ckpt = torch.load(str(obj), map_location="cpu", weights_only=True)
        info = ckpt.get("deepspike")
        if info is None:
            raise DeepSpikeError(f"{obj}: not a DeepSpike training checkpoint (no 'deepspike' entry)")
        sd = {k[len("net.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        check_finite_weights(sd, str(obj))
        return sd, dict(info["arch"]), dict(info["window"])
    net = getattr(obj, "net", obj)
    spec = getattr(obj, "spec", None)
    window = spec.to_dict() if isinstance(spec, WindowSpec) else WindowSpec().to_dict()
    sd = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    check_finite_weights(sd, "the model being exported")
    return sd, dict(net.arch), window


def check_finite_weights(sd: dict[str, torch.Tensor], where: str) -> None:
    """Refuse NaN/Inf weights where they are loaded, naming the file: later they only show up as NaN embeddings."""
    bad = {k: v for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())}
    if not bad:
        return
    kinds = sorted({"NaN" if bool(torch.isnan(v).any()) else "Inf" for v in bad.values()})
    raise nonfinite_problem(where, list(bad), kinds, len(sd))


def _load_weights(net: nn.Module, sd: dict[str, torch.Tensor], path: Path, arch: dict[str, Any]) -> None:
    """``load_state_dict(strict=True)`` with a message naming the file and the tensors that do not fit."""
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    check_weight_shapes(path, arch, want, {k: tuple(v.shape) for k, v in sd.items()})
    net.load_state_dict(sd, strict=True)


def export_encoder(
    module_or_ckpt: Any, path: str | Path, provenance: dict[str, Any] | None = None, window: WindowSpec | None = None
) -> Path:
    """Write ``path`` (``.safetensors``) and its ``.json`` sidecar; return the safetensors path."""
    from safetensors.torch import save_file

    sd, arch, win = _net_state(module_or_ckpt)
    if window is not None:
        win = window.to_dict()
    prov = {"tool_version": tool_version(), "parent": None, **(provenance or {})}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch, "window": win, "provenance": prov}
    text = json.dumps(header, sort_keys=True, default=_jsonable)
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata={META_KEY: text})
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n")
    return path


def _jsonable(o: Any) -> Any:
    if isinstance(o, (np.generic, torch.Tensor)):
        return o.item()
    return str(o)


def load_encoder(path: str | Path, device: str | torch.device = "cpu") -> Encoder:
    """Load an encoder artifact (a ``.safetensors`` file, or a run directory holding ``encoder.safetensors``)."""
    from safetensors.torch import load_file

    p, header = open_artifact(resolve_encoder_path(path))
    net = build_net(header["arch"])
    sd = load_file(str(p), device="cpu")
    check_finite_weights(sd, str(p))
    _load_weights(net, sd, p, header["arch"])
    net.to(device).eval()
    for q in net.parameters():
        q.requires_grad_(False)
    return Encoder(net=net, spec=_make_spec(header), path=p)


ENCODER_FIX = (
    "Give the path of an exported encoder (.safetensors, or a run directory holding encoder.safetensors as "
    "`python train.py` writes)"
)


def resolve_encoder_path(path: str | os.PathLike) -> Path:
    """The artifact ``path`` names, from the current directory, the repository or ``checkpoints/``."""
    return resolve_repo_path(path, "encoder", ENCODER_FIX)


# ----------------------------------------------------------------------------- parents and derived encoders
# Fine-tuning starts from a parent (artifact or Lightning checkpoint) and yields a derived encoder whose
# provenance names it: both are artifacts, so they live here.


def save_encoder(encoder: Encoder, path: str | os.PathLike) -> Path:
    """Write an in-memory ``Encoder`` (e.g. a fine-tuned one) as an artifact + JSON sidecar."""
    return export_encoder(encoder.net, path, dict(encoder.spec["provenance"]), encoder.window_spec)
