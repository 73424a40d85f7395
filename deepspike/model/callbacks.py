"""Lightning and Hydra callbacks of the training app: save on SIGTERM, ``last.ckpt`` on a step schedule (and the
atomic checkpoint writer), torch's thread count per rank, the loss curve PNG, the collapse guard of fine-tuning runs
(and its decision file) and the sweep summary written at the end of a ``--multirun``.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.experimental.callback import Callback as HydraCallback
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig


class SaveOnSigterm(pl.Callback):
    """On SIGTERM (a scheduler's stop, ``kill``), save a resumable checkpoint before Lightning unwinds.

    Lightning raises ``SIGTERMException`` (a ``SystemExit`` with status 0) after the step in progress, so the
    loops are at a step boundary: resuming from the file continues exactly like from ``last.ckpt``.
    """

    def __init__(self, dirpath: Path) -> None:
        self.dirpath = Path(dirpath)
        self.saved: Path | None = None

    def on_exception(self, trainer: pl.Trainer, pl_module: Any, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self.saved = self.dirpath / INTERRUPTED_CKPT
            trainer.save_checkpoint(self.saved)  # every rank calls it (collective); rank 0 writes


LAST_CKPT = "last.ckpt"


class LastCheckpoint(Checkpoint):
    """``last.ckpt``: the latest training state every ``every_n_train_steps`` steps and at the final step.

    Lightning's ``ModelCheckpoint(save_last=True)`` with a monitored top-k writes ``last.ckpt`` only with a new top-k
    checkpoint, so a plateau (or validation rarer than the run) leaves it far behind and a resume after a hard kill
    silently restarts from an old step. This writes it on a step schedule whatever the metric does.

    A save at a step that validates is redone after the validation: a resume from it skips that validation, so its
    effects (top-k, early stopping) must be in the file. The final step (``max_steps``, or a callback's stop) is saved
    then too, not at ``on_train_end``: by then Lightning has closed the epoch, and a resume would start a new one
    (``on_train_end`` only catches stops the step hooks cannot see, such as ``max_epochs``). A ``Checkpoint``
    subclass, so Lightning runs it after the other callbacks (early stopping decides before it saves).
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_train_steps: int) -> None:  # conf/callbacks/default.yaml
        self.path = Path(dirpath) / LAST_CKPT
        self.every = int(every_n_train_steps)
        self._saved = -1  # step of the file on disk
        self._before_val: int | None = None  # step saved at a batch end, before that step's validation (if any)

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._saved = trainer.global_step  # the start (step 0, or the resumed checkpoint) is already on disk

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        step = trainer.global_step
        due = (self.every and step % self.every == 0) or _last_step(trainer)
        if due and step != self._saved:  # != : batches that accumulate gradients keep the step
            self._save(trainer)
            self._before_val = step

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        step = trainer.global_step
        if fitting and (self._before_val == step or (trainer.should_stop and step != self._saved)):
            self._save(trainer)  # after this step's validation; or early stopping just ended the run
        self._before_val = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.global_step != self._saved:
            self._save(trainer)

    def _save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.path)  # every rank calls it (collective); rank 0 writes
        self._saved = trainer.global_step


def _last_step(trainer: pl.Trainer) -> bool:
    """Whether training stops after the step just taken: ``max_steps`` reached, or a callback asked to stop."""
    return bool(trainer.should_stop) or 0 < trainer.max_steps <= trainer.global_step


def _now() -> float:
    return time.monotonic()


