"""``last.ckpt`` is always the latest state, written atomically (issue 23, item 9); torch's thread count suits a
shared CPU (item 5, training).

Lightning 2.6's ``ModelCheckpoint(save_last=True)`` with a monitored top-k writes ``last.ckpt`` only together with a
new top-k checkpoint: a metric that plateaus, or validation rarer than wanted, leaves it steps behind, and a resume
after a hard kill (SIGKILL, OOM, a lost node) silently restarts from an old step. Runs use the tiny corpus and
settings of ``test_train``.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import DictConfig, open_dict
from test_train import TINY, _env, _train_cmd, cfg_for, make_corpus

from deepspike.errors import DeepSpikeError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def keep_threads() -> Any:
    """``run`` sets torch's thread count for the process: give the next test the count it had."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _with(cfg: DictConfig, name: str, target: str, **kwargs: Any) -> DictConfig:
    """Add a test callback to ``cfg.callbacks``."""
    with open_dict(cfg):
        cfg.callbacks[name] = {"_target_": target, **kwargs}
    return cfg


def _step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


# ---- last.ckpt follows the run ------------------------------------------------------------------------------
PLATEAU = ["callbacks.model_checkpoint.monitor=epoch", "callbacks.model_checkpoint.save_top_k=1"]  # never improves


@pytest.mark.parametrize(
    "overrides",
    [[*PLATEAU, "trainer.val_check_interval=4"], ["trainer.val_check_interval=8"]],
    ids=["metric-plateaus", "validation-rarer-than-the-run"],
)
def test_last_ckpt_holds_the_final_step(overrides: list[str], corpus: Path, tmp_path: Path, keep_threads: None) -> None:
    """Reproduces the stale ``last.ckpt``: with Lightning's ``save_last`` it stayed at step 4 (a monitored metric
    that stops improving: ``epoch`` is 0 all run) or 8 (validation at 8 only) of a 12-step run. ``export.which=last``
    exports it."""
    from deepspike.model.export import load_encoder
    from deepspike.model.train import run

    run(cfg_for(tmp_path, [*TINY, f"data.shards={corpus}", "trainer.max_steps=12", "export.which=last", *overrides]))
    assert _step(tmp_path / "checkpoints" / "last.ckpt") == 12
    prov = load_encoder(tmp_path / "encoder.safetensors").spec["provenance"]
    assert prov["steps"] == 12 and prov["selected"]["by"] == "last" and prov["checkpoint"] == "checkpoints/last.ckpt"


class LastSeen(pl.Callback):
    """Test callback: at the start of every training batch, what ``last.ckpt`` holds (its step, and the best
    checkpoint its ModelCheckpoint state knows), by the run's step; ``None`` while there is no file."""

    def __init__(self, ckpt: str, out: str) -> None:
        self.ckpt, self.out = Path(ckpt), Path(out)
        self.seen: dict[int, Any] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if not self.ckpt.exists():
            self.seen[trainer.global_step] = None
            return
        ck = torch.load(self.ckpt, map_location="cpu", weights_only=True)
        mc = next(v for k, v in ck["callbacks"].items() if k.startswith("ModelCheckpoint"))
        self.seen[trainer.global_step] = [ck["global_step"], Path(mc["best_model_path"]).name]

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.out.write_text(json.dumps(self.seen))


def test_last_ckpt_is_written_every_n_steps_and_after_the_validation_of_its_step(
    corpus: Path, tmp_path: Path, keep_threads: None
) -> None:
    """Every 3 steps whatever the metric does; at step 6, which validates, the file holds that validation (a resume
    from it skips the validation of its step, so the validation's effects must be in it)."""
    from deepspike.model.train import run

    over = [*TINY, f"data.shards={corpus}", "trainer.max_steps=12", "trainer.val_check_interval=6", *PLATEAU,
            "callbacks.last.every_n_train_steps=3"]  # fmt: skip
    ckpt, seen_file = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "seen.json"
    run(_with(cfg_for(tmp_path, over), "seen", "test_checkpointing.LastSeen", ckpt=str(ckpt), out=str(seen_file)))
    seen = {int(k): v for k, v in json.loads(seen_file.read_text()).items()}
    assert [seen[g] and seen[g][0] for g in range(12)] == [None, None, None, 3, 3, 3, 6, 6, 6, 9, 9, 9]
    assert seen[6][1] == seen[9][1] == "step000006.ckpt"  # saved again after step 6's validation
    assert _step(ckpt) == 12


