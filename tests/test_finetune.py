"""Fine-tuning: per-recording adaptation in the sort path, the train.py experiment, freezing, provenance, guards.

The parent is the bundled checkpoint when it exists; otherwise a tiny VAE pretrained here (in-process, a few
seconds) on windows of generated recordings, so no test depends on the bundled model being trained yet.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from deepspike.data.shards import file_digest
from deepspike.errors import DeepSpikeError, SpecMismatchError
from deepspike.evaluation.compare import compare_to_ground_truth
from deepspike.model.collapse import CollapseMetric, gmm_scores, split_purity
from deepspike.model.export import export_encoder, load_encoder, save_encoder
from deepspike.model.finetune import FinetuneParams, finetune_on_windows
from deepspike.model.lineage import load_parent, parent_objective
from deepspike.model.nets import encoder_layers, freeze_encoder
from deepspike.sorting.features import DEFAULT_CHECKPOINT
from deepspike.sorting.outputs import FINETUNED_NAME
from deepspike.sorting.params import SortParams
from deepspike.sorting.pipeline import run_sort
from deepspike.spec import WindowSpec, normalize

REPO = Path(__file__).resolve().parents[1]
FAST = {"steps": 120, "eval_every": 40}


def gt_recording(seed: int = 3, duration_s: float = 30.0) -> tuple[Any, Any]:
    """SpikeInterface ground-truth recording, one channel, three clearly different units (as in test_sort)."""
    from test_sort import three_unit_recording

    return three_unit_recording(duration_s=duration_s, seed=seed)


@pytest.fixture(scope="session")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled checkpoint, else a tiny VAE pretrained here on windows of four generated recordings."""
    if DEFAULT_CHECKPOINT.exists():
        return DEFAULT_CHECKPOINT
    from deepspike.model.nets import MLPNet
    from deepspike.spikes.extract import extract_spikes

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("parent")
    init = export_encoder(MLPNet(hidden=64, latent=4), root / "init.safetensors", {"steps": 0})
    waves = [extract_spikes(generate(s), spec=WindowSpec()).waves for s in (101, 102, 103, 104)]
    pretrain = {"steps": 600, "lr": 2e-3, "tolerance": 10.0, "eval_every": 600, "beta": 0.1}
    enc = finetune_on_windows(init, np.concatenate(waves), pretrain)
    return save_encoder(enc, root / "tiny_parent.safetensors")


def generate(seed: int) -> Any:
    from deepspike.recording.synthetic import generate_recording

    return generate_recording(seed, duration_s=20.0, num_units=4, sampling_frequency="random")[0]


