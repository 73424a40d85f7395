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
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(figures, indent=1) + "\n")
    os.replace(tmp, out)
    print(f"-> {out}")
    return out
