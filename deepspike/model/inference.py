"""Encoder artifacts read without torch, and a numpy forward pass of MLP encoders for sorting on the CPU.

Sorting a short recording is dominated by start-up: importing torch costs 1.2-1.5 s of a 6 s fresh-process
sort of 60 s of one channel (``python -X importtime``; 2-core machine), while embedding its 3,500 spikes with
the bundled MLP takes 0.03 s. ``sort`` therefore runs the frozen encoder here, in numpy, whenever torch would
run it on the CPU anyway (``device=cpu``, or ``auto`` on a CPU-only torch build) and nothing trains it
(``finetune=false``); CUDA, conv encoders and fine-tuning go through :mod:`deepspike.model.export` and torch. Both
paths read the same safetensors file (no pickle) with the same checks, and agree to float32 rounding (test).

The artifact format itself (header, sidecar) is defined here so that both loaders share it.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepspike.errors import DeepSpikeError, SpecMismatchError, differences
from deepspike.spec import WindowSpec, normalize

FORMAT = "deepspike-encoder"
FORMAT_VERSION = 1
META_KEY = "deepspike"
SIDECAR_KEYS = ("format", "format_version", "arch", "window")  # what an edited sidecar could wrongly seem to change
NUMPY_KINDS = ("mlp",)  # architectures with a numpy forward pass
LN_EPS = BN_EPS = 1e-5  # torch's LayerNorm / BatchNorm1d defaults, which models.py uses


class EncoderSpec(dict):
    """The artifact header as a dict that also allows attribute access (``spec.window``, ``spec["window"]``).

    Keys: ``format``, ``format_version``, ``arch``, ``window`` (WindowSpec fields), ``provenance``, and for
    convenience ``sampling_frequency``, ``normalization``, ``n_before``, ``n_after``, ``latent_dim``.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e

    @property
    def window_spec(self) -> WindowSpec:
        return WindowSpec.from_dict(self["window"])


def make_spec(header: dict[str, Any]) -> EncoderSpec:
    w = header["window"]
    extra = {k: w[k] for k in ("sampling_frequency", "normalization", "n_before", "n_after")}
    return EncoderSpec(**header, **extra, latent_dim=int(header["arch"]["latent"]))


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of an artifact, without loading its weights."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise DeepSpikeError(f"{path}: not a readable safetensors encoder artifact ({e})") from e
    if META_KEY not in meta:
        raise DeepSpikeError(f"{path}: safetensors file without a DeepSpike header; export it with export_encoder")
    header = json.loads(meta[META_KEY])
    if header.get("format") != FORMAT or int(header.get("format_version", 0)) > FORMAT_VERSION:
        raise DeepSpikeError(
            f"{path}: format {header.get('format')!r} v{header.get('format_version')} is not supported by this "
            f"version (reads {FORMAT} v<={FORMAT_VERSION}); upgrade deepspike"
        )
    return header


def check_sidecar(path: Path, header: dict[str, Any]) -> None:
    """The ``.json`` beside an artifact must agree with the weights file's header, which is what gets used."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return
    try:
        doc = json.loads(sidecar.read_text())
    except (OSError, ValueError) as e:
        raise DeepSpikeError(f"{sidecar}: unreadable sidecar of {path} ({e}); restore it or remove it") from e
    diff = differences(header, doc if isinstance(doc, dict) else {}, SIDECAR_KEYS, arrow="vs")
    if diff:
        raise SpecMismatchError(
            f"{sidecar} disagrees with the header of {path} ({'; '.join(diff)}; weights file vs sidecar). The "
            "encoder is defined by the weights file, so editing the sidecar does not change it: restore the sidecar "
            "(re-export) or undo the edit; for another window, fine-tune or train a model on windows cut that way."
        )


def check_weight_shapes(
    path: Path, arch: dict[str, Any], want: dict[str, tuple[int, ...]], held: dict[str, tuple[int, ...]]
) -> None:
    """Raise, naming the file and the tensors, unless the file holds exactly the tensors (name: shape) the
    header's architecture needs: a strict load's check, with a message instead of torch's (both loaders)."""
    problems = [f"{k}: missing" for k in want if k not in held] + [
        f"{k}: not in the architecture" for k in held if k not in want
    ]
    problems += [
        f"{k}: architecture needs {list(s)}, file holds {list(held[k])}"
        for k, s in want.items()
        if k in held and tuple(held[k]) != tuple(s)
    ]
    if not problems:
        return
    shown = "; ".join(problems[:4]) + (f"; ... ({len(problems)} in all)" if len(problems) > 4 else "")
    raise DeepSpikeError(
        f"{path}: the weights do not fit the architecture in the file's header ({shown}; header arch: "
        f"{json.dumps(arch, sort_keys=True)}). The file was edited or damaged: re-export it from its "
        "checkpoint (`python train.py train=false ckpt_path=RUN_DIR/checkpoints/last.ckpt`)"
    )


