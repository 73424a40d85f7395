"""Autoencoder nets for spike windows: the published MLP (AE or VAE) and a 1-D conv encoder variant.

Every net maps a normalized window ``[B, L]`` to ``(reconstruction [B, L], mu [B, latent], logvar | None)``.
AE and VAE share one code path: ``variational=True`` only widens the encoder head to ``2 * latent`` (mean and
log-variance) and samples ``z`` in training. The embedding used for sorting is always deterministic
(``embed`` returns the posterior mean). No layer is defined without being used in ``forward``, so DDP runs
with ``find_unused_parameters=False`` (the published VAE defines BatchNorm layers it never calls).

Each net records its constructor arguments in ``.arch`` so an exported artifact can rebuild it with
``build_net(arch)`` without Hydra and without unpickling code.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

from deepspike.errors import DeepSpikeError

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "elu": nn.ELU, "tanh": nn.Tanh}
NORMS = ("none", "batch", "layer")
OUT_HEADS = ("linear", "tanh")


def _act(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _norm(name: str, width: int) -> list[nn.Module]:
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; choose one of {NORMS}")
    if name == "batch":
        return [nn.BatchNorm1d(width)]
    if name == "layer":
        return [nn.LayerNorm(width)]
    return []


def mlp_widths(hidden: int, depth: int) -> list[int]:
    """Published taper: h, h/2, h/4, h/4, ... (20 -> 2048 -> 1024 -> 512 -> 512 -> 8 for h=2048, depth=4)."""
    if hidden < 4 or depth < 1:
        raise ValueError(f"need hidden >= 4 and depth >= 1, got hidden={hidden}, depth={depth}")
    return [max(hidden >> min(i, 2), 1) for i in range(depth)]


def _stack(dims: list[int], activation: str, norm: str, dropout: float) -> list[nn.Module]:
    """Linear -> norm -> activation (-> dropout) for each consecutive pair of ``dims``."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(dims):
        layers += [nn.Linear(a, b), *_norm(norm, b), _act(activation)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return layers


class OutHead(nn.Module):
    """Decoder output transform: ``linear`` (identity) or ``tanh`` scaled to ``scale``.

    A tanh head bounded by the normalization's clip matches the range of ``spec.normalize`` outputs; there is
    no sigmoid option because it forces a [0, 1] input scaling (the published flaw).
    """

    def __init__(self, kind: str = "linear", scale: float = 4.0) -> None:
        super().__init__()
        if kind not in OUT_HEADS:
            raise ValueError(f"unknown out_head {kind!r}; choose one of {OUT_HEADS}")
        self.kind, self.scale = kind, float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.tanh(x / self.scale) if self.kind == "tanh" else x


class _AutoencoderBase(nn.Module):
    """Shared AE/VAE logic; subclasses build ``self.encoder`` (-> features), ``self.head``, ``self.decoder``."""

    arch: dict[str, Any]
    variational: bool
    latent: int

    def _make_skip(self, in_dim: int, linear_skip: bool) -> None:
        """``linear_skip``: a linear path input -> latent head beside the MLP/conv path (see ``init_skip_pca``)."""
        self.skip = nn.Linear(in_dim, self.head.out_features) if linear_skip else None

    @torch.no_grad()
    def init_skip_pca(self, x: torch.Tensor) -> None:
        """Start the embedding as the top principal components of ``x`` (normalized training windows): the skip
        holds the projection, the head starts at zero, so training learns corrections to PCA rather than a
        representation from scratch (PCA features are the baseline the encoder has to beat)."""
        if self.skip is None:
            raise DeepSpikeError("init_skip_pca needs a net built with linear_skip=true")
        x = x.float()
        mean = x.mean(dim=0)
        _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
        k = min(self.latent, vt.shape[0])
        self.skip.weight.zero_()
        self.skip.bias.zero_()
        self.skip.weight[:k] = vt[:k]
        self.skip.bias[:k] = -(vt[:k] @ mean)
        self.head.weight.zero_()
        self.head.bias.zero_()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.head(self.encoder(x))
        if self.skip is not None:
            h = h + self.skip(x)
        if self.variational:
            mu, logvar = h.chunk(2, dim=-1)
            return mu, logvar.clamp(-20.0, 10.0)  # keeps exp(logvar) finite in bf16
        return h, None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.decoder(z))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic embedding for sorting: the (posterior) mean."""
        return self.encode(x)[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        mu, logvar = self.encode(x)
        z = mu
        if self.variational and self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


class MLPNet(_AutoencoderBase):
    """The published MLP autoencoder: ``in_dim -> h -> h/2 -> h/4 -> h/4 -> latent`` with a mirrored decoder.

    Defaults reproduce the published model (about 5.9 M parameters as a VAE). ``widths`` overrides the taper.
    """

    def __init__(
        self,
        in_dim: int = 20,
        hidden: int = 2048,
        depth: int = 4,
        latent: int = 8,
        variational: bool = True,
        activation: str = "gelu",
        norm: str = "none",
        dropout: float = 0.0,
        out_head: str = "linear",
        out_scale: float = 4.0,
        widths: list[int] | None = None,
        linear_skip: bool = False,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths] if widths else mlp_widths(int(hidden), int(depth))
        self.arch = {
            "kind": "mlp", "in_dim": int(in_dim), "hidden": int(hidden), "depth": len(widths), "latent": int(latent),
            "variational": bool(variational), "activation": activation, "norm": norm, "dropout": float(dropout),
            "out_head": out_head, "out_scale": float(out_scale), "widths": widths,
        }  # fmt: skip
        if linear_skip:  # only when used: artifacts written before the option keep the same arch
            self.arch["linear_skip"] = True
        self.variational, self.latent = bool(variational), int(latent)
        self.encoder = nn.Sequential(*_stack([int(in_dim), *widths], activation, norm, dropout))
        self.head = nn.Linear(widths[-1], latent * (2 if variational else 1))
        self._make_skip(int(in_dim), bool(linear_skip))
        dec = widths[::-1]
        self.decoder = nn.Sequential(*_stack([latent, *dec], activation, norm, dropout), nn.Linear(dec[-1], in_dim))
        self.out = OutHead(out_head, out_scale)


class ConvNet(_AutoencoderBase):
    """1-D conv encoder (``channels`` conv blocks, stride 1, same padding) + MLP head; MLP decoder.

    A second model family for sweeps: convolutions share weights across time, so they see shape, not position.
    """

    def __init__(
        self,
        in_dim: int = 20,
        channels: list[int] | None = None,
        kernel_size: int = 5,
        hidden: int = 256,
        latent: int = 8,
        variational: bool = True,
        activation: str = "gelu",
        norm: str = "none",
        out_head: str = "linear",
        out_scale: float = 4.0,
        linear_skip: bool = False,
    ) -> None:
        super().__init__()
        channels = [int(c) for c in (channels or [32, 64, 64])]
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        self.arch = {
            "kind": "conv", "in_dim": int(in_dim), "channels": channels, "kernel_size": int(kernel_size),
            "hidden": int(hidden), "latent": int(latent), "variational": bool(variational),
            "activation": activation, "norm": norm, "out_head": out_head, "out_scale": float(out_scale),
        }  # fmt: skip
        if linear_skip:  # only when used: artifacts written before the option keep the same arch
            self.arch["linear_skip"] = True
        self.variational, self.latent = bool(variational), int(latent)
        convs: list[nn.Module] = [nn.Unflatten(1, (1, in_dim))]
        prev = 1
        for c in channels:
            convs += [nn.Conv1d(prev, c, kernel_size, padding=kernel_size // 2)]
            convs += [nn.BatchNorm1d(c)] if norm == "batch" else [_ChannelLayerNorm(c)] if norm == "layer" else []
            convs += [_act(activation)]
            prev = c
        convs += [nn.Flatten(1), *_stack([prev * in_dim, hidden], activation, norm, 0.0)]
        self.encoder = nn.Sequential(*convs)
        self.head = nn.Linear(hidden, latent * (2 if variational else 1))
        self._make_skip(int(in_dim), bool(linear_skip))
        self.decoder = nn.Sequential(
            *_stack([latent, hidden, hidden], activation, norm, 0.0), nn.Linear(hidden, in_dim)
        )
        self.out = OutHead(out_head, out_scale)


class _ChannelLayerNorm(nn.Module):
    """LayerNorm over channels of a ``[B, C, T]`` tensor."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