@pytest.fixture(scope="module")
def recording_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated recording saved as a SpikeInterface folder with its ground truth beside it (NAME.gt/)."""
    rec, gt = gt_recording()
    folder = tmp_path_factory.mktemp("rec") / "three_units"
    rec.save(folder=folder, chunk_duration="10s")
    gt.save(folder=folder.parent / "three_units.gt")
    return folder


@pytest.fixture(scope="module")
def sorted_pair(parent: Path, recording_folder: Path) -> tuple[Any, Any, Any]:
    """(frozen result, fine-tuned result, ground truth) on the saved recording."""
    from deepspike.recording.ground_truth import load_ground_truth
    from deepspike.recording.readers import open_recording

    rec = open_recording(recording_folder)
    gt = load_ground_truth(recording_folder, recording=rec)
    before = run_sort(str(recording_folder), parent, SortParams())
    after = run_sort(str(recording_folder), parent, SortParams(finetune=True))  # the default options
    return before, after, gt


def _recon(encoder: Any, waves: np.ndarray) -> float:
    x = normalize(torch.as_tensor(waves), encoder.window_spec)
    with torch.no_grad():
        x_hat = encoder.net.eval()(x)[0]
    return float(torch.nn.functional.mse_loss(x_hat, x))


# ------------------------------------------------------------------------------------------- sort path


def test_finetune_lowers_recon_and_keeps_accuracy(sorted_pair: tuple[Any, Any, Any], parent: Path) -> None:
    before, after, gt = sorted_pair
    ft = after.finetuned
    assert ft is not None and before.finetuned is None
    np.testing.assert_array_equal(before.waves, after.waves)  # same spikes: the pipeline reused its windows
    assert _recon(ft, after.waves) < _recon(load_encoder(parent), after.waves)
    acc_before = compare_to_ground_truth(before.sorting, gt)["accuracy"].mean()
    acc_after = compare_to_ground_truth(after.sorting, gt)["accuracy"].mean()
    # the bound ("no recording worse by more than 0.01"); seeded, this one measures -0.0058 (10 of 1,700
    # spikes). The old 0.005 passed only while the VAE drew z from an unseeded global RNG.
    assert acc_after >= acc_before - 0.01, (acc_before, acc_after)
    assert "finetune" in after.timings  # its speed is measured by bench/finetune.py, not asserted in a test


def test_lost_units_allows_splits_and_catches_merges_and_drops() -> None:
    from deepspike.sorting.pipeline import lost_units

    ref = np.repeat([0, 1, 2, 3], 100)
    assert lost_units(ref, ref, 50) == []
    split = np.where((ref == 0) & (np.arange(400) % 2 == 0), 9, ref)  # unit 0 in two: adaptation's purpose
    assert lost_units(ref, split, 50) == []
    merged = np.where(ref == 1, 2, ref)  # units 1 and 2 as one: the unit without a majority is lost
    merged[300:310] = 2  # (10 of unit 3's spikes too: unit 3 keeps its own majority unit)
    assert lost_units(ref, merged, 50) in ([1], [2])
    dropped = np.where(ref == 3, -1, ref)  # unit 3's spikes left unassigned
    assert lost_units(ref, dropped, 50) == [3]
    assert lost_units(np.r_[ref, np.full(20, 7)], np.r_[ref, np.full(20, -1)], 50) == []  # below min_spikes


def test_finetune_never_sorts_worse_than_the_parent_on_a_probe(parent: Path) -> None:
    """Issue 23: a 32-channel recording where fine-tuning lost a unit (0.978 -> 0.833, the guard kept the last
    weights); the sort's own check (no parent unit lost) must return the parent's units and weights."""
    from spikeinterface.core import generate_ground_truth_recording

    rec, gt = generate_ground_truth_recording(durations=[60.0], num_channels=32, num_units=10, seed=1)
    opts = {"threads": 1}
    before = run_sort(rec, parent, SortParams())
    after = run_sort(rec, parent, SortParams(finetune=True, finetune_options=opts))
    acc = [compare_to_ground_truth(r.sorting, gt)["accuracy"].mean() for r in (before, after)]
    assert acc[1] >= acc[0] - 1e-9, acc
    record = after.finetuned.spec["provenance"]["finetune"]
    assert "sort_check" in record
    if record["sort_check"]["parent_units_lost"]:  # rejected: the written encoder is the parent, bit for bit
        assert record["kept"] == "parent" and "sort check" in record["reason"]
        p = load_encoder(parent).net.state_dict()
        assert all(torch.equal(v, p[k]) for k, v in after.finetuned.net.state_dict().items())
        assert np.array_equal(after.labels, before.labels)


def test_provenance_names_parent_and_data(sorted_pair: tuple[Any, Any, Any], parent: Path, tmp_path: Path) -> None:
    _, after, _ = sorted_pair
    path = save_encoder(after.finetuned, tmp_path / "ft.safetensors")
    enc = load_encoder(path)
    prov = enc.spec.provenance
    assert prov["parent"]["path"] == str(parent) and prov["parent"]["sha256"] == file_digest(parent)["sha256"]
    assert prov["parent"]["provenance"] == load_encoder(parent).spec.provenance
    rec = prov["finetune"]["data"]["recordings"][0]
    detected = len(after.waves) - after.info.get("n_matched_new", 0)  # fine-tuning saw the detected spikes
    assert rec["path"].endswith("three_units") and len(rec["sha256"]) == 64 and rec["num_spikes"] == detected
    assert prov["finetune"]["history"][0]["step"] == 0 and prov["steps"] == prov["finetune"]["steps"]
    x = after.waves[:50]
    np.testing.assert_array_equal(enc.embed(x), after.finetuned.embed(x))
    assert (
        json.loads(path.with_suffix(".json").read_text())["provenance"]["parent"]["sha256"]
        == file_digest(parent)["sha256"]
    )


def test_python_api_finetune(parent: Path) -> None:
    from deepspike import sort

    rec, _ = gt_recording(seed=4, duration_s=15.0)
    sorting = sort(rec, checkpoint=parent, finetune=True, finetune_options={"steps": 30, "eval_every": 30})
    ft = sorting.deepspike.finetuned
    assert ft is not None and ft.spec.provenance["finetune"]["data"]["recordings"][0]["recording"]
    with pytest.raises(DeepSpikeError, match="unknown finetune option"):
        sort(rec, checkpoint=parent, finetune=True, finetune_options={"stepz": 3})
    with pytest.raises(DeepSpikeError, match="features=encoder"):
        SortParams(features="pca", finetune=True)


def test_sort_py_finetune_writes_outputs_and_artifact(parent: Path, recording_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    run = subprocess.run(
        [sys.executable, str(REPO / "sort.py"), f"recording={recording_folder}", f"out={out}", f"checkpoint={parent}",
         "finetune=true", "finetune_options.steps=40", "finetune_options.eval_every=20", "plots=false"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "fine-tuned encoder" in run.stdout
    for name in ("spikes.csv", "units.csv", "sorting", "metrics.csv", "config.yaml", "embeddings.npy"):
        assert (out / name).exists(), name
    enc = load_encoder(out / FINETUNED_NAME)
    assert (out / FINETUNED_NAME).with_suffix(".json").exists()
    assert enc.spec.provenance["parent"]["sha256"] == file_digest(parent)["sha256"]
    emb = np.load(out / "embeddings.npy")
    assert emb.shape[0] == len(pd.read_csv(out / "spikes.csv")) and emb.shape[1] == enc.latent_dim


# ------------------------------------------------------------------------------------------- freezing


@pytest.mark.parametrize("freeze", [2, "encoder"])
def test_freezing_leaves_frozen_weights_bit_identical(parent: Path, freeze: int | str) -> None:
    enc = load_encoder(parent)
    waves = _waves(enc)
    ft = finetune_on_windows(enc, waves, {**FAST, "freeze": freeze, "lr": 1e-2, "tolerance": 10.0})
    before, after = enc.net.state_dict(), ft.net.state_dict()
    frozen = set(ft.spec.provenance["finetune"]["frozen_parameters"])
    n_layers = len(encoder_layers(enc.net)) if freeze == "encoder" else 2
    expected = {f"{n}" for n, _ in enc.net.named_parameters() if _layer_index(enc.net, n) < n_layers}
    assert frozen == expected and frozen
    for name in before:
        same = torch.equal(before[name], after[name])
        assert same if name in frozen else not same, name
    if freeze == "encoder":  # decoder-only adaptation: the embedding is the parent's
        np.testing.assert_array_equal(ft.embed(waves), enc.embed(waves))


def test_finetune_is_reproducible_and_leaves_the_global_rng_alone(parent: Path) -> None:
    """Same waves and seed -> bit-identical encoder, whatever the thread count; a VAE parent samples z from
    torch's global RNG, so this failed before the loop seeded a fork of it."""
    enc = load_encoder(parent)
    waves = _waves(enc)
    opts = {**FAST, "lr": 1e-3, "tolerance": 10.0}
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = finetune_on_windows(enc, waves, {**opts, "threads": 1})
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.rand(7)  # a different global RNG state must not change the result either
    b = finetune_on_windows(enc, waves, {**opts, "threads": 2})
    for name, tensor in a.net.state_dict().items():
        assert torch.equal(tensor, b.net.state_dict()[name]), name
    assert not torch.equal(a.net.state_dict()[name], enc.net.state_dict()[name])


