"""Lightning pieces: the AE/VAE ``SpikeAutoencoder`` and the ``SpikeDataModule`` over the shard stream.

Loss reduction (the published code sums KL over the batch but averages reconstruction, so KL dominates as the
batch grows): here *both* terms are per-sample sums divided by the window length, averaged over the batch:

    recon = mean_{batch, samples} |x_hat - x|^q          (q = 2 for ``mse``, 1 for ``l1``)
    kl    = mean_batch( sum_latent KL(q(z|x) || N(0, I)) ) / window_length
    loss  = recon + beta * min(1, step / kl_warmup_steps) * kl

so ``beta`` means the same at any batch size, and ``beta = 1`` with ``mse`` is the ELBO of a unit-variance
Gaussian decoder up to constants. The AE has ``kl = 0``.

With ``model.objective=contrastive|both`` (``deepspike.model.objective``) a contrastive term joins (or replaces) it:

    contrastive = mean_{2B views} -log softmax_j(cos(z_i, z_j) / temperature)[positive of i]   (NT-Xent, per rank)
    loss        = recon_weight * (recon + beta_t * kl) * [objective != contrastive]
                  + weight * contrastive * [objective != reconstruction]

NT-Xent is already a per-view mean, so it too means the same at any batch size (its scale is ``log(2B - 1)`` at
chance; the number of negatives, not the reduction, grows with the batch).

Data flow of a step: ``batch["wave"]`` (noise units, float32) -> pretext corruption (on the device, seeded)
-> ``spec.normalize`` -> net; the target is ``normalize(clean)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from deepspike.errors import DeepSpikeError
from deepspike.model.collapse import gmm_scores
from deepspike.model.objective import RECON, Objective, autoencoder_loss, unit_groups, warmup_cosine
from deepspike.model.pretext import Pretext
from deepspike.spec import WindowSpec, normalize


class SpikeAutoencoder(pl.LightningModule):
    """AE / VAE on spike windows (``net.variational`` decides), with batched on-device pretext tasks, and
    optionally a contrastive term (``objective``, ``recon_weight``, ``contrastive``: see ``deepspike.model.objective``).

    Logged: ``train/loss|recon|kl|beta|samples_per_s`` (+ ``train/contrastive|pos_cos``), ``val/recon``,
    ``val/kl``, ``val/loss`` (+ ``val/contrastive|pos_cos`` on views drawn from the same seed every validation),
    and when the validation split carries labels ``val/gmm_acc`` and ``val/gmm_ari`` (mean over recordings).
    ``val/score`` is ``val/gmm_acc`` when labels exist, else ``-val/recon`` (``-val/loss`` with a contrastive
    term, whose decoder may be untrained): one key, always "higher is better", that checkpoints and sweeps optimize.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        pretext: Pretext | None = None,
        window: dict[str, Any] | None = None,
        recon: str = "mse",
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.05,
        cluster_metric: bool = True,
        cluster_max_spikes: int = 5000,
        compile: bool = False,
        seed: int = 0,
        objective: str = "reconstruction",
        recon_weight: float = 1.0,
        contrastive: dict[str, Any] | None = None,
        recon_target: str = "window",
        band: dict[str, float] | None = None,
    ) -> None:
        super().__init__()
        if recon not in RECON:
            raise ValueError(f"unknown recon loss {recon!r}; choose one of {sorted(RECON)}")
        self.save_hyperparameters(ignore=["net", "optimizer", "pretext"], logger=False)
        self.net = net
        self.optimizer_factory = optimizer
        self.pretext = pretext if pretext is not None else Pretext(tasks=())
        self.spec = WindowSpec.from_dict(window or {})
        latent = int(getattr(net, "latent", 8))  # net=None while fine-tuning: setup() fits the head to the parent
        self.objective = Objective(
            objective, latent, recon_weight, seed=seed, recon_target=recon_target, band=band, **dict(contrastive or {})
        )
        self._val_gen: torch.Generator | None = None
        if getattr(net, "arch", {}).get("in_dim", self.spec.length) != self.spec.length:
            raise ValueError(f"net in_dim {net.arch['in_dim']} != window length {self.spec.length} of the corpus")
        self._val: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._t_last: float | None = None
        self._recon_sum, self._recon_n = 0.0, 0
        object.__setattr__(self, "_compiled", None)  # not a submodule: state_dict keys stay "net.*"

    # ---- set-up -------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.pretext.reseed(self.hparams.seed + 1000003 * self.global_rank)  # different corruption per rank
        self.objective.augment.reseed(self.hparams.seed + 2000003 + 1000003 * self.global_rank)
        self.objective.fit_latent(self.net.latent)  # after build_model set the net (fine-tuning replaces it)
        self.objective.freeze_unused(self.net)
        if self.hparams.compile:
            object.__setattr__(self, "_compiled", torch.compile(self.net))

    def configure_optimizers(self) -> dict[str, Any]:
        # frozen parameters (fine-tuning with freeze=k) stay out of the optimizer: no weight decay creeps in
        opt = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else None
        total = total or int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(self.hparams.warmup_steps, total, self.hparams.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train(self, mode: bool = True) -> SpikeAutoencoder:
        """Also keeps layers frozen for fine-tuning in eval mode (their BatchNorm statistics must not move)."""
        super().train(mode)
        for m in self.net.modules():
            if getattr(m, "_ds_frozen", False):
                m.eval()
        return self

    # ---- steps --------------------------------------------------------------------------------------------
    def beta_now(self) -> float:
        w = self.hparams.kl_warmup_steps
        return float(self.hparams.beta) * (min(1.0, self.global_step / w) if w > 0 else 1.0)

    def _step(
        self, batch: dict[str, torch.Tensor], corrupt: bool, beta: float = 0.0, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        pretext = self.pretext if corrupt else None
        net = self._compiled or self.net
        groups = rec = None
        if self.objective.needs_labels:
            if "label" not in batch:
                raise DeepSpikeError(
                    f"{self.objective.label_options} needs unit labels in the training batches; train on a labelled "
                    "corpus (e.g. deepspike-corpus synthetic=broad) or change the setting as shown"
                )
            groups, rec = unit_groups(batch["label"], batch["rec"]), batch["rec"]
        wave = batch["wave"]
        return autoencoder_loss(
            net, wave, self.spec, pretext, self.hparams.recon, beta, self.objective, generator, groups, rec
        )

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        beta = self.beta_now()
        out = self._step(batch, corrupt=True, beta=beta)
        loss = out["loss"]
        n = batch["wave"].shape[0]
        logs = {"train/loss": loss, "train/recon": out["recon"], "train/kl": out["kl"], "train/beta": beta,
                "trainer/global_step": float(self.global_step + 1)}  # fmt: skip
        if self.objective.contrasts:
            logs.update({"train/contrastive": out["contrastive"], "train/pos_cos": out["pos_cos"]})
        self.log_dict(logs, on_step=True, on_epoch=False, prog_bar=False, batch_size=n)
        now = time.perf_counter()
        if self._t_last is not None:
            sps = n * self.trainer.world_size / max(now - self._t_last, 1e-9)
            self.log("train/samples_per_s", sps, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
        self._t_last = now
        return loss

    def on_train_epoch_start(self) -> None:
        dl = self.trainer.train_dataloader
        ds = getattr(dl, "dataset", None)
        if callable(getattr(ds, "set_epoch", None)):
            ds.set_epoch(self.current_epoch)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self._step(batch, corrupt=False, beta=self.hparams.beta, generator=self._val_generator())
        n = batch["wave"].shape[0]
        loss = out["loss"]
        # without a contrastive term the label-free score is -recon (as always); with one, -loss
        self._recon_sum += float(out["recon"] if not self.objective.contrasts else loss) * n
        self._recon_n += n
        logs = {"val/recon": out["recon"], "val/kl": out["kl"], "val/loss": loss}
        if self.objective.contrasts:
            logs.update({"val/contrastive": out["contrastive"], "val/pos_cos": out["pos_cos"]})
        self.log_dict(logs, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        if self.hparams.cluster_metric and "label" in batch and "rec" in batch:
            mu = out["mu"].float().cpu().numpy()
            self._val.append((mu, batch["label"].cpu().numpy(), batch["rec"].cpu().numpy()))

    def on_validation_epoch_start(self) -> None:
        self._val, self._recon_sum, self._recon_n = [], 0.0, 0
        self._val_gen = None  # same validation views every time: val/contrastive is comparable across steps

    def _val_generator(self) -> torch.Generator | None:
        """Generator of the validation views (fixed seed per rank); leaves the training augment's state alone."""
        if not self.objective.contrasts:
            return None
        if self._val_gen is None or self._val_gen.device != self.device:
            self._val_gen = torch.Generator(device=self.device)
            self._val_gen.manual_seed(self.hparams.seed + 7 + 1000003 * self.global_rank)
        return self._val_gen

    def on_validation_epoch_end(self) -> None:
        acc, ari = self._cluster_scores()
        recon = self._recon_sum / self._recon_n if self._recon_n else None
        if acc is not None:
            self.log_dict({"val/gmm_acc": acc, "val/gmm_ari": ari}, sync_dist=True)
            score = acc
        else:
            score = -float(recon) if recon is not None else float("nan")
        self.log("val/score", score, sync_dist=True, prog_bar=True)
        self._val = []

    def _cluster_scores(self) -> tuple[float | None, float | None]:
        """Mean over validation recordings of GMM matched accuracy / ARI (labels are unique per recording)."""
        if not self._val:
            return None, None
        emb = np.concatenate([v[0] for v in self._val])
        lab = np.concatenate([v[1] for v in self._val])
        rec = np.concatenate([v[2] for v in self._val])
        accs, aris = [], []
        for r in np.unique(rec):
            a, b = gmm_scores(emb[rec == r], lab[rec == r], seed=0, max_spikes=self.hparams.cluster_max_spikes)
            if not math.isnan(a):
                accs.append(a)
                aris.append(b)
        if not accs:
            return None, None
        return float(np.mean(accs)), float(np.mean(aris))

    # ---- embedding and checkpoints ------------------------------------------------------------------------
    @torch.inference_mode()
    def embed(self, waves: np.ndarray | torch.Tensor) -> np.ndarray:
        """Embeddings of raw (noise-unit) windows, exactly as the exported encoder computes them."""
        was = self.net.training
        self.net.eval()
        x = torch.as_tensor(np.asarray(waves, dtype=np.float32), device=self.device)
        out = self.net.embed(normalize(x, self.spec)).float().cpu().numpy()
        self.net.train(was)
        return out

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["deepspike"] = {
            "arch": dict(self.net.arch),
            "window": self.spec.to_dict(),
            "pretext": self.pretext.state_dict(),
            "augment": self.objective.augment.state_dict(),
            "rng_per_rank": self._rng_states(),  # exact resume: every rank's pretext, augment and torch generators
        }

    def _rng_states(self) -> list[dict[str, Any]]:
        """The pretext generator and torch's global generators (VAE sampling, dropout) of every rank, by rank."""
        mine = {
            "pretext": self.pretext.state_dict(),
            "augment": self.objective.augment.state_dict(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and self.device.type == "cuda":
            mine["cuda"] = torch.cuda.get_rng_state(self.device)
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return [mine]
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, mine)  # every rank saves (Lightning's dump_checkpoint runs on all ranks)
        return out

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("deepspike", {})
        per_rank = saved.get("rng_per_rank")
        world = self.trainer.world_size if self._trainer is not None else 1
        if per_rank and len(per_rank) == world:
            mine = per_rank[self.global_rank]
            self.pretext.load_state_dict(mine["pretext"], device=self.device)
            if "augment" in mine:
                self.objective.augment.load_state_dict(mine["augment"], device=self.device)
            torch.set_rng_state(mine["torch"])
            if "cuda" in mine and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"], self.device)
            return
        for name, pretext, offset in (("pretext", self.pretext, 0), ("augment", self.objective.augment, 2000003)):
            state = saved.get(name)
            if state is None:
                continue
            if self.global_rank == 0:
                pretext.load_state_dict(state, device=self.device)
            else:  # saved with another number of ranks: continue on a fresh, rank- and step-specific seed
                step = checkpoint.get("global_step", 0)
                pretext.reseed(self.hparams.seed + offset + 1000003 * self.global_rank + step)


class SpikeDataModule(pl.LightningDataModule):
    """Train / validation loaders over a corpus (directory, ``manifest.json``, or a glob of shards).

    Thin on purpose: sharding by node and worker, the row-level shuffle and equal batch counts per rank are the
    stream's job (``deepspike.data.loader.make_loader``; the rank comes from torch.distributed, so loaders are built
    after Lightning set up the process group). Validation batches carry ``label`` and ``rec`` for the GMM metric.
    """

    def __init__(
        self,
        shards: str,
        batch_size: int = 512,
        val_batch_size: int = 4096,
        num_workers: int = 0,
        shuffle_buffer: int = 65536,
        resample: bool = False,
        persistent_workers: bool = False,
        pin_memory: bool | None = None,
        seed: int = 0,
        allow_pipe: bool = False,
        train_labels: bool = False,
    ) -> None:
        super().__init__()
        self.shards = str(shards)
        self.train_labels = bool(train_labels)  # set by train.build when the objective needs unit labels
        self.allow_pipe = bool(allow_pipe)  # pipe:CMD shard URLs run CMD (conf/data/demo.yaml)
        self.batch_size, self.val_batch_size = int(batch_size), int(val_batch_size)
        self.num_workers, self.shuffle_buffer = int(num_workers), int(shuffle_buffer)
        self.resample, self.persistent_workers = bool(resample), bool(persistent_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.seed = int(seed)
        self._manifest: dict[str, Any] | None = None

    @property
    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            from deepspike.data.stream import load_manifest

            self._manifest = load_manifest(self.shards, self.allow_pipe)[0]
        return self._manifest

    def split_size(self, split: str) -> int:
        s = self.manifest.get("splits", {}).get(split)
        if s is not None:
            return int(s.get("num_spikes", 0))
        return sum(int(x["num_spikes"]) for x in self.manifest["shards"] if x.get("split", "train") == split)

    def train_dataloader(self) -> Any:
        from deepspike.data.loader import make_loader

        return make_loader(
            self.shards, split="train", batch_size=self.batch_size, shuffle=True, seed=self.seed,
            num_workers=self.num_workers, buffer_rows=self.shuffle_buffer, resample=self.resample,
            persistent_workers=self.persistent_workers, pin_memory=self.pin_memory, drop_last=True,
            allow_pipe=self.allow_pipe, return_labels=self.train_labels,
        )  # fmt: skip

    def val_dataloader(self) -> Any:
        from deepspike.data.loader import make_loader

        if self.split_size("val") == 0:
            return []
        return make_loader(
            self.shards, split="val", batch_size=self.val_batch_size, shuffle=False, seed=self.seed,
            num_workers=0, return_labels=True, drop_last=False, pin_memory=self.pin_memory, allow_pipe=self.allow_pipe,
        )  # fmt: skip


class FinetuneDataModule(SpikeDataModule):
    """``SpikeDataModule`` over the lab's ``recordings``, cut with the parent's (``init_from``) window spec.

    The corpus is built once into ``cache_dir/<content hash>`` (``data.finetune_corpus.build_finetune_corpus``;
    ``val_fraction`` of each recording's time held out) and reused by later runs. ``shards`` (an existing corpus)
    replaces ``recordings``. A ``window`` that differs from the parent's raises ``SpecMismatchError``; a corpus
    cut with another spec is refused when the model is built (``train.build_model``).
    """

    def __init__(
        self,
        recordings: list[str] | str | None = None,
        init_from: str | None = None,
        cache_dir: str = "data/finetune_corpus",
        val_fraction: float = 0.1,
        extract: dict[str, Any] | None = None,
        window: dict[str, Any] | None = None,
        shard_spikes: int = 512,
        build_block_size: int = 256,
        workers: int = 1,
        recording_options: dict[str, Any] | None = None,
        shards: str | None = None,
        **kwargs: Any,
    ) -> None:
        from deepspike.data.finetune_corpus import build_finetune_corpus
        from deepspike.errors import DeepSpikeError
        from deepspike.model.lineage import load_parent

        recs = [recordings] if isinstance(recordings, str) else list(recordings or [])
        if not init_from:
            raise DeepSpikeError("experiment=finetune needs init_from=ARTIFACT_OR_CKPT (the pretrained parent)")
        if not shards and not recs:
            raise DeepSpikeError("experiment=finetune needs data.recordings='[PATH_OR_GLOB,...]' (or data.shards=DIR)")
        spec = load_parent(init_from).window_spec
        if window:
            asked = WindowSpec.from_dict({**spec.to_dict(), **dict(window)})
            spec.check_compatible(asked, what="data.window", where=f"init_from={init_from}")
        if not shards:
            shards = str(build_finetune_corpus(recs, spec, cache_dir, extract, val_fraction, shard_spikes,
                                               build_block_size, workers, recording_options))  # fmt: skip
        super().__init__(shards=str(shards), **kwargs)
        self.recordings = recs

    def provenance(self) -> dict[str, Any]:
        """The fine-tuning data for the artifact: recordings (path, sha256, spikes) and the manifest hash."""
        from deepspike.provenance import data_provenance

        return data_provenance(self.manifest, self.shards)