NETS: dict[str, type[_AutoencoderBase]] = {"mlp": MLPNet, "conv": ConvNet}


def build_net(arch: dict[str, Any]) -> _AutoencoderBase:
    """Rebuild a net from its ``.arch`` dict (as stored in checkpoints and exported artifacts)."""
    arch = dict(arch)
    kind = arch.pop("kind", "mlp")
    if kind not in NETS:
        raise ValueError(f"unknown net kind {kind!r}; choose one of {sorted(NETS)}")
    return NETS[kind](**arch)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------------------------------- freezing
# Fine-tuning (both paths) can freeze the first k encoder layers; the layer order lives beside the nets.
FREEZE_ALL = ("encoder", "all")


def encoder_layers(net: nn.Module) -> list[list[nn.Module]]:
    """The encoder's layers in order: each Linear/Conv1d of ``net.encoder`` with the norm/activation after it,
    then the latent head. "The first k layers" counts in this list."""
    groups: list[list[nn.Module]] = []
    for m in net.encoder.children():
        if isinstance(m, (nn.Linear, nn.Conv1d)) or not groups:
            groups.append([m])
        else:
            groups[-1].append(m)
    groups = [g for g in groups if any(True for _ in (q for m in g for q in m.parameters()))] or groups
    return [*groups, [net.head, *([net.skip] if getattr(net, "skip", None) is not None else [])]]