class TimeBudget(pl.Callback):
    """Stop training cleanly after ``seconds`` of wall time in this process (one segment of a long run).

    Lightning's ``max_time`` (its ``Timer``) counts the time of every earlier segment too (it is restored from the
    checkpoint), so a resumed segment with the same budget would stop at once. This counts from this process's
    first training batch only, and stops at a step boundary with ``trainer.should_stop``: ``LastCheckpoint`` then
    writes ``last.ckpt`` at that step (after its validation, if it validates), and a run resumed from it continues
    exactly like one never stopped (``tests/test_long_run.py``). ``seconds`` null or <= 0: no budget. On several
    ranks, rank 0's clock decides (all ranks stop at the same step).
    """

    def __init__(self, seconds: float | None = None) -> None:
        self.seconds = float(seconds) if seconds else 0.0
        self.start: float | None = None
        self.stopped_at: int | None = None  # the step this segment stopped at, if the budget ended it

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, idx: int) -> None:
        if self.start is None:
            self.start = _now()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        if self.seconds <= 0 or self.start is None or trainer.should_stop:
            return
        over = _now() - self.start >= self.seconds
        if trainer.strategy.broadcast(over, src=0):
            trainer.should_stop = True
            self.stopped_at = int(trainer.global_step)
            if trainer.is_global_zero:
                print(f"time budget of {self.seconds:.0f} s reached at step {trainer.global_step}: saving last.ckpt "
                      "and stopping (resume with ckpt_path=.../last.ckpt)", flush=True)  # fmt: skip


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint writes a kill cannot truncate: a temporary file beside the target, fsync, then one rename.

    Lightning's ``TorchCheckpointIO`` stages the file in the system temp directory (``tempfile.mkstemp``) and
    ``shutil.move``s it into place: a rename only when both are on one filesystem; otherwise (a tmpfs ``/tmp``, a
    network checkpoint directory) a copy into the existing file, which a kill leaves truncated. It also does not
    fsync, so a lost node can leave an empty file. Remote (fsspec URL) paths keep Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_save(checkpoint, Path(str(path).removeprefix("file://")))


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` so that readers see the old file or the complete new one, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")  # hidden, unique per writer
    try:
        with open(tmp, "xb") as fh:  # mode 0o666 minus the umask, like any file the user writes
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); where folders cannot be opened (Windows) the rename stands alone."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CpuThreads(pl.Callback):
    """Set torch's intra-op thread count in every training process, spawned DDP ranks included (``ddp_spawn``
    starts fresh interpreters, which would take torch's default of one thread per core)."""

    def __init__(self, threads: int) -> None:
        self.threads = int(threads)

    def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        torch.set_num_threads(self.threads)


class SweepSummary(HydraCallback):
    """Hydra callback: at the end of a multirun, tabulate each trial's overrides and metric.

    Writes ``sweep_summary.csv`` and ``sweep_summary.md`` into the sweep directory and prints the table,
    best trial first (the metric is "higher is better", see ``SpikeAutoencoder``).
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = summarize_sweep(sweep_dir)
        if rows:
            print(f"sweep summary ({len(rows)} trials): {sweep_dir / 'sweep_summary.md'}")
            print((sweep_dir / "sweep_summary.md").read_text())


def summarize_sweep(sweep_dir: Path) -> list[dict[str, Any]]:
    """Collect ``*/result.json`` under ``sweep_dir`` into ``sweep_summary.{csv,md}``; return the rows."""
    rows = []
    for f in sorted(sweep_dir.glob("*/result.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        r = json.loads(f.read_text())
        rows.append({
            "trial": f.parent.name, "params": " ".join(r.get("overrides") or []),
            "metric": r.get("metric_name"), "value": r.get("metric"), "run_dir": r.get("run_dir"),
        })  # fmt: skip
    if not rows:
        return rows
    rows.sort(key=lambda r: -r["value"] if isinstance(r["value"], (int, float)) else float("inf"))
    with open(sweep_dir / "sweep_summary.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| trial | params | metric | value |", "|---|---|---|---|"]
    for r in rows:
        v = f"{r['value']:.4f}" if isinstance(r["value"], (int, float)) else "n/a"
        lines.append(f"| {r['trial']} | {r['params']} | {r['metric']} | {v} |")
    (sweep_dir / "sweep_summary.md").write_text("\n".join(lines) + "\n")
    return rows


class LossCurve(pl.Callback):
    """Records train loss per step and validation metrics; writes ``loss_curve.png`` + ``loss_history.csv``."""

    def __init__(self, dirpath: str | None = None, filename: str = "loss_curve.png") -> None:
        self.dirpath, self.filename = dirpath, filename
        self.train: list[tuple[int, float]] = []
        self.val: list[tuple[int, float, float | None]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.train.append((trainer.global_step, float(loss)))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        m = trainer.callback_metrics
        if "val/recon" in m and not trainer.sanity_checking:
            score = float(m["val/score"]) if "val/score" in m else None
            self.val.append((trainer.global_step, float(m["val/recon"]), score))

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not trainer.is_global_zero or not self.train:
            return
        out = Path(self.dirpath or trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "loss_history.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["step", "split", "loss", "score"])
            w.writerows((s, "train", v, "") for s, v in self.train)
            w.writerows((s, "val", v, "" if sc is None else sc) for s, v, sc in self.val)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(*zip(*self.train, strict=True), lw=0.8, label="train loss")
        if self.val:
            ax.plot([v[0] for v in self.val], [v[1] for v in self.val], "o-", label="val recon")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / self.filename, dpi=100)
        plt.close(fig)


GUARD_FILE = "collapse_guard.json"


def guard_decision(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What the train-path ``CollapseGuard`` decided (``collapse_guard.json`` in the run directory), if it ran."""
    f = Path(run_dir) / GUARD_FILE
    return json.loads(f.read_text()) if f.exists() else None


class CollapseGuard(pl.Callback):
    """Fine-tuning guard (``experiment=finetune``): embedding quality on the validation split vs the parent's.

    At fit start it measures the parent (the initial weights) on up to ``max_spikes`` validation spikes per
    recording: GMM matched accuracy where the corpus has labels, else the label-free proxy of the sort path
    (``deepspike.model.collapse.split_purity``: the parent's well-separated groups must stay apart). Each validation
    logs ``val/quality`` (the metric checkpoints keep the best of) and stops training after ``patience``
    validations more than ``tolerance`` below the parent.
    If no validation reached the parent - tolerance, the parent's weights are exported instead
    (``collapse_guard.json`` in the run directory records the decision).
    """

    def __init__(self, tolerance: float = 0.15, patience: int = 2, max_spikes: int = 3000, dirpath: str = ".") -> None:
        self.tolerance, self.patience, self.max_spikes, self.dirpath = tolerance, patience, max_spikes, dirpath
        self.data: list[tuple[Any, Any]] = []
        self.metrics: list[Any] = []
        self.parent: float | None = None
        self.history: list[dict[str, float]] = []
        self.bad = 0

    def _measure(self, pl_module: Any) -> float:
        scores = []
        for (waves, _), metric in zip(self.data, self.metrics, strict=True):
            q = metric(pl_module.embed(waves))
            if q == q:  # not nan
                scores.append(q)
        return float(sum(scores) / len(scores)) if scores else float("nan")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        from deepspike.data.sample import val_windows

        dm = trainer.datamodule
        self.data = val_windows(dm.shards, self.max_spikes) if dm is not None and dm.split_size("val") else []
        if not self.data:
            warnings.warn("collapse guard off: the fine-tuning corpus has no validation split", stacklevel=2)
            return
        from deepspike.model.collapse import CollapseMetric

        self.metrics = [CollapseMetric(labels) for _, labels in self.data]
        self.parent = self._measure(pl_module)
        self._write(trainer, reverted=False)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not self.data or trainer.sanity_checking or self.parent is None:
            return
        q = self._measure(pl_module)
        self.history.append({"step": int(trainer.global_step), "quality": q})
        pl_module.log_dict({"val/quality": q, "val/quality_parent": self.parent}, sync_dist=False)
        fell = not (q >= self.parent - self.tolerance)
        self.bad = self.bad + 1 if fell else 0
        stop = trainer.strategy.reduce_boolean_decision(self.bad >= self.patience, all=False)
        trainer.should_stop = trainer.should_stop or stop
        self._write(trainer, reverted=False)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if not self.data or self.parent is None or not self.history:
            return
        best = max(h["quality"] for h in self.history)
        self._write(trainer, reverted=not (best >= self.parent - self.tolerance))

    def _write(self, trainer: pl.Trainer, reverted: bool) -> None:
        if not trainer.is_global_zero:
            return
        doc = {"parent_quality": self.parent, "tolerance": self.tolerance, "history": self.history,
               "stopped_early": bool(self.bad >= self.patience), "reverted": reverted}  # fmt: skip
        Path(self.dirpath).mkdir(parents=True, exist_ok=True)
        (Path(self.dirpath) / GUARD_FILE).write_text(json.dumps(doc, indent=1) + "\n")


INTERRUPTED_CKPT = "interrupted.ckpt"  # written into the checkpoint directory when SIGTERM stops training