def nonfinite_problem(where: str, bad: list[str], kinds: list[str], total: int) -> DeepSpikeError:
    """The error for NaN/Inf weights (both loaders raise it): later they only show up as NaN embeddings."""
    names = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
    return DeepSpikeError(
        f"{where}: weights contain {'/'.join(kinds)} ({len(bad)} of {total} tensors: {names}), so training "
        "diverged. Use an earlier checkpoint (RUN_DIR/checkpoints/step*.ckpt, re-export with `python train.py "
        "train=false ckpt_path=...`) or retrain with a lower model.optimizer.lr=..."
    )


# ------------------------------------------------------------------------------------------- backend choice


def torch_accelerator_build() -> bool:
    """Whether the installed torch is a CUDA/ROCm/XPU build, read from ``torch/version.py`` without importing
    torch (which is the point). Unknown layouts count as accelerator builds, so the torch path decides."""
    try:
        spec = importlib.util.find_spec("torch")
        locations = list(spec.submodule_search_locations or []) if spec else []
        tree = ast.parse((Path(locations[0]) / "version.py").read_text())
    except Exception:
        return True
    values: dict[str, Any] = {}
    for node in tree.body:
        target = getattr(node, "target", None) or (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and isinstance(getattr(node, "value", None), ast.Constant):
            values[target.id] = node.value.value
    if "cuda" not in values:
        return True
    return any(values.get(k) for k in ("cuda", "hip", "xpu"))


def numpy_capable(path: Path) -> bool:
    """The artifact's architecture has a numpy forward pass."""
    return str(read_header(path).get("arch", {}).get("kind")) in NUMPY_KINDS


# ------------------------------------------------------------------------------------------- numpy encoder


def _mlp_layout(arch: dict[str, Any]) -> tuple[list[int], int]:
    """(widths, modules per block) of ``models.MLPNet``: Linear, [norm], activation, [dropout]."""
    widths = [int(w) for w in arch.get("widths") or []]
    if not widths:
        hidden, depth = int(arch.get("hidden", 2048)), int(arch.get("depth", 4))
        widths = [max(hidden >> min(i, 2), 1) for i in range(depth)]
    per_block = 2 + (arch.get("norm", "none") != "none") + (float(arch.get("dropout", 0.0)) > 0)
    return widths, per_block


def mlp_shapes(arch: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor ``models.MLPNet(**arch).state_dict()`` holds, with its shape (the strict-load check)."""
    widths, per_block = _mlp_layout(arch)
    in_dim, latent = int(arch["in_dim"]), int(arch["latent"])
    out = latent * (2 if arch.get("variational", True) else 1)
    shapes: dict[str, tuple[int, ...]] = {}

    def stack(prefix: str, dims: list[int]) -> None:
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            shapes[f"{prefix}.{i * per_block}.weight"] = (b, a)
            shapes[f"{prefix}.{i * per_block}.bias"] = (b,)
            norm = arch.get("norm", "none")
            if norm in ("layer", "batch"):
                shapes[f"{prefix}.{i * per_block + 1}.weight"] = (b,)
                shapes[f"{prefix}.{i * per_block + 1}.bias"] = (b,)
            if norm == "batch":
                for k in ("running_mean", "running_var"):
                    shapes[f"{prefix}.{i * per_block + 1}.{k}"] = (b,)
                shapes[f"{prefix}.{i * per_block + 1}.num_batches_tracked"] = ()

    stack("encoder", [in_dim, *widths])
    shapes["head.weight"], shapes["head.bias"] = (out, widths[-1]), (out,)
    if arch.get("linear_skip"):
        shapes["skip.weight"], shapes["skip.bias"] = (out, in_dim), (out,)
    dec = widths[::-1]
    stack("decoder", [latent, *dec])
    last = len(dec) * per_block
    shapes[f"decoder.{last}.weight"], shapes[f"decoder.{last}.bias"] = (in_dim, dec[-1]), (in_dim,)
    return shapes


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf  # scipy is loaded by the band-pass filter anyway

    return erf(x)


def _activation(name: str, x: np.ndarray) -> np.ndarray:
    if name == "gelu":  # torch's default (exact) GELU
        return 0.5 * x * (1.0 + _erf(x * np.float32(1.0 / math.sqrt(2.0))))
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "silu":
        return x / (1.0 + np.exp(-x))
    if name == "elu":
        return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))
    if name == "tanh":
        return np.tanh(x)
    raise DeepSpikeError(f"unknown activation {name!r} in the encoder's architecture")


@dataclass
class _Block:
    weight: np.ndarray  # [in, out] (transposed once at load)
    bias: np.ndarray
    norm: dict[str, np.ndarray] = field(default_factory=dict)


class EncoderBase:
    """What both frozen encoders share (``export.Encoder`` in torch, ``NumpyEncoder``): the header, the window
    spec and the checks of the windows they are given."""

    spec: EncoderSpec
    path: Path | None

    @property
    def window_spec(self) -> WindowSpec:
        return self.spec.window_spec

    @property
    def latent_dim(self) -> int:
        return int(self.spec["latent_dim"])

    def check_spec(self, data_spec: WindowSpec | dict[str, Any], where: str = "") -> None:
        """Raise ``SpecMismatchError`` when windows cut with ``data_spec`` do not fit this encoder."""
        other = data_spec if isinstance(data_spec, WindowSpec) else WindowSpec.from_dict(data_spec)
        self.window_spec.check_compatible(other, what="data", where=where or str(self.path or ""))

    def check_windows(self, shape: tuple[int, ...]) -> None:
        """Raise ``SpecMismatchError`` unless ``shape`` is ``[n, window length]``."""
        ws = self.window_spec
        if len(shape) != 2 or shape[1] != ws.length:
            raise SpecMismatchError(
                f"encoder expects windows of shape [n, {ws.length}] ({ws.n_before} before + {ws.n_after} after the "
                f"peak at {ws.sampling_frequency} Hz), got {tuple(shape)}; cut windows with the encoder's spec"
            )


@dataclass
class NumpyEncoder(EncoderBase):
    """A frozen MLP encoder in numpy with the interface sorting uses from ``export.Encoder``."""

    spec: EncoderSpec
    blocks: list[_Block]
    head: _Block
    skip: _Block | None
    path: Path | None = None

    def embed(
        self, waveforms: np.ndarray, batch_size: int = 65536, device: str | None = None, spec: Any = None
    ) -> np.ndarray:
        """Embeddings (posterior means) of ``waveforms`` ``[n, window]`` in noise units, float32."""
        if device not in (None, "cpu"):
            raise DeepSpikeError(f"the numpy encoder runs on the CPU only (device={device!r}); load it with torch")
        if spec is not None:
            self.check_spec(spec)
        x = np.asarray(waveforms, dtype=np.float32)
        self.check_windows(x.shape)
        ws = self.window_spec
        out = np.empty((len(x), self.latent_dim), dtype=np.float32)
        step = max(1, int(batch_size))
        for i in range(0, len(x), step):
            out[i : i + step] = self._forward(normalize(x[i : i + step], ws))[:, : self.latent_dim]
        return out

    def _forward(self, x: np.ndarray) -> np.ndarray:
        arch = self.spec["arch"]
        h = x
        for b in self.blocks:
            h = h @ b.weight + b.bias
            h = _norm(arch.get("norm", "none"), h, b.norm)
            h = _activation(arch.get("activation", "gelu"), h).astype(np.float32, copy=False)
        z = h @ self.head.weight + self.head.bias
        if self.skip is not None:
            z = z + (x @ self.skip.weight + self.skip.bias)
        return z


def _norm(kind: str, h: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    if kind == "layer":
        mu = h.mean(axis=1, keepdims=True)
        var = h.var(axis=1, keepdims=True)
        return (h - mu) / np.sqrt(var + LN_EPS) * p["weight"] + p["bias"]
    if kind == "batch":  # eval mode: running statistics
        return (h - p["running_mean"]) / np.sqrt(p["running_var"] + BN_EPS) * p["weight"] + p["bias"]
    return h


def open_artifact(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(the ``.safetensors`` file, its checked header) of an artifact or a run directory holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / "encoder.safetensors"
    if not p.exists():
        raise DeepSpikeError(f"no encoder artifact at {path}; train one with `python train.py` (writes encoder.*)")
    header = read_header(p)
    check_sidecar(p, header)
    return p, header


def load_numpy_encoder(path: str | Path) -> NumpyEncoder:
    """Load an MLP encoder artifact for numpy inference; the same checks as ``export.load_encoder``."""
    from safetensors.numpy import load_file

    p, header = open_artifact(path)
    arch = header["arch"]
    if arch.get("kind") not in NUMPY_KINDS:
        raise DeepSpikeError(f"{p}: no numpy forward pass for kind={arch.get('kind')!r}; load it with torch")
    sd = load_file(str(p))
    bad = [k for k, v in sd.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
    if bad:
        kinds = sorted({"NaN" if np.isnan(sd[k]).any() else "Inf" for k in bad})
        raise nonfinite_problem(str(p), bad, kinds, len(sd))
    check_weight_shapes(p, arch, mlp_shapes(arch), {k: tuple(v.shape) for k, v in sd.items()})
    return NumpyEncoder(spec=make_spec(header), **_blocks(sd, arch), path=p)


def _blocks(sd: dict[str, np.ndarray], arch: dict[str, Any]) -> dict[str, Any]:
    widths, per_block = _mlp_layout(arch)

    def lin(prefix: str) -> _Block:
        return _Block(sd[f"{prefix}.weight"].astype(np.float32).T.copy(), sd[f"{prefix}.bias"].astype(np.float32))

    blocks = []
    for i in range(len(widths)):
        b = lin(f"encoder.{i * per_block}")
        if arch.get("norm", "none") != "none":
            n = f"encoder.{i * per_block + 1}."
            b.norm = {k[len(n) :]: v.astype(np.float32) for k, v in sd.items() if k.startswith(n)}
        blocks.append(b)
    return {"blocks": blocks, "head": lin("head"), "skip": lin("skip") if arch.get("linear_skip") else None}
