"""The training app: build everything from the Hydra config, fit, export the encoder, summarize sweeps.

``python train.py`` (or ``deepspike-train``) runs ``main``; ``run(cfg)`` is the same logic without Hydra's
decorator (tests compose the real configs and call it). Every rank runs ``run``; only global rank 0 exports,
writes the summary files and prints the run directory.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from deepspike.errors import DeepSpikeError, SpecMismatchError, cli_errors
from deepspike.model.callbacks import AtomicCheckpointIO, CpuThreads, LastCheckpoint, SaveOnSigterm, guard_decision
from deepspike.paths import CONF_DIR
from deepspike.provenance import git_commit, manifest_sha256
from deepspike.spec import WindowSpec

MODEL_ALIASES = ("hidden", "latent")  # model.hidden / model.latent: sweep shorthands interpolated into model.net
INPUT_NORM_KEYS = ("normalization", "norm_scale", "norm_clip")  # what model.input_norm may set


# ---- provenance -------------------------------------------------------------------------------------------
# ---- building ---------------------------------------------------------------------------------------------
def _check_corpus(shards: str) -> None:
    if glob.has_magic(shards) or "://" in shards or Path(shards).exists():
        return
    raise DeepSpikeError(
        f"corpus not found: {shards!r}. Build the demo corpus with `make demo` (or "
        f"`deepspike-corpus recordings='[PATH_OR_GLOB,...]' out={shards}`), or point the run at your corpus "
        "with `python train.py data.shards=DIR_OR_MANIFEST_OR_GLOB`."
    )


def resolve_precision(trainer_cfg: DictConfig) -> str | int:
    """``auto``: bf16-mixed on CUDA, 32-bit on CPU (bf16 autocast on CPU is slower than fp32 for these nets)."""
    p = trainer_cfg.get("precision", "auto")
    if p != "auto":
        return p
    acc = str(trainer_cfg.get("accelerator", "auto"))
    on_gpu = acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())
    return "bf16-mixed" if on_gpu else "32-true"


def _runs_on_cpu(trainer_cfg: DictConfig) -> bool:
    """Whether the trainer will train on CPU (``accelerator`` cpu, or auto without CUDA), as ``resolve_precision``."""
    acc = str(trainer_cfg.get("accelerator", "auto"))
    return acc == "cpu" or (acc == "auto" and not torch.cuda.is_available())


def resolve_cpu_threads(value: Any, on_cpu: bool) -> int | None:
    """torch's intra-op thread count for ``cpu_threads`` (conf/train.yaml); ``None``: leave torch's default.

    ``auto`` is one thread when training on CPU: torch's threads spin-wait for cores that other jobs hold, so on a
    shared machine the default (one per core) trains several times slower than one thread; on GPU they stay idle.
    """
    if value == "auto":
        return 1 if on_cpu else None
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise DeepSpikeError(
        f"cpu_threads={value!r}: give auto (one thread per training process on CPU, torch's default on GPU), a "
        "number of threads >= 1 (e.g. cpu_threads=2), or null (torch's default: one per core)"
    )


def build_model(cfg: DictConfig, window: WindowSpec, parent: Any = None) -> pl.LightningModule:
    """Instantiate ``cfg.model`` (a SpikeAutoencoder with nested net, optimizer, pretext) for ``window``;
    ``parent``: the ``model.init_from`` encoder when the caller already loaded it."""
    mcfg = OmegaConf.to_container(cfg.model, resolve=True)
    for k in MODEL_ALIASES:
        mcfg.pop(k, None)
    init_from = mcfg.pop("init_from", None)
    freeze = mcfg.pop("freeze", None)
    mcfg.pop("input_norm", None)  # already in ``window`` (model_window)
    in_dim = mcfg["net"].get("in_dim", window.length)
    if in_dim != window.length:
        raise DeepSpikeError(
            f"model.net.in_dim={in_dim} but the corpus windows have {window.length} samples; drop the override "
            f"(in_dim follows the corpus) or set model.net.in_dim={window.length}"
        )
    if init_from:  # fine-tuning: the architecture comes from the parent (artifact or Lightning checkpoint)
        from deepspike.model.lineage import load_parent

        parent = parent if parent is not None else load_parent(init_from)
        parent.check_spec(window, where=f"init_from={init_from} vs corpus")
        _continue_parent_objective(mcfg, parent)
        module = hydra.utils.instantiate(mcfg, net=None, window=window.to_dict(), _convert_="partial")
        module.net = parent.net.train()
        for q in module.net.parameters():
            q.requires_grad_(True)
    else:
        module = hydra.utils.instantiate(mcfg, window=window.to_dict(), _convert_="partial")
        if getattr(module.net, "skip", None) is not None:
            _init_skip(module, str(cfg.data.get("shards")), window)
    if freeze:
        from deepspike.model.nets import freeze_encoder

        freeze_encoder(module.net, freeze)  # requires_grad=False: out of the optimizer, ignored by DDP
    return module


def _init_skip(module: pl.LightningModule, shards: str, window: WindowSpec) -> None:
    """``model.net.linear_skip``: the embedding starts as the PCA of a deterministic sample of training windows
    (the same on every rank; a resume then loads the trained weights over it)."""
    from deepspike.data.sample import sample_windows
    from deepspike.spec import normalize

    x = torch.from_numpy(normalize(sample_windows(shards), window))
    module.net.init_skip_pca(x)


def model_window(cfg: DictConfig, corpus: WindowSpec, parent: Any = None) -> WindowSpec:
    """The model's window spec: the corpus grid with the model's input normalization (``model.input_norm``).

    Corpus windows are stored in noise units, so the normalization is the model's choice (swept in issue 12); it is
    stored in every checkpoint and artifact like the grid, and a resume with another one is refused. A fine-tuned
    model keeps its ``parent``'s normalization (the loaded ``model.init_from`` encoder).
    """
    given = OmegaConf.to_container(cfg.model.get("input_norm") or {}, resolve=True)
    over = {k: v for k, v in dict(given).items() if v is not None}
    bad = sorted(set(over) - set(INPUT_NORM_KEYS))
    if bad:
        raise DeepSpikeError(
            f"model.input_norm: unknown key(s) {bad}; it may set only {list(INPUT_NORM_KEYS)} "
            "(e.g. model.input_norm.norm_clip=12); the window grid comes from the corpus"
        )
    if parent is not None:
        spec = parent.window_spec.to_dict()
        over = {k: spec[k] for k in INPUT_NORM_KEYS}
    try:
        return WindowSpec.from_dict({**corpus.to_dict(), **over})
    except SpecMismatchError as e:
        raise DeepSpikeError(f"model.input_norm={over}: {e}") from None


def _continue_parent_objective(mcfg: dict[str, Any], parent: Any) -> None:
    """Fill ``null`` beta / recon / pretext of a fine-tuning model config with the parent's (as the sort path does)."""
    from deepspike.model.lineage import parent_objective

    pcfg = mcfg.get("pretext") or {}
    obj = parent_objective(parent, pcfg.get("tasks"), pcfg.get("params"), mcfg.get("recon"), mcfg.get("beta"))
    mcfg.update(recon=obj["recon"], beta=obj["beta"])
    if pcfg:
        pcfg.update(tasks=obj["pretext_tasks"], params=obj["pretext_params"])


