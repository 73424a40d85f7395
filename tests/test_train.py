"""The training app: configs compose and instantiate, a short run learns and exports, exact resume, DDP, sweeps.

Runs use tiny corpora written here with ``deepspike.data.shards.write_shard`` (uneven shard sizes, a labelled
validation recording) and tiny nets, on CPU.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from deepspike.data.shards import Block, write_shard
from deepspike.errors import DeepSpikeError
from deepspike.spec import WindowSpec

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


# ---- a tiny corpus ----------------------------------------------------------------------------------------
def _templates(rng: np.random.Generator, k: int) -> np.ndarray:
    t = np.arange(20) - 8
    widths, amps = rng.uniform(0.8, 3.0, k), rng.uniform(-40, -8, k)
    rebound = rng.uniform(0.1, 0.5, k)
    return np.stack([a * (np.exp(-(t**2) / (2 * w**2)) - r * np.exp(-((t - 4) ** 2) / 18)) for a, w, r in
                     zip(amps, widths, rebound, strict=True)])  # fmt: skip


def make_corpus(
    root: Path, train_sizes: tuple[int, ...] = (700, 300, 1100), val_size: int = 600, window: WindowSpec | None = None
) -> Path:
    """A corpus of uneven shards (one recording each) in the manifest format of docs/ARCHITECTURE.md."""
    rng = np.random.default_rng(0)
    (root / "shards").mkdir(parents=True)
    shards, recs = [], []
    for i, (n, split) in enumerate([*((s, "train") for s in train_sizes), (val_size, "val")]):
        rec = f"rec{i}"
        tpl = _templates(rng, 3)
        lab = rng.integers(0, 3, n)
        waves = (tpl[lab] + rng.standard_normal((n, 20))).astype(np.float16)
        blocks = [Block(waves[j : j + 256], np.arange(j, min(n, j + 256)) * 100, np.zeros(min(256, n - j), np.int16),
                        lab[j : j + 256], {"recording": rec}) for j in range(0, n, 256)]  # fmt: skip
        info = write_shard(root / "shards" / f"{rec}-0000.tar", blocks, rec)
        shards.append({"path": f"shards/{rec}-0000.tar", "recording": rec, "split": split, **info})
        recs.append({"id": rec, "num_spikes": n, "split": split, "has_labels": True, "sampling_frequency": 24000.0})
    splits = {s: {"num_spikes": sum(x["num_spikes"] for x in shards if x["split"] == s),
                  "num_shards": sum(x["split"] == s for x in shards)} for s in ("train", "val")}  # fmt: skip
    manifest = {
        "format": "deepspike-corpus", "format_version": 1, "tool_version": "test",
        "num_spikes": sum(x["num_spikes"] for x in shards), "window": (window or WindowSpec()).to_dict(), "extract": {},
        "shards": shards, "recordings": recs, "splits": splits,
    }  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


TINY = [
    "logger=none", "model.hidden=32", "model.latent=4", "data.batch_size=64", "data.val_batch_size=1024",
    "data.shuffle_buffer=512", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=5",
    "model.warmup_steps=5", "model.kl_warmup_steps=20", "model.beta=0.1",
]  # fmt: skip


def cfg_for(out: Path, overrides: list[str], hydra_cfg: bool = False) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"paths.output_dir={out}"], return_hydra_config=hydra_cfg)
    return cfg


# ---- configs ----------------------------------------------------------------------------------------------
CPU_VARIANTS = [
    [], ["model=vae_mlp"], ["model=ae_mlp"], ["model=vae_conv"], ["model/net=conv"], ["trainer=cpu"],
    ["trainer=ddp_cpu"], ["logger=csv"], ["logger=wandb"], ["logger=none"],
    ["callbacks=early_stopping"], ["callbacks=none"], ["experiment=demo_ae"], ["data=corpus"],
    ["model.net.norm=layer"], ["model.pretext.tasks=[shuffle,mask,jigsaw,flip,roll,noise,amplitude,time_shift]"],
]  # fmt: skip


@pytest.mark.parametrize("overrides", CPU_VARIANTS, ids=lambda o: ",".join(o) or "default")
def test_config_composes_and_instantiates(overrides: list[str], tmp_path: Path) -> None:
    from deepspike.model.train import _instantiate_group, build_model, resolve_precision

    cfg = cfg_for(tmp_path, overrides)
    model = build_model(cfg, WindowSpec())
    assert model.net.arch["in_dim"] == 20
    import hydra

    dm = hydra.utils.instantiate(cfg.data)
    assert dm.batch_size > 0
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                      precision=resolve_precision(cfg.trainer))  # fmt: skip
    assert isinstance(trainer, pl.Trainer)


@pytest.mark.parametrize(
    "overrides",
    [["trainer=ddp"], ["trainer=gpu"], ["experiment=published"], ["hparams_search=grid"], ["hydra/launcher=slurm"]],
)
def test_gpu_and_cluster_configs_compose(overrides: list[str], tmp_path: Path) -> None:
    from deepspike.model.train import build_model

    cfg = cfg_for(tmp_path, overrides, hydra_cfg=True)
    assert build_model(cfg, WindowSpec()).net is not None
    if overrides == ["experiment=published"]:
        assert cfg.model.net.hidden == 2048 and cfg.data.batch_size == 4096
    if overrides == ["hydra/launcher=slurm"]:
        assert "SlurmLauncher" in cfg.hydra.launcher._target_
        assert cfg.hydra.launcher.tasks_per_node == cfg.trainer.devices


def test_optuna_config_is_valid_and_optional(tmp_path: Path) -> None:
    doc = yaml.safe_load((CONF / "hparams_search" / "optuna.yaml").read_text())
    assert doc["hydra"]["sweeper"]["direction"] == "maximize" and doc["optimized_metric"] == "val/score"
    try:
        import hydra_plugins.hydra_optuna_sweeper  # noqa: F401
    except ImportError:
        pytest.skip("hydra-optuna-sweeper not installed (optional extra: pip install deepspike[optuna])")
    cfg_for(tmp_path, ["hparams_search=optuna"], hydra_cfg=True)


def test_missing_corpus_says_how_to_build(tmp_path: Path) -> None:
    from deepspike.model.train import run

    cfg = cfg_for(tmp_path, [*TINY, f"data.shards={tmp_path}/nope"])
    with pytest.raises(DeepSpikeError, match="make demo"):
        run(cfg)


# ---- runs -------------------------------------------------------------------------------------------------
class Probe(pl.Callback):
    """Test callback: writes per-rank step counts and the optimizer state seen at train start."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath, self.batches = Path(dirpath), 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        state = trainer.optimizers[0].state_dict()["state"]
        torch.save({"step": trainer.global_step, "state": state}, self.dirpath / f"start_rank{trainer.global_rank}.pt")

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.batches += 1

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        info = {"rank": trainer.global_rank, "step": trainer.global_step, "batches": self.batches}
        (self.dirpath / f"end_rank{trainer.global_rank}.json").write_text(json.dumps(info))


