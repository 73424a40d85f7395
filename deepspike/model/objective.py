"""The training objective, shared by the Lightning module and the in-memory fine-tuning loop.

Torch only (no Lightning, which costs seconds to import in ``sort.py finetune=true``). The loss reduction is
explained in the ``deepspike.model.module`` docstring.

Objectives (``model.objective``): ``reconstruction`` (AE/VAE with pretext tasks), ``contrastive`` (SimCLR's
NT-Xent on two augmented views of each window, as CEED does for spikes) or ``both`` (the weighted sum). The
contrastive term is a mean over the ``2B`` views of a rank's batch: each view's positive is the other view of
its window, its negatives the other ``2B - 2`` views of the same rank (no cross-rank gather: with B = 512 there are
1022 negatives per view already, and the loss stays identical under any world size for a fixed per-rank batch).
The projection head that NT-Xent is computed on lives beside the net (``Objective.projector``), so it trains with
the net but is never exported: the exported encoder's embedding is the net's ``embed`` (posterior mean), the
representation before the head, as in SimCLR. With ``contrastive`` alone the decoder is unused and frozen
(``Objective.freeze_unused``), so DDP needs no ``find_unused_parameters``; the artifact keeps its untrained
decoder so it loads like any other.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepspike.errors import DeepSpikeError
from deepspike.model.pretext import Pretext
from deepspike.spec import WindowSpec, normalize

RECON = {"mse": F.mse_loss, "l1": F.l1_loss}
OBJECTIVES = ("reconstruction", "contrastive", "both")
RECON_TARGETS = ("window", "unit_mean")  # what the decoder reconstructs (conf/model/vae_mlp.yaml: recon_target)
# views of the contrastive objective: what confounds sorting, not what changes a unit (conf/model/vae_mlp.yaml)
AUGMENT_TASKS = ("collide", "time_shift", "amplitude", "colored_noise")


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


POSITIVES = ("views", "units")
LOSSES = ("ntxent", "prototype")


def unit_sums(x: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the sum of its group's rows ``[B, L]`` and the group's size ``[B, 1]`` (in ``x``'s dtype);
    ``groups``: one id per row (``unit_groups``)."""
    _, inv, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    sums = x.new_zeros(len(counts), x.shape[1]).index_add_(0, inv, x)
    return sums[inv], counts[inv].to(x.dtype).unsqueeze(1)


