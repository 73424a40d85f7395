"""Pretext (self-supervision) transforms, applied to whole batches on the device.

The model sees a corrupted window and learns to reconstruct the clean one. Every transform works on a
``[B, L]`` tensor of windows in noise units (before ``spec.normalize``), touches each row with probability
``p`` (drawn per row), keeps the shape, and draws all randomness from one seeded ``torch.Generator`` on the
batch's device: no per-sample Python, no host round trip. Transforms compose in the configured order.

Transforms (``L`` = window length, 20 for the canonical window):

- ``shuffle``: ``frac`` of the sample positions of a window (chosen at random) are permuted among themselves;
  the others keep their place. The default pretext task, as for the published checkpoint.
- ``mask``: each sample is set to 0 (the noise-unit baseline) with probability ``frac``.
- ``jigsaw``: the window is cut into ``pieces`` contiguous pieces (sizes differ by at most one) that are put
  back in a random order.
- ``flip``: time reversal. The peak sits at ``n_before`` (off-centre), so the model can tell and undo it.
- ``roll``: circular shift by an integer drawn uniformly in ``[-max_shift, max_shift]``.
- ``noise``: additive Gaussian noise of standard deviation ``sigma`` noise units.
- ``amplitude``: the window is scaled by ``1 + sigma * N(0, 1)`` (clamped to ``>= 0.1``).
- ``time_shift``: sub-sample shift by ``U(-max_shift, max_shift)`` samples, linear interpolation, edge samples
  repeated (jitter of the peak alignment).
- ``colored_noise``: additive noise of standard deviation ``sigma`` noise units whose neighbouring samples correlate
  by ``rho`` (white noise through the AR(1) impulse response ``rho**k``). Band-passed extracellular noise is
  correlated over a few samples at 20-30 kHz; white noise is not what a sorter has to see through.
- ``collide``: a colliding spike. Another window of the batch (each row draws its partner), shifted by
  ``min_shift..max_shift`` samples either way (zero-filled, not wrapped) and scaled by ``U(scale_min, scale_max)``,
  is added. The partner brings its own noise along (its std is scaled too), a small extra noise.

The contrastive objective (``deepspike.model.objective``) uses the same class for its views, with the transforms that
model what confounds sorting and keep unit identity: ``collide``, ``time_shift``, ``amplitude``, ``colored_noise``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from deepspike.defaults import conf_value
from deepspike.errors import DeepSpikeError

PRETEXT_CONF = "model/vae_mlp.yaml"  # every model config starts from this one; its `pretext` node declares the defaults
DEFAULTS: dict[str, dict[str, float]] = conf_value(PRETEXT_CONF, "pretext.params")  # per task: its keyword arguments


def _rows(x: torch.Tensor, p: float, g: torch.Generator) -> torch.Tensor:
    """Bool ``[B, 1]``: which rows a transform touches."""
    return (torch.rand(x.shape[0], 1, device=x.device, generator=g) < p) if p < 1 else torch.ones_like(x[:, :1]).bool()


def shuffle(x: torch.Tensor, g: torch.Generator, *, p: float, frac: float) -> torch.Tensor:
    b, n = x.shape
    k = max(2, round(frac * n)) if frac > 0 else 0
    if k == 0:
        return x
    pos = torch.rand(b, n, device=x.device, generator=g).argsort(dim=1)[:, :k]  # k random positions per row
    src = pos.gather(1, torch.rand(b, k, device=x.device, generator=g).argsort(dim=1))  # permuted among themselves
    out = x.scatter(1, pos, x.gather(1, src))
    return torch.where(_rows(x, p, g), out, x)


def mask(x: torch.Tensor, g: torch.Generator, *, p: float, frac: float) -> torch.Tensor:
    drop = torch.rand(x.shape, device=x.device, generator=g) < frac
    return torch.where(_rows(x, p, g) & drop, torch.zeros_like(x), x)


def jigsaw(x: torch.Tensor, g: torch.Generator, *, p: float, pieces: int) -> torch.Tensor:
    b, n = x.shape
    pieces = int(min(max(pieces, 1), n))
    piece_of = torch.arange(n, device=x.device) * pieces // n  # contiguous pieces, sizes differ by <= 1
    order = torch.rand(b, pieces, device=x.device, generator=g).argsort(dim=1)  # new rank of each piece
    key = order[:, piece_of] * n + torch.arange(n, device=x.device)  # sort by (piece rank, position)
    out = x.gather(1, key.argsort(dim=1))
    return torch.where(_rows(x, p, g), out, x)


def flip(x: torch.Tensor, g: torch.Generator, *, p: float) -> torch.Tensor:
    return torch.where(_rows(x, p, g), x.flip(1), x)


def roll(x: torch.Tensor, g: torch.Generator, *, p: float, max_shift: int) -> torch.Tensor:
    b, n = x.shape
    s = torch.randint(-int(max_shift), int(max_shift) + 1, (b, 1), device=x.device, generator=g)
    idx = (torch.arange(n, device=x.device) - s) % n
    return torch.where(_rows(x, p, g), x.gather(1, idx), x)


def noise(x: torch.Tensor, g: torch.Generator, *, p: float, sigma: float) -> torch.Tensor:
    eps = torch.randn(x.shape, device=x.device, generator=g, dtype=x.dtype)
    return torch.where(_rows(x, p, g), x + sigma * eps, x)


def amplitude(x: torch.Tensor, g: torch.Generator, *, p: float, sigma: float) -> torch.Tensor:
    scale = (1 + sigma * torch.randn(x.shape[0], 1, device=x.device, generator=g, dtype=x.dtype)).clamp_min(0.1)
    return torch.where(_rows(x, p, g), x * scale, x)


def time_shift(x: torch.Tensor, g: torch.Generator, *, p: float, max_shift: float) -> torch.Tensor:
    b, n = x.shape
    d = (torch.rand(b, 1, device=x.device, generator=g, dtype=x.dtype) * 2 - 1) * max_shift
    t = (torch.arange(n, device=x.device, dtype=x.dtype) - d).clamp(0, n - 1)
    lo = t.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w = t - lo.to(x.dtype)
    out = x.gather(1, lo) * (1 - w) + x.gather(1, hi) * w
    return torch.where(_rows(x, p, g), out, x)


def colored_noise(x: torch.Tensor, g: torch.Generator, *, p: float, sigma: float, rho: float) -> torch.Tensor:
    b, n = x.shape
    if not -1 < rho < 1:
        raise ValueError(f"colored_noise rho must be in (-1, 1), got {rho}")
    kernel = torch.pow(torch.full((n,), float(rho), device=x.device, dtype=x.dtype), torch.arange(n, device=x.device))
    kernel = kernel / kernel.norm()  # unit variance after filtering; truncated at n taps (rho**n is negligible)
    white = torch.randn(b, 1, 2 * n - 1, device=x.device, generator=g, dtype=x.dtype)
    eps = F.conv1d(white, kernel.flip(0).view(1, 1, n)).view(b, n)  # eps[t] = sum_k rho**k white[t - k]
    return torch.where(_rows(x, p, g), x + sigma * eps, x)


def collide(
    x: torch.Tensor, g: torch.Generator, *, p: float, min_shift: int, max_shift: int, scale_min: float, scale_max: float
) -> torch.Tensor:
    b, n = x.shape
    if b < 2:
        return x
    if not 0 <= min_shift <= max_shift:
        raise ValueError(f"collide needs 0 <= min_shift <= max_shift, got {min_shift}, {max_shift}")
    partner = (torch.arange(b, device=x.device) + torch.randint(1, b, (b,), device=x.device, generator=g)) % b
    mag = torch.randint(int(min_shift), int(max_shift) + 1, (b, 1), device=x.device, generator=g)
    sign = torch.randint(0, 2, (b, 1), device=x.device, generator=g) * 2 - 1
    src = torch.arange(n, device=x.device) - mag * sign  # out[t] = partner[t - shift]
    inside = (src >= 0) & (src < n)
    other = torch.where(inside, x[partner].gather(1, src.clamp(0, n - 1)), torch.zeros_like(x))
    scale = scale_min + (scale_max - scale_min) * torch.rand(b, 1, device=x.device, generator=g, dtype=x.dtype)
    return torch.where(_rows(x, p, g), x + scale * other, x)


TRANSFORMS: dict[str, Callable[..., torch.Tensor]] = {
    "shuffle": shuffle, "mask": mask, "jigsaw": jigsaw, "flip": flip, "roll": roll,
    "noise": noise, "amplitude": amplitude, "time_shift": time_shift,
    "colored_noise": colored_noise, "collide": collide,
}  # fmt: skip


class Pretext:
    """A seeded, ordered composition of batched transforms.

    ``tasks`` names the transforms in application order (None: ``model.pretext.tasks`` of ``conf/model/vae_mlp
    .yaml``; empty = plain autoencoder); ``params`` maps a name to its keyword arguments, missing ones taken from
    ``DEFAULTS`` (that file's ``model.pretext.params``). ``seed`` seeds a generator per device; the module adds
    the global rank so ranks corrupt differently. The generator state is saved in checkpoints (exact resume).
    """

    def __init__(
        self,
        tasks: Sequence[str] | None = None,
        params: Mapping[str, Mapping[str, Any]] | None = None,
        seed: int = 0,
    ) -> None:
        tasks = conf_value(PRETEXT_CONF, "pretext.tasks") if tasks is None else tasks
        unknown = [t for t in tasks if t not in TRANSFORMS]
        if unknown:
            raise DeepSpikeError(
                f"unknown pretext task(s) {unknown} in model.pretext.tasks; choose from {sorted(TRANSFORMS)}"
            )
        params = {k: dict(v) for k, v in (params or {}).items() if v is not None}
        for task, options in params.items():
            bad = sorted(set(options) - set(DEFAULTS.get(task, {})))
            if task not in TRANSFORMS or bad:
                raise DeepSpikeError(
                    f"model.pretext.params.{task}: unknown "
                    + (f"option(s) {bad}; known: {sorted(DEFAULTS[task])}" if task in TRANSFORMS else "task")
                    + f" (declared in conf/{PRETEXT_CONF})"
                )
        self.tasks = list(tasks)
        self.params = {t: {**DEFAULTS[t], **params.get(t, {})} for t in self.tasks}
        self.seed = int(seed)
        self._gen: torch.Generator | None = None

    def generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None or self._gen.device != torch.device(device):
            g = torch.Generator(device=device)
            g.manual_seed(self.seed)
            self._gen = g
        return self._gen

    def reseed(self, seed: int) -> None:
        self.seed, self._gen = int(seed), None

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Corrupt ``x``; ``generator`` replaces the own one (validation draws fixed views without moving it)."""
        if not self.tasks:
            return x
        g = generator if generator is not None else self.generator(x.device)
        for t in self.tasks:
            x = TRANSFORMS[t](x, g, **self.params[t])
        return x

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "rng": None if self._gen is None else self._gen.get_state()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.seed = int(state["seed"])
        self._gen = None
        if state.get("rng") is not None:
            self.generator(torch.device(device)).set_state(state["rng"].cpu())

    def __repr__(self) -> str:
        return f"Pretext(tasks={self.tasks}, params={self.params}, seed={self.seed})"