def _with_probe(cfg: DictConfig, out: Path) -> DictConfig:
    with open_dict(cfg):
        cfg.callbacks["probe"] = {"_target_": "test_train.Probe", "dirpath": str(out)}
    return cfg


def test_short_run_learns_exports_and_resumes_exactly(corpus: Path, tmp_path: Path, capsys: Any) -> None:
    from deepspike.model.export import load_encoder
    from deepspike.model.train import run

    out = tmp_path / "a"
    cfg = _with_probe(cfg_for(out, [*TINY, f"data.shards={corpus}", "trainer.max_steps=60", "model.optimizer.lr=5e-3",
                                    "trainer.val_check_interval=30", "logger=csv"]), out)  # fmt: skip
    res = run(cfg)
    assert f"run dir: {out}" in capsys.readouterr().out
    with open(out / "loss_history.csv") as fh:
        train = [float(r["loss"]) for r in csv.DictReader(fh) if r["split"] == "train"]
    assert len(train) == 60 and np.mean(train[-10:]) < 0.6 * np.mean(train[:10])
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert 0.0 <= res["metrics"]["val/gmm_acc"] <= 1.0 and res["metric"] == res["metrics"]["val/score"]
    assert (out / "checkpoints" / "last.ckpt").exists() and (out / "csv" / "metrics.csv").exists()
    enc = load_encoder(out / "encoder.safetensors")
    prov = enc.spec["provenance"]
    assert prov["steps"] in (30, 60) and len(prov["corpus_manifest_sha256"]) == 64 and prov["git_commit"]
    assert enc.embed(np.zeros((5, 20), np.float32)).shape == (5, 4)

    # resume from the step-30 checkpoint: same step, same optimizer state, runs on to max_steps
    ckpt = out / "checkpoints" / "step000030.ckpt"
    out_b = tmp_path / "b"
    cfg_b = _with_probe(cfg_for(out_b, [*TINY, f"data.shards={corpus}", "trainer.max_steps=40",
                                        "trainer.val_check_interval=30", f"ckpt_path={ckpt}"]), out_b)  # fmt: skip
    out_b.mkdir()
    run(cfg_b)
    start = torch.load(out_b / "start_rank0.pt", weights_only=True)
    saved = torch.load(ckpt, weights_only=True)
    assert start["step"] == saved["global_step"] == 30
    for k, v in saved["optimizer_states"][0]["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(start["state"][k][name], v[name])
    assert json.loads((out_b / "end_rank0.json").read_text())["step"] == 40


PRE_LAYOUT_CKPT = Path(__file__).parent / "data" / "pre_layout_v1.ckpt"  # written by the flat-layout code (28ddc1a)


def test_a_checkpoint_saved_before_the_layout_change_loads_and_resumes(corpus: Path, tmp_path: Path) -> None:
    """Checkpoints name no module path (weights, arch, window, loop state), so the move into stage subpackages
    leaves them loadable: as a fine-tuning parent, and as an exact resume of its run (TINY settings, step 6)."""
    from deepspike.model.lineage import load_parent
    from deepspike.model.train import run

    saved = torch.load(PRE_LAYOUT_CKPT, weights_only=True)
    parent = load_parent(PRE_LAYOUT_CKPT)
    emb = parent.embed(np.random.default_rng(0).standard_normal((5, 20)).astype(np.float32))
    assert emb.shape == (5, 4) and np.isfinite(emb).all()
    overrides = [*TINY, f"data.shards={corpus}", "trainer.max_steps=9", "trainer.val_check_interval=3"]
    cfg = _with_probe(cfg_for(tmp_path, [*overrides, f"ckpt_path={PRE_LAYOUT_CKPT}"]), tmp_path)
    run(cfg)
    start = torch.load(tmp_path / "start_rank0.pt", weights_only=True)
    assert start["step"] == saved["global_step"] == 6
    for k, v in saved["optimizer_states"][0]["state"].items():
        assert torch.equal(start["state"][k]["exp_avg"], v["exp_avg"])
    assert json.loads((tmp_path / "end_rank0.json").read_text())["step"] == 9


def test_ddp_cpu_two_processes_uneven_shards(corpus: Path, tmp_path: Path) -> None:
    from deepspike.model.train import run

    cfg = _with_probe(cfg_for(tmp_path, [*TINY, f"data.shards={corpus}", "trainer=ddp_cpu", "trainer.max_steps=8",
                                         "trainer.val_check_interval=4"]), tmp_path)  # fmt: skip
    res = run(cfg)
    ends = [json.loads((tmp_path / f"end_rank{r}.json").read_text()) for r in (0, 1)]
    assert ends[0]["step"] == ends[1]["step"] == 8 and ends[0]["batches"] == ends[1]["batches"]
    assert (tmp_path / "encoder.safetensors").exists() and "val/score" in res["metrics"]


def test_two_trial_sweep_writes_summary(corpus: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(REPO / "train.py"), "-m", *TINY, f"data.shards={corpus}", "trainer.max_steps=10",
           "trainer.val_check_interval=10", "model.hidden=16,32", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(sweep / "sweep_summary.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and {r["trial"] for r in rows} == {"0", "1"}
    assert all("model.hidden=" in r["params"] and r["value"] for r in rows)
    assert (sweep / "0" / "encoder.safetensors").exists()
    assert "sweep summary (2 trials)" in proc.stdout


def test_init_from_artifact_fine_tunes_its_weights(tmp_path: Path) -> None:
    from deepspike.model.export import export_encoder, load_encoder
    from deepspike.model.module import SpikeAutoencoder
    from deepspike.model.nets import MLPNet
    from deepspike.model.train import build_model

    parent = SpikeAutoencoder(MLPNet(hidden=16, latent=3), torch.optim.AdamW)
    art = export_encoder(parent, tmp_path / "parent.safetensors", {"steps": 5})
    model = build_model(cfg_for(tmp_path, [*TINY, f"model.init_from={art}"]), WindowSpec())
    x = np.random.default_rng(0).standard_normal((8, 20)).astype(np.float32)
    np.testing.assert_array_equal(model.embed(x), load_encoder(art).embed(x))
    assert model.net.arch["latent"] == 3 and all(p.requires_grad for p in model.parameters())


# ---- refusals, interruptions and messages -----------------------------------------------------------------
def _checkpoint(path: Path, window: WindowSpec, hidden: int = 32, latent: int = 4) -> Path:
    """A DeepSpike training checkpoint as ModelCheckpoint writes one (state dict, step, the ``deepspike`` entry)."""
    from deepspike.model.module import SpikeAutoencoder
    from deepspike.model.nets import MLPNet

    m = SpikeAutoencoder(MLPNet(hidden=hidden, latent=latent), torch.optim.AdamW, window=window.to_dict())
    ckpt = {"state_dict": m.state_dict(), "global_step": 7}
    m.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/last.ckpt", "s3://bucket/run/last.ckpt"])
def test_remote_ckpt_path_is_refused(url: str, corpus: Path, tmp_path: Path) -> None:
    from deepspike.model.train import run

    cfg = cfg_for(tmp_path, [*TINY, f"data.shards={corpus}", "trainer.max_steps=2", f"ckpt_path={url}"])
    with pytest.raises(DeepSpikeError, match=r"(?is)download.*ckpt_path=") as e:
        run(cfg)
    assert url in str(e.value)


class _Payload:
    """Unpickling this creates a file: a checkpoint must never run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.marker), "w")


def test_local_resume_never_unpickles_code(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepspike.model.train import run

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's opt-out of safe loading when not explicit
    marker = tmp_path / "code_ran"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "global_step": 1, "payload": _Payload(marker)}, ckpt)
    out = tmp_path / "run"
    cfg = cfg_for(out, [*TINY, f"data.shards={corpus}", "trainer.max_steps=2", f"ckpt_path={ckpt}"])
    with pytest.raises(DeepSpikeError, match=r"evil\.ckpt"):
        run(cfg)
    assert not marker.exists()
    assert not (out / "encoder.safetensors").exists()


def test_resume_onto_corpus_with_another_window_is_refused(tmp_path: Path) -> None:
    from deepspike.model.train import run

    ckpt = _checkpoint(tmp_path / "old.ckpt", WindowSpec())
    other = make_corpus(tmp_path / "corpus30k", window=WindowSpec(sampling_frequency=30000.0))
    out = tmp_path / "run"
    cfg = cfg_for(out, [*TINY, f"data.shards={other}", "trainer.max_steps=2", f"ckpt_path={ckpt}"])
    with pytest.raises(DeepSpikeError) as e:
        run(cfg)
    msg = str(e.value)
    assert "old.ckpt" in msg and "manifest.json" in msg and "24000" in msg and "30000" in msg
    assert "ckpt_path=" in msg and "data.shards=" in msg
    assert not (out / "encoder.safetensors").exists()


def test_train_split_smaller_than_a_batch_is_an_error(tmp_path: Path) -> None:
    from deepspike.model.train import run

    small = make_corpus(tmp_path / "small", train_sizes=(40,), val_size=100)
    out = tmp_path / "run"
    cfg = cfg_for(out, [*TINY, f"data.shards={small}", "trainer.max_steps=5"])  # batch 64 > 40 train spikes
    with pytest.raises(DeepSpikeError, match=r"(?s)40 .*data\.batch_size=") as e:
        run(cfg)
    assert str(small) in str(e.value)
    assert not (out / "encoder.safetensors").exists()


def _train_cmd(*overrides: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *TINY, "hydra.run.dir=.", *overrides]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return {**env, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline"}


def test_cli_error_is_one_line_naming_file_and_key(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    proc = subprocess.run(_train_cmd(f"data.shards={missing}"), cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env=_env())  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    err = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(err) == 1 and str(missing) in err[0] and "data.shards=" in err[0]


@pytest.mark.slow
def test_cli_debug_true_keeps_the_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(_train_cmd(f"data.shards={tmp_path / 'nope'}", "debug=true"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=_env())  # fmt: skip
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "DeepSpikeError" in proc.stderr


def test_sigterm_saves_a_resumable_checkpoint_and_exits_nonzero(corpus: Path, tmp_path: Path) -> None:
    import signal
    import time

    from deepspike.model.train import run

    cmd = _train_cmd(f"data.shards={corpus}", "trainer.max_steps=100000", "trainer.val_check_interval=100000")
    env = {**_env(), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # the model summary is printed once fit has started (signal handlers are in place)
        seen.append(line)
        if "Trainable params" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    out = "".join(seen) + out
    assert proc.returncode not in (0, None), out[-3000:]
    ckpt = tmp_path / "checkpoints" / "interrupted.ckpt"
    assert ckpt.exists() and "interrupted.ckpt" in out and "ckpt_path=" in out
    assert not (tmp_path / "encoder.safetensors").exists()
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] > 0 and saved["optimizer_states"] and "deepspike" in saved
    # resumable: a run from it continues at the saved step and finishes
    out_b = tmp_path / "resumed"
    cfg = _with_probe(cfg_for(out_b, [*TINY, f"data.shards={corpus}", f"trainer.max_steps={saved['global_step'] + 3}",
                                      "trainer.val_check_interval=1000", f"ckpt_path={ckpt}"]), out_b)  # fmt: skip
    out_b.mkdir()
    run(cfg)
    assert torch.load(out_b / "start_rank0.pt", weights_only=True)["step"] == saved["global_step"]
    assert (out_b / "encoder.safetensors").exists()


# ---- the model's input normalization (issue 12: swept; stored; a resume with another one is refused) ------------
def test_input_norm_goes_into_the_artifact_and_a_resume_with_another_is_refused(corpus: Path, tmp_path: Path) -> None:
    from deepspike.model.export import load_encoder
    from deepspike.model.train import run

    out = tmp_path / "run"
    over = [*TINY, f"data.shards={corpus}", "trainer.max_steps=3", "model.input_norm.norm_clip=12"]
    run(cfg_for(out, over))
    enc = load_encoder(out / "encoder.safetensors")
    assert enc.window_spec.norm_clip == 12.0 and enc.window_spec.n_before == WindowSpec().n_before
    x = np.random.default_rng(0).normal(0, 30, (64, 20)).astype(np.float32)  # large spikes: clip 4 vs 12 differ
    assert np.isfinite(enc.embed(x)).all()
    ckpt = out / "checkpoints" / "last.ckpt"
    with pytest.raises(DeepSpikeError, match=r"(?s)norm_clip.*ckpt_path="):
        run(cfg_for(tmp_path / "run2", [*TINY, f"data.shards={corpus}", "trainer.max_steps=4", f"ckpt_path={ckpt}"]))


def test_input_norm_unknown_key_is_a_clear_error(corpus: Path, tmp_path: Path) -> None:
    from deepspike.model.train import run

    cfg = cfg_for(tmp_path, [*TINY, f"data.shards={corpus}", "+model.input_norm.n_before=4"])
    with pytest.raises(DeepSpikeError, match=r"model\.input_norm.*n_before"):
        run(cfg)


def test_cpu_threads_sets_torch_threads_and_refuses_nonsense(corpus: Path, tmp_path: Path) -> None:
    from deepspike.model.train import run

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run(cfg_for(tmp_path / "a", [*TINY, f"data.shards={corpus}", "trainer.max_steps=2", "cpu_threads=1"]))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(DeepSpikeError, match=r"cpu_threads=0"):
        run(cfg_for(tmp_path / "b", [*TINY, f"data.shards={corpus}", "cpu_threads=0"]))
