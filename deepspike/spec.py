"""The window spec: the canonical spike window and its normalization.

Every artifact (corpus manifest, checkpoint, exported encoder) carries a ``WindowSpec``; any two stages that
exchange windows must agree on it, which ``WindowSpec.check_compatible`` enforces.

Windows are *stored* in noise units (sample / robust noise sigma of their channel, see
``deepspike.recording.preprocess.noise_levels``): that removes recording gain without a whole-recording min-max scale,
so one huge artifact cannot squash every other spike (the published pipeline's flaw). The model input is
then ``normalize(windows, spec)``, a soft clip that keeps ordinary spikes almost linear and bounds artifacts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from deepspike.errors import SpecMismatchError

NORMALIZATIONS = ("noise_softclip", "none")


@dataclass(frozen=True)
class WindowSpec:
    """Canonical window grid (the published model's: 20 samples at 24 kHz, 8 before and 12 after the peak)."""

    sampling_frequency: float = 24000.0  # Hz of the canonical grid; other rates are resampled onto it
    n_before: int = 8  # samples before the peak sample
    n_after: int = 12  # samples from the peak on (peak included)
    normalization: str = "noise_softclip"  # model-input transform, see normalize()
    norm_scale: float = 10.0  # noise units mapped to 1.0 (a 10-sigma spike has unit height)
    norm_clip: float = 4.0  # soft-clip bound after scaling (about 40 sigma before tanh saturates)

    def __post_init__(self) -> None:
        if self.sampling_frequency <= 0:
            raise SpecMismatchError(f"window sampling_frequency must be > 0, got {self.sampling_frequency}")
        if self.n_before < 0 or self.n_after < 1:
            raise SpecMismatchError(f"window needs n_before >= 0 and n_after >= 1, got {self.n_before}, {self.n_after}")
        if self.normalization not in NORMALIZATIONS:
            raise SpecMismatchError(f"unknown normalization {self.normalization!r}; choose one of {NORMALIZATIONS}")
        if self.norm_scale <= 0 or self.norm_clip <= 0:
            raise SpecMismatchError("norm_scale and norm_clip must be > 0")

    @property
    def length(self) -> int:
        return self.n_before + self.n_after

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WindowSpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(d).items() if k in known})

    def check_compatible(self, other: WindowSpec, what: str = "data", where: str = "") -> None:
        """Raise if ``other`` (the spec of ``what``, found in ``where``) differs from this one."""
        mine, theirs = self.to_dict(), other.to_dict()
        diff = {k: (mine[k], theirs[k]) for k in mine if not _same(mine[k], theirs[k])}
        if diff:
            detail = ", ".join(f"{k}: model {a!r} vs {what} {b!r}" for k, (a, b) in diff.items())
            loc = f" ({where})" if where else ""
            raise SpecMismatchError(
                f"window spec mismatch{loc}: {detail}. Rebuild the {what} with the model's window spec "
                "(the spec is in the artifact's JSON header) or use a model trained on this spec."
            )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    return a == b


def normalize(windows: Any, spec: WindowSpec) -> Any:
    """Model input from windows in noise units: ``clip * tanh(x / (scale * clip))``.

    Works on numpy arrays and torch tensors alike (float32 out). Near zero it is ``x / scale``; it is
    monotonic, and bounded by ``clip`` so a rare 1000-sigma artifact cannot dominate a batch or a loss.
    """
    if spec.normalization == "none":
        return windows
    s, c = spec.norm_scale, spec.norm_clip
    if isinstance(windows, np.ndarray):
        return (c * np.tanh(windows.astype(np.float32, copy=False) / (s * c))).astype(np.float32, copy=False)
    import torch

    return c * torch.tanh(windows.float() / (s * c))