def _require_labels(manifest: dict[str, Any], shards: str, options: str) -> None:
    """SupCon (``model.contrastive.positives=units``) and the unit-mean target read unit labels: refuse an unlabelled
    corpus; ``options`` names the settings that need them (``Objective.label_options``)."""
    recs = [r for r in manifest.get("recordings", []) if r.get("split", "train") == "train"]
    if recs and not any(r.get("has_labels") for r in recs):
        raise DeepSpikeError(
            f"corpus {shards}: {options} needs unit labels, but no training recording of the corpus has ground "
            "truth. Use a labelled corpus (e.g. deepspike-corpus synthetic=broad ...) or change the setting as shown"
        )


LAST_TARGET = f"{LastCheckpoint.__module__}.{LastCheckpoint.__qualname__}"


def _check_checkpoint_cfg(group: DictConfig | None) -> None:
    """Refuse a bad ``callbacks.last.every_n_train_steps``, and a second writer of ``last.ckpt`` beside it."""
    entries = {k: c for k, c in (group or {}).items() if isinstance(c, DictConfig)}
    lasts = [k for k, c in entries.items() if c.get("_target_") == LAST_TARGET]
    for k in lasts:
        n = entries[k].get("every_n_train_steps")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise DeepSpikeError(
                f"callbacks.{k}.every_n_train_steps={n!r}: give a number of optimizer steps >= 1 between writes of "
                f"last.ckpt (e.g. callbacks.{k}.every_n_train_steps=100), or 0 to write it only when training ends"
            )
    for k, c in entries.items():
        if lasts and str(c.get("_target_", "")).endswith(".ModelCheckpoint") and c.get("save_last"):
            raise DeepSpikeError(
                f"callbacks.{k}.save_last=true: last.ckpt is written by callbacks.{lasts[0]} (every "
                f"callbacks.{lasts[0]}.every_n_train_steps steps and at the end); Lightning's save_last would write "
                f"it only with a new top-k checkpoint, as last-v1.ckpt. Set callbacks.{k}.save_last=false"
            )


