"""The contrastive objective: NT-Xent, its augmentations, that it learns, that train.py runs it (also on DDP)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import TINY, cfg_for, make_corpus

from deepspike.errors import DeepSpikeError
from deepspike.model.nets import MLPNet
from deepspike.model.objective import (
    Objective,
    autoencoder_loss,
    band_augment,
    nt_xent,
    prototype_loss,
    smooth_windows,
    unit_groups,
    unit_mean_target,
)
from deepspike.model.pretext import Pretext, collide, colored_noise
from deepspike.spec import WindowSpec


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_nt_xent_equals_hand_computed_value_for_two_pairs() -> None:
    """Views a1, a2 (window 1, 2) and b1, b2 (their positives); cosines written out by hand, temperature 0.5."""
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.6, 0.8], [0.8, 0.6]]) * 3  # the loss uses cosines: the norm must not matter
    e = lambda c: math.exp(c / 0.5)  # noqa: E731
    # anchor: -log(exp(cos to positive) / sum over the 3 other views of exp(cos))
    a1 = -math.log(e(0.6) / (e(0.0) + e(0.6) + e(0.8)))  # a1: a2 0, b1 0.6 (+), b2 0.8
    a2 = -math.log(e(0.6) / (e(0.0) + e(0.8) + e(0.6)))  # a2: a1 0, b1 0.8, b2 0.6 (+)
    b1 = -math.log(e(0.6) / (e(0.6) + e(0.8) + e(0.96)))  # b1: a1 0.6 (+), a2 0.8, b2 0.48+0.48
    b2 = -math.log(e(0.6) / (e(0.8) + e(0.6) + e(0.96)))  # b2: a1 0.8, a2 0.6 (+), b1 0.96
    expected = (a1 + a2 + b1 + b2) / 4
    assert float(nt_xent(a, b, 0.5)) == pytest.approx(expected, rel=1e-6)
    assert float(nt_xent(a, a, 0.5)) < expected  # identical positives score better


def test_colored_noise_has_the_asked_std_and_correlation() -> None:
    g = torch.Generator().manual_seed(0)
    eps = colored_noise(torch.zeros(20000, 20), g, p=1.0, sigma=0.5, rho=0.6)
    assert float(eps.std()) == pytest.approx(0.5, rel=0.03)
    lag1 = float((eps[:, 1:] * eps[:, :-1]).mean() / eps.var())
    assert lag1 == pytest.approx(0.6, abs=0.03)
    white = colored_noise(torch.zeros(20000, 20), g, p=1.0, sigma=1.0, rho=0.0)
    assert abs(float((white[:, 1:] * white[:, :-1]).mean())) < 0.02


def test_collide_adds_another_window_shifted_and_scaled() -> None:
    """p=1, scale 1: each row gains exactly one other row, shifted by 3..8 samples either way (zero-filled)."""
    x = torch.randn(16, 20, dtype=torch.float64)
    out = collide(x, torch.Generator().manual_seed(1), p=1.0, min_shift=3, max_shift=8, scale_min=1.0, scale_max=1.0)
    diff = out - x
    for i in range(16):
        found = set()
        for j in range(16):
            for s in [*range(-8, -2), *range(3, 9)]:
                ref = torch.zeros(20, dtype=torch.float64)
                if s > 0:
                    ref[s:] = x[j, :-s]
                else:
                    ref[:s] = x[j, -s:]
                if torch.allclose(diff[i], ref):
                    found.add((j, s))
        assert found and all(j != i for j, _ in found), f"row {i}: {found}"
    again = collide(x, torch.Generator().manual_seed(1), p=1.0, min_shift=3, max_shift=8, scale_min=1.0, scale_max=1.0)
    assert torch.equal(out, again)  # seeded


def test_validation_generator_leaves_the_training_augment_alone() -> None:
    aug = Pretext(["collide", "colored_noise"], seed=3)
    x = torch.randn(8, 20)
    first = aug(x)
    aug.reseed(3)
    aug(x, torch.Generator().manual_seed(99))  # fixed validation views
    assert torch.equal(aug(x), first)


def _toy_windows(n: int = 512, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    t = np.arange(20) - 8
    tpl = np.stack([a * np.exp(-(t**2) / (2 * w**2)) for a, w in ((-12, 1.0), (-8, 2.5), (-15, 1.8), (6, 1.2))])
    return torch.as_tensor(tpl[rng.integers(0, 4, n)] + rng.standard_normal((n, 20)), dtype=torch.float32)


def test_contrastive_steps_pull_positives_together(one_thread: object) -> None:
    """A few CPU steps: NT-Xent on fixed views falls and the positive pairs' cosine (before the head) rises."""
    torch.manual_seed(0)
    net = MLPNet(hidden=32, latent=4, variational=True)
    obj = Objective("contrastive", latent=4, temperature=0.2, seed=0)
    obj.freeze_unused(net)
    spec, x = WindowSpec(), _toy_windows()
    decoder_before = [q.detach().clone() for q in net.decoder.parameters()]

    def measure() -> tuple[float, float]:
        with torch.no_grad():
            out = autoencoder_loss(net, x, spec, None, "mse", 0.0, obj, torch.Generator().manual_seed(7))
        return float(out["contrastive"]), float(out["pos_cos"])

    loss0, cos0 = measure()
    opt = torch.optim.Adam([q for m in (net, obj) for q in m.parameters() if q.requires_grad], lr=3e-3)
    for _ in range(40):
        out = autoencoder_loss(net, x[torch.randint(0, len(x), (128,))], spec, None, "mse", 0.0, obj)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    loss1, cos1 = measure()
    assert loss1 < loss0 - 0.3, (loss0, loss1)
    assert cos1 > cos0 + 0.05, (cos0, cos1)
    assert all(torch.equal(a, b) for a, b in zip(decoder_before, net.decoder.parameters(), strict=True))