# ---- a hard kill, then resume from last.ckpt ---------------------------------------------------------------
def _poll_step(ckpt: Path) -> int:
    """The step ``last.ckpt`` holds, 0 before it exists; a read must never see a partial file (atomic writes)."""
    return _step(ckpt) if ckpt.exists() else 0


def test_sigkill_mid_run_then_resume_from_last_ckpt_is_bit_identical(
    corpus: Path, tmp_path: Path, keep_threads: None
) -> None:
    """``train.py`` killed with SIGKILL (no handler runs) once ``last.ckpt`` reached step 40 of 300; resumed from it
    with ``ckpt_path=``, it ends on the weights and step of an uninterrupted run, bit for bit."""
    from deepspike.model.train import run

    common = [f"data.shards={corpus}", "trainer.max_steps=300", "trainer.val_check_interval=50",
              "callbacks.last.every_n_train_steps=20", "cpu_threads=1"]  # fmt: skip
    killed = tmp_path / "killed"
    killed.mkdir()
    last, log = killed / "checkpoints" / "last.ckpt", tmp_path / "killed.log"
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen(_train_cmd(*common), cwd=killed, stdout=out, stderr=subprocess.STDOUT, env=_env())
        deadline = time.monotonic() + 300
        try:
            while _poll_step(last) < 40 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    step = _step(last)
    assert 40 <= step < 300 and step % 20 == 0

    run(cfg_for(tmp_path / "resumed", [*TINY, *common, f"ckpt_path={last}"]))
    run(cfg_for(tmp_path / "straight", [*TINY, *common]))
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 300
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


class CrashAt(pl.Callback):
    """Test callback: the process "dies" (an exception no callback saves on) before training step ``step + 1``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"crash after step {self.step}")


def _val_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "loss_history.csv") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh) if r["split"] == "val"]


def test_resume_from_a_last_ckpt_written_after_a_validation_is_bit_identical(
    corpus: Path, tmp_path: Path, keep_threads: None
) -> None:
    """Step 12 validates and is a save step: last.ckpt holds the state after that validation, and a resume from it
    does not validate step 12 again (early stopping and top-k would count it twice) and ends on the same weights."""
    from deepspike.model.train import run

    common = [*TINY, f"data.shards={corpus}", "trainer.max_steps=24", "trainer.val_check_interval=6",
              "callbacks.last.every_n_train_steps=4", "cpu_threads=1"]  # fmt: skip
    crashed = _with(cfg_for(tmp_path / "crashed", common), "crash", "test_checkpointing.CrashAt", step=12)
    with pytest.raises(RuntimeError, match="crash after step 12"):
        run(crashed)
    last = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    top_k = next(v for k, v in saved["callbacks"].items() if k.startswith("ModelCheckpoint"))["best_k_models"]
    assert saved["global_step"] == 12 and sorted(Path(p).name for p in top_k) == ["step000006.ckpt", "step000012.ckpt"]
    run(cfg_for(tmp_path / "resumed", [*common, f"ckpt_path={last}"]))
    run(cfg_for(tmp_path / "straight", common))
    assert _val_steps(tmp_path / "straight") == [6, 12, 18, 24] and _val_steps(tmp_path / "resumed") == [18, 24]
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 24
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


# ---- atomic writes -----------------------------------------------------------------------------------------
def _other_filesystem(than: Path) -> Path | None:
    """A writable folder on another filesystem than ``than`` (a tmpfs /dev/shm), or None."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != than.stat().st_dev:
        return shm
    return None