def _model_checkpoint(trainer: pl.Trainer) -> pl.callbacks.ModelCheckpoint | None:
    """The top-k checkpoint callback (``trainer.checkpoint_callback`` is any ``Checkpoint``, ``LastCheckpoint`` too)."""
    return next((c for c in trainer.checkpoint_callbacks if isinstance(c, pl.callbacks.ModelCheckpoint)), None)


def _last_path(callbacks: list[Any]) -> str:
    """``last.ckpt`` of the run if ``LastCheckpoint`` wrote one, else ``""``."""
    return next((str(c.path) for c in callbacks if isinstance(c, LastCheckpoint) and c.path.exists()), "")


def _instantiate_group(group: DictConfig | None) -> list[Any]:
    if not group:
        return []
    return [hydra.utils.instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def _check_batches(datamodule: Any, world_size: int) -> None:
    """Refuse a train split that gives a rank no full batch (Lightning would skip training and exit 0)."""
    n = datamodule.split_size("train")
    slots = max(1, world_size) * max(1, int(getattr(datamodule, "num_workers", 0)))
    per_slot = -(-n // slots)  # the stream gives every rank x worker slot the same share (+1 row at most)
    if per_slot >= datamodule.batch_size:
        return
    raise DeepSpikeError(
        f"corpus {datamodule.shards}: the train split has {n} spikes, less than one batch of data.batch_size="
        f"{datamodule.batch_size} per rank and worker ({world_size} rank(s) x {max(1, datamodule.num_workers)} "
        f"worker(s)), so there would be no training batch. Use a smaller batch (data.batch_size={max(1, per_slot)}"
        f" or less), fewer data.num_workers / trainer.devices, or a corpus with more spikes."
    )


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _check_resume(ckpt_path: str, objs: dict[str, Any]) -> None:
    """Refuse a ``ckpt_path`` Lightning would load unsafely, or whose weights do not fit this corpus and model."""
    if _is_remote(ckpt_path):
        raise DeepSpikeError(
            f"ckpt_path={ckpt_path}: remote checkpoints are refused (Lightning loads them with weights_only=False, "
            "and unpickling a file from elsewhere can run code). Download it yourself, check where it comes from, "
            "then pass the local file: ckpt_path=PATH/TO/last.ckpt"
        )
    path = Path(ckpt_path.removeprefix("file://"))
    if not path.is_file():
        raise DeepSpikeError(
            f"ckpt_path={ckpt_path}: no such checkpoint file; pass a .ckpt written by train.py "
            "(e.g. ckpt_path=RUN_DIR/checkpoints/last.ckpt)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeepSpikeError(
            f"ckpt_path={ckpt_path}: refused, it holds objects other than tensors and plain data, and loading them "
            f"could run code ({first}). Resume only from checkpoints train.py wrote (RUN_DIR/checkpoints/*.ckpt)."
        ) from e
    except (RuntimeError, EOFError, ValueError) as e:
        raise DeepSpikeError(f"ckpt_path={ckpt_path}: not a readable checkpoint ({e}); is the file complete?") from e
    info = ckpt.get("deepspike") if isinstance(ckpt, dict) else None
    if not isinstance(info, dict):
        raise DeepSpikeError(
            f"ckpt_path={ckpt_path}: not a DeepSpike training checkpoint (no 'deepspike' entry); resume from a "
            ".ckpt written by train.py, or start from an exported encoder with model.init_from=ARTIFACT"
        )
    _check_resume_spec(ckpt_path, info, objs)


def _check_resume_spec(ckpt_path: str, info: dict[str, Any], objs: dict[str, Any]) -> None:
    """The checkpoint's window spec and architecture must be this run's (else old weights get a new label)."""
    dm = objs["datamodule"]
    ck, data = WindowSpec.from_dict(info.get("window", {})), objs["window"]
    try:
        ck.check_compatible(data, what="corpus")
    except SpecMismatchError:
        src = str(dm.shards)
        manifest = src if src.endswith(".json") else f"{src.rstrip('/')}/manifest.json"
        raise SpecMismatchError(
            f"ckpt_path={ckpt_path} was trained on windows {ck.to_dict()}, but the corpus {manifest} has windows "
            f"{data.to_dict()}: resuming would export the old weights labelled with the new spec. Resume on a "
            "corpus cut with the checkpoint's spec (data.shards=...), rebuild the corpus with that spec, or train "
            "afresh on this corpus (drop ckpt_path=)."
        ) from None
    arch, mine = dict(info.get("arch", {})), dict(objs["model"].net.arch)
    diff = {k: (arch.get(k), mine.get(k)) for k in sorted(set(arch) | set(mine)) if arch.get(k) != mine.get(k)}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs model.net {b!r}" for k, (a, b) in diff.items())
        raise DeepSpikeError(
            f"ckpt_path={ckpt_path} holds another architecture ({detail}); set the same model (e.g. "
            f"model.net.{next(iter(diff))}=...) or drop ckpt_path= to train this one afresh"
        )


class TrainingInterrupted(SystemExit):
    """SIGTERM stopped training: a checkpoint was saved, nothing exported; exit status 128 + SIGTERM."""


def _interrupted(trainer: pl.Trainer, callbacks: list[Any]) -> TrainingInterrupted:
    saved = next((c.saved for c in callbacks if isinstance(c, SaveOnSigterm) and c.saved), None)
    if trainer.is_global_zero:
        where = (
            f"checkpoint saved: {saved}; resume with `python train.py ckpt_path={saved}` (and the same overrides)"
            if saved and saved.exists() else "no checkpoint could be saved"
        )  # fmt: skip
        print(f"train.py: stopped by SIGTERM at step {trainer.global_step}, no encoder exported; {where}",
              file=sys.stderr, flush=True)  # fmt: skip
    return TrainingInterrupted(128 + int(signal.SIGTERM))


def build(cfg: DictConfig) -> dict[str, Any]:
    """All run objects: datamodule, model, callbacks, loggers, trainer, plus manifest facts."""
    if cfg.data.get("shards") or not cfg.data.get("recordings"):  # fine-tuning builds its corpus from recordings
        _check_corpus(str(cfg.data.get("shards")))
    datamodule = hydra.utils.instantiate(cfg.data)
    manifest = datamodule.manifest
    init_from = cfg.model.get("init_from")
    parent = None
    if init_from:  # loaded once: its normalization sets the window, its net starts the model
        from deepspike.model.lineage import load_parent

        parent = load_parent(str(init_from))
    window = model_window(cfg, WindowSpec.from_dict(manifest.get("window", {})), parent)
    model = build_model(cfg, window, parent)
    if model.objective.needs_labels:
        _require_labels(manifest, str(cfg.data.get("shards")), model.objective.label_options)
        datamodule.train_labels = True
    has_val = datamodule.split_size("val") > 0
    _check_checkpoint_cfg(cfg.get("callbacks"))
    callbacks = [*_instantiate_group(cfg.get("callbacks")), SaveOnSigterm(Path(cfg.paths.output_dir) / "checkpoints")]
    callbacks.sort(key=lambda c: isinstance(c, LastCheckpoint))  # after the top-k one: its state goes into last.ckpt
    threads = resolve_cpu_threads(cfg.get("cpu_threads"), _runs_on_cpu(cfg.trainer))
    if threads is not None:
        callbacks.append(CpuThreads(threads))
    if not has_val:
        warnings.warn("the corpus has no validation split: checkpoints keep the last step only", stacklevel=2)
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.EarlyStopping)]
        for c in callbacks:
            if isinstance(c, pl.callbacks.ModelCheckpoint):
                c.monitor, c.save_top_k = None, 1
    logger_cfg = cfg.get("logger")
    if logger_cfg and logger_cfg.get("wandb") and logger_cfg.wandb.get("offline", True):
        os.environ.setdefault("WANDB_MODE", "offline")  # no account, no network; `wandb sync` later
    loggers = _instantiate_group(logger_cfg)
    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=resolve_precision(cfg.trainer),
        plugins=[AtomicCheckpointIO()],  # no checkpoint a kill leaves truncated
    )  # fmt: skip
    if cfg.get("train", True):
        _check_batches(datamodule, trainer.num_devices * trainer.num_nodes)
    top_k = _model_checkpoint(trainer)
    for c in callbacks:
        if isinstance(c, SaveOnSigterm) and top_k is not None:
            c.dirpath = Path(top_k.dirpath or c.dirpath)
    return {
        "datamodule": datamodule, "model": model, "callbacks": callbacks, "loggers": loggers, "trainer": trainer,
        "manifest": manifest, "window": window, "has_val": has_val,
    }  # fmt: skip