def test_both_adds_the_weighted_terms() -> None:
    torch.manual_seed(0)
    net, spec, x = MLPNet(hidden=16, latent=4), WindowSpec(), _toy_windows(64)
    obj = Objective("both", latent=4, recon_weight=0.5, weight=2.0, seed=0)
    out = autoencoder_loss(net, x, spec, None, "mse", 0.1, obj, torch.Generator().manual_seed(1))
    expected = 0.5 * (out["recon"] + 0.1 * out["kl"]) + 2.0 * out["contrastive"]
    loss, expected, contrastive = (float(t.detach()) for t in (out["loss"], expected, out["contrastive"]))
    assert loss == pytest.approx(expected, rel=1e-6) and contrastive > 0
    plain = autoencoder_loss(net, x, spec, None, "mse", 0.1)  # fine-tuning's call: reconstruction alone
    assert float(plain["contrastive"]) == 0.0 and plain["mu"].shape == (64, 4)


def test_supcon_with_unique_groups_is_nt_xent_and_pulls_same_units_together() -> None:
    """SupCon: unique ids give NT-Xent exactly; with two windows of one unit, their cross-view pairs count as
    positives, so the loss falls when those two windows point the same way and not otherwise."""
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    assert float(nt_xent(z1, z2, 0.2, torch.arange(6))) == pytest.approx(float(nt_xent(z1, z2, 0.2)), rel=1e-6)
    groups = unit_groups(torch.tensor([0, 0, -1, 1, 1, -1]), torch.tensor([3, 3, 3, 3, 4, 4]))
    assert groups[0] == groups[1] and len(set(groups[2:].tolist())) == 4  # unit 1 of rec 3 != unit 1 of rec 4
    a = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.7, -0.7]])
    apart = a.clone()
    apart[1] = torch.tensor([-0.7, 0.7])
    assert float(nt_xent(a, a, 0.2, groups)) < float(nt_xent(apart, apart, 0.2, groups))


def test_prototype_loss_is_scale_free_and_rewards_separated_units() -> None:
    g = torch.Generator().manual_seed(1)
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, -1, -2, 7])  # -1, -2: unlabelled; 7: a lone window
    centres = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0]])
    noise = torch.randn(12, 2, generator=g) * 0.5
    sep = torch.cat([centres.repeat_interleave(3, 0), torch.randn(3, 2, generator=g)]) + noise
    mixed = sep.clone()
    mixed[:9] = noise[:9]  # every unit on top of the others
    loss = float(prototype_loss(sep, groups))
    assert loss == pytest.approx(float(prototype_loss(sep + 5.0, groups)), rel=1e-5)  # shift free
    assert float(prototype_loss(sep * 1e-3, groups)) > loss + 10  # a shrunken embedding is penalized
    assert loss < float(prototype_loss(mixed, groups)) - 0.3
    moved = sep.clone()
    moved[9:] += 100.0  # unlabelled and lone windows take no part
    assert float(prototype_loss(moved, groups)) == pytest.approx(loss, rel=1e-5)
    with pytest.raises(DeepSpikeError, match="positives=units"):
        Objective("contrastive", loss="prototype", positives="views")


