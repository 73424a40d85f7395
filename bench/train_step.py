"""Training throughput: the framework's input path vs a notebook-style baseline, same model, same run.

Framework: ``deepspike.stream.make_loader`` over corpus shards -> on-device batched pretext (shuffle) ->
``normalize`` -> AdamW step of the published MLP VAE (20-2048-1024-512-512-8).
Baseline (as in the published notebook): a map-style ``Dataset`` whose ``__getitem__`` applies the shuffle pretext
to one spike with numpy, a plain ``DataLoader(shuffle=True)`` collating 4096 items, then the same step.

Writes ``bench/results/train_step.json`` (``samples_per_s``, ``baseline_samples_per_s``, ``speedup``,
``input_overhead_fraction`` = (batch fetch + augmentation) / step time for the framework) and prints a table.

    python bench/train_step.py [--batch 4096] [--steps 6] [--warmup 2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepspike.models import MLPNet, count_parameters
from deepspike.module import loss_terms
from deepspike.pretext import Pretext
from deepspike.shards import Block, write_shard
from deepspike.spec import WindowSpec, normalize

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"


def make_corpus(root: Path, n_spikes: int, n_shards: int = 8, block: int = 4096) -> tuple[Path, np.ndarray]:
    """Random spike-like windows in shards + manifest; also returns all waves for the in-memory baseline."""
    rng = np.random.default_rng(0)
    t = np.arange(20) - 8
    amp = rng.uniform(-30, -6, (n_spikes, 1))
    waves = (amp * np.exp(-(t**2) / 4.0) + rng.standard_normal((n_spikes, 20))).astype(np.float16)
    (root / "shards").mkdir(parents=True)
    shards = []
    for i, part in enumerate(np.array_split(np.arange(n_spikes), n_shards)):
        w = waves[part]
        blocks = [
            Block(w[j : j + block], part[j : j + block].astype(np.int64), np.zeros(len(w[j : j + block]), np.int16),
                  np.full(len(w[j : j + block]), -1, np.int64), {"recording": f"r{i}"})
            for j in range(0, len(w), block)
        ]  # fmt: skip
        info = write_shard(root / "shards" / f"r{i}.tar", blocks, f"r{i}")
        shards.append({"path": f"shards/r{i}.tar", "recording": f"r{i}", "split": "train", **info})
    manifest = {
        "format": "deepspike-corpus", "format_version": 1, "num_spikes": n_spikes,
        "window": WindowSpec().to_dict(), "shards": shards,
        "recordings": [{"id": s["recording"], "num_spikes": s["num_spikes"], "split": "train"} for s in shards],
        "splits": {"train": {"num_spikes": n_spikes, "num_shards": n_shards}},
    }  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root, waves.astype(np.float32)


class NotebookDataset(torch.utils.data.Dataset):
    """Per-item pretext with numpy, like the published notebook: one Python call and one permutation per spike."""

    def __init__(self, waves: np.ndarray, spec: WindowSpec, frac: float = 0.3) -> None:
        self.waves, self.spec, self.k = waves, spec, max(2, round(frac * waves.shape[1]))

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        clean = self.waves[i]
        x = clean.copy()
        pos = np.random.choice(len(x), self.k, replace=False)
        x[pos] = x[np.random.permutation(pos)]
        return torch.from_numpy(normalize(x, self.spec)), torch.from_numpy(normalize(clean, self.spec))


def step(net: torch.nn.Module, opt: torch.optim.Optimizer, inp: torch.Tensor, target: torch.Tensor) -> float:
    x_hat, mu, logvar = net(inp)
    rec, kl = loss_terms(x_hat, target, mu, logvar)
    loss = rec + kl
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    return float(loss.detach())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Runner:
    """One measured training loop; ``next_batch`` returns ``(input, target)`` on the device."""

    def __init__(self, next_batch, hidden: int, device: torch.device) -> None:
        torch.manual_seed(0)
        self.next_batch, self.device = next_batch, device
        self.net = MLPNet(hidden=hidden).to(device)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-3)
        self.t_in = self.t_total = 0.0
        self.n = self.steps = 0

    def run_step(self, measure: bool) -> None:
        t0 = time.perf_counter()
        inp, target = self.next_batch()
        _sync(self.device)
        t1 = time.perf_counter()
        step(self.net, self.opt, inp, target)
        _sync(self.device)
        t2 = time.perf_counter()
        if measure:
            self.t_in, self.t_total = self.t_in + (t1 - t0), self.t_total + (t2 - t0)
            self.n, self.steps = self.n + inp.shape[0], self.steps + 1

    def figures(self) -> dict[str, float]:
        return {"samples_per_s": self.n / self.t_total, "input_s_per_step": self.t_in / self.steps,
                "step_s": self.t_total / self.steps}  # fmt: skip


def framework_batches(corpus: Path, batch: int, device: torch.device):
    """Stream -> device -> batched seeded pretext -> normalize (what SpikeAutoencoder.training_step does)."""
    from deepspike.stream import make_loader

    spec, pretext = WindowSpec(), Pretext(["shuffle"], seed=0)
    loader = make_loader(str(corpus), split="train", batch_size=batch, shuffle=True, drop_last=True, seed=0)
    it = iter(loader)

    def nxt() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal it
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            b = next(it)
        wave = b["wave"].to(device, non_blocking=True)
        return normalize(pretext(wave), spec), normalize(wave, spec)

    return nxt


def baseline_batches(waves: np.ndarray, batch: int, device: torch.device):
    """Per-item numpy pretext in Dataset.__getitem__ + plain DataLoader collate (the notebook's way)."""
    loader = torch.utils.data.DataLoader(NotebookDataset(waves, WindowSpec()), batch_size=batch, shuffle=True)
    it = iter(loader)

    def nxt() -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal it
        try:
            inp, target = next(it)
        except StopIteration:
            it = iter(loader)
            inp, target = next(it)
        return inp.to(device), target.to(device)

    return nxt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    n_spikes = args.batch * (args.steps + args.warmup + 2)
    with tempfile.TemporaryDirectory() as tmp:
        corpus, waves = make_corpus(Path(tmp) / "corpus", n_spikes)
        fw_run = Runner(framework_batches(corpus, args.batch, device), args.hidden, device)
        bl_run = Runner(baseline_batches(waves, args.batch, device), args.hidden, device)
        for i in range(args.warmup + args.steps):  # alternate, so load from other processes hits both alike
            fw_run.run_step(measure=i >= args.warmup)
            bl_run.run_step(measure=i >= args.warmup)
        out = {"framework": fw_run.figures(), "baseline": bl_run.figures()}
    fw, bl = out["framework"], out["baseline"]
    res = {
        "samples_per_s": round(fw["samples_per_s"], 1),
        "baseline_samples_per_s": round(bl["samples_per_s"], 1),
        "speedup": round(fw["samples_per_s"] / bl["samples_per_s"], 3),
        "input_overhead_fraction": round(fw["input_s_per_step"] / fw["step_s"], 4),
        "baseline_input_overhead_fraction": round(bl["input_s_per_step"] / bl["step_s"], 4),
        "step_s": round(fw["step_s"], 4),
        "baseline_step_s": round(bl["step_s"], 4),
        "batch_size": args.batch,
        "num_parameters": count_parameters(MLPNet(hidden=args.hidden)),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch_threads": torch.get_num_threads(),
        "steps_measured": args.steps,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    width = max(len(k) for k in res)
    print(f"{'figure':<{width}}  value")
    for k, v in res.items():
        print(f"{k:<{width}}  {v}")
    print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
