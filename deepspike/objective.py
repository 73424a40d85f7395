"""The training objective, shared by the Lightning module and the in-memory fine-tuning loop.

Torch only (no Lightning, which costs seconds to import in ``sort.py finetune=true``). The loss reduction is
explained in the ``deepspike.module`` docstring; the provenance helper sits here for the same reason.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from deepspike.paths import REPO_ROOT
from deepspike.spec import WindowSpec, normalize

RECON = {"mse": F.mse_loss, "l1": F.l1_loss}


def loss_terms(
    x_hat: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor | None, recon: str = "mse"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(recon, kl)`` with the same per-sample, per-element reduction (see module docstring)."""
    rec = RECON[recon](x_hat.float(), target.float())
    if logvar is None:
        return rec, rec.new_zeros(())
    mu, logvar = mu.float(), logvar.float()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(dim=1).mean() / target.shape[1]
    return rec, kl


def autoencoder_loss(
    net: torch.nn.Module,
    wave: torch.Tensor,
    spec: WindowSpec,
    pretext: Callable[[torch.Tensor], torch.Tensor] | None,
    recon: str,
    beta: float,
) -> dict[str, torch.Tensor]:
    """The training step's loss, shared by pretraining, ``train.py experiment=finetune`` and ``sort.py finetune=true``.

    ``wave`` is raw (noise units); the pretext corrupts it on the device, both input and target go through the
    model's normalization, and the loss is ``recon + beta * kl``. Returns loss, recon, kl and the embedding mu.
    """
    wave = wave.float()
    target = normalize(wave, spec)
    inp = normalize(pretext(wave), spec) if pretext is not None else target
    x_hat, mu, logvar = net(inp)
    rec, kl = loss_terms(x_hat, target, mu, logvar, recon)
    return {"loss": rec + beta * kl, "recon": rec, "kl": kl, "mu": mu}


def warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine down to ``min_lr_ratio`` at ``total_steps``."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def git_commit() -> str:
    """``<sha>`` of the checkout holding this package (``+dirty`` with local changes), or ``unknown``."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
        return sha + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def manifest_sha256(manifest: dict[str, Any]) -> str:
    """Hash of the manifest's content (key order independent), naming the exact corpus a model saw."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()
