"""Helpers shared by the bench scripts: machine description, result table and JSON output."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(__file__).resolve().parent / ".cache"


def machine() -> str:
    """A one-line description of where the figures were measured."""
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    except Exception:
        gpu = "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}"


def write_results(name: str, figures: dict[str, Any]) -> Path:
    """Print ``figures`` as a table and write them to bench/results/<name>.json (atomically)."""
    figures = {"machine": machine(), **figures}
    width = max(len(k) for k in figures)
    for k, v in figures.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    out = write_json(RESULTS / f"{name}.json", figures)
    print(f"-> {out}")
    return out


def write_json(out: Path, doc: dict[str, Any]) -> Path:
    """Write ``doc`` to ``out`` through a temporary name (a killed bench never leaves half a file)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, out)
    return out


def save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure through a temporary name, then close it (a killed bench never leaves half a PNG)."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def dotted_options(pairs: list[str]) -> dict[str, Any]:
    """Sort options from ``KEY=VALUE`` pairs: dotted keys nest (``multichannel.explained_share=0``), values are YAML
    (``yaml.safe_load``: ``1e-3`` stays a string, as the sort's own validation then reports)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        *path, last = key.strip().split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return out