def unlabelled_copy(corpus: Path, tmp_path: Path) -> Path:
    """The corpus's manifest with every recording marked unlabelled (same shards)."""
    manifest = json.loads((corpus / "manifest.json").read_text())
    for r in manifest["recordings"]:
        r["has_labels"] = False
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    (unlabelled / "manifest.json").write_text(json.dumps(manifest).replace('"shards/', f'"{corpus}/shards/'))
    return unlabelled


def test_supcon_trains_on_labels_and_refuses_an_unlabelled_corpus(corpus: Path, tmp_path: Path) -> None:
    from deepspike.model.train import run

    over = [*TINY, "model.objective=both", "model.contrastive.positives=units", "trainer.max_steps=6"]
    res = run(cfg_for(tmp_path / "ok", [*over, f"data.shards={corpus}", "trainer.val_check_interval=3"]))
    assert "val/contrastive" in res["metrics"] and np.isfinite(res["metric"])
    unlabelled = unlabelled_copy(corpus, tmp_path)
    with pytest.raises(DeepSpikeError, match=r"positives=units.*positives=views"):
        run(cfg_for(tmp_path / "no", [*over, f"data.shards={unlabelled}"]))


def test_unit_mean_target_is_the_leave_one_out_mean_of_the_unit() -> None:
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 7.0], [9.0, 1.0]])
    groups = torch.tensor([4, 4, 4, -1, 9])  # unit 4 three times; an unlabelled window; a lone window of unit 9
    t = unit_mean_target(x, groups)
    assert torch.equal(t[0], torch.tensor([4.0, 3.0]))  # mean of rows 1 and 2, not of itself
    assert torch.equal(t[1], torch.tensor([3.0, 2.0]))
    assert torch.equal(t[2], torch.tensor([2.0, 1.0]))
    assert torch.equal(t[3:], x[3:])  # nothing to average with: its own window


def test_unit_mean_target_trains_on_labels_and_refuses_an_unlabelled_corpus(corpus: Path, tmp_path: Path) -> None:
    """The loss changes with the target (it reconstructs the template, not the window); no labels: a clear error."""
    from deepspike.model.train import run

    net = MLPNet(hidden=16, latent=2, depth=2)
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(64, 20, generator=g) * 3
    groups = torch.arange(64) % 4
    spec = WindowSpec()
    own = autoencoder_loss(net, wave, spec, None, "mse", 0.0, Objective("reconstruction"), groups=groups)
    mean = autoencoder_loss(
        net, wave, spec, None, "mse", 0.0, Objective("reconstruction", recon_target="unit_mean"), groups=groups
    )
    assert mean["recon"].item() != pytest.approx(own["recon"].item(), rel=1e-3)
    over = [*TINY, "model.recon_target=unit_mean", "trainer.max_steps=6"]
    res = run(cfg_for(tmp_path / "ok", [*over, f"data.shards={corpus}", "trainer.val_check_interval=3"]))
    assert np.isfinite(res["metric"])
    unlabelled = unlabelled_copy(corpus, tmp_path)
    with pytest.raises(DeepSpikeError, match=r"model.recon_target=unit_mean.*model.recon_target=window"):
        run(cfg_for(tmp_path / "no", [*over, f"data.shards={unlabelled}"]))
    with pytest.raises(DeepSpikeError, match=r"model\.recon_target"):
        Objective("contrastive", recon_target="unit_mean")


def test_band_augment_smooths_each_recording_alike_and_keeps_noise_units() -> None:
    g = torch.Generator().manual_seed(3)
    tmpl = torch.zeros(20)
    tmpl[8], tmpl[9] = -8.0, 3.0
    wave = tmpl + torch.randn(3000, 20, generator=g)
    rec = torch.arange(3000) // 1000  # three recordings of one unit each
    out = band_augment(wave, rec, rec, sigma_max=3.0, p=1.0, g=g)
    lag1 = []
    for r in range(3):
        before, after = wave[rec == r], out[rec == r]
        res_b, res_a = before - before.mean(0), after - after.mean(0)
        assert float(res_a.pow(2).sum()) == pytest.approx(float(res_b.pow(2).sum()), rel=1e-4)  # noise units kept
        lag1.append(float((res_a[:, :-1] * res_a[:, 1:]).mean() / res_a.pow(2).mean()))
    assert max(lag1) > 0.3  # white noise (lag-1 ~0) came out low-passed (sigma is drawn per recording, from 0)
    same = wave[:500].repeat(2, 1)  # one recording holding each window twice, a second one holding it once
    rec2 = torch.arange(1500) // 1000
    two = band_augment(torch.cat([same, wave[:500]]), rec2, rec2, 3.0, 1.0, g)
    assert torch.equal(two[:500], two[500:1000])  # one smoothing per recording
    assert not torch.allclose(two[:500], two[1000:], atol=1e-3)  # another recording draws another
    assert torch.equal(band_augment(wave, rec, rec, 3.0, 0.0, g), wave)  # p = 0: unchanged
    assert torch.equal(smooth_windows(wave, torch.zeros(3000)), wave)