def _layer_index(net: torch.nn.Module, param_name: str) -> int:
    owners = {id(q): i for i, group in enumerate(encoder_layers(net)) for m in group for q in m.parameters()}
    return owners.get(id(dict(net.named_parameters())[param_name]), 10**6)


def _waves(enc: Any, seed: int = 5) -> np.ndarray:
    from deepspike.spikes.extract import extract_spikes

    rec, _ = gt_recording(seed=seed, duration_s=20.0)
    return extract_spikes(rec, spec=enc.window_spec).waves


def test_train_path_freeze_excludes_frozen_from_optimizer(parent: Path, tmp_path: Path) -> None:
    from test_train import TINY, cfg_for

    from deepspike.model.train import build_model

    cfg = cfg_for(tmp_path, [*TINY, "experiment=finetune", f"init_from={parent}", "freeze=2"])
    model = build_model(cfg, WindowSpec())
    frozen = [n for n, q in model.net.named_parameters() if not q.requires_grad]
    assert len(frozen) == 4  # weight + bias of the first two encoder layers
    model.trainer = type("T", (), {"max_steps": 10, "estimated_stepping_batches": 10})()  # what configure reads
    opt = model.configure_optimizers()["optimizer"]
    in_opt = {id(q) for g in opt.param_groups for q in g["params"]}
    assert all(id(q) not in in_opt for n, q in model.net.named_parameters() if n in frozen)
    with pytest.raises(DeepSpikeError, match="freeze"):
        freeze_encoder(model.net, 99)


# ------------------------------------------------------------------------------------------- guards