def freeze_count(net: nn.Module, freeze: int | str | None) -> int:
    """Number of encoder layers ``freeze`` means: 0/None/false = none, k = the first k, ``encoder`` = all."""
    n = len(encoder_layers(net))
    if freeze in (None, False, 0, "0", "none", "false"):
        return 0
    if isinstance(freeze, str) and freeze.lower() in FREEZE_ALL:
        return n
    try:
        k = int(freeze)
    except (TypeError, ValueError):
        raise DeepSpikeError(f"freeze={freeze!r}: use 0 (train all), k (first k encoder layers) or 'encoder'") from None
    if k < 0 or k > n:
        raise DeepSpikeError(f"freeze={k}: this encoder has {n} layers (including the latent head); use 0..{n}")
    return k


def freeze_encoder(net: nn.Module, freeze: int | str | None) -> list[str]:
    """Freeze the first k encoder layers (``requires_grad=False``, norm layers kept in eval mode); return names.

    Frozen parameters are left out of the optimizer (see ``trainable``) and DDP ignores them, so it needs no
    ``find_unused_parameters``. Modules are tagged ``_ds_frozen``: ``keep_frozen_eval`` re-applies eval mode
    after every ``.train()`` so BatchNorm statistics of frozen layers do not move either.
    """
    k = freeze_count(net, freeze)
    for q in net.parameters():
        q.requires_grad_(True)
    for m in net.modules():
        m._ds_frozen = False
    for group in encoder_layers(net)[:k]:
        for m in group:
            for sub in m.modules():
                sub._ds_frozen = True
            for q in m.parameters():
                q.requires_grad_(False)
    keep_frozen_eval(net)
    return [n for n, q in net.named_parameters() if not q.requires_grad]


def keep_frozen_eval(net: nn.Module) -> None:
    for m in net.modules():
        if getattr(m, "_ds_frozen", False):
            m.eval()


def trainable(net: nn.Module) -> list[nn.Parameter]:
    return [q for q in net.parameters() if q.requires_grad]
