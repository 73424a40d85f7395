"""Fine-tuning a pretrained encoder on a lab's data (the published ``_ft`` rows), with a guard against collapse.

Two paths share this module:

- ``sort(recording, finetune=True)`` / ``python sort.py ... finetune=true``: ``finetune_on_windows`` adapts the
  encoder to the spikes the sort pipeline already extracted (in memory, no corpus, a plain torch loop: seconds on
  CPU), then the adapted encoder embeds them.
- ``python train.py experiment=finetune init_from=ARTIFACT data.recordings=[...]``: ``FinetuneDataModule`` builds
  (or reuses) a content-addressed corpus of the lab's recordings with the parent's window spec, and Lightning
  continues training the parent's net; ``CollapseGuard`` watches the embedding on the validation split.

Shared pieces: ``load_parent`` (artifact or Lightning checkpoint -> ``Encoder``), ``freeze_encoder`` (first k
encoder layers or the whole encoder), ``CollapseMetric`` (the guard's score) and ``parent_record``.

Collapse guard. A few thousand spikes and a few hundred steps can wreck an embedding: reconstruction keeps
improving while units that were apart drift together (measured: held-out reconstruction halved while the
GMM accuracy of the embedding fell from 0.99 to 0.75). Part of the spikes is held out; every ``eval_every``
steps the held-out reconstruction loss and an embedding-quality score are measured. The score is the GMM
matched accuracy when ground-truth labels are given; otherwise a label-free proxy, ``split_purity``: the parent's
well-separated groups of the held-out spikes (k by silhouette) must stay apart, i.e. a GMM with 2k components
on the new embedding must not put spikes of two groups in one component. Splitting a group is allowed: that is
what adaptation is for (a proxy that asked the new embedding to reproduce the parent's k groups, used before,
rejected the runs that separated units the parent had merged: 12 of 15 benchmark sets kept the parent). If the
score falls more than ``tolerance`` below the parent's for ``patience`` evaluations, training stops and the best
weights seen (possibly the parent's) are kept.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deepspike.errors import DeepSpikeError, SpecMismatchError
from deepspike.objective import git_commit, loss_terms, manifest_sha256, warmup_cosine
from deepspike.paths import REPO_ROOT as REPO
from deepspike.spec import WindowSpec, normalize

log = logging.getLogger(__name__)

FREEZE_ALL = ("encoder", "all")
# Pretext for parents whose provenance predates the recorded objective: the bundled synth_v1 recipe's tasks
FALLBACK_PRETEXT = ["shuffle", "noise"]


# ---------------------------------------------------------------------------------------------- parents


def resolve_parent_path(path: str | os.PathLike) -> Path:
    """``path`` as given, else relative to the repository (so ``checkpoints/...`` works from any directory)."""
    p = Path(path).expanduser()
    if not p.exists() and not p.is_absolute() and (REPO / p).exists():
        p = REPO / p
    if not p.exists():
        raise DeepSpikeError(
            f"init_from={str(path)!r} not found: pass an exported encoder (.safetensors, or a run directory holding "
            "encoder.safetensors) or a Lightning checkpoint (.ckpt) written by train.py"
        )
    return p


def load_parent(path: str | os.PathLike) -> Any:
    """The encoder to start from: an artifact (``.safetensors`` / run dir) or a Lightning ``.ckpt`` (no pickle).

    The architecture and window spec come from the file, so a fine-tuning run never repeats the model config.
    """
    from deepspike.export import _make_spec, _net_state, load_encoder, tool_version
    from deepspike.models import build_net

    p = resolve_parent_path(path)
    if p.suffix != ".ckpt":
        return load_encoder(p)
    sd, arch, window = _net_state(str(p))
    net = build_net(arch)
    net.load_state_dict(sd, strict=True)
    net.eval()
    for q in net.parameters():
        q.requires_grad_(False)
    steps = int(torch.load(str(p), map_location="cpu", weights_only=True).get("global_step", 0))
    prov = {"tool_version": tool_version(), "checkpoint": str(p), "steps": steps, "parent": None}
    header = {"format": "deepspike-encoder", "format_version": 1, "arch": arch, "window": window, "provenance": prov}
    from deepspike.export import Encoder

    return Encoder(net=net, spec=_make_spec(header), path=p)


def parent_record(encoder: Any) -> dict[str, Any]:
    """Provenance entry naming the parent: path, sha256 of its file and its own provenance."""
    from deepspike.export import file_sha256

    path = getattr(encoder, "path", None)
    return {
        "path": None if path is None else str(path),
        "sha256": None if path is None else file_sha256(path),
        "provenance": dict(encoder.spec.get("provenance", {})),
    }


# ---------------------------------------------------------------------------------------------- freezing


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
    return [*groups, [net.head]]


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


# ----------------------------------------------------------------------------------------- quality metric


def _gmm(emb: np.ndarray, k: int, seed: int) -> Any:
    from sklearn.mixture import GaussianMixture

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=seed).fit(emb)


def reference_clusters(emb: np.ndarray, seed: int = 0, max_k: int = 8) -> tuple[int, np.ndarray]:
    """(k, labels): the parent embedding's well-separated groups, the label-free guard's reference.

    k maximizes the silhouette of a k-GMM (not BIC: BIC over-splits units into arbitrary sub-clusters, whose
    boundaries move under any harmless change, so "recovering" them measures noise). Merging well-separated
    groups is what a collapse does, and what the guard must catch.
    """
    from sklearn.metrics import silhouette_score

    x = np.asarray(emb, dtype=np.float64)
    best: tuple[float, int, np.ndarray] = (-np.inf, 1, np.zeros(len(x), dtype=np.int64))
    for k in range(2, max_k + 1):
        if len(x) < 10 * k:
            break
        labels = _gmm(x, k, seed).predict(x)
        if len(np.unique(labels)) < 2:
            continue
        sil = float(silhouette_score(x, labels))
        if sil > best[0]:
            best = (sil, k, labels)
    return best[1], best[2]


def split_purity(emb: np.ndarray, reference: np.ndarray, k: int, seed: int = 0, max_spikes: int = 3000) -> float:
    """Fraction of spikes whose component of a ``2k``-GMM on ``emb`` is mostly their own ``reference`` group.

    1.0 when every reference group stays apart (however it is split), lower when groups are merged: a collapse.
    """
    emb = np.asarray(emb, dtype=np.float64)
    reference = np.asarray(reference)
    if not np.all(np.isfinite(emb)):
        return -1.0
    if len(emb) > max_spikes:
        idx = np.random.default_rng(seed).choice(len(emb), max_spikes, replace=False)
        emb, reference = emb[idx], reference[idx]
    if k < 2 or len(emb) < 20 * k:
        return float("nan")
    pred = _gmm(emb, 2 * k, seed).predict(emb)
    kept = sum(int(np.bincount(reference[pred == c]).max()) for c in np.unique(pred))
    return kept / len(emb)


def embedding_quality(emb: np.ndarray, labels: np.ndarray, seed: int = 0, max_spikes: int = 3000) -> float:
    """GMM matched accuracy of ``emb`` with as many components as ground-truth units (``labels``, -1 unknown)."""
    from deepspike.module import gmm_scores

    emb = np.asarray(emb, dtype=np.float64)
    if not np.all(np.isfinite(emb)):
        return -1.0
    return gmm_scores(emb, np.asarray(labels), seed=seed, max_spikes=max_spikes)[0]


class CollapseMetric:
    """The collapse guard's score of embeddings of fixed held-out spikes; higher is better.

    With ground-truth ``labels``: ``embedding_quality``. Without: the first embedding scored (the parent's) fixes
    the reference, its well-separated groups (``reference_clusters``), and every embedding is scored by
    ``split_purity`` against them. Shared by the sort path and the corpus path (``train.CollapseGuard``).
    """

    def __init__(self, labels: np.ndarray | None = None, seed: int = 0) -> None:
        self.labels = None if labels is None or not (np.asarray(labels) >= 0).any() else np.asarray(labels)
        self.seed = seed
        self.k: int | None = None
        self.reference: np.ndarray | None = None

    @property
    def name(self) -> str:
        return "gmm_accuracy" if self.labels is not None else f"parent_split_purity_k{self.k}"

    def __call__(self, emb: np.ndarray) -> float:
        if self.labels is not None:
            return embedding_quality(emb, self.labels, self.seed)
        if self.reference is None:
            self.k, self.reference = reference_clusters(emb, self.seed)
        return split_purity(emb, self.reference, self.k, self.seed)


# ----------------------------------------------------------------------------------- in-memory fine-tuning
@dataclass
class FinetuneParams:
    """Options of ``finetune_on_windows``; declared with comments in ``conf/sort.yaml`` (``finetune_options``)."""

    steps: int = 300
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 256
    warmup_steps: int = 20
    freeze: int | str = 0
    pretext: list[str] | None = None
    pretext_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    recon: str | None = None
    beta: float | None = 0.01
    grad_clip: float = 1.0
    holdout_fraction: float = 0.2
    max_holdout: int = 3000
    eval_every: int = 50
    tolerance: float = 0.15
    patience: int = 2
    min_spikes: int = 100
    device: str = "auto"
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (int(self.steps) >= 0, "steps must be >= 0"),
            (float(self.lr) > 0, "lr must be > 0"),
            (int(self.batch_size) >= 2, "batch_size must be >= 2"),
            (0 < float(self.holdout_fraction) < 1, "holdout_fraction must be in (0, 1)"),
            (int(self.eval_every) >= 1, "eval_every must be >= 1"),
            (float(self.tolerance) >= 0 and int(self.patience) >= 1, "tolerance must be >= 0 and patience >= 1"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
        ]
        for ok, msg in checks:
            if not ok:
                raise DeepSpikeError(f"finetune option: {msg} (see conf/sort.yaml finetune_options)")

    @classmethod
    def from_options(cls, options: dict[str, Any] | FinetuneParams | None) -> FinetuneParams:
        if isinstance(options, FinetuneParams):
            return options
        opts = dict(options or {})
        unknown = sorted(set(opts) - {f.name for f in fields(cls)})
        if unknown:
            raise DeepSpikeError(f"unknown finetune option(s) {unknown}; known: {sorted(f.name for f in fields(cls))}")
        return cls(**opts)


def _objective(encoder: Any, params: FinetuneParams) -> tuple[Any, str, float]:
    """Pretext, reconstruction loss and KL weight: the options, else what the parent was trained with."""
    from deepspike.pretext import Pretext

    obj = dict(encoder.spec.get("provenance", {}).get("objective") or {})
    tasks = params.pretext if params.pretext is not None else obj.get("pretext_tasks", FALLBACK_PRETEXT)
    pp = {**(obj.get("pretext_params") or {}), **params.pretext_params}
    pretext = Pretext(tasks=list(tasks), params={t: pp[t] for t in tasks if t in pp}, seed=params.seed)
    recon = params.recon or obj.get("recon", "mse")
    beta = params.beta if params.beta is not None else float(obj.get("beta", 1.0))
    return pretext, recon, beta


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeepSpikeError("finetune device=cuda but CUDA is not available; use device=cpu or auto")
    return torch.device(name)


def split_holdout(n: int, fraction: float, max_holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, holdout) indices: a seeded random ``fraction`` (at most ``max_holdout``) is held out."""
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = int(min(max_holdout, max(1, round(fraction * n))))
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


class _Evaluator:
    """Held-out reconstruction loss and embedding quality of a net (the collapse guard's measurements).

    Without labels, the first call (the parent) fixes the reference: the well-separated groups of the parent's
    held-out embedding (``reference_clusters``). Every net, the parent included, is scored by ``split_purity``
    against them: about 1.0 = the groups stay apart (split or not), lower = groups merged, which is what a
    collapsing embedding does.
    """

    def __init__(self, waves: torch.Tensor, labels: np.ndarray | None, spec: WindowSpec, recon: str, seed: int):
        self.x = normalize(waves, spec)
        self.recon = recon
        self.metric = CollapseMetric(labels, seed)

    @torch.no_grad()
    def __call__(self, net: nn.Module) -> dict[str, float]:
        was = net.training
        net.eval()
        x_hat, mu, _ = net(self.x)
        rec = float(loss_terms(x_hat, self.x, mu, None, self.recon)[0])
        emb = mu.float().cpu().numpy()
        net.train(was)
        keep_frozen_eval(net)
        return {"recon": rec, "quality": self.metric(emb)}


@dataclass
class _Guard:
    """Keeps the best state by quality; says stop after ``patience`` evaluations below parent - tolerance."""

    tolerance: float
    patience: int
    parent_quality: float = float("nan")
    best_quality: float = -math.inf
    best_step: int = 0
    best_state: dict[str, torch.Tensor] | None = None
    bad: int = 0
    stopped_at: int | None = None

    def update(self, step: int, quality: float, net: nn.Module) -> bool:
        """Record an evaluation; True = stop."""
        q = -math.inf if math.isnan(quality) else quality
        if step == 0:
            self.parent_quality = quality
        # ties go to the later step: training that keeps the score is kept
        if q >= self.best_quality or self.best_state is None:
            self.best_quality, self.best_step = q, step
            self.best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        floor = self.parent_quality - self.tolerance
        self.bad = self.bad + 1 if (not math.isnan(self.parent_quality) and q < floor) else 0
        if self.bad >= self.patience:
            self.stopped_at = step
            return True
        return False

    def final_step(self, last_step: int, last_quality: float) -> int:
        """Keep the last weights unless they fell below parent - tolerance (then the best seen)."""
        if math.isnan(self.parent_quality) or (not math.isnan(last_quality) and last_quality >= self.parent_quality
                                                - self.tolerance and self.stopped_at is None):  # fmt: skip
            return last_step
        return self.best_step


def finetune_on_windows(
    encoder: Any,
    waves: np.ndarray,
    params: FinetuneParams | dict[str, Any] | None = None,
    labels: np.ndarray | None = None,
    data: dict[str, Any] | None = None,
    progress: bool = False,
) -> Any:
    """Adapt ``encoder`` (an ``Encoder`` or a path) to ``waves`` (``[n, window]``, noise units); return a new Encoder.

    ``labels`` (ground-truth units, -1 unknown), when given, make the collapse guard use GMM accuracy instead of
    the label-free proxy. ``data`` is recorded in the provenance (e.g. the recording's path and hash). The
    returned encoder's ``spec["provenance"]`` names the parent and holds the run's ``finetune`` record
    (options, held-out history, the step kept and why). The parent is not modified.
    """
    params = FinetuneParams.from_options(params)
    parent = encoder if hasattr(encoder, "net") else load_parent(encoder)
    spec = parent.window_spec
    waves = np.asarray(waves, dtype=np.float32)
    if waves.ndim != 2 or waves.shape[1] != spec.length:
        raise SpecMismatchError(
            f"fine-tuning windows have shape {waves.shape}, the encoder expects [n, {spec.length}] "
            f"({spec.n_before} before + {spec.n_after} after at {spec.sampling_frequency} Hz)"
        )
    t0 = time.perf_counter()
    dev = _device(params.device)
    net = copy.deepcopy(parent.net).to(dev)
    frozen = freeze_encoder(net, params.freeze)
    pretext, recon, beta = _objective(parent, params)
    record: dict[str, Any] = {
        "params": {**asdict(params), "pretext": pretext.tasks, "recon": recon, "beta": beta},
        "num_spikes": len(waves), "frozen_parameters": frozen, "data": data or {},
    }  # fmt: skip
    if len(waves) < params.min_spikes or params.steps == 0 or not trainable(net):
        why = f"too few spikes (< min_spikes={params.min_spikes})" if len(waves) < params.min_spikes else "no steps"
        if len(waves) < params.min_spikes:
            warnings.warn(f"fine-tuning skipped: {len(waves)} spikes < min_spikes={params.min_spikes}", stacklevel=2)
        record.update(kept="parent", reason=why, steps=0, seconds=round(time.perf_counter() - t0, 3))
        return _adapted(parent, net, record)
    # The VAE's reparameterization (and dropout) draw from torch's global RNG: seed a fork of it, so the same
    # inputs and seed give the same encoder (they did not: embeddings differed by up to 0.05 between two runs)
    # and the caller's RNG stream is left as it was.
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with _threads(params.threads if dev.type == "cpu" else None), torch.random.fork_rng(devices=devices):
        torch.manual_seed(params.seed)
        record.update(_train(net, waves, labels, spec, pretext, recon, beta, params, dev, progress))
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return _adapted(parent, net, record)


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """Limit torch and BLAS/OpenMP threads: small nets on a busy CPU run several times faster on one thread."""
    if not n:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        with threadpool_limits(int(n)):
            yield
    finally:
        torch.set_num_threads(before)


def _train(
    net: nn.Module, waves: np.ndarray, labels: np.ndarray | None, spec: WindowSpec, pretext: Any, recon: str,
    beta: float, params: FinetuneParams, dev: torch.device, progress: bool,
) -> dict[str, Any]:  # fmt: skip
    """The loop: AdamW on the trainable parameters, pretext-corrupted batches, guarded by held-out evaluations."""
    tr, ho = split_holdout(len(waves), params.holdout_fraction, params.max_holdout, params.seed)
    x_tr = torch.as_tensor(waves[tr], device=dev)
    evaluate = _Evaluator(torch.as_tensor(waves[ho], device=dev), None if labels is None else np.asarray(labels)[ho],
                          spec, recon, params.seed)  # fmt: skip
    opt = torch.optim.AdamW(trainable(net), lr=params.lr, weight_decay=params.weight_decay, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(params.warmup_steps, params.steps, 0.1))
    gen = torch.Generator(device=dev).manual_seed(params.seed)
    pretext.reseed(params.seed)
    guard = _Guard(params.tolerance, params.patience)
    history = [{"step": 0, **evaluate(net)}]
    guard.update(0, history[0]["quality"], net)
    net.train()
    keep_frozen_eval(net)
    bs, step = min(params.batch_size, len(x_tr)), 0
    for step in range(1, params.steps + 1):
        xb = x_tr[torch.randint(0, len(x_tr), (bs,), device=dev, generator=gen)]
        x_hat, mu, logvar = net(normalize(pretext(xb), spec))
        rec, kl = loss_terms(x_hat, normalize(xb, spec), mu, logvar, recon)
        loss = rec + beta * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if params.grad_clip > 0:
            nn.utils.clip_grad_norm_(trainable(net), params.grad_clip)
        opt.step()
        sched.step()
        if step % params.eval_every == 0 or step == params.steps:
            history.append({"step": step, "train_loss": float(loss.detach()), **evaluate(net)})
            if progress:
                log.info("finetune step %d: %s", step, history[-1])
            if guard.update(step, history[-1]["quality"], net):
                break
    keep = guard.final_step(step, history[-1]["quality"])
    if keep != step and guard.best_state is not None:
        net.load_state_dict(guard.best_state)
    reason = "last weights" if keep == step else ("parent kept: quality fell" if keep == 0 else "best before a fall")
    return {
        "steps": keep, "steps_run": step, "kept": "parent" if keep == 0 else f"step {keep}", "reason": reason,
        "stopped_early_at": guard.stopped_at, "parent_quality": guard.parent_quality, "history": history,
        "quality_metric": evaluate.metric.name,
        "num_train": len(tr), "num_holdout": len(ho),
    }  # fmt: skip


def _adapted(parent: Any, net: nn.Module, record: dict[str, Any]) -> Any:
    """A new frozen Encoder on ``net`` whose provenance names the parent and the fine-tuning run."""
    from deepspike.export import Encoder, _make_spec, tool_version

    net = net.cpu().eval()
    for q in net.parameters():
        q.requires_grad_(False)
    prov = {
        "tool_version": tool_version(), "git_commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "steps": int(record.get("steps", 0)), "parent": parent_record(parent), "finetune": record,
    }  # fmt: skip
    header = {k: v for k, v in parent.spec.items() if k in ("format", "format_version", "arch", "window")}
    return Encoder(net=net, spec=_make_spec({**header, "provenance": prov}), path=None)


def recording_record(recording: Any, source: Any, num_spikes: int) -> dict[str, Any]:
    """Provenance of the fine-tuning data of the sort path: the recording (path + sha256 when it is a file)."""
    rec: dict[str, Any] = {"num_spikes": int(num_spikes)}
    if source is not None and Path(source).exists():
        from deepspike.corpus import source_fingerprint

        rec.update(path=str(Path(source).resolve()), **source_fingerprint(Path(source)))
    else:
        rec["recording"] = type(recording).__name__
    with suppress(Exception):
        rec.update(
            sampling_frequency=float(recording.get_sampling_frequency()),
            duration_s=float(recording.get_total_duration()),
            num_channels=int(recording.get_num_channels()),
        )
    return {"recordings": [rec]}


def save_encoder(encoder: Any, path: str | os.PathLike) -> Path:
    """Write an in-memory ``Encoder`` (e.g. a fine-tuned one) as an artifact + JSON sidecar."""
    from deepspike.export import export_encoder

    return export_encoder(encoder.net, path, dict(encoder.spec["provenance"]), encoder.window_spec)


# ----------------------------------------------------------------------------- corpus for the train.py path


def _lock(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "w")  # noqa: SIM115 - held for the duration of the build
    fcntl.flock(fh, fcntl.LOCK_EX)
    return fh


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One builder at a time per corpus (DDP ranks started by the launcher all reach the build)."""
    fh = _lock(path)
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def corpus_key(paths: list[Path], window: WindowSpec, extract: dict[str, Any], split: dict[str, Any]) -> str:
    """Content address of a fine-tuning corpus: the recordings' bytes, the window spec and the extract options."""
    from deepspike import __version__
    from deepspike.corpus import source_fingerprint
    from deepspike.extract import ExtractParams

    doc = {
        "recordings": sorted(source_fingerprint(p)["sha256"] for p in paths),
        "window": window.to_dict(),
        "extract": asdict(ExtractParams.from_config(extract)),
        "split": split,
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def split_shards_by_time(manifest: dict[str, Any], val_fraction: float) -> dict[str, Any]:
    """Hold out the last ``val_fraction`` of each recording's shards (at least one when it has two) as val.

    The corpus builder splits by recording, which leaves nothing to validate on when a lab brings one or two
    recordings; fine-tuning holds out part of every recording instead (no spike is in both splits).
    """
    m = copy.deepcopy(manifest)
    for rec in m["recordings"]:
        own = [s for s in m["shards"] if s["recording"] == rec["id"]]
        n_val = max(1, math.floor(val_fraction * len(own) + 0.5)) if val_fraction > 0 and len(own) >= 2 else 0
        for i, s in enumerate(own):
            s["split"] = "val" if i >= len(own) - n_val else "train"
        rec["split"] = "train+val" if n_val else "train"
    m["splits"] = {
        name: {"num_spikes": sum(s["num_spikes"] for s in m["shards"] if s["split"] == name),
               "num_shards": sum(s["split"] == name for s in m["shards"])}
        for name in ("train", "val")
    }  # fmt: skip
    m["split_by"] = f"shard: last {val_fraction:g} of each recording's shards"
    return m


def build_finetune_corpus(
    recordings: list[str],
    window: WindowSpec,
    cache_dir: str | os.PathLike,
    extract: dict[str, Any] | None = None,
    val_fraction: float = 0.1,
    shard_spikes: int = 512,
    block_size: int = 256,
    workers: int = 1,
    recording_options: dict[str, Any] | None = None,
) -> Path:
    """Build (or reuse) the corpus of ``recordings`` under ``cache_dir/<content hash>``; return its manifest path.

    Small shards (``shard_spikes``) so a single recording still splits into train and validation shards.
    """
    from deepspike.corpus import CorpusConfig, build_corpus, expand_recordings, write_json_atomic

    paths = expand_recordings([str(r) for r in recordings])
    if not paths:
        raise DeepSpikeError("fine-tuning needs recordings: pass data.recordings='[PATH_OR_GLOB,...]'")
    extract = dict(extract or {})
    split = {"val_fraction": val_fraction, "shard_spikes": shard_spikes, "block_size": block_size}
    out = Path(cache_dir) / corpus_key(paths, window, extract, split)
    final = out / "finetune_manifest.json"
    with _locked(Path(cache_dir) / f".{out.name}.lock"):
        if final.exists():
            log.info("fine-tuning corpus reused: %s", out)
            return final
        cfg = CorpusConfig(
            recordings=[str(p) for p in paths], out=str(out), overwrite=True, workers=workers, block_size=block_size,
            shard_spikes=shard_spikes, val_fraction=0.0, progress=False, window=window.to_dict(), extract=extract,
            recording_options=dict(recording_options or {}),
        )  # fmt: skip
        cfg.validate()
        manifest = json.loads(Path(build_corpus(cfg)).read_text())
        write_json_atomic(final, split_shards_by_time(manifest, val_fraction))
    return final


def val_windows(shards: str, max_spikes: int = 3000) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(waves, labels or None) per recording of the corpus' validation split, at most ``max_spikes`` each.

    Read straight from the shards (not the rank-split stream), so every DDP rank sees the same spikes.
    """
    from deepspike.shards import iter_blocks
    from deepspike.stream import load_manifest

    manifest, base = load_manifest(shards)
    per: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for sh in (s for s in manifest["shards"] if s.get("split") == "val"):
        waves, labels = per.setdefault(sh["recording"], ([], []))
        for block in iter_blocks(f"{base}/{sh['path']}" if base else sh["path"]):
            if sum(len(w) for w in waves) >= max_spikes:
                break
            waves.append(np.asarray(block.waves, dtype=np.float32))
            labels.append(np.asarray(block.labels, dtype=np.int64))
    out = []
    for waves, labels in per.values():
        w, lab = np.concatenate(waves)[:max_spikes], np.concatenate(labels)[:max_spikes]
        out.append((w, lab if (lab >= 0).any() else None))
    return out


GUARD_FILE = "collapse_guard.json"


def guard_decision(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What the train-path ``CollapseGuard`` decided (``collapse_guard.json`` in the run directory), if it ran."""
    f = Path(run_dir) / GUARD_FILE
    return json.loads(f.read_text()) if f.exists() else None


def data_provenance(manifest: dict[str, Any], corpus: str) -> dict[str, Any]:
    """The fine-tuning data: recordings (path, sha256, spikes) and the corpus manifest's hash."""
    recs = [{k: r.get(k) for k in ("path", "sha256", "size", "num_spikes", "duration_s", "sampling_frequency")}
            for r in manifest.get("recordings", [])]  # fmt: skip
    return {"corpus": corpus, "corpus_manifest_sha256": manifest_sha256(manifest), "recordings": recs,
            "splits": manifest.get("splits"), "split_by": manifest.get("split_by", "recording")}  # fmt: skip
