"""Features of each spike window: the frozen encoder's embedding (numpy inference on the CPU, torch on a GPU or when
fine-tuning), the model-free PCA baseline, or both side by side (``features=hybrid``), and the encoder artifact's
loading with its checks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from deepspike.errors import DeepSpikeError, SpecMismatchError
from deepspike.paths import CHECKPOINT_DIR, resolve_repo_path
from deepspike.sorting.multichannel import side_by_side
from deepspike.sorting.params import SortParams
from deepspike.spec import WindowSpec, normalize

# Windows up to which the CPU encoder runs in numpy; beyond, torch's faster kernels repay its import (1.4 s):
# bundled MLP, 2-core machine, 22 vs 11 us per window (numpy's erf is the difference), crossover about 130 k.
NUMPY_MAX_WINDOWS = 100_000


DEFAULT_CHECKPOINT = CHECKPOINT_DIR / "deepspike_synth_v1.safetensors"


def checkpoint_path(checkpoint: str | os.PathLike | None) -> Path:
    """The encoder ``checkpoint`` names (None: the bundled one), absolute: as given, else relative to the repository,
    else in ``checkpoints/`` (``paths.resolve_repo_path``, whose error names every path tried)."""
    if checkpoint is None:
        return DEFAULT_CHECKPOINT
    return resolve_repo_path(checkpoint, "checkpoint", "Give the path of an exported encoder (.safetensors)")


def load_sort_encoder(checkpoint: str | os.PathLike | None, params: SortParams | None = None) -> Any:
    """The frozen encoder artifact; a clear error (with the ways out) when it is missing.

    In numpy (``deepspike.model.inference``, no torch import: about 1.3 s less start-up) when torch would run it on the
    CPU anyway and nothing trains it; else with torch (``export.load_encoder``).
    """
    fix = "checkpoint=PATH on the command line, or features=pca for the model-free PCA baseline"
    try:
        path = checkpoint_path(checkpoint)
    except DeepSpikeError as e:
        raise DeepSpikeError(f"{e}; {fix}") from e
    if not path.exists():
        raise DeepSpikeError(
            f"the bundled checkpoint {str(path)!r} not found: pass an exported encoder (.safetensors, see "
            f"deepspike.model.export) with {fix}"
        )
    encoder = _load_for(path, params or SortParams())
    in_dim = encoder.spec.get("arch", {}).get("in_dim")
    spec = encoder.window_spec
    if in_dim is not None and int(in_dim) != spec.length:
        raise SpecMismatchError(
            f"encoder artifact {str(path)!r} is inconsistent: its window spec ({spec.n_before} before + "
            f"{spec.n_after} after at {spec.sampling_frequency} Hz = {spec.length} samples) does not match its "
            f"network input ({in_dim} samples); re-export it with the window it was trained on"
        )
    return encoder


def _load_for(path: Path, params: SortParams) -> Any:
    from deepspike.model import inference

    cpu = params.device == "cpu" or (params.device == "auto" and not inference.torch_accelerator_build())
    if cpu and not params.finetune and inference.numpy_capable(path):
        return inference.load_numpy_encoder(path)
    from deepspike.model.export import load_encoder

    return load_encoder(path)


def finetune_encoder(encoder: Any, waves: np.ndarray, params: SortParams, data: dict[str, Any]) -> Any:
    """Adapt the encoder to these spikes (already in memory) before embedding them; ``data`` goes to provenance."""
    from deepspike.model.finetune import finetune_on_windows

    return finetune_on_windows(encoder, waves, params.finetune_params(), data=data)


def spike_features(encoder: Any, waves: np.ndarray, params: SortParams, spec: WindowSpec) -> np.ndarray:
    """The clustering features: the encoder's embeddings, the PCA baseline without an encoder, or with
    ``features=hybrid`` the embeddings and this recording's PCA side by side (``side_by_side``)."""
    if encoder is None:
        return pca_features(waves, spec, params.pca_components, params.seed)
    emb = embed_waves(encoder, waves, params.batch_size, params.device)
    if params.features != "hybrid":
        return emb
    return side_by_side(emb, pca_features(waves, spec, params.pca_components, params.seed))


def embed_waves(encoder: Any, waves: np.ndarray, batch_size: int = 16384, device: str = "auto") -> np.ndarray:
    """Frozen-encoder embeddings, batched (bounded memory), in numpy or under ``torch.inference_mode``."""
    from deepspike.model.inference import NumpyEncoder

    if len(waves) == 0:
        return np.zeros((0, int(encoder.latent_dim)), dtype=np.float32)
    if isinstance(encoder, NumpyEncoder) and device in ("auto", "cpu") and len(waves) <= NUMPY_MAX_WINDOWS:
        return encoder.embed(waves, batch_size=batch_size, spec=encoder.window_spec)
    import torch

    if isinstance(encoder, NumpyEncoder):
        from deepspike.model.export import load_encoder

        encoder = load_encoder(encoder.path)

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DeepSpikeError("device=cuda but CUDA is not available; use device=cpu or device=auto")
    with torch.inference_mode():
        emb = encoder.embed(waves, batch_size=batch_size, device=device, spec=encoder.window_spec)
    return np.asarray(emb, dtype=np.float32)


def pca_features(waves: np.ndarray, spec: WindowSpec, n_components: int = 8, seed: int = 0) -> np.ndarray:
    """Model-free baseline features: PCA of the normalized windows (fitted on at most 50k spikes)."""
    from sklearn.decomposition import PCA

    x = normalize(np.asarray(waves, dtype=np.float32), spec)
    k = int(min(n_components, x.shape[1] if x.ndim == 2 else 0, len(x)))
    if k < 1:
        return np.zeros((len(x), n_components), dtype=np.float32)
    rng = np.random.default_rng(seed)
    fit = rng.choice(len(x), size=min(len(x), 50000), replace=False)
    pca = PCA(n_components=k, random_state=seed).fit(x[fit])
    return pca.transform(x).astype(np.float32)