def _guard_relaunch(cfg: DictConfig) -> None:
    """Refuse Lightning's script relaunch (strategy=ddp, >1 device) inside a Hydra multirun: it nests sweeps."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:
        multirun = False
    strategy = str(cfg.trainer.get("strategy", "auto"))
    devices = cfg.trainer.get("devices", 1)
    many = devices not in (1, "1", [0]) and devices is not None
    if (
        multirun
        and many
        and strategy.startswith("ddp")
        and "spawn" not in strategy
        and "SLURM_NTASKS" not in os.environ
    ):
        raise DeepSpikeError(
            "trainer.strategy=ddp with several devices inside a Hydra multirun would relaunch the sweep per rank. "
            "Use hydra/launcher=slurm (SLURM starts the ranks, one trial per job) or trainer.strategy=ddp_spawn."
        )


def _overrides() -> list[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    except Exception:
        return []


def _export(cfg: DictConfig, objs: dict[str, Any], out_dir: Path, metrics: dict[str, float]) -> Path | None:
    from deepspike.model.export import export_encoder

    ecfg = cfg.get("export") or {}
    if not ecfg.get("enabled", True):
        return None
    trainer, model = objs["trainer"], objs["model"]
    ckpt_cb = _model_checkpoint(trainer)
    source: Any = model
    final_steps = steps = max(int(trainer.global_step), int(metrics.get("trainer/global_step", 0)))
    selected: dict[str, Any] = {"by": "final weights"}
    if not cfg.get("train", True) and cfg.get("ckpt_path"):  # re-export an existing checkpoint
        ckpt_cb = None
        source = str(cfg.ckpt_path)
        steps = final_steps = int(torch.load(source, map_location="cpu", weights_only=True).get("global_step", 0))
        selected = {"by": "ckpt_path"}
    if ckpt_cb is not None:
        best, last = ckpt_cb.best_model_path, _last_path(objs["callbacks"]) or ckpt_cb.last_model_path
        pick = best if ecfg.get("which", "best") == "best" and best else (last or best)
        if pick and Path(pick).exists():
            source = pick
            ckpt = torch.load(pick, map_location="cpu", weights_only=True)
            steps = int(ckpt.get("global_step", steps))
            score = ckpt_cb.best_model_score if pick == best else None
            if pick == best and score is None:  # ddp_spawn returns the best path only: read it from the checkpoint
                states = [v for k, v in ckpt.get("callbacks", {}).items() if "ModelCheckpoint" in str(k)]
                score = next((st.get("best_model_score") for st in states if st.get("best_model_path") == best), None)
            selected = {
                "by": ckpt_cb.monitor if pick == best else "last",
                "value": None if score is None else float(score),
            }
    init_from = cfg.model.get("init_from")
    parent, finetune = None, None
    if init_from:
        from deepspike.model.lineage import load_parent, parent_record

        parent = parent_record(load_parent(init_from))
        dm = objs["datamodule"]
        finetune = {
            "data": dm.provenance() if hasattr(dm, "provenance") else {"corpus": dm.shards},
            "freeze": cfg.model.get("freeze"),
            "guard": guard_decision(out_dir),
        }
        if (finetune["guard"] or {}).get("reverted"):  # every validation fell below the parent: keep the parent
            source, steps, selected = init_from, 0, {"by": "collapse guard: parent kept"}
    prov = {
        "corpus_manifest_sha256": manifest_sha256(objs["manifest"]),
        "corpus": str(objs["datamodule"].shards),
        "steps": steps,  # optimizer steps of the exported weights
        "selected": selected,  # which checkpoint was exported and its monitored score
        "final_steps": final_steps,
        "metrics": metrics,  # callback metrics at the end of training
        "git_commit": git_commit(),
        "checkpoint": _portable(source, out_dir) if isinstance(source, str) else None,
        "overrides": _overrides(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parent": parent,
        "objective": objective(objs["model"]),  # what fine-tuning continues with by default
    }
    if finetune is not None:
        prov["finetune"] = finetune
    if isinstance(source, str) and not source.endswith(".ckpt"):  # the parent artifact itself
        from deepspike.model.lineage import load_parent

        source = load_parent(source).net
    return export_encoder(source, out_dir / str(ecfg.get("filename", "encoder.safetensors")), prov, objs["window"])


def _portable(path: str, root: Path) -> str:
    """``path`` relative to the run directory when inside it: artifacts must not carry machine paths."""
    p = Path(path).resolve()
    return str(p.relative_to(root.resolve())) if p.is_relative_to(root.resolve()) else Path(path).name


def objective(model: Any) -> dict[str, Any]:
    """Training objective of the exported weights (pretext, loss, KL weight), for provenance and fine-tuning."""
    hp = getattr(model, "hparams", {})
    pretext = getattr(model, "pretext", None)
    return {
        "recon": hp.get("recon"), "beta": hp.get("beta"),
        "pretext_tasks": list(getattr(pretext, "tasks", [])), "pretext_params": dict(getattr(pretext, "params", {})),
        "objective": hp.get("objective", "reconstruction"), "recon_weight": hp.get("recon_weight", 1.0),
        "recon_target": hp.get("recon_target", "window"), "band": hp.get("band"), "contrastive": hp.get("contrastive"),
    }  # fmt: skip


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train (and export) one configuration; returns ``{"metric", "metrics", "run_dir", "encoder"}``."""
    _guard_relaunch(cfg)
    threads = resolve_cpu_threads(cfg.get("cpu_threads"), _runs_on_cpu(cfg.trainer))
    if threads is not None:
        torch.set_num_threads(threads)  # this process; CpuThreads sets spawned ranks
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)  # same init on every rank; the stream varies data per rank
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    objs = build(cfg)
    trainer: pl.Trainer = objs["trainer"]
    info = {
        "git_commit": git_commit(),
        "corpus_manifest_sha256": manifest_sha256(objs["manifest"]),
        "corpus_num_spikes": objs["manifest"].get("num_spikes"),
        "num_parameters": sum(p.numel() for p in objs["model"].parameters()),
    }
    for lg in objs["loggers"]:
        lg.log_hyperparams({**info, "cfg": OmegaConf.to_container(cfg, resolve=True)})
    if trainer.is_global_zero:
        (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        _check_resume(str(ckpt_path), objs)
    if cfg.get("train", True):
        try:  # weights_only: a checkpoint is data, never code (Lightning's default depends on torch and env)
            trainer.fit(objs["model"], datamodule=objs["datamodule"], ckpt_path=ckpt_path, weights_only=True)
        except SIGTERMException:
            raise _interrupted(trainer, objs["callbacks"]) from None
        logged = trainer.callback_metrics.get("trainer/global_step")  # ddp_spawn: the step lives in the workers
        if max(trainer.global_step, int(logged) if logged is not None else 0) == 0:
            raise DeepSpikeError(
                f"corpus {objs['datamodule'].shards}: training ran no step (no full batch of data.batch_size="
                f"{objs['datamodule'].batch_size} reached this rank); use a smaller data.batch_size=... or more data"
            )
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}
    metric_name = cfg.get("optimized_metric")
    metric = metrics.get(metric_name) if metric_name else None
    result: dict[str, Any] = {"metric_name": metric_name, "metric": metric, "metrics": metrics, "run_dir": str(out_dir)}
    if trainer.is_global_zero:
        enc = _export(cfg, objs, out_dir, metrics)
        result["encoder"] = str(enc) if enc else None
        result.update(info, overrides=_overrides())
        (out_dir / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    _finish_wandb()
    if trainer.is_global_zero:
        print(f"run dir: {out_dir}", flush=True)
    return result


def _finish_wandb() -> None:
    """Close the wandb run now, so its sync hints come before the run directory line (and sweeps start clean)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


# ---- Hydra app --------------------------------------------------------------------------------------------
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Entry point of ``python train.py`` / ``deepspike-train``; returns the optimized metric (for sweepers).

    Bad input ends with one line naming the file and the fix (``debug=true`` shows the traceback).
    """
    with cli_errors("train.py", bool(cfg.get("debug", False))):
        return run(cfg).get("metric")
