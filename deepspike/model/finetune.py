"""Fine-tuning a pretrained encoder on a lab's data (the published ``_ft`` rows), with a guard against collapse.

Two paths share this module:

- ``sort(recording, finetune=True)`` / ``python sort.py ... finetune=true``: ``finetune_on_windows`` adapts the
  encoder to the spikes the sort pipeline already extracted (in memory, no corpus, a plain torch loop: seconds on
  CPU), then the adapted encoder embeds them.
- ``python train.py experiment=finetune init_from=ARTIFACT data.recordings=[...]``: ``FinetuneDataModule`` builds
  (or reuses) a content-addressed corpus of the lab's recordings with the parent's window spec, and Lightning
  continues training the parent's net; ``CollapseGuard`` watches the embedding on the validation split.

Both run the same training step (``objective.autoencoder_loss``) with the same defaults
(``conf/finetuning/default.yaml``). The pieces live with their stage: parents and derived encoders in ``export``,
freezing in ``models``, the guard's score in ``evaluate.CollapseMetric``, the lab corpus in ``corpus``. This module
holds only the in-memory loop of the sort path.

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
import logging
import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn

from deepspike.defaults import conf_field
from deepspike.errors import DeepSpikeError, SpecMismatchError
from deepspike.model.collapse import CollapseMetric
from deepspike.model.export import Encoder
from deepspike.model.lineage import derived_encoder, load_parent, parent_objective
from deepspike.model.nets import freeze_encoder, keep_frozen_eval, trainable
from deepspike.model.objective import autoencoder_loss, warmup_cosine
from deepspike.spec import WindowSpec

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- in-memory fine-tuning
CONF = "finetuning/default.yaml"  # the one declaration of the fine-tuning recipe, shared with experiment=finetune


@dataclass
class FinetuneParams:
    """Options of ``finetune_on_windows``; declared once, with comments, in ``conf/finetuning/default.yaml``."""

    steps: int = conf_field(CONF, "steps")
    lr: float = conf_field(CONF, "lr")
    weight_decay: float = conf_field(CONF, "weight_decay")
    batch_size: int = conf_field(CONF, "batch_size")
    warmup_steps: int = conf_field(CONF, "warmup_steps")
    min_lr_ratio: float = conf_field(CONF, "min_lr_ratio")
    freeze: int | str = conf_field(CONF, "freeze")
    pretext: list[str] | None = conf_field(CONF, "pretext")
    pretext_params: dict[str, dict[str, Any]] = conf_field(CONF, "pretext_params")
    recon: str | None = conf_field(CONF, "recon")
    beta: float | None = conf_field(CONF, "beta")
    grad_clip: float = conf_field(CONF, "grad_clip")
    eval_every: int = conf_field(CONF, "eval_every")
    tolerance: float = conf_field(CONF, "tolerance")
    patience: int = conf_field(CONF, "patience")
    max_holdout: int = conf_field(CONF, "max_holdout")
    holdout_fraction: float = conf_field(CONF, "holdout_fraction")
    min_spikes: int = conf_field(CONF, "min_spikes")
    device: str = conf_field(CONF, "device")
    threads: int | None = conf_field(CONF, "threads")
    seed: int | None = conf_field(CONF, "seed")

    def __post_init__(self) -> None:
        self.seed = 0 if self.seed is None else int(self.seed)
        checks = [
            (int(self.steps) >= 0, "steps must be >= 0"),
            (float(self.lr) > 0, "lr must be > 0"),
            (int(self.batch_size) >= 2, "batch_size must be >= 2"),
            (0 < float(self.holdout_fraction) < 1, "holdout_fraction must be in (0, 1)"),
            (int(self.eval_every) >= 1, "eval_every must be >= 1"),
            (float(self.tolerance) >= 0 and int(self.patience) >= 1, "tolerance must be >= 0 and patience >= 1"),
            (self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda"),
            (self.threads is None or (isinstance(self.threads, int) and self.threads >= 1),
             "threads must be a number of threads >= 1 or null (torch's default)"),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise DeepSpikeError(
                    f"finetune option: {msg} (finetune_options.* for sort.py, finetune.* for train.py; "
                    "declared in conf/finetuning/default.yaml)"
                )

    @classmethod
    def from_options(cls, options: dict[str, Any] | FinetuneParams | None) -> FinetuneParams:
        if isinstance(options, FinetuneParams):
            return options
        opts = dict(options or {})
        unknown = sorted(set(opts) - {f.name for f in fields(cls)})
        if unknown:
            raise DeepSpikeError(f"unknown finetune option(s) {unknown}; known: {sorted(f.name for f in fields(cls))}")
        return cls(**opts)


def _objective(encoder: Encoder, params: FinetuneParams) -> tuple[Any, str, float]:
    """Pretext, reconstruction loss and KL weight: the options, else what the parent was trained with."""
    from deepspike.model.pretext import Pretext

    obj = parent_objective(encoder, params.pretext, params.pretext_params, params.recon, params.beta)
    pretext = Pretext(tasks=obj["pretext_tasks"], params=obj["pretext_params"], seed=params.seed)
    return pretext, obj["recon"], obj["beta"]


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
        self.x, self.spec, self.recon = waves, spec, recon
        self.metric = CollapseMetric(labels, seed)

    @torch.no_grad()
    def __call__(self, net: nn.Module) -> dict[str, float]:
        was = net.training
        net.eval()
        out = autoencoder_loss(net, self.x, self.spec, None, self.recon, 0.0)
        rec, emb = float(out["recon"]), out["mu"].float().cpu().numpy()
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
        return derived_encoder(parent, net, record)
    # The VAE's reparameterization (and dropout) draw from torch's global RNG: seed a fork of it, so the same
    # inputs and seed give the same encoder (they did not: embeddings differed by up to 0.05 between two runs)
    # and the caller's RNG stream is left as it was.
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with _threads(params.threads if dev.type == "cpu" else None), torch.random.fork_rng(devices=devices):
        torch.manual_seed(params.seed)
        record.update(_train(net, waves, labels, spec, pretext, recon, beta, params, dev, progress))
    record["seconds"] = round(time.perf_counter() - t0, 3)
    return derived_encoder(parent, net, record)


def kept_parent(parent: Any, record: dict[str, Any], reason: str) -> Any:
    """The parent's weights as the fine-tuning result, when a later check (the sort's own) rejects the adapted
    ones: the written encoder is then the parent, its provenance says why."""
    record = {**record, "kept": "parent", "reason": reason, "steps": 0}
    return derived_encoder(parent, copy.deepcopy(parent.net), record)


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
    schedule = warmup_cosine(params.warmup_steps, params.steps, params.min_lr_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
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
        loss = autoencoder_loss(net, xb, spec, pretext, recon, beta)["loss"]
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