def test_window_spec_mismatch_is_refused(parent: Path, tmp_path: Path) -> None:
    from test_train import TINY, cfg_for

    from deepspike.model.module import FinetuneDataModule
    from deepspike.model.train import build_model

    enc = load_encoder(parent)
    with pytest.raises(SpecMismatchError, match=r"\[n, 20\]"):
        finetune_on_windows(enc, np.zeros((500, 32), np.float32), FAST)
    with pytest.raises(SpecMismatchError, match="n_before"):
        FinetuneDataModule(recordings=["x"], init_from=str(parent), window={"n_before": 10, "n_after": 22})
    cfg = cfg_for(tmp_path, [*TINY, "experiment=finetune", f"init_from={parent}"])
    with pytest.raises(SpecMismatchError, match="sampling_frequency"):
        build_model(cfg, WindowSpec(sampling_frequency=30000.0))  # a corpus cut on another grid


@pytest.mark.parametrize("with_labels", [True, False], ids=["gt_accuracy", "label_free"])
def test_collapse_guard_keeps_parent_when_quality_falls(parent: Path, with_labels: bool) -> None:
    from deepspike.spikes.extract import extract_spikes

    enc = load_encoder(parent)
    rec, gt = gt_recording(seed=6, duration_s=20.0)
    spikes = extract_spikes(rec, spec=enc.window_spec, gt=gt)
    wreck = {"steps": 60, "eval_every": 20, "lr": 5.0, "grad_clip": 0.0, "warmup_steps": 1, "patience": 1}
    ft = finetune_on_windows(enc, spikes.waves, wreck, labels=spikes.labels if with_labels else None)
    rec_ = ft.spec.provenance["finetune"]
    metric = "gmm_accuracy" if with_labels else "parent_split_purity"
    assert rec_["quality_metric"].startswith(metric) and rec_["stopped_early_at"] is not None
    assert rec_["kept"] == "parent"
    np.testing.assert_array_equal(ft.embed(spikes.waves), enc.embed(spikes.waves))


def test_label_free_quality_prefers_separated_clusters() -> None:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 4)) * 6
    lab = rng.integers(0, 3, 900)
    good = centers[lab] + rng.standard_normal((900, 4))
    collapsed = 0.05 * centers[lab] + rng.standard_normal((900, 4))
    label_free = CollapseMetric()
    assert label_free(good) > 0.98 and label_free.k == 3  # the first embedding scored fixes the reference groups
    assert label_free(collapsed) < label_free(good) - 0.3
    assert CollapseMetric(lab)(good) == gmm_scores(good, lab, max_spikes=3000)[0] > 0.95


def test_split_purity_allows_splits_and_catches_merges() -> None:
    """The label-free guard: splitting the parent's groups (what adaptation should do) keeps ~1, merging them
    (a collapse) does not."""
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 2, 1200)  # the parent's 2 groups; group 1 hides two units 8 apart
    unit = np.where(ref == 0, 0, 1 + rng.integers(0, 2, 1200))
    centers = np.array([[-10.0, 0.0], [10.0, -4.0], [10.0, 4.0]])
    split = centers[unit] + rng.standard_normal((1200, 2))
    merged = np.c_[rng.standard_normal(1200) * 3, rng.standard_normal(1200)]
    assert split_purity(split, ref, k=2) > 0.98
    assert split_purity(merged, ref, k=2) < 0.75


def test_options_are_validated() -> None:
    with pytest.raises(DeepSpikeError, match="lr"):
        FinetuneParams(lr=0)
    with pytest.raises(DeepSpikeError, match="unknown finetune option"):
        FinetuneParams.from_options({"learning_rate": 1e-3})


def test_lightning_checkpoint_as_parent(parent: Path, tmp_path: Path) -> None:
    from deepspike.model.module import SpikeAutoencoder

    enc = load_encoder(parent)
    m = SpikeAutoencoder(enc.net, torch.optim.AdamW, window=enc.window_spec.to_dict())
    ckpt = {"state_dict": m.state_dict(), "global_step": 7}
    m.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "p.ckpt")
    got = load_parent(tmp_path / "p.ckpt")
    x = _waves(enc)[:64]
    np.testing.assert_array_equal(got.embed(x), enc.embed(x))
    assert got.spec.provenance["steps"] == 7


# ------------------------------------------------------------------------------------------- train.py path