def test_band_augment_applies_in_training_only() -> None:
    net = MLPNet(hidden=16, latent=2, depth=2, variational=False)  # deterministic
    g = torch.Generator().manual_seed(0)
    wave = torch.randn(64, 20, generator=g) * 3
    rec, spec = torch.arange(64) % 2, WindowSpec()
    groups = unit_groups(torch.arange(64) % 4, rec)
    kw = {"recon_target": "unit_mean"}
    off, on = Objective("reconstruction", **kw), Objective("reconstruction", band={"p": 1.0}, **kw)
    val = [autoencoder_loss(net, wave, spec, None, "mse", 0.0, o, groups=groups, rec=rec)["recon"] for o in (off, on)]
    assert val[0].item() == val[1].item()  # validation (no pretext): the data as it is
    ident = Pretext(tasks=())
    tr = [autoencoder_loss(net, wave, spec, ident, "mse", 0.0, o, groups=groups, rec=rec)["recon"] for o in (off, on)]
    assert tr[0].item() != pytest.approx(tr[1].item(), rel=1e-3)
    with pytest.raises(DeepSpikeError, match="recon_target=unit_mean"):
        Objective("reconstruction", band={"p": 0.5})


@pytest.mark.parametrize(
    ("option", "match"),
    [({"kind": "simclr"}, "model.objective='simclr'"), ({"temperature": 0}, "model.contrastive.temperature"),
     ({"augment": {"tasks": ["blur"]}}, "model.contrastive.augment")],
)  # fmt: skip
def test_bad_options_name_the_key(option: dict, match: str) -> None:
    with pytest.raises(DeepSpikeError, match=match):
        Objective(**{"kind": "contrastive", **option})


@pytest.mark.parametrize("objective", ["contrastive", "both"])
def test_train_exports_an_encoder_that_loads_and_embeds(objective: str, corpus: Path, tmp_path: Path) -> None:
    """train.py model.objective=...: the artifact holds the net only (no projection head) and load_encoder embeds."""
    from safetensors import safe_open

    from deepspike.model.export import load_encoder
    from deepspike.model.train import run

    res = run(cfg_for(tmp_path, [*TINY, f"data.shards={corpus}", f"model.objective={objective}",
                                 "trainer.max_steps=12", "trainer.val_check_interval=6"]))  # fmt: skip
    assert "val/contrastive" in res["metrics"] and np.isfinite(res["metric"])
    art = tmp_path / "encoder.safetensors"
    enc = load_encoder(art)
    with safe_open(str(art), framework="pt") as f:
        keys = set(f.keys())
    assert keys == set(enc.net.state_dict()) and not any("projector" in k for k in keys)
    emb = enc.embed(_toy_windows(10).numpy())
    assert emb.shape == (10, 4) and np.isfinite(emb).all() and emb.std() > 0
    prov = json.loads(art.with_suffix(".json").read_text())["provenance"]
    assert prov["objective"]["objective"] == objective
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert any(k.startswith("objective.projector.") for k in ckpt["state_dict"]) and "augment" in ckpt["deepspike"]


@pytest.mark.slow  # about 45 s on 2 shared cores (process spawn + gloo)
def test_contrastive_ddp_cpu_two_ranks(corpus: Path, tmp_path: Path) -> None:
    """DDP (2 CPU processes, gloo) with the decoder unused: frozen, so no unused-parameter error."""
    from deepspike.model.export import load_encoder
    from deepspike.model.train import run

    res = run(cfg_for(tmp_path, [*TINY, f"data.shards={corpus}", "trainer=ddp_cpu", "model.objective=contrastive",
                                 "trainer.max_steps=6", "trainer.val_check_interval=3"]))  # fmt: skip
    assert "val/score" in res["metrics"]
    assert load_encoder(tmp_path / "encoder.safetensors").embed(np.zeros((3, 20), np.float32)).shape == (3, 4)
