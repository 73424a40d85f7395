"""Nets, losses and pretext transforms: shapes, parameter counts, no dead parameters, seeding."""

from __future__ import annotations

import pytest
import torch

from deepspike.evaluation.compare import matched_accuracy
from deepspike.model import pretext as P
from deepspike.model.module import SpikeAutoencoder
from deepspike.model.nets import ConvNet, MLPNet, build_net, count_parameters, mlp_widths
from deepspike.model.objective import loss_terms, warmup_cosine


def test_published_architecture() -> None:
    net = MLPNet()
    assert mlp_widths(2048, 4) == [2048, 1024, 512, 512]
    assert 5.8e6 < count_parameters(net) < 6.0e6
    assert net.head.out_features == 16  # mean + log-variance of an 8-d latent
    assert [m.out_features for m in net.decoder if isinstance(m, torch.nn.Linear)] == [512, 512, 1024, 2048, 20]


@pytest.mark.parametrize(
    "net",
    [
        MLPNet(hidden=64, norm="batch"),
        MLPNet(hidden=64, norm="layer", variational=False, activation="relu", out_head="tanh"),
        MLPNet(widths=[32, 16], latent=3, dropout=0.1),
        ConvNet(channels=[4, 8], hidden=32, norm="batch"),
        ConvNet(channels=[4], hidden=32, norm="layer", variational=False),
        MLPNet(hidden=64, linear_skip=True),
        ConvNet(channels=[4], hidden=32, variational=False, linear_skip=True),
    ],
)
def test_every_parameter_gets_a_gradient(net: torch.nn.Module) -> None:
    """DDP with find_unused_parameters=False needs every parameter in the graph (published VAE: dead BN)."""
    x = torch.randn(16, 20)
    x_hat, mu, logvar = net.train()(x)
    assert x_hat.shape == x.shape and mu.shape == (16, net.latent)
    rec, kl = loss_terms(x_hat, x, mu, logvar)
    (rec + kl).backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None]
    assert not dead
    rebuilt = build_net(net.arch)
    assert count_parameters(rebuilt) == count_parameters(net)


@pytest.mark.parametrize("variational", [True, False])
def test_linear_skip_starts_as_pca_and_round_trips(variational: bool) -> None:
    """``init_skip_pca``: the embedding equals scikit-learn's PCA scores (up to each axis' sign) before training,
    and a net rebuilt from ``arch`` with the same state dict embeds the same."""
    from sklearn.decomposition import PCA

    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 20, generator=g) @ torch.randn(20, 20, generator=g) + 3.0
    net = MLPNet(hidden=32, latent=4, variational=variational, linear_skip=True)
    net.init_skip_pca(x)
    emb = net.eval().embed(x).detach().numpy()
    ref = PCA(4).fit_transform(x.numpy())
    sign = (emb * ref).sum(0) / abs((emb * ref).sum(0))
    assert abs(emb - ref * sign).max() < 1e-3 * abs(ref).max()
    rebuilt = build_net(net.arch)
    rebuilt.load_state_dict(net.state_dict())
    assert torch.equal(rebuilt.eval().embed(x), net.embed(x))
    with pytest.raises(Exception, match="linear_skip"):
        MLPNet(hidden=32).init_skip_pca(x)


def test_embedding_is_deterministic_posterior_mean() -> None:
    net = MLPNet(hidden=32).train()
    x = torch.randn(8, 20)
    assert torch.equal(net.embed(x), net.embed(x))
    assert torch.equal(net.embed(x), net.encode(x)[0])


def test_loss_reduction_is_batch_size_invariant() -> None:
    torch.manual_seed(0)
    mu, logvar, x = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 20)
    r1, k1 = loss_terms(x, x + 1, mu, logvar)
    r2, k2 = loss_terms(x.repeat(50, 1), (x + 1).repeat(50, 1), mu.repeat(50, 1), logvar.repeat(50, 1))
    assert torch.allclose(r1, r2) and torch.allclose(k1, k2)
    assert loss_terms(x, x, mu, None)[1] == 0


def test_kl_warmup_and_lr_schedule() -> None:
    m = SpikeAutoencoder(MLPNet(hidden=32), torch.optim.AdamW, beta=2.0, kl_warmup_steps=10)
    assert m.beta_now() == 0.0
    f = warmup_cosine(10, 110, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(110) == pytest.approx(0.1) and f(60) == pytest.approx(0.55)


def test_matched_accuracy() -> None:
    import numpy as np

    lab = np.array([0, 0, 1, 1, 2, 2])
    assert matched_accuracy(lab, np.array([5, 5, 3, 3, 1, 1])) == 1.0
    assert matched_accuracy(lab, np.array([0, 0, 0, 0, 1, 1])) == pytest.approx(4 / 6)


@pytest.mark.parametrize("task", sorted(P.TRANSFORMS))
def test_pretext_keeps_shape_and_is_seeded(task: str) -> None:
    x = torch.randn(256, 20)
    a = P.Pretext([task], seed=3)(x)
    b = P.Pretext([task], seed=3)(x)
    c = P.Pretext([task], seed=4)(x)
    assert a.shape == x.shape and a.dtype == x.dtype and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_permuting_tasks_preserve_values() -> None:
    """shuffle / jigsaw / flip / roll rearrange a window's samples; they never invent values."""
    x = torch.randn(128, 20)
    for task in ("shuffle", "jigsaw", "flip", "roll"):
        y = P.Pretext([task], params={task: {"p": 1.0}}, seed=0)(x)
        assert torch.equal(y.sort(dim=1).values, x.sort(dim=1).values), task
    y = P.Pretext(["shuffle"], params={"shuffle": {"frac": 0.3}}, seed=0)(x)
    changed = (y != x).sum(dim=1)
    assert changed.max() <= 6  # only the 6 chosen positions move


def test_pretext_composes_probability_and_state() -> None:
    x = torch.randn(1000, 20)
    y = P.Pretext(["flip"], params={"flip": {"p": 0.5}}, seed=0)(x)
    frac = (y != x).any(dim=1).float().mean().item()
    assert 0.4 < frac < 0.6
    pt = P.Pretext(["mask", "noise", "time_shift"], seed=1)
    pt(x)
    state = pt.state_dict()
    nxt = pt(x)
    pt2 = P.Pretext(["mask", "noise", "time_shift"], seed=99)
    pt2.load_state_dict(state)
    assert torch.equal(pt2(x), nxt)  # exact resume of the corruption stream
    assert torch.equal(P.Pretext([], seed=0)(x), x)
    with pytest.raises(ValueError, match="unknown pretext"):
        P.Pretext(["bogus"])