def test_train_experiment_finetune_builds_corpus_and_records_provenance(
    parent: Path, recording_folder: Path, tmp_path: Path
) -> None:
    from test_train import TINY, cfg_for

    from deepspike.model.train import run

    small = [o for o in TINY if not o.startswith(("model.hidden", "model.latent"))]  # the parent decides those
    args = [*small, "experiment=finetune", f"init_from={parent}", f"data.recordings=[{recording_folder}]",
            f"data.cache_dir={tmp_path / 'cache'}", "trainer.max_steps=20", "trainer.val_check_interval=10",
            "data.batch_size=128"]  # fmt: skip
    res = run(cfg_for(tmp_path / "a", args))
    enc = load_encoder(res["encoder"])
    prov = enc.spec.provenance
    assert (
        prov["parent"]["sha256"] == file_digest(parent)["sha256"]
        and enc.spec["arch"] == load_encoder(parent).spec["arch"]
    )
    data = prov["finetune"]["data"]
    assert data["recordings"][0]["path"] == str(recording_folder) and len(data["recordings"][0]["sha256"]) == 64
    assert data["splits"]["val"]["num_spikes"] > 0 and len(data["corpus_manifest_sha256"]) == 64
    assert prov["finetune"]["guard"]["parent_quality"] is not None and "val/quality" in res["metrics"]
    corpora = list((tmp_path / "cache").iterdir())
    res_b = run(cfg_for(tmp_path / "b", args))  # same data: the cached corpus is reused
    assert list((tmp_path / "cache").iterdir()) == corpora
    assert load_encoder(res_b["encoder"]).spec.provenance["finetune"]["data"]["corpus"] == data["corpus"]


@pytest.mark.slow
def test_train_finetune_ddp_cpu_with_frozen_layers(parent: Path, recording_folder: Path, tmp_path: Path) -> None:
    from test_train import TINY, cfg_for

    from deepspike.model.train import run

    small = [o for o in TINY if not o.startswith(("model.hidden", "model.latent"))]
    args = [*small, "experiment=finetune", f"init_from={parent}", f"data.recordings=[{recording_folder}]",
            f"data.cache_dir={tmp_path / 'cache'}", "trainer=ddp_cpu", "trainer.max_steps=6",
            "trainer.val_check_interval=3", "freeze=2", "data.batch_size=64"]  # fmt: skip
    res = run(cfg_for(tmp_path / "a", args))
    enc, par = load_encoder(res["encoder"]), load_encoder(parent)
    first = encoder_layers(par.net)[0][0]
    name = next(n for n, m in par.net.named_modules() if m is first)
    assert torch.equal(enc.net.state_dict()[f"{name}.weight"], par.net.state_dict()[f"{name}.weight"])


def test_both_paths_use_one_recipe(parent: Path, tmp_path: Path) -> None:
    """sort.py's finetune_options and train.py experiment=finetune resolve to the same declared recipe."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from test_train import TINY, cfg_for

    from deepspike.model.train import build_model
    from deepspike.paths import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        sort_opts = OmegaConf.to_container(compose("sort").finetune_options, resolve=True)
    small = [o for o in TINY if not o.startswith(("model.", "data.batch_size"))]  # keep the recipe's values
    cfg = cfg_for(tmp_path, [*small, "experiment=finetune", f"init_from={parent}", "finetune.lr=3e-4"])
    recipe = OmegaConf.to_container(cfg.finetune, resolve=True)
    assert {k: v for k, v in recipe.items() if k != "lr"} == {k: v for k, v in sort_opts.items() if k != "lr"}
    assert sort_opts == {f.name: getattr(FinetuneParams(), f.name) for f in fields(FinetuneParams)} | {"seed": None}
    model = build_model(cfg, WindowSpec())
    assert model.hparams.beta == recipe["beta"] and model.hparams.warmup_steps == recipe["warmup_steps"]
    assert model.optimizer_factory.keywords["lr"] == 3e-4  # one override moves the corpus path's optimizer
    assert cfg.trainer.max_steps == recipe["steps"] and cfg.callbacks.collapse_guard.tolerance == recipe["tolerance"]
    # null pretext = the parent's tasks, resolved the same way on both paths
    assert model.pretext.tasks == list(parent_objective(load_encoder(parent))["pretext_tasks"])


def test_contrastive_only_parent_is_refused(parent: Path, tmp_path: Path) -> None:
    """Its decoder never trained, so continuing a reconstruction objective would be garbage: a clear error."""
    enc = load_encoder(parent)
    prov = {**enc.spec["provenance"], "objective": {"objective": "contrastive"}}
    path = export_encoder(enc.net, tmp_path / "c.safetensors", prov, enc.window_spec)
    with pytest.raises(DeepSpikeError, match=r"model\.objective=contrastive"):
        finetune_on_windows(load_encoder(path), np.zeros((500, 20), np.float32), FAST)