def unit_mean_target(target: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Leave-one-out mean of the (normalized, clean) windows of the same unit in the batch: the unit's template as
    far as the batch can tell, with noise independent of the window's own (Noise2Noise across spikes).

    Reconstructing it from a corrupted window trains a denoiser toward the template: what the sorter needs, every
    spike of a unit mapped to one code. A window whose unit has no other window in the batch (and unlabelled
    background, unique ``groups``) keeps its own window as target.
    """
    t = target.float()
    sums, n = unit_sums(t, groups)
    return torch.where(n >= 2, (sums - t) / (n - 1).clamp(min=1), t)


BAND_RADIUS = 8  # taps each side of the smoothing kernel (sigma <= 3 samples: +-2.7 sigma, > 99 % of its mass)


def smooth_windows(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each row convolved with a unit-sum Gaussian of its own ``sigma`` (samples; 0 = unchanged), edges repeated."""
    taps = torch.arange(-BAND_RADIUS, BAND_RADIUS + 1, device=x.device, dtype=torch.float32)
    s = sigma.float().clamp(min=1e-3)[:, None]
    k = torch.exp(-0.5 * (taps[None, :] / s) ** 2)
    k = k / k.sum(dim=1, keepdim=True)
    padded = F.pad(x.float()[:, None, :], (BAND_RADIUS, BAND_RADIUS), mode="replicate")[:, 0]
    return torch.einsum("blk,bk->bl", padded.unfold(1, 2 * BAND_RADIUS + 1, 1), k)


def band_augment(
    wave: torch.Tensor, rec: torch.Tensor, groups: torch.Tensor, sigma_max: float, p: float, g: torch.Generator
) -> torch.Tensor:
    """A recording-wide low-pass (the narrower bands some systems record, e.g. 300-3000 Hz), renormalized to noise
    units: every window of a recording gets the same Gaussian smoothing (``sigma`` drawn per recording, uniform in
    ``[0, sigma_max]`` samples, for a fraction ``p`` of the recordings), then the recording's windows are divided by
    how much the smoothing shrank its noise (the std of the windows' residuals around their unit's mean), so that
    they are in the smoothed recording's noise units, as the sorter normalizes them.

    The broad corpus's noise has a lag-4 autocorrelation of 0-0.3 at 24 kHz; Quiroga's 300-3000 Hz frames 0.4-0.6.
    """
    _, r_inv = torch.unique(rec, return_inverse=True)
    n_rec = int(r_inv.max()) + 1
    draw = torch.rand(n_rec, 2, device=wave.device, generator=g)
    sig = torch.where(draw[:, 0] < p, draw[:, 1] * sigma_max, torch.zeros_like(draw[:, 1]))[r_inv]
    w = wave.float()
    out = smooth_windows(w, sig)
    sums, n = unit_sums(w, groups)
    resid = w - sums / n
    has_unit = (n >= 2).to(w.dtype)  # lone windows have no residual to measure the noise with
    ss_before = w.new_zeros(n_rec).index_add_(0, r_inv, (resid.pow(2) * has_unit).sum(1))
    ss_after = w.new_zeros(n_rec).index_add_(0, r_inv, (smooth_windows(resid, sig).pow(2) * has_unit).sum(1))
    gain = torch.where(ss_after > 0, (ss_before / ss_after.clamp(min=1e-12)).sqrt(), torch.ones_like(ss_after))
    return out * gain[r_inv][:, None]


def prototype_loss(z: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Prototypical-network loss on the embedding itself, scale-free: each labelled window is classified among the
    batch's unit means by ``-|z - mean_u|^2 / (2 s^2)``, with ``s^2`` the pooled within-unit variance per dimension.

    Softmax over squared Euclidean distances to unit means is the posterior of a mixture of equal isotropic
    Gaussians, so the loss shapes the embedding into the compact, separated clusters that the sorter's GMM finds;
    dividing by the within-unit spread makes it a between/within (Fisher) criterion that scaling cannot game, and a
    penalty keeps that spread near 1 so the embedding keeps a usable scale.
    Windows of units with fewer than two windows in the batch (and unlabelled ones, unique ``groups``) are left out.
    """
    z = z.float()
    _, inv, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    keep = counts[inv] >= 2
    if int(keep.sum()) < 4 or int((counts >= 2).sum()) < 2:
        return z.sum() * 0.0
    z, inv = z[keep], inv[keep]
    _, y = torch.unique(inv, return_inverse=True)
    onehot = F.one_hot(y).float()
    mu = (onehot.T @ z) / onehot.sum(0)[:, None]
    d2 = torch.cdist(z, mu).pow(2)
    s2 = d2.gather(1, y[:, None]).mean() / z.shape[1] + 1e-6
    # the ratio alone is scale-free, so weight decay would shrink the embedding towards 0 (where a GMM's covariance
    # floor merges everything): log(s2)^2 anchors the within-unit spread at 1 per dimension
    return F.cross_entropy(-d2 / (2 * s2), y) + torch.log(s2).pow(2)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, groups: torch.Tensor | None = None) -> torch.Tensor:
    """SimCLR's NT-Xent: mean over the ``2B`` views of ``-log softmax`` of the positive's cosine / temperature.

    Row ``i`` of ``z1`` and of ``z2`` are the two views of one window; every other view in the batch is a negative.
    With ``groups`` (one id per window) it is the supervised contrastive loss (SupCon, Khosla et al. 2020, "L_out"):
    every view of a window with the same id is a positive too, and the loss averages ``-log softmax`` over them.
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    b = z1.shape[0]
    sim = (z @ z.T) / float(temperature)
    eye = torch.eye(2 * b, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(eye, float("-inf"))  # not itself
    if groups is None:
        target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
        return F.cross_entropy(sim, target)
    g = torch.cat([groups, groups]).to(z.device)
    pos = (g[:, None] == g[None, :]) & ~eye  # always holds the other view of the same window
    logp = (sim - torch.logsumexp(sim, dim=1, keepdim=True)).masked_fill(eye, 0.0)
    return -((logp * pos).sum(dim=1) / pos.sum(dim=1)).mean()


def unit_groups(label: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """One id per window for SupCon: (recording, unit) for labelled spikes, the window itself for unlabelled ones."""
    label, rec = label.long(), rec.long()
    own = -1 - torch.arange(len(label), device=label.device)  # unique negatives: only the window's two views match
    return torch.where(label >= 0, rec * (1 << 20) + label, own)


class Objective(nn.Module):
    """Which terms the training step computes, their weights, and the contrastive parts (head and views).

    Options are declared, with comments, in ``conf/model/vae_mlp.yaml`` (``model.objective``,
    ``model.recon_weight``, ``model.contrastive.*``); ``augment`` holds the view transforms (``Pretext`` task
    names and params). The head is an MLP ``latent -> projection_hidden -> projection_dim`` (GELU).
    """

    def __init__(
        self,
        kind: str = "reconstruction",
        latent: int = 8,
        recon_weight: float = 1.0,
        temperature: float = 0.1,
        weight: float = 1.0,
        projection_hidden: int = 64,
        projection_dim: int = 32,
        augment: dict[str, Any] | None = None,
        seed: int = 0,
        positives: str = "views",
        loss: str = "ntxent",
        recon_target: str = "window",
        band: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        band = {"p": 0.0, "sigma_max": 3.0, **dict(band or {})}
        checks = [
            (kind in OBJECTIVES, f"model.objective={kind!r}: choose one of {', '.join(OBJECTIVES)}"),
            (float(temperature) > 0, f"model.contrastive.temperature={temperature} must be > 0 (e.g. 0.1)"),
            (float(weight) >= 0 and float(recon_weight) >= 0,
             f"model.contrastive.weight={weight} and model.recon_weight={recon_weight} must be >= 0"),
            (int(projection_hidden) >= 1 and int(projection_dim) >= 1,
             "model.contrastive.projection_hidden and projection_dim must be >= 1"),
            (positives in POSITIVES,
             f"model.contrastive.positives={positives!r}: choose one of {', '.join(POSITIVES)}"),
            (loss in LOSSES, f"model.contrastive.loss={loss!r}: choose one of {', '.join(LOSSES)}"),
            (0.0 <= float(band["p"]) <= 1.0 and float(band["sigma_max"]) > 0,
             f"model.band={band}: p must lie in [0, 1] and sigma_max (samples) be > 0"),
            (float(band["p"]) == 0 or recon_target == "unit_mean",
             "model.band.p > 0 renormalizes each recording by its residuals around the unit means: it needs "
             "model.recon_target=unit_mean (or set model.band.p=0)"),
            (recon_target in RECON_TARGETS,
             f"model.recon_target={recon_target!r}: choose one of {', '.join(RECON_TARGETS)}"),
            (recon_target == "window" or kind != "contrastive",
             f"model.recon_target={recon_target} is a reconstruction target: model.objective=contrastive has none"),
            (loss != "prototype" or positives == "units",
             "model.contrastive.loss=prototype classifies windows among their units: "
             "set model.contrastive.positives=units"),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise DeepSpikeError(msg)
        self.kind, self.recon_weight = kind, float(recon_weight)
        self.temperature, self.weight = float(temperature), float(weight)
        self.positives, self.loss, self.recon_target = positives, loss, recon_target
        self.band_p, self.band_sigma_max = float(band["p"]), float(band["sigma_max"])
        aug = dict(augment or {})
        try:
            self.augment = Pretext(aug.get("tasks", AUGMENT_TASKS), aug.get("params"), seed=seed)
        except (ValueError, TypeError) as e:
            raise DeepSpikeError(f"model.contrastive.augment: {e}") from None
        self._head = (int(projection_hidden), int(projection_dim))
        self.projector: nn.Module | None = None
        self.fit_latent(latent)

    def fit_latent(self, latent: int) -> None:
        """(Re)build the projection head for a net with ``latent`` dims (a fine-tuned parent's may differ)."""
        if not self.contrasts or self.loss == "prototype":  # the prototype loss acts on the embedding: no head
            return
        if self.projector is not None and self.projector[0].in_features == int(latent):
            return
        hidden, dim = self._head
        self.projector = nn.Sequential(nn.Linear(int(latent), hidden), nn.GELU(), nn.Linear(hidden, dim))

    @property
    def needs_labels(self) -> bool:
        """SupCon positives and the unit-mean target come from the corpus's unit labels: the stream must carry them."""
        return bool(self.label_options)

    @property
    def label_options(self) -> str:
        """The settings that make this objective read unit labels, for error messages (and how to drop them)."""
        named = []
        if self.contrasts and self.positives == "units":
            named.append("model.contrastive.positives=units (or model.contrastive.positives=views: SimCLR)")
        if self.reconstructs and self.recon_target == "unit_mean":
            named.append("model.recon_target=unit_mean (or model.recon_target=window)")
        return " and ".join(named)

    @property
    def reconstructs(self) -> bool:
        return self.kind != "contrastive"

    @property
    def contrasts(self) -> bool:
        return self.kind != "reconstruction"

    def band_limited(
        self, wave: torch.Tensor, pretext: Any, rec: torch.Tensor | None, groups: torch.Tensor | None
    ) -> torch.Tensor:
        """``wave`` through ``model.band``'s per-recording low-pass, in training only (a ``pretext`` is given;
        validation sees the data as it is), when the step has the recordings and units (``rec``, ``groups``)."""
        if self.band_p <= 0 or pretext is None or rec is None or groups is None:
            return wave
        return band_augment(wave, rec, groups, self.band_sigma_max, self.band_p, self.augment.generator(wave.device))

    def freeze_unused(self, net: nn.Module) -> None:
        """Contrastive only: the decoder never runs, so it is frozen (out of the optimizer, ignored by DDP)."""
        if not self.reconstructs:
            for q in net.decoder.parameters():
                q.requires_grad_(False)

    def contrastive_terms(
        self,
        net: nn.Module,
        wave: torch.Tensor,
        spec: WindowSpec,
        generator: torch.Generator | None = None,
        groups: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """NT-Xent of two augmented views (drawn from ``generator``, else the augment's own; with ``groups`` and
        ``positives=units`` the SupCon form, see ``nt_xent``), and for monitoring
        ``pos_cos``: the mean cosine of the positive pairs in the embedding (before the head) after removing the
        batch mean, so that a collapsed embedding (every window alike, as at initialization) scores 0, not 1."""
        if self.loss == "prototype" and groups is not None:
            h = net.embed(normalize(self.augment(wave, generator), spec))
            zero = h.new_zeros(())
            return {"contrastive": prototype_loss(h, groups), "pos_cos": zero}
        v1 = normalize(self.augment(wave, generator), spec)
        v2 = normalize(self.augment(wave, generator), spec)
        h = net.embed(torch.cat([v1, v2]))
        h1, h2 = h.chunk(2)
        z1, z2 = self.projector(h1), self.projector(h2)
        c = h.detach().float() - h.detach().float().mean(dim=0)
        pos = F.cosine_similarity(*c.chunk(2), dim=1).mean()
        g = groups if self.positives == "units" else None
        return {"contrastive": nt_xent(z1, z2, self.temperature, g), "pos_cos": pos}


def autoencoder_loss(
    net: torch.nn.Module,
    wave: torch.Tensor,
    spec: WindowSpec,
    pretext: Callable[[torch.Tensor], torch.Tensor] | None,
    recon: str,
    beta: float,
    objective: Objective | None = None,
    generator: torch.Generator | None = None,
    groups: torch.Tensor | None = None,
    rec: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The training step's loss, shared by pretraining, ``train.py experiment=finetune`` and ``sort.py finetune=true``.

    ``wave`` is raw (noise units); the pretext corrupts it on the device, both input and target go through the
    model's normalization, and the reconstruction term is ``recon + beta * kl``. ``objective`` (default: that
    term alone) weights it by ``recon_weight`` and/or adds ``weight * NT-Xent`` of two augmented views
    (``generator`` draws the views, for fixed validation views; ``groups``: SupCon ids, ``unit_groups``; ``rec``: the
    recording of each window, for ``model.band``'s per-recording low-pass, applied in training only).
    Returns loss, recon, kl, contrastive, pos_cos and ``mu``, the embedding of the (pretext-corrupted) input, or
    of the clean window without reconstruction.
    """
    wave = wave.float()
    if objective is not None:
        wave = objective.band_limited(wave, pretext, rec, groups)
    target = normalize(wave, spec)
    zero = wave.new_zeros(())
    if objective is None or objective.reconstructs:
        inp = normalize(pretext(wave), spec) if pretext is not None else target
        x_hat, mu, logvar = net(inp)
        goal = target
        if objective is not None and objective.recon_target == "unit_mean" and groups is not None:
            goal = unit_mean_target(target, groups)
        rec, kl = loss_terms(x_hat, goal, mu, logvar, recon)
        w = objective.recon_weight if objective is not None else 1.0
        out = {"loss": w * (rec + beta * kl), "recon": rec, "kl": kl, "mu": mu}
    else:
        with torch.no_grad():
            mu = net.embed(target)
        out = {"loss": zero, "recon": zero, "kl": zero, "mu": mu}
    out.update(contrastive=zero, pos_cos=zero)
    if objective is not None and objective.contrasts:
        c = objective.contrastive_terms(net, wave, spec, generator, groups)
        out.update(c, loss=out["loss"] + objective.weight * c["contrastive"])
    return out


def warmup_cosine(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine down to ``min_lr_ratio`` at ``total_steps``."""

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f