def test_a_checkpoint_write_replaces_the_file_and_never_writes_into_it(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The app's checkpoint writer swaps in a complete new file: a reader of the old one still reads it whole.

    Lightning's writer stages the file in the system temp directory and ``shutil.move``s it: across filesystems
    (here TMPDIR on /dev/shm) that is a copy into the existing ``last.ckpt``, which a kill leaves truncated.
    """
    import tempfile

    from deepspike.model.train import build

    shm = _other_filesystem(tmp_path)
    if shm is None:
        pytest.skip("needs a temp directory on another filesystem (/dev/shm)")
    io = build(cfg_for(tmp_path, [*TINY, f"data.shards={corpus}"]))["trainer"].strategy.checkpoint_io
    staging = Path(tempfile.mkdtemp(dir=shm))
    monkeypatch.setattr(tempfile, "tempdir", str(staging))  # TMPDIR on another filesystem
    target = tmp_path / "checkpoints" / "last.ckpt"
    old, new = {"global_step": 1, "w": torch.zeros(1000)}, {"global_step": 2, "w": torch.ones(1000)}
    try:
        io.save_checkpoint(old, target)
        with open(target, "rb") as reader:
            io.save_checkpoint(new, target)
            kept = torch.load(reader, weights_only=True)
    finally:
        for f in staging.iterdir():
            f.unlink()
        staging.rmdir()
    assert kept["global_step"] == 1 and torch.equal(kept["w"], old["w"])
    assert _step(target) == 2
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


KILLED_WRITE = """
import resource, signal, sys, torch
from deepspike.model.callbacks import AtomicCheckpointIO
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; its default ends the process, like a kill
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # a write past 1 MiB sends it
AtomicCheckpointIO().save_checkpoint({"global_step": 2, "w": torch.ones(1 << 20)}, sys.argv[1])  # 4 MiB
"""


def test_a_write_killed_midway_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    """A process that dies while writing (SIGXFSZ at 1 MiB of a 4 MiB checkpoint) leaves the old file whole."""
    target = tmp_path / "last.ckpt"
    torch.save({"global_step": 1, "w": torch.zeros(10)}, target)
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(target)], capture_output=True, text=True,
                          timeout=300, env=_env())  # fmt: skip
    assert proc.returncode == -signal.SIGXFSZ, proc.stderr[-2000:]
    assert _step(target) == 1
    partial = [p for p in tmp_path.iterdir() if p != target]  # the write died in its temporary file
    assert len(partial) == 1 and partial[0].stat().st_size == 1 << 20


# ---- the settings are checked -----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["-1", "often", "2.5"])
def test_a_bad_save_interval_is_refused_naming_the_key(value: str, corpus: Path, tmp_path: Path) -> None:
    from deepspike.model.train import run

    cfg = cfg_for(tmp_path, [*TINY, f"data.shards={corpus}", f"callbacks.last.every_n_train_steps={value}"])
    with pytest.raises(DeepSpikeError, match=r"callbacks\.last\.every_n_train_steps") as e:
        run(cfg)
    assert value in str(e.value)


def test_save_last_beside_the_last_callback_is_refused(corpus: Path, tmp_path: Path) -> None:
    """Two writers of ``last.ckpt`` would make Lightning's save it as ``last-v1.ckpt``: one of them must go."""
    from deepspike.model.train import run

    cfg = cfg_for(tmp_path, [*TINY, f"data.shards={corpus}", "callbacks.model_checkpoint.save_last=true"])
    with pytest.raises(DeepSpikeError, match=r"save_last=true.*callbacks\.last"):
        run(cfg)


# ---- threads (item 5) -------------------------------------------------------------------------------------
class Threads(pl.Callback):
    """Test callback: torch's intra-op thread count while training, one file per rank."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        (self.out / f"threads.rank{trainer.global_rank}").write_text(str(torch.get_num_threads()))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [([], [1]), (["cpu_threads=2"], [2]), pytest.param(["trainer=ddp_cpu"], [1, 1], marks=pytest.mark.slow)],
    ids=["default", "explicit", "default-ddp-spawn-ranks"],
)
def test_cpu_threads_default_is_one_thread_on_cpu(
    overrides: list[str], expected: list[int], corpus: Path, tmp_path: Path, keep_threads: None
) -> None:
    """``auto`` (the default) trains with one thread on CPU, in spawned DDP ranks too (fresh interpreters, which
    would take torch's default of one per core); ``cpu_threads=N`` gives N."""
    from deepspike.model.train import run

    torch.set_num_threads(3)
    over = [*TINY, f"data.shards={corpus}", "trainer.max_steps=2", "trainer.accelerator=cpu", *overrides]
    run(_with(cfg_for(tmp_path, over), "threads", "test_checkpointing.Threads", out=str(tmp_path)))
    assert [int((tmp_path / f"threads.rank{r}").read_text()) for r in range(len(expected))] == expected


def test_cpu_threads_auto_leaves_torch_alone_on_gpu() -> None:
    from deepspike.model.train import resolve_cpu_threads

    assert resolve_cpu_threads("auto", on_cpu=True) == 1
    assert resolve_cpu_threads("auto", on_cpu=False) is None
    assert resolve_cpu_threads(None, on_cpu=True) is None
    assert resolve_cpu_threads(3, on_cpu=False) == 3


@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5", "true"])
def test_a_bad_cpu_threads_is_refused_naming_the_key(value: str, corpus: Path, tmp_path: Path) -> None:
    from deepspike.model.train import run

    with pytest.raises(DeepSpikeError, match=r"cpu_threads=.*auto"):
        run(cfg_for(tmp_path, [*TINY, f"data.shards={corpus}", f"cpu_threads={value}"]))
