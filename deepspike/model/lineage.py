"""Fine-tuning lineage: the parent encoder a run starts from (an exported artifact or a Lightning ``.ckpt``), its
record in the child's provenance, the objective it was trained with, and the derived encoder that carries both.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepspike.data.shards import file_digest
from deepspike.errors import DeepSpikeError
from deepspike.model.export import Encoder, _load_weights, _net_state, load_encoder
from deepspike.model.inference import (  # the artifact format, shared with the torch-free loader
    FORMAT,
    FORMAT_VERSION,
)
from deepspike.model.inference import make_spec as _make_spec
from deepspike.model.inference import read_header as read_header  # public here too (export's API before inference
from deepspike.model.nets import build_net
from deepspike.paths import resolve_repo_path
from deepspike.provenance import git_commit, tool_version


def resolve_parent_path(path: str | os.PathLike) -> Path:
    """``path`` as given, else relative to the repository or ``checkpoints/`` (so it works from any directory)."""
    return resolve_repo_path(
        path, "init_from", "Give an exported encoder (.safetensors, or a run directory holding encoder.safetensors) or "
        "a Lightning checkpoint (.ckpt) written by train.py",
    )  # fmt: skip


def load_parent(path: str | os.PathLike) -> Encoder:
    """The encoder to start from: an artifact (``.safetensors`` / run dir) or a Lightning ``.ckpt`` (no pickle).

    The architecture and window spec come from the file, so a fine-tuning run never repeats the model config.
    """
    p = resolve_parent_path(path)
    if p.suffix != ".ckpt":
        return load_encoder(p)
    sd, arch, window = _net_state(str(p))
    net = build_net(arch)
    _load_weights(net, sd, p, arch)
    net.eval()
    for q in net.parameters():
        q.requires_grad_(False)
    steps = int(torch.load(str(p), map_location="cpu", weights_only=True).get("global_step", 0))
    prov = {"tool_version": tool_version(), "checkpoint": str(p), "steps": steps, "parent": None}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch, "window": window, "provenance": prov}
    return Encoder(net=net, spec=_make_spec(header), path=p)


def parent_record(encoder: Encoder) -> dict[str, Any]:
    """Provenance entry naming the parent: path, sha256 of its file and its own provenance."""
    path = getattr(encoder, "path", None)
    return {
        "path": None if path is None else str(path),
        "sha256": None if path is None else file_digest(path)["sha256"],
        "provenance": dict(encoder.spec.get("provenance", {})),
    }


# Pretext for parents whose provenance predates the recorded objective: the bundled synth_v1 recipe's tasks
FALLBACK_PRETEXT = ["shuffle", "noise"]


def parent_objective(
    parent: Encoder,
    pretext: list[str] | None = None,
    pretext_params: dict[str, dict[str, Any]] | None = None,
    recon: str | None = None,
    beta: float | None = None,
) -> dict[str, Any]:
    """The fine-tuning objective: each option given, else what the parent was trained with (its provenance).

    Both fine-tuning paths resolve ``null`` options here, so they continue the same objective.
    """
    obj = dict(parent.spec.get("provenance", {}).get("objective") or {})
    if obj.get("objective", "reconstruction") == "contrastive":
        raise DeepSpikeError(
            f"{parent.path or 'this encoder'} was pretrained with model.objective=contrastive only: its decoder is "
            "untrained, and fine-tuning continues a reconstruction objective. Fine-tune a parent trained with "
            "model.objective=reconstruction or both"
        )
    tasks = list(pretext if pretext is not None else obj.get("pretext_tasks", FALLBACK_PRETEXT))
    pp = {**(obj.get("pretext_params") or {}), **(pretext_params or {})}
    return {
        "pretext_tasks": tasks,
        "pretext_params": {t: dict(pp[t]) for t in tasks if t in pp},
        "recon": recon or obj.get("recon", "mse"),
        "beta": float(beta) if beta is not None else float(obj.get("beta", 1.0)),
    }


def derived_encoder(parent: Encoder, net: nn.Module, record: dict[str, Any]) -> Encoder:
    """A new frozen Encoder on ``net`` whose provenance names the parent and the fine-tuning ``record``."""
    net = net.cpu().eval()
    for q in net.parameters():
        q.requires_grad_(False)
    prov = {
        "tool_version": tool_version(), "git_commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "steps": int(record.get("steps", 0)), "parent": parent_record(parent), "finetune": record,
    }  # fmt: skip
    header = {k: v for k, v in parent.spec.items() if k in ("format", "format_version", "arch", "window")}
    return Encoder(net=net, spec=_make_spec({**header, "provenance": prov}), path=None)
